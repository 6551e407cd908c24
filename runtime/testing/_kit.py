"""The testing kit's helpers: an idempotent fake service, fault helpers for actions, and
waits on a live runtime driven by the commits it makes (never by sleeping)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, NoReturn

from herder.actors import (
    INSTANCE_BACKOFF,
    FakeClock,
    InstanceCrash,
    Permanent,
    StepContext,
    WrongThread,
    advance_seconds,
)
from herder.runtime._runtime import Runtime
from herder.runtime._seams import given
from herder.runtime._waits import wait_limit
from herder.runtime.testing._threads import all_wait
from herder.store import InvalidInput, Store, TimedOut, timer_upper_bound


class EffectLedger:
    """A fake remote service that deduplicates requests by idempotency key.

    ``apply(key, value)`` records the effect the first time a key is seen and returns the
    stored value every time (as a real idempotent API would); ``requests`` counts every
    ``apply`` per key and ``undo_requests`` every ``undo`` (apart: an undo counted under
    ``"undo:<key>"`` was taken for an apply of a key that starts so), ``effects`` holds
    what was applied, ``undone`` what was compensated. Thread-safe.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.effects: dict[str, Any] = {}
        self.undone: list[str] = []
        self.requests: Counter[str] = Counter()
        self.undo_requests: Counter[str] = Counter()
        self.order: list[str] = []

    def apply(self, key: str, value: Any = True) -> Any:
        """Apply an effect once per key; later calls with the key return the first value."""
        with self._lock:
            self.requests[key] += 1
            if key not in self.effects:
                self.effects[key] = value
                self.order.append(key)
            return self.effects[key]

    def undo(self, key: str) -> None:
        """Compensate the effect recorded under ``key`` (idempotent too)."""
        with self._lock:
            self.undo_requests[key] += 1
            if key in self.effects and key not in self.undone:
                self.undone.append(key)

    @property
    def absorbed(self) -> int:
        """Requests the service deduplicated (retries that reached it more than once)."""
        with self._lock:
            return sum(n - 1 for n in self.requests.values())


def fail_first(ctx: StepContext, attempts: int, error: str = "injected transient failure") -> None:
    """Raise a transient error while ``ctx.attempt <= attempts``."""
    if ctx.attempt <= attempts:
        raise RuntimeError(f"{error} (attempt {ctx.attempt})")


