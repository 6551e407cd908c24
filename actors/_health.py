"""Agent health checks: the Supervisor asks each agent that defines ``health(self)``.

An agent class may define ``health(self)``: it returns (healthy) or raises (unhealthy);
``Runtime.add_agent(..., health_interval=, health_timeout=)`` says how often it runs and
how long it may take. The Supervisor's sweep calls :meth:`AgentHealth.on_sweep`, which
starts each check that is due on its own daemon thread (at most :data:`MAX_CHECKS` at
once), on an instance built by the agent's factory for checks alone, so a check never
waits behind the agent's work and never holds the Supervisor. A check that has not
returned ``timeout`` seconds (on the runtime's clock) after it started counts as failed;
its thread is left to finish (threads cannot be killed), its late answer is ignored, its
instance is dropped, and no new check of that agent starts while it still runs.

An unhealthy agent takes no new work: :class:`herder.actors._admission.Admission` holds
its steps in their queue as behind an open breaker (no attempt spent, no timeout running)
until a check passes; the passing check wakes the Scheduler to pump the agent again. A
verdict that changes wakes it too: the queued jobs of a group step (``AnyOf``) move off a
member that turned unhealthy, or onto one that healed (``actors/_dispatch.py``).
Health is live state, not stored: after a restart an agent counts as healthy until its
first check says otherwise. An agent removed while unhealthy and added again (with
checks) stays unhealthy until a check passes: only a check heals (its verdict is kept
for :data:`KEPT` removed agents at most, the oldest forgotten first). A factory that
hides its class (``hidden``) gives no verdict until an instance it built shows a
``health``: a factory that fails or hangs then holds nothing (its attempts meet the
same failure, under their retry policy). Once one shows it, nothing more is reserved
ahead on the agent, as when its class is known.

``health`` is user code: whatever it raises (``BaseException`` included) is contained and
becomes the check's error. An ``async def health`` runs on the check thread, under the
same timeout (past it, it is cancelled: :meth:`Checker.cancel`), on an event loop of the
check instance's own (:class:`Checker`: one for the instance's life, so a client it
holds, opened by an ``async def`` factory or an earlier check, serves every check): the
runtime's loop, which runs an async agent's actions, never waits for it (and it does
not place an agent of plain ``def`` actions on that loop: ``coroutine_actions`` leaves
it out).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from herder.actors._checker import Checker
from herder.actors._clock import Clock
from herder.actors._hosted import let_go
from herder.actors._messages import Wake
from herder.store import (
    MAX_SECONDS,
    InvalidInput,
    UserCodeFailed,
    contain,
    get_logger,
    real_number,
    safe_repr,
)

_log = get_logger("herder.health")

DEFAULT_INTERVAL = 10.0
"""Seconds between two health checks of an agent that defines ``health`` (by default)."""
DEFAULT_TIMEOUT = 5.0
"""Seconds a check may take by default (at most the interval)."""
KEPT = 4096
"""Unhealthy agents removed whose verdict is kept for when they are added again."""
MAX_CHECKS = 64
"""Checks running at once at most (not one past its timeout); more wait their turn."""


@dataclass(frozen=True, slots=True)
class HealthPolicy:
    """How often an agent's ``health`` runs and how long one check may take."""

    interval: float = DEFAULT_INTERVAL
    timeout: float | None = None  # None: DEFAULT_TIMEOUT, at most the interval

    def __post_init__(self) -> None:
        for name, value in (("health_interval", self.interval), ("health_timeout", self.timeout)):
            if value is None and name == "health_timeout":
                continue
            number = real_number(value) if isinstance(value, int | float) else None
            if number is None or not 0 < number <= MAX_SECONDS:
                raise InvalidInput(
                    f"{name} must be a number of seconds > 0 and at most ten years (or None: "
                    f"{'no health checks' if name == 'health_interval' else 'the default'}), "
                    f"got {safe_repr(value):.80}"
                )

    @classmethod
    def of(cls, interval: float | None, timeout: float | None) -> HealthPolicy | None:
        """The policy of ``add_agent(health_interval=, health_timeout=)``; None (no checks)
        when ``interval`` is None. A bad ``timeout`` is refused then too: it would be
        found only once checks are turned on."""
        policy = cls(DEFAULT_INTERVAL if interval is None else interval, timeout)
        return None if interval is None else policy

    @property
    def limit(self) -> float:
        """The timeout of one check, in seconds."""
        return self.timeout if self.timeout is not None else min(DEFAULT_TIMEOUT, self.interval)


