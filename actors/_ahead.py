"""Reserve-ahead: attempts recorded before an instance is free for them (hot-path.md §6).

Without it an attempt takes an idle instance when it is reserved and holds it, idle,
until its DISPATCHED is durable: each instance runs at most one attempt per commit.
With ``prefetch`` = p, up to ``concurrency x p`` attempts of an agent may also be
reserved *ahead* (DISPATCHED without an instance). Once durable they wait in the
agent's :class:`Lane`'s ``ready`` deque, and the next instance that frees takes one at
once: the Scheduler hands it over when it hears the instance is free, and a host that
self-feeds (the pool host) has the worker that finished pop it and start it on the
same instance, before the Scheduler even hears of the end (``Outcome.next_token``).

The write-ahead rule does not change: what waits in ``ready`` is durable. What changes
(and its guards, per agent):

- a deadline is recorded at the reservation, so it would include the time spent
  waiting in ``ready``: when the attempt is handed over its deadline in memory counts
  from then (``Engine.restamp``; the stored one is what a crash recovers, and its timer,
  still due, is resent until the later deadline has passed too). One still waiting when
  its timer comes (its instance crashed and restarts, say) is restamped, not timed out:
  it waits as a queued job would, spending no attempt; an instance that fails to start
  costs the oldest one an attempt when no job is queued. The prefetch is capped
  so that prefetch x the observed p95 action time stays under a tenth of the step's
  timeout (off until one action of the agent was timed), and off for steps with a
  heartbeat timeout;
- an agent with a breaker, rate limit or adaptive concurrency gets no prefetch: its
  gate admits attempts one at a time; nor does one whose class defines ``health`` (a
  failing check holds back only work not yet reserved);
- an attempt fenced while it waits (its workflow ended, it timed out) is skipped: the
  Scheduler marks its port superseded and whoever pops it checks that flag first;
- after a crash an attempt that waited is an orphan, re-run with attempt + 1 by
  recovery, as the commit-to-tell window always was.

The pool host's line (actors/_pool_host.py) has attempts wait for a worker the same way,
holding their instance: :meth:`Lanes.lined_start` restamps one when it starts.

The deque is the one thread-shared structure: the Scheduler appends and pops, workers
pop (``deque`` appends and pops are atomic); everything else here is the Scheduler's.
:class:`Lanes` keeps every agent's lane and moves attempts between lanes and instances
for the :class:`~herder.actors._dispatch.Dispatcher`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from herder.actors._clock import MessageClock
from herder.actors._host import AgentHost, moved_on, ready_queue, routed
from herder.actors._messages import Outcome, Run
from herder.actors.engine import Attempt, Engine, Job, WorkflowRun, attempt_timeout
from herder.store import StepState

SAMPLES = 64
"""Action times kept per agent for its p95."""

MIN_SAMPLES = 16
"""Action times after which an agent's p95 is their 95th percentile (before: the longest
one seen; before its first, nothing is reserved ahead)."""

STARTED_CAP = 65536
"""Hand-over times kept for attempts not yet answered, over every lane of a runtime
(beyond it they are dropped)."""

TIMEOUT_SHARE = 10
"""prefetch x p95 action time stays under timeout / TIMEOUT_SHARE."""

_RERUN = (StepState.DISPATCHED, StepState.COMPENSATING)
"""States of a step whose job runs it again when its token is in flight no more."""


@dataclass(slots=True)
class Lane:
    """One agent's reserve-ahead state; see the module docstring."""

    # Durable, waiting for an instance; made on first use (:meth:`Lanes.ready`), the
    # host's own deque when it self-feeds.
    ready: deque[Run] | None = None
    ahead: int = 0  # reserved without an instance, not yet handed to one
    concurrency: int = 0
    prefetch: int = 0  # attempts reserved ahead per instance, at most
    p95: float | None = None  # seconds an action takes (95th percentile), once known
    # How many may wait ahead at most: concurrency x prefetch once an action was timed,
    # else 0. Set by configure() and ended(); the pump compares ``ahead`` with it per job.
    room: int = 0
    _times: list[float] = field(default_factory=list)  # the last SAMPLES action times
    _next: int = 0  # where the next time goes in _times
    _fresh: int = 0  # times added since p95 was computed
    # token -> handed over at: one dict shared by every lane of a runtime (tokens are
    # unique), not one per agent name (one of 10,000 names holds 200 bytes of dict).
    _started: dict[int, float] = field(default_factory=dict)
    host: Any = None  # the host serving the agent (routed once per configure)
    name: str = ""  # the agent's
    feeds: bool = False  # the host self-feeds: it has moved_on

    def configure(self, concurrency: int, prefetch: int) -> None:
        """Serve ``concurrency`` instances, reserving up to ``prefetch`` ahead of each."""
        self.concurrency, self.prefetch = concurrency, prefetch
        self.room = 0 if self.p95 is None else concurrency * max(0, prefetch)

    def open(self) -> bool:
        """Whether some attempt may be reserved ahead now (:meth:`allows` may still
        refuse one for its window)."""
        return self.ahead < self.room

    def allows(self, window: float) -> bool:
        """Whether one more attempt, which lapses ``window`` seconds after it is
        recorded (0: it has a heartbeat timeout), may be reserved ahead now."""
        if self.prefetch <= 0 or self.p95 is None or window <= 0:
            return False
        per_instance = self.prefetch
        if self.p95 > 0:
            per_instance = min(per_instance, int(window / TIMEOUT_SHARE / self.p95))
        return self.ahead < self.concurrency * per_instance

    def started(self, token: int, at: float) -> None:
        """Attempt ``token`` was handed to an instance at ``at`` (monotonic seconds)."""
        if len(self._started) > STARTED_CAP:  # answers that never came (hung, lost)
            self._started.clear()
        self._started[token] = at

    def ended(self, token: int, at: float) -> None:
        """Attempt ``token`` answered at ``at``: one more action time for the p95."""
        began = self._started.pop(token, None)
        if began is None:
            return
        took, times = at - began, self._times
        if len(times) < SAMPLES:
            times.append(took)
        else:
            times[self._next] = took
            self._next = (self._next + 1) % SAMPLES
        if len(times) < MIN_SAMPLES:
            self.p95 = max(took, self.p95 or 0.0)
            self.room = self.concurrency * max(0, self.prefetch)
            return
        self._fresh += 1
        if self._fresh >= MIN_SAMPLES:
            self._fresh = 0
            self.p95 = sorted(times)[int(len(times) * 0.95) - 1]

    def forget(self, token: int) -> None:
        """Attempt ``token`` ended without an answer to time (lost, replaced)."""
        self._started.pop(token, None)


