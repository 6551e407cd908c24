"""Dispatch: per-agent queues, admission gates and the pump, on the Scheduler's thread.

The engine decides *that* a step runs (an :class:`Enqueue`); the :class:`Dispatcher` decides *when
and where*: it keeps each agent's job queue (the host's :class:`~herder.actors._queue.JobQueue`),
lets a job through when the agent's admission gate (breaker, rate limit, adaptive concurrency) and
an idle instance allow, has the engine record the attempt (``Engine.reserve``: DISPATCHED, token,
deadline) and builds what the agent is told once that is durable. With ``prefetch`` it reserves
attempts ahead of a free instance (``_ahead``). Health changes move group jobs (``_regroup``). It
carries out the engine's immediate decisions (fences, cancels, lapses, lost attempts).

Room: a pump that finds no idle instance marks the agent busy (no instance is asked for
until news that may free one: an answer, a fence, an instance's event); one that finds
no room to reserve ahead either marks it full (a new job alone does not pump it; that
news, or an attempt leaving its lane, does). A token drawn for a job with no room goes
to the next job of the same ``pump_dirty`` (nothing else draws one meanwhile).
"""

from __future__ import annotations

from collections.abc import Iterable
from heapq import heappop
from typing import Any

from herder.actors._admission import Admission
from herder.actors._ahead import Lanes
from herder.actors._clock import MessageClock
from herder.actors._engine import EngineContext, prepare
from herder.actors._facts import agent_facts, limit_facts
from herder.actors._host import AgentHost, AgentUnavailable, pumped, waiting
from herder.actors._loose import Loose
from herder.actors._lost import given_up, lost_attempts, next_job
from herder.actors._messages import UNSTARTED, InstanceEvent, Outcome, Tick, Wake
from herder.actors._queue import JobQueue
from herder.actors._regroup import Groups, move_off_unwell
from herder.actors._routes import Routes
from herder.actors._supervision_specs import ChildEventKind
from herder.actors._wiring import AgentEntry
from herder.actors.engine import (
    UNSTORABLE_ERROR,
    Attempt,
    AttemptLost,
    Cancel,
    Engine,
    Enqueue,
    Event,
    Fence,
    Immediate,
    Job,
    Lost,
    Reserved,
    StartFailed,
    TimedOut,
    unqueue,
)
from herder.store import Transition

# Instances let go per pass at most, and the seconds to the next pass while one let go of
# that many: thousands going idle together leave in batches (~1,280 a second).
PASSIVATE, PASSIVATE_GAP = 256, 0.2