def hang_until(event: threading.Event, timeout: float = 60.0) -> None:
    """Block the action until ``event`` is set (simulates a remote call that hangs).

    Not in an ``async def`` action: it would block the event loop every one of them runs
    on (the attempt's timeout could not cancel it); it raises :class:`Permanent` there,
    saying to await an :class:`asyncio.Event` instead: the step fails for good (a retry
    would only raise it again, and nothing took effect), as for an action that is not
    there."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        event.wait(timeout)
        return
    raise Permanent(
        "hang_until blocks its thread, here the event loop every async def action runs on: "
        "in an async def action, await an asyncio.Event (asyncio.wait_for(event.wait(), "
        "timeout)) to hang it"
    )


def crash_instance(reason: str = "injected instance crash") -> NoReturn:
    """Crash the agent instance running this action (not just fail the step)."""
    raise InstanceCrash(reason)


def fail_permanently(reason: str = "injected permanent failure") -> NoReturn:
    """Fail the step without retries."""
    raise Permanent(reason)


class _Commits:
    """Counts the runtime's durable commits while open, to wait for the next one (the
    runtime signals each committed batch: event-driven, not polling); a stop or failure
    of the runtime counts too, so that a waiter wakes to it."""

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime
        self._changed = threading.Condition()
        self._count = 0

    def __enter__(self) -> _Commits:
        self._runtime._listener.commit_waiters.append(self._committed)
        if not self._runtime._wake.subscribe(self._committed):
            self._committed()  # (it stopped meanwhile: look again now)
        return self

    def __exit__(self, *_: object) -> None:
        self._runtime._listener.commit_waiters.remove(self._committed)
        self._runtime._wake.unsubscribe(self._committed)

    def _committed(self) -> None:
        with self._changed:
            self._count += 1
            self._changed.notify_all()

    def seen(self) -> int:
        with self._changed:
            return self._count

    def wait(self, seen: int, until: float) -> bool:
        """Wait for a commit after ``seen`` until ``until`` (``time.monotonic()``): False
        if none came by then."""
        with self._changed:
            while self._count == seen:
                remaining = until - time.monotonic()
                if remaining <= 0:
                    return False
                self._changed.wait(remaining)
            return True


def wait_until(
    runtime: Runtime, predicate: Callable[[], bool], timeout: float | None = 10.0
) -> None:
    """Block until ``predicate()`` is true, re-checking after every durable commit.

    Event-driven, not polling: the runtime signals each committed batch. Raises
    :class:`TimedOut` if ``timeout`` real seconds pass first (the predicate is
    asked once more then; None: no limit), :class:`RuntimeClosed` if the runtime is
    stopped or fails (before or while it waits), :class:`InvalidInput` for a ``timeout``
    that is no number of seconds >= 0, :class:`WrongThread` on the thread of the event
    loop the runtime's ``async def`` actions run on (as :func:`settle` and
    :func:`advance` do).
    """
    given(runtime, "wait_until()")
    limit = wait_limit(timeout)
    runtime._check_open()
    _off_loop(runtime, "wait_until()")
    deadline = time.monotonic() + limit
    with _Commits(runtime) as commits:
        while True:
            seen = commits.seen()
            # Outside the lock: the predicate may ask the runtime, whose Scheduler
            # calls committed() and must never wait for this thread.
            if predicate():
                return
            runtime._check_open()  # (stopped, or failed, while it waited)
            if not commits.wait(seen, deadline):
                if predicate():  # (it may have come true with no commit after it)
                    return
                raise TimedOut(
                    f"condition not reached within {timeout}s (it is asked after each "
                    "commit of the runtime: wait on an event for one that comes true "
                    "without a commit, such as an action's side effect)"
                )


def _off_loop(runtime: Runtime, what: str) -> None:
    """:class:`WrongThread` on the thread of the event loop the runtime's ``async def``
    actions run on: a wait there blocks them, so what it waits for could never come."""
    if runtime._ctx.event_loop.runs_here():
        raise WrongThread(
            f"{what} blocks its thread, and this one runs the event loop of the runtime's "
            "async def actions: they could not run meanwhile; call it on another thread "
            f"(await asyncio.to_thread({what[:-2]}, rt, ...))"
        )


HELD = 0.1
"""Real seconds in which attempts that run or wait for one must move on (one end, or
one start), else :func:`settle` takes them as held by the test (a hung action, say),
once no thread of the runtime's runs or is ready to (:func:`all_wait`). While no
instance runs one and no health check runs, an instance may be waiting out a crash's
backoff (no thread runs then): ``INSTANCE_BACKOFF.max`` longer."""


def settle(runtime: Runtime) -> None:
    """Wait until the runtime handled the messages and commits already in flight, and
    the attempts running or waiting for them (queued behind them in their agent, in the
    pool's line for a worker, reserved ahead) or for their agent's instance (starting,
    or restarting after a crash) have run and been recorded, and the agents' health
    checks running have given their verdicts.

    Woken by each commit. Attempts that make no progress for :data:`HELD` real seconds
    while every thread of the runtime's waits are held by the test (an action that waits
    for its event): settle returns with them still running. An action that computes, or
    a thread a loaded machine leaves unscheduled, is waited for. Raises
    :class:`TimedOut` if attempts keep moving for the runtime's ``ask_timeout``;
    :class:`NotActive` on a standby (it has no Scheduler yet) and while a Scheduler that
    crashed is being replaced (call again once it runs), :class:`RuntimeClosed` on a
    stopped runtime."""
    given(runtime, "settle()")
    runtime._check_active()  # (a standby has no Scheduler to settle)
    _off_loop(runtime, "settle()")
    deadline = time.monotonic() + runtime._ask_timeout
    with _Commits(runtime) as commits:
        moving: tuple[int, ...] | None = None
        since = time.monotonic()
        while True:
            seen = commits.seen()
            waiting = all_wait()  # (read before the runtime is asked: it answers on threads)
            busy = _attempts(runtime)
            if busy is None:  # (one that answered in it is ended, its commit to come)
                busy = _attempts(runtime)
            if busy is None:
                return
            now = time.monotonic()
            held = HELD if busy[3] or busy[4] else HELD + INSTANCE_BACKOFF.max  # (HELD)
            if busy != moving:
                moving, since = busy, now
            elif now - since >= held and waiting:
                return  # held: they move on once the test lets them (or advance times out)
            if now >= deadline:
                running, line, queued, checks = busy[:4]
                raise TimedOut(
                    f"attempts still moving after {runtime._ask_timeout}s (ask_timeout): "
                    f"{running} running, {line} in the pool's line for a worker, {queued} "
                    f"queued in their agents, {checks} health checks running; an action "
                    "(or a check) that computes this long needs Runtime(ask_timeout=) "
                    "longer, one your test holds waits on an event"
                )
            # (unmoved for HELD, a thread still runs: look again a little later)
            commits.wait(seen, min(max(since + held, now + HELD / 4), deadline))


def _attempts(runtime: Runtime) -> tuple[int, ...] | None:
    """Once the messages and commits in flight are handled: None if no attempt runs,
    waits for a worker or for its agent's instance and no health check runs; else what
    changes as they move on, and (5th) how many instances run an attempt."""
    runtime._settle()  # (a crashed Scheduler being replaced: NotActive)
    stats = runtime._ask_scheduler("stats")
    line = stats["host"].get("line", 0)
    # Queued in their agents, but for those held for the clock (a rate limit, a breaker's
    # cool-down, a failed health check until the next) or removed (until add_agent): if
    # none of theirs runs, their instance is starting or waits out a crash's backoff.
    resources = stats["resources"].items()
    clocked = {n for n, gate in resources if "wake_in" in gate or gate.get("healthy") is False}
    clocked |= stats["agents"].keys() - runtime._ctx.agents.keys()
    queued = sum(row["queued"] for name, row in stats["agents"].items() if name not in clocked)
    checks = runtime._ctx.health.pending()[0]  # (a verdict may free work, or hold it)
    if not (stats["in_flight_attempts"] or line or queued or checks):
        return None
    running = sum(row["busy"] for row in stats["agents"].values())
    moved = [stats[k] for k in ("dispatched", "succeeded", "failed", "retried", "timed_out")]
    return (stats["in_flight_attempts"], line, queued, checks, running, *moved, stats["stale"])


MAX_STOPS = 10_000
"""At most this many stops in one :func:`advance` (then it jumps to its end)."""


def advance(runtime: Runtime, clock: FakeClock, seconds: float) -> None:
    """Move ``clock`` forward and let the runtime react to the timers that fell due.

    It stops at each durable timer (a retry's backoff, a step's timeout, a delayed
    start), schedule slot, wake-up of an agent's gate and health check that may free an
    unhealthy agent's work on the way, and lets the runtime react there, so a timer
    armed by that reaction (the next backoff, the next slot) falls due within the same
    advance, as it would in real time. A timer or slot already due when it begins (a
    jump with ``clock.advance()``, a wall step) is reacted to first."""
    given(runtime, "advance()")
    number = advance_seconds(seconds)
    if clock is not runtime._clock or not isinstance(clock, FakeClock):
        why = "this one is not it" if clock is not runtime._clock else "this runtime has none"
        raise InvalidInput(
            "advance() moves the runtime's own clock: pass the FakeClock given to "
            f"Runtime(path, clock=FakeClock()); {why}, so nothing would fall due"
        )
    # A timer that fell due before this advance (a clock.advance() jump, a sweep not yet
    # run) is reacted to here, before the clock moves: what that arms counts from now.
    # Likewise a slot (a wall step, a jump): else it fired only at the first stop, with
    # the next slot, which found it running (overlap "skip").
    runtime._check_active()
    _off_loop(runtime, "advance()")
    fresh = _react(runtime, clock, sweep=False)
    end = clock.monotonic() + number
    for stops in range(1, MAX_STOPS + 1):
        now = clock.monotonic()
        due = None if stops == MAX_STOPS else _next_due(runtime, clock, end)
        if fresh:  # (a timer due already, armed at the last stop: 1 ms on, its resolution)
            due = min(end if due is None else due, now + 0.001)
        stop = end if due is None or due <= now else due  # (due now: not taken, jump)
        clock.advance(stop - now)
        # The periodic sweep may or may not have re-armed its timer in time to fire
        # inside this advance; one explicit sweep here makes the outcome deterministic.
        fresh = _react(runtime, clock)
        if stop >= end:
            return


def _react(runtime: Runtime, clock: FakeClock, *, sweep: bool = True) -> bool:
    """Sweep the timers due (``sweep``, or any due), fire the schedules' due slots
    (:func:`_fire_due`) and settle. True if that left due a timer that was not before:
    one armed due already (a backoff under 1 ms), which has no stop of its own."""
    before = _overdue(runtime)
    if sweep or before:
        runtime._sweep_now()
    _fire_due(runtime, clock)
    settle(runtime)
    after = _overdue(runtime)
    return bool(after) and after != before


def _fire_due(runtime: Runtime, clock: FakeClock) -> None:
    """Fire the schedules' due slots, all of them: a pass fires up to 100 of a catch-up
    (``catch_up="all"``) and arms the next pass at once, on a timer that a FakeClock runs
    only when it moves. So pass again while a due slot moves on (a queued one waits)."""
    seen = None
    while True:
        runtime._fire_now()
        wall = clock.time()
        due = [(name, at) for name, at in runtime._next_slots().items() if at <= wall]
        if not due or due == seen:
            return
        seen = due


def _overdue(runtime: Runtime) -> list[tuple[int, str, str, Any]]:
    """The durable timers due by the engine's clock now (not yet swept), 16 at most."""
    now_ms = int(runtime._ctx.clock.time() * 1000)
    return runtime._store.due_timers(now_ms, limit=16, corrupt=[])