def next_ready(ready: deque[Run]) -> Run | None:
    """The oldest attempt in ``ready`` that was not superseded while it waited (those
    are dropped); None if there is none. Safe on any thread."""
    while True:
        try:
            run = ready.popleft()
        except IndexError:
            return None
        if not run.context.superseded:
            return run


class Lanes:
    """Every agent's :class:`Lane`, and the hand-overs between lanes and instances; on the
    Scheduler's thread. Methods returning True freed capacity: pump the agent again."""

    def __init__(
        self, engine: Engine, clock: MessageClock, config: Any, room: Callable[[str], None]
    ) -> None:
        self._engine = engine
        self._room = room  # told the agent's name when one of its attempts leaves its lane
        self._clock = clock
        self._config = config  # prefetch, probe_timeout, default_timeout
        self._host: AgentHost | None = None
        self._lanes: dict[str, Lane] = {}
        self._started: dict[int, float] = {}  # every lane's (Lane._started)
        self.reserved = 0  # attempts reserved ahead of a free instance, so far
        # Tokens of waiting attempts fenced with "replace" (they hang, or must stop): a
        # worker may have taken one before the fence; its instance is replaced once the
        # hand-over is heard (``answered``).
        self._replace: set[int] = set()

    def attach(self, host: AgentHost) -> None:
        self._host = host

    def configure(self, name: str, concurrency: int, *, limited: bool) -> None:
        """Agent ``name`` was added (again). A breaker, rate limit or adaptive limit
        (``limited``) admits attempts one at a time: none are reserved ahead past it (a
        health check holds only work not yet reserved). Its ``ready`` deque, once it has
        one, is the host's own when the host self-feeds; what waits moves over when it
        moved host."""
        lane = self._lanes.get(name)
        if lane is None:
            lane = self._lanes[name] = Lane(_started=self._started)
        lane.configure(concurrency, 0 if limited else self._config.prefetch)
        assert self._host is not None
        lane.host, lane.name = routed(self._host, name), name
        lane.feeds = hasattr(lane.host, "moved_on")
        if hasattr(lane.host, "on_lined_start"):  # a pool host hands lined attempts over
            lane.host.on_lined_start = self.lined_start
        if lane.ready is not None:
            waiting, lane.ready = lane.ready, None
            ready = self.ready(name, lane)
            while ready is not waiting:  # one at a time: an old worker may still pop one
                try:
                    ready.append(waiting.popleft())
                except IndexError:
                    break

    def hold(self, name: str) -> None:
        """Reserve nothing ahead for agent ``name`` from now on, as for one configured
        ``limited``."""
        lane = self._lanes.get(name)
        if lane is not None and lane.prefetch:
            lane.configure(lane.concurrency, 0)

    def ready(self, name: str, lane: Lane) -> deque[Run]:
        """``lane``'s ready deque (agent ``name``'s), made on first use: the host's own
        when it self-feeds (so idle names hold none)."""
        if lane.ready is None:
            assert self._host is not None
            shared = ready_queue(self._host, name)
            lane.ready = deque() if shared is None else shared
        return lane.ready

    def stop(self, name: str) -> bool:
        """Agent ``name`` is served no more: nothing is reserved ahead for it from now on
        (what was waits until it is added again); True if nothing of it waits in its lane."""
        lane = self._lanes.get(name)
        if lane is None:
            return True
        lane.configure(0, 0)
        return not lane.ahead and all(run.context.superseded for run in lane.ready or ())

    def drop(self, name: str) -> None:
        """Forget agent ``name``'s lane (and what it learnt: its p95); nothing waits in it."""
        self._lanes.pop(name, None)

    def get(self, agent: str) -> Lane | None:
        """``agent``'s lane, if it was configured."""
        return self._lanes.get(agent)

    def reserve_ahead(self, lane: Lane | None, run: WorkflowRun, job: Job) -> bool:
        """Whether ``job`` of ``lane``'s agent, which has no instance free, may be reserved
        ahead (it then counts as waiting). Not with a heartbeat timeout, nor a group step
        (AnyOf: its job moves to another member, which a recorded attempt cannot), nor in a
        workflow a crash was counted against: the next crash counts its DISPATCHED attempts
        as running (poison work) and one reserved ahead may never start; queued, it is
        recorded once an instance takes it, so waiting at crashes parks no innocent one."""
        if lane is None or lane.ahead >= lane.room or run.record.recoveries:
            return False
        spec, st = run.specs[job.step], run.steps[job.step]
        # Run again (a reload, a recovery) while its last attempt may still run, or hang,
        # here: it waits queued, where that attempt's timer finds it and replaces its
        # instance (Engine._timer_due). Reserved ahead, under a new token, it would wait
        # behind it for good: restamped at each of its timers, never started.
        if (
            st.state in _RERUN
            and st.token not in self._engine.inflight
            and st.token in lane.host.busy_tokens(lane.name)
        ):
            return False
        probe = not job.compensating and st.state is StepState.UNKNOWN
        if not probe and (spec.heartbeat_timeout is not None or spec.members):
            return False
        c, compensating = self._config, job.compensating
        window = attempt_timeout(
            st, spec, c.default_timeout, c.probe_timeout, compensating=compensating
        )
        if not lane.allows(float(window)):
            return False
        lane.ahead += 1
        self.reserved += 1
        return True

    def send(self, attempt: Attempt, *, idle: bool = True) -> bool | None:
        """``attempt``'s DISPATCHED is durable: one reserved ahead joins its lane's ready
        attempts (None), handed at once to an instance if one is idle (``idle`` False: the
        caller knows none is); else the host is told (False: its instance went away, or
        its agent with it)."""
        lane = self._lanes.get(attempt.agent)
        if lane is None:  # (not expected: a name is forgotten only with no attempt held)
            return False
        if not attempt.instance:
            ready = lane.ready if lane.ready is not None else self.ready(attempt.agent, lane)
            ready.append(attempt.message)
            if idle:
                self.feed(attempt.agent)
            return None
        message, attempt.message = attempt.message, None
        lane.started(attempt.token, self._clock.mono)
        return bool(lane.host.send(attempt.agent, attempt.instance, message))

    def feed(self, agent: str) -> None:
        """Hand ``agent``'s ready attempts to its idle instances, oldest first."""
        lane = self._lanes.get(agent)
        while lane is not None and lane.ready:
            message = next_ready(lane.ready)
            if message is None:
                return
            token, host = message.token, lane.host
            instance = host.acquire(agent, token)
            attempt = self._engine.inflight.get(token)
            if instance is None or attempt is None:
                if instance is not None:  # (cannot happen: a fenced attempt is superseded)
                    host.release(agent, instance, token, self._clock.now)
                lane.ready.appendleft(message)  # no idle instance: the next one takes it
                return
            self._handed(lane, attempt, instance)
            self._room(agent)
            message.instance = instance
            if not host.send(agent, instance, message):
                # The instance went away before it ran anything: the attempt waits on.
                host.release(agent, instance, token, self._clock.now)
                attempt.instance, attempt.message = "", message
                lane.ahead += 1
                lane.ready.appendleft(message)
                return

    def oldest(self, agent: str) -> int | None:
        """The token of ``agent``'s oldest attempt waiting in its lane, taken out of its
        ready deque (the caller ends it: the engine's fence frees its place), if any."""
        lane = self._lanes.get(agent)
        run = None if lane is None or lane.ready is None else next_ready(lane.ready)
        return None if run is None else run.token

    def answered(self, msg: Outcome) -> bool:
        """Time the answer; True if the instance went on with a ready attempt (the
        Outcome's ``next_token``), which has left its lane: the instance stays busy."""
        lane = self._lanes.get(msg.agent)
        at = self._clock.mono
        if lane is not None:
            lane.ended(msg.token, at)
        if not msg.next_token:
            return False
        if lane is None:
            went_on = moved_on(self._host, msg.agent, msg.instance, msg.token, msg.next_token)
        elif lane.feeds:
            went_on = lane.host.moved_on(msg.agent, msg.instance, msg.token, msg.next_token)
        else:
            went_on = True
        if went_on is False:  # with another agent's attempt, from the pool's line
            self.lined_start(msg.next_token)
            return False
        attempt = self._engine.inflight.get(msg.next_token)
        if attempt is not None and not attempt.instance and lane is not None:
            # Handed to the instance (as _handed, inline: once per step when self-fed).
            attempt.instance, attempt.message = msg.instance, None
            lane.ahead -= 1
            lane.started(attempt.token, at)
            self._engine.restamp(attempt, self._clock.now)  # (returns at once unless it waited)
        elif msg.next_token in self._replace:  # fenced before: it must not hold on
            self._replace.discard(msg.next_token)
            assert self._host is not None
            self._host.replace(msg.agent, msg.instance)
        return True

    def lined_start(self, token: int) -> None:
        """Attempt ``token``, sent to an instance with no worker free, waited in the pool
        host's line and starts now: its deadline counts from now (as one reserved ahead)."""
        attempt = self._engine.inflight.get(token)
        if attempt is None:
            return
        lane = self._lanes.get(attempt.agent)
        if lane is not None:
            lane.started(token, self._clock.monotonic())
        self._engine.restamp(attempt, self._clock.time())

    def unsent(self, attempt: Attempt, *, replace: bool = False) -> bool:
        """An attempt never sent ended (fenced, or its workflow reloaded): free the
        instance reserved for it, or its place in its lane (``replace``: the fence
        wanted its instance replaced, should a worker have taken it meanwhile)."""
        if attempt.instance:
            assert self._host is not None
            return self._host.release(
                attempt.agent, attempt.instance, attempt.token, self._clock.now
            )
        lane = self._lanes.get(attempt.agent)
        if lane is None:
            return False
        lane.ahead -= 1
        if replace:
            if len(self._replace) > STARTED_CAP:  # (ones no worker took: never heard of)
                self._replace.clear()
            self._replace.add(attempt.token)
        return True

    def counted(self, hosted: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
        """``hosted`` (the host's counters per agent) with each agent's ``ahead``: its
        attempts reserved for no instance yet (with ``queued``, the work that waits)."""
        lanes = self._lanes
        return {n: {**row, "ahead": getattr(lanes.get(n), "ahead", 0)} for n, row in hosted.items()}

    def ahead(self) -> int:
        """Attempts reserved ahead and not yet running (waiting for a commit or an
        instance)."""
        return sum(lane.ahead for lane in self._lanes.values())

    def _handed(self, lane: Lane, attempt: Attempt, instance: str) -> None:
        attempt.instance, attempt.message = instance, None
        lane.ahead -= 1
        lane.started(attempt.token, self._clock.mono)
        self._engine.restamp(attempt, self._clock.now)