class Dispatcher:
    """The agents' queues, gates and pump; see the module docstring."""

    host: AgentHost  # the agent host (attached when the Scheduler starts)

    def __init__(self, ctx: EngineContext, engine: Engine, clock: MessageClock) -> None:
        self._ctx = ctx
        self._engine = engine
        self._clock = clock  # the Scheduler's, read once per message
        self._config = ctx.config
        # The agents served: the Scheduler's own copy, changed only by its messages.
        self.agents: dict[str, AgentEntry] = {}
        self.dirty: set[str] = set()  # agents whose queue may move: pumped after a message
        self._busy: set[str] = set()  # room (module docstring): no idle instance found
        self._full: set[str] = set()  # and no room to reserve ahead either
        self._spare = 0  # a token drawn for a job that found no room, for the next job
        self._regroup = False  # an agent's health changed: group jobs may change member
        self._groups = Groups(self.well)  # the agents group steps' attempts were weighed on
        self._pumped, self._waiting = pumped(None), waiting(None)  # the host's, once attached
        self._heard = False  # an instance event came since the last pump (host.pumped)
        self.lanes = Lanes(engine, clock, ctx.config, self._room)  # reserve-ahead (_ahead.py)
        self.loose = Loose()  # fenced attempts still running, until their deadline
        # Attempts whose timeout was their gates' news: a late answer is none to the gates.
        self._counted: dict[int, bool] = {}
        self._names = Routes(engine, self.lanes, self._dropped)  # routes; names not served
        self._routes, self._route = self._names.routes, self._names.route  # (hot path)
        health, gate = ctx.health, (self._wake_later, self._busy_tokens)
        self.admission = Admission(ctx.store, ctx.clock, *gate, health)
        # Agents whose dispatches go through their gates (Admission.ready): with limits or
        # health checks (live views: the pump tests membership). A group (AnyOf) step
        # picks among the members that are well (engine/_members.py).
        self._limited, self._watched = self.admission.limited, health.watching
        engine.healthy = self._groups.well
        engine.started = self._started

    def _started(self, token: int) -> bool:
        """Whether attempt ``token`` was handed to an agent (not: recorded ahead and
        waiting, not yet durable, or waiting for a worker in the pool host's line); a
        cancel gives up the steps of those that were not."""
        attempt = self._engine.inflight.get(token)
        return attempt is None or (attempt.sent and not self._waiting(token))

    def attach(self, host: AgentHost, agents: dict[str, AgentEntry]) -> None:
        """Run attempts on ``host``, serving ``agents`` (those registered so far)."""
        self.host = host
        self._pumped = pumped(host)  # (a pool host passes on a worker a pump took not)
        self._waiting = waiting(host)
        self.lanes.attach(host)
        self._names.host = host
        for name, entry in agents.items():
            self.add(name, entry)

    def add(self, name: str, entry: AgentEntry) -> list[AttemptLost]:
        """Serve agent ``name`` as ``entry`` says (again: what had not started is given up)."""
        self.agents[name] = entry
        lost = self.host.add(name, entry.factory, entry.concurrency)
        self._names.added(name)  # it may run on another host now
        self.admission.configure(name, *entry.limits)
        for token in lost or ():  # (one was a half-open breaker's probe: another may go)
            self.admission.abandoned(name, token)
        # (a health check holds back only work not yet reserved: none is, for such agents)
        limited = self._ctx.health.declared(name) or any(x is not None for x in entry.limits)
        self.lanes.configure(name, entry.concurrency, limited=limited)
        self.woke(name)  # (pumped; and group jobs waiting on a member not served may move)
        return given_up(self._engine, self.host, lost, self._clock.now, how="added again")

    def remove(self, name: str) -> list[AttemptLost]:
        """Stop serving ``name``: its queued work waits for its next add (group steps'
        moves on), none is reserved ahead; its attempts not started are lost, uncharged."""
        self.agents.pop(name, None)
        self._move_off([name])
        lost = self.host.remove(name)
        events = given_up(self._engine, self.host, lost, self._clock.now, how="removed")
        self.admission.remove(name)
        self._names.removed(name)  # (the rest goes: _routes)
        return events

    def _move_off(self, agents: Iterable[str]) -> None:
        """The queued jobs of group steps move off those of ``agents`` not well (_regroup)."""
        engine, touch = self._engine, self._touch
        move_off_unwell(engine, self.host, agents, well=self.well, queue=self._queue, touch=touch)

    def _dropped(self, name: str) -> None:
        """Agent ``name``, not served, was forgotten: so are its room marks."""
        self._busy.discard(name)
        self._full.discard(name)

    # -- what the engine does at once --------------------------------------------------

    def perform(self, actions: list[Immediate]) -> None:
        """Carry out a decision's immediate effects."""
        for action in actions:
            if type(action) is Enqueue:  # (the hot path: one per step, inline)
                agent = action.agent
                route = self._routes.get(agent) or self._route(agent, add=True)
                assert route is not None
                route[0].push(action.job, action.priority, self._clock.mono)
                if agent not in self._full:
                    self.dirty.add(agent)
            elif isinstance(action, Fence):
                attempt = action.attempt
                attempt.port.superseded = True
                if action.abandon and self.admission.abandoned(attempt.agent, attempt.token):
                    self._touch(attempt.agent)  # it was a breaker's half-open probe
                if not attempt.sent:  # never ran: what it held is free
                    if self.lanes.unsent(attempt, replace=action.replace):
                        self._touch(attempt.agent)
                elif action.replace:
                    self.host.replace(attempt.agent, attempt.instance)
                    self._touch(attempt.agent)  # its slot is free
                elif attempt.deadline is not None:  # it runs on: should it hang (_loose.py)
                    self.loose.watch(attempt.agent, attempt.token, attempt.deadline)
            elif isinstance(action, Cancel):
                action.attempt.port.cancelled = True
            elif isinstance(action, TimedOut):
                self.admission.answered(action.agent, action.token, ok=False)
                self._counted[action.token] = True  # (the oldest go: a hung one never answers)
                if len(self._counted) > 10_000:
                    del self._counted[next(iter(self._counted))]
                if action.hung:
                    self.host.replace_token(action.agent, action.token)
                    self._touch(action.agent)
            else:
                assert isinstance(action, Lost)
                self.admission.lost(action.agent)
                self._touch(action.agent)

    def _touch(self, agent: str, *, freed: bool = True) -> None:
        """Pump ``agent`` after this message: it may have room (``freed``: an idle instance)."""
        self._full.discard(agent)
        if freed:
            self._busy.discard(agent)
        self.dirty.add(agent)

    def _room(self, agent: str) -> None:
        """One of ``agent``'s attempts left its lane: one more may be reserved ahead."""
        if agent in self._full:
            self._touch(agent, freed=False)

    def _queue(self, agent: str) -> JobQueue[Job]:
        route = self._route(agent, add=True)
        assert route is not None
        return route[0]

    # -- news from the host ------------------------------------------------------------

    def answered(self, msg: Outcome) -> None:
        """An attempt ended: news for its gate, and its instance is idle again (or, when
        the worker went on with the agent's next ready attempt, busy with that one)."""
        # Even a stale answer is news of the resource's health (an untracked agent's plain
        # success is none: no call), a result herder could not store an answer too; one that
        # never started is not (it frees a probe's place), nor one whose timeout was counted.
        agent, ok = msg.agent, msg.ok or msg.permanent or UNSTORABLE_ERROR in msg.error_types
        if self.loose.watched:
            self.loose.watched.pop(msg.token, None)
        counted = self._counted.pop(msg.token, False) if self._counted else False
        if not counted and (not ok or agent in self.admission.tracked):
            self.admission.answered(agent, msg.token, ok, ran=msg.kind != UNSTARTED)
        # Even one that frees nothing changes the agent's action times (its lane's room).
        if not self.lanes.answered(msg):  # else its instance went on with a ready attempt
            route = self._routes.get(agent)  # (its host: one lookup, not the router's two)
            host = self.host if route is None else route[1]
            host.release(agent, msg.instance, msg.token, self._clock.now)
            self._busy.discard(agent)
        self._full.discard(agent)  # (_touch, inline: once per step)
        self.dirty.add(agent)

    def instance_event(self, msg: InstanceEvent) -> list[Event]:
        """A lifecycle event of an agent's instances; what the engine must hear of it."""
        self._touch(msg.agent)
        self._heard = True
        try:
            lost = self.host.on_event(msg, self._clock.now)
        except AgentUnavailable as exc:
            self.admission.crashed(msg.agent, 0)
            self._engine.counters["crashes"] += 1  # (as a pool's slot whose factory failed)
            job = next_job(self._engine, self.host.queue(msg.agent))
            if job is not None:
                return [StartFailed(job, str(exc), msg.agent)]
            token = self.lanes.oldest(msg.agent)  # else the oldest attempt waiting ahead
            return [] if token is None else [AttemptLost(token, str(exc), unbuilt=True)]
        events = lost_attempts(msg, lost)
        crashed = sum(not event.given_up for event in events)  # (given up on: crashed none)
        if msg.kind is ChildEventKind.CRASHED and msg.instance is not None:
            self.admission.crashed(msg.agent, crashed)
        self._engine.counters["crashes"] += crashed
        for token in lost:  # (a pool's worker, say: news of another agent's slot)
            attempt = self._engine.inflight.get(token)
            if attempt is not None:
                self._touch(attempt.agent)
        return list(events)

    def woke(self, agent: str) -> None:
        """A scheduled wake-up for ``agent``'s gate arrived, or its health changed (or was
        found: nothing is reserved ahead then): pump it again (and move group jobs)."""
        self.admission.woke(agent)
        if agent in self.agents and self._ctx.health.declared(agent):
            self.lanes.hold(agent)
        self._touch(agent)
        self._regroup = True

    def _busy_tokens(self, agent: str) -> list[int]:  # (the host comes after the gates)
        return self.host.busy_tokens(agent)

    def busy(self, agent: str, token: int | None) -> bool:
        """Whether an instance of ``agent`` runs attempt ``token``."""
        return token is not None and token in self.host.busy_tokens(agent)

    def release(self, attempts: list[Attempt | None]) -> None:
        """Free the instances reserved for attempts never sent (a reloaded workflow's); an
        attempt already sent keeps its instance busy until its (stale) answer arrives."""
        for attempt in attempts:
            if attempt is not None and not attempt.sent:
                attempt.port.superseded = True  # if it waits in a lane, it is dropped
                if self.lanes.unsent(attempt):
                    self._touch(attempt.agent)

    def send(self, attempt: Attempt) -> bool:
        """Tell the agent its attempt, now that its DISPATCHED is durable (False: the
        instance went away); one reserved ahead waits for the next free instance."""
        if self.lanes.send(attempt, idle=attempt.agent not in self._busy) is not False:
            return True
        self._touch(attempt.agent)  # what it held is free again
        return False

    # -- the pump ----------------------------------------------------------------------

    def pump_dirty(self) -> None:
        """Dispatch what the agents touched since the last pump can run now."""
        if self._regroup or self.admission.breakers_moved:
            self._regroup = self.admission.breakers_moved = False
            self._move_off(self._groups.members)  # (not every agent: thousands may change)
        for agent in sorted(self.dirty):  # sorted: the same order (and tokens) in every process
            self._pump(agent)
        self.dirty.clear()
        self._spare = 0  # tokens are drawn elsewhere from now on: it would not exceed them
        if self._heard:  # (only then can the host be holding a worker for a pump)
            self._heard = False
            self._pumped()

    def _pump(self, agent: str) -> None:
        """Reserve what ``agent``'s queue may run now: on an idle instance, else ahead.

        Runs once per step: the queue's heap, the gates and the lane are looked up once
        here, not per job (the queue's head is ``heap[0]``, see ``JobQueue.heap``)."""
        route = self._routes.get(agent) or self._route(agent)
        if route is None:
            return  # (news of no agent's queue: the pool's workers, say)
        queue, host, lane = route
        heap = queue.heap
        idle = agent not in self._busy  # an instance may be idle (none frees while it runs)
        if idle and lane is not None and lane.ready:
            self.lanes.feed(agent)  # durable attempts first, then new ones
        gated = agent in self._limited or agent in self._watched
        engine, runs, ctx = self._engine, self._engine.runs, self._ctx
        while heap and not ctx.paused:
            if not idle and (lane is None or lane.ahead >= lane.room):
                self._full.add(agent)  # no room left, whatever the job: none is looked at
                return
            job = heap[0][2]
            run = runs.get(job.workflow_id)
            if run is None or not engine.job_valid(run, job):
                heappop(heap)
                if run is not None:
                    unqueue(run, job)
                continue
            if gated and not self.admission.ready(agent):
                return  # breaker open or rate limit reached: a wake-up pumps again
            token, self._spare = self._spare or ctx.next_token(), 0
            instance = host.acquire(agent, token, len(heap)) if idle else None
            if instance is None:
                if idle:
                    idle = False
                    self._busy.add(agent)
                if not self.lanes.reserve_ahead(lane, run, job):
                    # Busy, or instances are starting: their "started" pumps again.
                    self._spare = token
                    if lane is None or lane.ahead >= lane.room:
                        self._full.add(agent)
                    return
                instance = ""  # reserved ahead: the next instance that frees takes it
            heappop(heap)
            unqueue(run, job)
            if gated:
                self.admission.admitted(agent, token)
            # The engine records the attempt; what its agent will be told is built now.
            done = engine.reserve(Reserved(job, agent, instance, token), now=self._clock.now)
            prepare(ctx, run, job, done)

    def well(self, agent: str) -> bool:
        """Whether ``agent`` takes new work: served (a removed group member is not),
        healthy, and no breaker holds its work."""
        well = agent in self.agents and self._ctx.health.healthy(agent)
        return well and not self.admission.tripped(agent)

    def _wake_later(self, agent: str, delay: float) -> None:
        """Pump ``agent`` again after ``delay`` seconds (on the injectable clock)."""
        ctx = self._ctx
        self._clock.call_later(delay, lambda: ctx.tell_scheduler(Wake(agent)))

    # -- housekeeping ------------------------------------------------------------------

    def resource_writes(self) -> Transition | None:
        """The gates' records to write (breaker state, crash counters), if any changed."""
        return Transition(ops=tuple(self.admission.writes())) if self.admission.dirty else None

    def passivate(self) -> int:
        """Let instances idle longer than the idle timeout go (how many went), replace
        those a fenced attempt hangs on past its deadline (``_loose``), and forget the
        names not served of which nothing is left (``_routes``)."""
        for agent in self.loose.reap(self.host, self._clock.now):
            self._touch(agent)
        went = self.host.passivate(self._clock.now - self._config.idle_timeout, PASSIVATE)
        self._names.sweep()
        if went >= PASSIVATE:  # more may be idle: the next batch soon, not at the next tick
            ctx = self._ctx
            self._clock.call_later(PASSIVATE_GAP, lambda: ctx.tell_scheduler(Tick()))
        return went

    def facts(self) -> dict[str, Any]:
        """Per agent: what the console's agents page shows."""
        configured = {
            name: limit_facts(entry.concurrency, *entry.limits)
            for name, entry in self.agents.items()
        }
        return agent_facts(
            self.lanes.counted(self.host.stats()), self.admission.stats(), configured
        )

    def stats(self) -> dict[str, Any]:
        """The agents', the host's and the gates' gauges."""
        return {
            "agents": self.lanes.counted(self.host.stats()),
            "host": self.host.host_stats(),
            "resources": self.admission.stats(),
            "reserved_ahead": self.lanes.reserved,
            # Reserved ahead and not yet running (waiting for their commit or an instance).
            "ahead": self.lanes.ahead(),
        }