@dataclass(slots=True)
class _Watch:
    """One watched agent: its policy, the checker instance and the last verdict."""

    factory: Callable[[], object]
    policy: HealthPolicy
    due: float  # monotonic time of the next check
    healthy: bool = True
    error: str | None = None
    checks: int = 0
    failures: int = 0  # failed checks, ever
    checked_at: float | None = None  # wall time of the last verdict
    instance: Checker | None = None
    seq: int = 0  # the current check's number; a late answer of an older one is ignored
    running: threading.Thread | None = None
    started: float = 0.0  # monotonic start of the running check
    timed_out: bool = False
    queued: bool = False  # due, waiting for a free check slot (``AgentHealth._due``)
    waiters: list[threading.Event] = field(default_factory=list)
    # Its factory hides the class: whether it has a health() is known only once an
    # instance is built, and until then a factory that fails or hangs holds no work.
    hidden: bool = False


class AgentHealth:
    """The health of every watched agent; thread-safe (Supervisor, check threads and the
    Scheduler's admission all use it).

    ``clock()`` returns the runtime's current clock (it is replaced when a runtime takes
    the lease); ``tell(message)`` delivers a hint to the Scheduler.
    """

    def __init__(self, clock: Callable[[], Clock], tell: Callable[[Any], None]) -> None:
        self._clock = clock
        self._tell = tell
        self._lock = threading.Lock()
        self._watches: dict[str, _Watch] = {}
        self._removed: dict[str, _Watch] = {}  # removed while unhealthy: their verdicts
        self._due: deque[str] = deque()  # agents whose check waits for a slot
        self._slots: set[threading.Thread] = set()  # checks running (MAX_CHECKS at most)
        # The watched agents, a live read-only view for lock-free membership tests (the
        # dispatcher's pump, per step: no call, no lock).
        self.watching: Mapping[str, object] = MappingProxyType(self._watches)

    def watch(
        self,
        agent: str,
        factory: Callable[[], object],
        policy: HealthPolicy,
        *,
        hidden: bool = False,
    ) -> None:
        """Check ``agent`` by ``policy`` (the first check runs at the next sweep);
        ``hidden``: its factory hides the class, which may have no ``health`` at all."""
        with self._lock:
            old = self._watches.get(agent) or self._removed.pop(agent, None)
            watch = _Watch(factory, policy, due=self._clock().monotonic(), hidden=hidden)
            if old is not None:  # keep the verdict: re-registering heals nothing
                watch.healthy, watch.error = old.healthy, old.error
                watch.checks, watch.failures = old.checks, old.failures
                watch.running, watch.started, watch.seq = old.running, old.started, old.seq
                watch.timed_out = old.timed_out  # (a hung check fails once)
                watch.waiters = old.waiters
            self._watches[agent] = watch

    def unwatch(self, agent: str) -> None:
        """Stop checking ``agent``; its steps are no longer held for its health. The
        verdict of one removed unhealthy is kept (its factory let go) for a ``watch``
        that adds it again; ``unwatch`` of an agent not watched forgets it."""
        checker: list[object] = []  # (dropped off this thread: its __del__ is user code)
        with self._lock:
            watch = self._watches.pop(agent, None)
            self._removed.pop(agent, None)
            if watch is not None and watch.running is not None:
                self._slots.discard(watch.running)  # (its end is nobody's news now)
            if watch is not None and not watch.healthy:
                checker.append(watch.instance)
                watch.factory, watch.instance = _gone, None
                self._removed[agent] = watch
                if len(self._removed) > KEPT:
                    del self._removed[next(iter(self._removed))]
        let_go(checker)
        if watch is not None and not watch.healthy:
            self._tell(Wake(agent))

    def watched(self, agent: str) -> bool:
        """True when ``agent`` has health checks."""
        return agent in self._watches

    def declared(self, agent: str) -> bool:
        """True when ``agent``'s class is known to define ``health`` (its factory does not
        hide the class)."""
        watch = self._watches.get(agent)
        return watch is not None and not watch.hidden

    def healthy(self, agent: str) -> bool:
        """False while ``agent``'s last check failed (unwatched agents are healthy)."""
        watch = self._watches.get(agent)
        return watch is None or watch.healthy

    def stats(self, agent: str) -> dict[str, Any] | None:
        """``healthy``, ``health_error``, ``health_checks``, ``health_failures`` and
        ``health_checked_at`` of a watched agent, else None."""
        with self._lock:
            watch = self._watches.get(agent)
            if watch is None:
                return None
            return {
                "healthy": watch.healthy,
                "health_error": watch.error,
                "health_checks": watch.checks,
                "health_failures": watch.failures,
                "health_checked_at": watch.checked_at,
            }

    def abandoned(self) -> int:
        """Check threads still running past their timeout (in ``health`` or a factory that
        hangs): counted in ``stats()["host"]["abandoned_threads"]`` until they return."""
        with self._lock:
            watches = [*self._watches.values(), *self._removed.values()]
        return sum(1 for w in watches if w.timed_out and w.running and w.running.is_alive())

    def pending(self) -> tuple[int, float | None]:
        """For the testing kit's ``settle`` and ``advance``: the checks running or waiting
        for a slot (verdicts to come), and the time (the runtime clock's ``monotonic()``)
        at which a sweep next changes what the checks hold, if any: the next check of an
        unhealthy agent (its work may go on then) or the timeout of one running."""
        times = []
        with self._lock:
            for watch in self._watches.values():
                if watch.running is not None and watch.running.is_alive():
                    if not watch.timed_out:
                        times.append(watch.started + watch.policy.limit)
                elif not watch.healthy:
                    times.append(watch.due)
            return len(self._slots) + len(self._due), min(times, default=None)

    def agents(self) -> list[str]:
        """The watched agents' names."""
        with self._lock:
            return sorted(self._watches)

    def checked(self, agent: str, count: int, timeout: float) -> bool:
        """Block until ``agent`` has had ``count`` verdicts (True) or ``timeout`` real
        seconds pass (False). For tests: a verdict commits nothing to wait on."""
        event = threading.Event()
        with self._lock:
            watch = self._watches.get(agent)
            if watch is None:
                return False
            if watch.checks >= count:
                return True
            watch.waiters.append(event)
        while event.wait(timeout):
            with self._lock:
                if watch.checks >= count:
                    return True
                if self._watches.get(agent) is not watch:
                    return False  # no longer watched
                event.clear()
                watch.waiters.append(event)
        return False

    def settle(self, timeout: float) -> bool:
        """Wait up to ``timeout`` real seconds for the checks running now to answer; True
        if they all did. For the simulation: a verdict commits nothing to wait on."""
        with self._lock:
            running = [w.running for w in self._watches.values() if w.running is not None]
        end = time.monotonic() + timeout
        for thread in running:
            thread.join(max(0.0, end - time.monotonic()))
        return not any(thread.is_alive() for thread in running)

    # -- the Supervisor's side ---------------------------------------------------------

    def on_sweep(self) -> None:
        """Start the checks that are due; fail those past their timeout. Runs on the
        Supervisor's thread and never waits for a check."""
        now = self._clock().monotonic()
        with self._lock:
            for agent, watch in self._watches.items():
                if watch.running is not None and watch.running.is_alive():
                    if not watch.timed_out and now - watch.started >= watch.policy.limit:
                        watch.timed_out = True
                        self._slots.discard(watch.running)  # abandoned: another may run
                        building = watch.instance is None
                        if watch.instance is not None:  # an async def health: cut it
                            watch.instance.cancel()
                        watch.instance = None  # its thread may be stuck in it
                        if not (building and watch.hidden):  # (health() unknown yet)
                            error = f"health check timed out after {watch.policy.limit:g}s"
                            self._verdict(agent, watch, ok=False, error=error)
                    continue
                if now >= watch.due and not watch.queued:
                    watch.queued = True
                    self._due.append(agent)
        self._start_due()

    def _start_due(self) -> None:
        """Start the checks waiting for a slot, while there is one (see MAX_CHECKS)."""
        starts = []
        with self._lock:
            now = self._clock().monotonic()
            while self._due and len(self._slots) < MAX_CHECKS:
                agent = self._due.popleft()
                watch = self._watches.get(agent)
                if watch is None or not watch.queued:
                    continue  # removed (or added again) meanwhile
                watch.seq += 1
                watch.due, watch.started = now + watch.policy.interval, now
                watch.timed_out = watch.queued = False
                args, name = (agent, watch, watch.seq), f"herder-health-{agent}"
                thread = threading.Thread(target=self._slot, args=args, name=name, daemon=True)
                watch.running = thread
                self._slots.add(thread)
                starts.append(thread)
        for thread in starts:
            thread.start()

    def _slot(self, agent: str, watch: _Watch, seq: int) -> None:
        """Run one check in its slot, then free the slot for the next one due."""
        try:
            self._check(agent, watch, seq)
        finally:
            with self._lock:
                self._slots.discard(threading.current_thread())
            self._start_due()

    def _check(self, agent: str, watch: _Watch, seq: int) -> None:
        """One check, on its own thread: build the checker if needed, call ``health``
        (an instance without one is not watched any more: it has nothing to check)."""
        error = None
        checker = watch.instance  # (held here until the check ends: see Checker)
        try:
            if checker is None:
                checker = Checker()
                try:
                    checker.obj = checker.finish(contain(watch.factory))  # (async def too)
                except UserCodeFailed:
                    if watch.hidden:
                        return  # no verdict: its attempts meet the failing factory
                    raise
                watch.instance = checker
            check = contain(getattr, checker.obj, "health", None)
            if callable(check):
                if watch.hidden:  # it has one: from now on a failing factory is sick,
                    watch.hidden = False  # and nothing is reserved ahead on the agent
                    self._tell(Wake(agent))
            else:
                # Its factory hid the class (a lambda): known only now that it has none.
                with self._lock:
                    if self._watches.get(agent) is watch:
                        del self._watches[agent]
                    for event in watch.waiters:
                        event.set()
                return
            checker.finish(contain(check))
        except UserCodeFailed as exc:
            error = exc.error
            watch.instance = None  # a failed resource may need a fresh client
        except BaseException as exc:
            error = f"{type(exc).__name__}: the health check could not run"
        with self._lock:
            if self._watches.get(agent) is not watch or watch.seq != seq or watch.timed_out:
                return  # superseded: re-registered, removed or timed out
            self._verdict(agent, watch, ok=error is None, error=error)

    def _verdict(self, agent: str, watch: _Watch, *, ok: bool, error: str | None) -> None:
        """Record a check's outcome (lock held); wake the Scheduler when it changes (it
        pumps a healed agent, and moves group jobs off a sick one or onto a healed one)."""
        was = watch.healthy
        watch.healthy, watch.error = ok, error
        watch.checks += 1
        watch.failures += 0 if ok else 1
        watch.checked_at = self._clock().time()
        if was and not ok:
            _log.warning("agent %s is unhealthy, holding its work: %s", agent, error)
        elif ok and not was:
            _log.info("agent %s is healthy again", agent)
        if ok != was:
            self._tell(Wake(agent))
        for event in watch.waiters:
            event.set()
        watch.waiters.clear()


def _gone() -> object:
    """The factory of a watch kept for its verdict alone (never called)."""
    raise AssertionError("the factory of an agent removed was called")
