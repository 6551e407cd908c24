"""The asyncio host: ``async def`` actions run as tasks on an event loop, no thread each.

An agent name is data here, as on the pooled host, with one difference: **one agent
object serves all of the agent's attempts**, up to ``concurrency`` of them at once, each a
task on the loop (:mod:`~herder.actors._event_loop`). Code on one loop never runs in
parallel, so sharing the object is safe, and it is what an async client wants: one
``httpx.AsyncClient`` (or aiohttp session) per agent, pooling its connections for every
attempt. The object is built on the loop by the first attempt that needs it (the factory
may be an ``async def``), kept between attempts, and dropped (built again later) when an
attempt raises :class:`InstanceCrash`, when the agent is re-registered or after it idles
past the passivation time.

- **Attempts.** ``acquire`` gives each attempt a slot ``<agent>/aio<token>`` while fewer
  than ``concurrency`` run; the attempt runs
  :func:`~herder.actors._action.run_attempt_async`, which shares ``settle`` with every
  host (normalisation, errors, probes, ``complete_later``, ``BaseException`` containment).
- **Timeouts and replacement.** ``replace``/``replace_token`` cancel the task (so does a
  new Scheduler, the tasks its predecessor left): the action sees ``CancelledError`` at
  its next ``await``. Its slot serves again once the task has ended (``RESTARTED``, as
  after a crash's backoff): a cancel that takes more than a loop turn (an await in a
  ``finally``, ``asyncio.wait_for`` awaiting its inner task) must not run beside the
  next attempt. The task still reports how it ended, which the Scheduler fences out
  like an abandoned thread's late answer. One that goes on past the cancel (catches it,
  or awaits under ``asyncio.shield``) holds its slot for ``shutdown`` seconds at most,
  then runs outside any slot, as a hung thread does on the thread hosts, and is counted
  (``asyncio_abandoned``) until it ends. A coroutine that blocks the loop
  (``time.sleep``, a busy loop) cannot be cancelled; it stalls every asyncio agent of
  the loop, which is why plain ``def`` actions belong on a thread host.
- **Crashes.** An attempt that raises :class:`InstanceCrash` is lost (as on every host)
  and its slot waits out :data:`~herder.actors._hosted.INSTANCE_BACKOFF`, by the agent's
  crashes within ``restart_period``, before it serves again, as a pool slot does (then
  ``InstanceEvent("restarted")``): under ``concurrency=1`` the object is built again only
  then. Past ``max_restarts`` crashes in that period the count starts afresh, as after
  the pool host gives up; no attempt is given up here. Restart pacing runs on ``clock``
  (real time unless told, as on the pool host).
- **Containment.** Nothing the user's code raises, ``CancelledError`` and
  ``BaseException`` included, escapes the task: it becomes the attempt's outcome.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from herder.actors._action import run_attempt_async
from herder.actors._agent import Agent
from herder.actors._async_holder import Holder
from herder.actors._clock import Clock, SystemClock
from herder.actors._event_loop import GONE, IDLE, Attempt, EventLoop
from herder.actors._host import FAILED_START, GivenUp, InstanceCrash
from herder.actors._hosted import INSTANCE_BACKOFF, let_go
from herder.actors._messages import UNSTARTED, InstanceEvent, Outcome, Run
from herder.actors._queue import DEFAULT_AGING, JobQueue
from herder.actors._restarts import RestartWindow
from herder.actors._supervision_specs import ChildEventKind
from herder.actors.engine import CRASH_ERROR, UNBUILT_ERROR
from herder.store import UserCodeFailed, describe, error_types, get_logger

_log = get_logger("herder.asyncio")

UNRUN = "not started: the event loop given as Runtime(loop=) is closed (the next runtime runs it)"
"""The error of an attempt sent to the application's loop after it closed."""


@dataclass(slots=True)
class _Slot:
    token: int | None  # None: its attempt crashed the object; it waits out the backoff
    future: Any = None  # its Attempt (the task on the loop), once sent
    carried: int | None = None  # the token of the attempt ``carry`` holds it for