def _next_due(runtime: Runtime, clock: FakeClock, end: float) -> float | None:
    """The ``clock.monotonic()`` time just past the next durable timer, schedule slot,
    gate's wake-up or health check that may free work due by ``end``, if any (the
    timers are on the engine's clock, the slots on the wall's; just past: 1 ms, their
    resolution, so that float sums land on their side)."""
    now = clock.monotonic()
    engine_now = runtime._ctx.clock.time()
    until_ms = int((engine_now + end - now) * 1000)
    # Only timers due after now: one due already that the runtime left in place (a
    # batch entry replaced with the next flush, say) is no stop.
    later = timer_upper_bound(int(engine_now * 1000))
    timers = runtime._store.due_timers(until_ms, limit=1, after=later, corrupt=[])
    found = [now + (due_ms + 1) / 1000 - engine_now for due_ms, *_ in timers]
    wall = clock.time()
    found += [  # (not a slot queued behind another)
        now + at + 0.001 - wall for at in runtime._next_slots().values() if at > wall
    ]
    # And the wake-ups of agents' gates (a rate limit's next token, a breaker's
    # cool-down): in memory, armed by the Scheduler as it holds work back, not in the store.
    resources = runtime._ask_scheduler("stats")["resources"]
    found += [now + gate["wake_in"] + 0.001 for gate in resources.values() if "wake_in" in gate]
    # And the next check of an unhealthy agent (the work it holds may go on), or the
    # timeout of a check running: on the runtime's monotonic clock, which is ``clock``'s.
    checks_at = runtime._ctx.health.pending()[1]
    if checks_at is not None and checks_at > now:
        found.append(checks_at + 0.001)
    due = min(found, default=None)
    return None if due is None or due > end else due


def store_of(runtime: Runtime) -> Store:
    """The runtime's open store, to check it (``check_store(store_of(rt))``) or read it in
    a test; its reads are thread-safe. Write only through the runtime."""
    given(runtime, "store_of()")
    return runtime._store