@dataclass(slots=True)
class _Agent:
    factory: Callable[[], Agent]
    concurrency: int
    queue: JobQueue[Any]
    holder: Holder
    slots: dict[str, _Slot] = field(default_factory=dict)
    idle_since: float = 0.0
    crashes: RestartWindow | None = None  # its crashes, from the first one on

    def running(self) -> list[int]:
        """Tokens of the attempts its slots serve (not those waiting out a backoff)."""
        return [slot.token for slot in self.slots.values() if slot.token is not None]


class AsyncHost:
    """The :class:`AgentHost` of ``async def`` agents on an event loop."""

    def __init__(
        self,
        loop: EventLoop,
        reply: Callable[[Outcome], None],
        events: Callable[[InstanceEvent], None],
        *,
        max_result_bytes: int,
        queue_aging: float = DEFAULT_AGING,
        max_restarts: int = 20,
        restart_period: float = 10.0,
        shutdown: float = 1.0,
        clock: Clock | None = None,
    ) -> None:
        self._loop, self._shutdown = loop, shutdown
        self._max_restarts, self._restart_period = max_restarts, restart_period
        self._clock = SystemClock() if clock is None else clock  # (module docstring)
        self._reply, self._events = reply, events
        self._max_result_bytes, self._queue_aging = max_result_bytes, queue_aging
        self._agents: dict[str, _Agent] = {}
        self._cancelled = 0
        # Built for a new Scheduler: the attempts its predecessor (crashed, or restarted
        # with the tree) left on the loop are superseded, their steps run again: their
        # tasks are cancelled, as the tree stops the other hosts' instances first.
        loop.supersede()

    def owns(self, name: str, instance_id: str) -> bool:
        """True if ``instance_id`` is a slot of this host's agent ``name``."""
        agent = self._agents.get(name)
        return agent is not None and instance_id in agent.slots

    # -- registration ------------------------------------------------------------------

    def add(self, name: str, factory: Callable[[], Agent], concurrency: int) -> None:
        """Register ``name`` (again: a new factory builds a new object)."""
        agent = self._agents.get(name)
        if agent is None:
            queue = JobQueue[Any](self._queue_aging)
            self._agents[name] = _Agent(factory, concurrency, queue, Holder(factory))
        else:
            agent.factory, agent.concurrency, agent.holder = factory, concurrency, Holder(factory)

    def remove(self, name: str) -> list[int]:
        """An attempt not sent yet (its DISPATCHED on its way) never starts: lost, as a
        :class:`GivenUp` (not charged); one running runs on."""
        agent = self._agents.get(name)
        if agent is None:
            return []
        agent.concurrency, agent.holder = 0, Holder(agent.factory)
        return [GivenUp(s.token) for s in agent.slots.values() if s.future is None and s.token]

    def forget(self, name: str) -> bool:
        """Drop ``name``'s record (its factory, its object) once it is removed and has
        no queued job and no attempt; True if this host holds no record of it now."""
        agent = self._agents.get(name)
        if agent is not None and not (agent.concurrency or agent.queue or agent.slots):
            del self._agents[name]
        return name not in self._agents

    def queue(self, name: str) -> JobQueue[Any] | None:
        agent = self._agents.get(name)
        return None if agent is None else agent.queue

    # -- capacity ----------------------------------------------------------------------

    def acquire(self, name: str, token: int, backlog: int = 1) -> str | None:
        agent = self._agents[name]
        if len(agent.slots) >= agent.concurrency:
            return None  # a release pumps this agent again
        if self._loop.gone:
            # Every attempt would be lost at once and its retries spent in a millisecond
            # (its workflow compensated for nothing): the steps wait instead, as behind
            # an agent that cannot run, until the runtime stops.
            self._loop.say(GONE)
            return None
        instance_id = f"{name}/aio{token}"
        agent.slots[instance_id] = _Slot(token)
        return instance_id

    def send(self, name: str, instance_id: str, run: Run) -> bool:
        agent = self._agents.get(name)
        slot = None if agent is None else agent.slots.get(instance_id)
        if agent is None or slot is None or slot.token != run.token:
            return False
        slot.future = self._loop.submit(self._attempt(agent.holder, run), lambda: self._lost(run))
        if slot.future is None and self._loop.gone:
            # The application's loop closed since acquire(): the attempt never ran, so it
            # answers unstarted (not charged; its retry waits in acquire). Lost instead,
            # it was charged, and a step on its last attempt compensated for nothing.
            self._loop.say(GONE)
            self._reply(
                Outcome(name, instance_id, run.token, ok=False, error=UNRUN, kind=UNSTARTED)
            )
        elif slot.future is None:  # the runtime stops: nothing can run here any more
            del agent.slots[instance_id]
            return False
        return True

    def release(self, name: str, instance_id: str, token: int | None, now: float) -> bool:
        agent = self._agents.get(name)
        slot = None if agent is None else agent.slots.get(instance_id)
        if agent is None or slot is None or (token is not None and slot.token != token):
            return False
        del agent.slots[instance_id]
        agent.idle_since = now
        return True

    def busy_tokens(self, name: str) -> list[int]:
        agent = self._agents.get(name)
        return [] if agent is None else agent.running()

    def replace_token(self, name: str, token: int) -> None:
        agent = self._agents.get(name)
        for instance_id, slot in ({} if agent is None else agent.slots).items():
            if slot.token == token:
                self.replace(name, instance_id)
                return

    def replace(self, name: str, instance_id: str) -> None:
        """Cancel the attempt's task (its late answer is fenced out); its slot serves again
        once the task has ended, or ``shutdown`` seconds on (the module docstring)."""
        agent = self._agents.get(name)
        slot = None if agent is None else agent.slots.get(instance_id)
        if agent is None or slot is None or slot.token is None:
            return  # (token None: cancelled already, or waiting out a crash's backoff)
        if slot.future is None:  # not sent: nothing runs, the slot is free now
            del agent.slots[instance_id]
            self._events(InstanceEvent(name, None, ChildEventKind.STARTED))  # pump it again
            return
        if slot.future.task is None and self._loop.idle:  # (its task never started)
            self._loop.say(IDLE)
        slot.token = None  # held, running nothing the Scheduler waits for
        self._hold(name, instance_id, slot.future.cancel)
        self._cancelled += 1

    def _hold(self, name: str, instance_id: str, ended: Callable[[Any], None]) -> None:
        """The slot serves again (``RESTARTED``) once the task has ended (``ended`` calls
        back then) or ``shutdown`` seconds on, whichever comes first."""
        events, event = self._events, InstanceEvent(name, instance_id, ChildEventKind.RESTARTED)
        ended(lambda: events(event))
        self._clock.call_later(self._shutdown, lambda: events(event))

    def runner(self, name: str, instance_id: str) -> Any:
        """The attempt (task) of ``instance_id``, once sent (actors/_carried.py)."""
        slot = self._agents[name].slots.get(instance_id) if name in self._agents else None
        return None if slot is None else slot.future

    def carry(self, name: str, instance_id: str, token: int, attempt: Any) -> bool:
        """Hold a slot of ``name`` for ``attempt``, which a previous Scheduler sent and this
        host's start cancelled (actors/_carried.py): as a replaced attempt's, until its
        task has ended or ``shutdown`` seconds on; one a thread runs (the agent moved here
        since) until its answer or its deadline. False if ``name`` is not served here."""
        agent = self._agents.get(name)
        if agent is None or instance_id in agent.slots:
            return False
        if not isinstance(attempt, Attempt):
            agent.slots[instance_id] = _Slot(token)  # (released by its answer: release())
            return True
        agent.slots[instance_id] = _Slot(None, attempt, token)
        self._hold(name, instance_id, attempt.then)
        return True

    # -- events ------------------------------------------------------------------------

    def on_event(self, event: InstanceEvent, now: float) -> list[int]:
        """An attempt crashed its object: it is lost, and its slot waits out its backoff;
        or a backoff is over (the module docstring)."""
        agent = self._agents.get(event.agent)
        instance_id = event.instance
        slot = None if agent is None or instance_id is None else agent.slots.get(instance_id)
        if agent is None or instance_id is None or slot is None:
            return []
        if event.kind is ChildEventKind.RESTARTED and slot.token is None:
            del agent.slots[instance_id]  # the slot serves again
            # A carried attempt ended (or its time is up): news for the step held back for
            # it (actors/_carried.py), as an attempt given up on, charged nothing.
            return [] if slot.carried is None else [GivenUp(slot.carried)]
        if event.kind is not ChildEventKind.CRASHED or slot.token is None:
            return []
        lost, slot.token, slot.future = [slot.token], None, None
        if agent.crashes is None:
            agent.crashes = RestartWindow(self._max_restarts, self._restart_period, self._clock)
        if agent.crashes.record():  # too many: start afresh, as the pool host does
            agent.crashes = None
            del agent.slots[instance_id]
            return lost
        events, name, restarted = self._events, event.agent, ChildEventKind.RESTARTED
        self._clock.call_later(
            INSTANCE_BACKOFF.delay(len(agent.crashes)),
            lambda: events(InstanceEvent(name, instance_id, restarted)),
        )
        return lost

    # -- passivation and stats ---------------------------------------------------------

    def passivate(self, idle_before: float, limit: int = 256) -> int:
        """Drop the objects of agents idle since ``idle_before`` (at most ``limit``)."""
        dropped = 0
        for agent in self._agents.values():
            if dropped >= limit:
                break
            idle = not agent.slots and agent.idle_since <= idle_before
            if idle and agent.holder.agent is not None:
                agent.holder = Holder(agent.factory)
                dropped += 1
        return dropped

    def stats(self) -> dict[str, dict[str, int]]:
        return {
            name: {
                "instances": len(agent.slots),  # attempts are the unit of concurrency here
                "busy": len(agent.running()),
                "queued": len(agent.queue),
            }
            for name, agent in self._agents.items()
        }

    def host_stats(self) -> dict[str, int]:
        """Attempts running on the loop, how many were cancelled (timed out, replaced),
        and how many of those run on regardless (``abandoned``: outside any slot)."""
        return {
            "asyncio_attempts": sum(len(agent.running()) for agent in self._agents.values()),
            "asyncio_cancelled": self._cancelled,
            "asyncio_abandoned": self._loop.abandoned(),
        }

    # -- on the loop -------------------------------------------------------------------

    def _lost(self, run: Run) -> None:
        """The attempt's task ended cancelled, before its action answered (replaced while
        another attempt built the object, or before it started): it says so, as a cancel
        that reaches the action does. Replaced, its answer is fenced out; cancelled by
        user code (a task that cancels the others), it is failed and retried, not lost
        (its step waited for ever, holding its place under ``concurrency``)."""
        cancelled = asyncio.CancelledError()
        error, types = describe(cancelled), error_types(cancelled)
        self._reply(
            Outcome(run.agent, run.instance, run.token, ok=False, error=error, error_types=types)
        )

    async def _attempt(self, holder: Holder, run: Run) -> None:
        """One attempt as a task: build the object if needed, run, report."""
        try:
            agent = await holder.get()
        except UserCodeFailed as failed:
            # As a factory failing on the thread hosts (a failed start): the attempt
            # fails under its step's retry policy, after its backoff. Lost instead, it was
            # retried at once, and a factory failing for a moment spent every attempt of
            # every step waiting for it within milliseconds.
            error = f"{FAILED_START.format(run.agent)}: {failed.error}"
            types = (UNBUILT_ERROR, CRASH_ERROR)  # (it never ran: nothing to undo)
            self._reply(
                Outcome(
                    run.agent, run.instance, run.token, ok=False, error=error, error_types=types
                )
            )
            return
        try:
            outcome = await run_attempt_async(
                agent, run.agent, run.instance, run, self._max_result_bytes
            )
        except InstanceCrash as crash:  # the object broke: the next attempt builds anew
            crashed: str | None = str(crash)
            if holder.agent is agent:
                holder.agent = None
        else:
            crashed = None
        # Never dropped here, on the loop (its __del__ is user code): its holder drops it
        # off the loop once let go (added again); crashed, it goes now.
        if holder.agent is agent:
            agent = None
        else:
            box, agent = [agent], None
            let_go(box)
        if crashed is None:
            self._reply(outcome)
        else:
            kind = ChildEventKind.CRASHED
            self._events(InstanceEvent(run.agent, run.instance, kind, None, crashed))
