"""Time as an injectable dependency.

Every actor takes a :class:`Clock` instead of calling :mod:`time` directly, so tests run
time-dependent behaviour (timeouts, backoff, restart intensity) instantly and
deterministically with :class:`FakeClock`.

``monotonic()`` measures intervals (timeouts, intensity windows); ``time()`` is wall-clock
seconds for deadlines that are persisted and must survive a restart; ``call_later`` runs a
callback once after a delay. Callbacks run on the clock's own thread (or, for the fake
clock, on the thread that advances it), so they must be short: typically an actor ``tell``.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable
from typing import Protocol

_log = logging.getLogger("herder.clock")


class TimerHandle:
    """A scheduled callback; :meth:`cancel` stops it from running if it has not yet."""

    __slots__ = ("_callback", "cancelled", "when")

    def __init__(self, when: float, callback: Callable[[], None]) -> None:
        self.when = when
        self._callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        """Prevent the callback from running. Safe to call more than once."""
        self.cancelled = True

    def _run(self) -> None:
        if self.cancelled:
            return
        try:
            self._callback()
        except Exception:
            # A timer callback has no caller to report to; log so the failure is seen.
            _log.exception("timer callback %r failed", self._callback)


class Clock(Protocol):
    """What herder needs from time."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes backwards (for intervals)."""
        ...

    def time(self) -> float:
        """Wall-clock seconds since the epoch (for persisted deadlines)."""
        ...

    def call_later(self, delay: float, callback: Callable[[], None]) -> TimerHandle:
        """Run ``callback`` once, ``delay`` seconds from now."""
        ...


class _TimerQueue:
    """A heap of timer handles ordered by due time, ties broken by insertion order."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, TimerHandle]] = []
        self._seq = itertools.count()

    def push(self, handle: TimerHandle) -> None:
        heapq.heappush(self._heap, (handle.when, next(self._seq), handle))

    def next_due(self) -> float | None:
        while self._heap and self._heap[0][2].cancelled:
            heapq.heappop(self._heap)
        return self._heap[0][0] if self._heap else None

    def pop(self) -> TimerHandle:
        return heapq.heappop(self._heap)[2]


class SystemClock:
    """The real clock. Timers run on one lazily started daemon thread, which ends after
    ``idle_exit`` seconds with nothing scheduled (so clocks of stopped runtimes leave no
    thread behind) and is started again by the next :meth:`call_later`."""

    def __init__(self, idle_exit: float = 1.0) -> None:
        self._queue = _TimerQueue()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._idle_exit = idle_exit

    def monotonic(self) -> float:
        """Seconds from :func:`time.monotonic`."""
        return time.monotonic()

    def time(self) -> float:
        """Seconds from :func:`time.time`."""
        return time.time()

    def call_later(self, delay: float, callback: Callable[[], None]) -> TimerHandle:
        """Run ``callback`` on the timer thread after ``delay`` seconds."""
        handle = TimerHandle(time.monotonic() + max(0.0, delay), callback)
        with self._cond:
            self._queue.push(handle)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="herder-timers", daemon=True)
                self._thread.start()
            self._cond.notify()
        return handle

    def _run(self) -> None:
        while True:
            with self._cond:
                due = self._queue.next_due()
                now = time.monotonic()
                if due is None:
                    if not self._cond.wait(self._idle_exit) and self._queue.next_due() is None:
                        self._thread = None  # under the lock: call_later starts a new one
                        return
                    continue
                if due > now:
                    self._cond.wait(due - now)
                    continue
                handle = self._queue.pop()
            handle._run()


class FakeClock:
    """A clock that moves only when told to.

    ``advance(seconds)`` moves time forward and runs every timer that falls due, in due
    order, on the calling thread, with ``monotonic()`` and ``time()`` reading each timer's
    due time while it runs.
    """

    def __init__(self, start: float = 1_000_000.0) -> None:
        self._now = start
        self._queue = _TimerQueue()
        self._lock = threading.RLock()

    def monotonic(self) -> float:
        """The fake current time."""
        return self._now

    def time(self) -> float:
        """The fake current time (the same scale as :meth:`monotonic`)."""
        return self._now

    def call_later(self, delay: float, callback: Callable[[], None]) -> TimerHandle:
        """Schedule ``callback`` to run when the clock is advanced past ``now + delay``."""
        with self._lock:
            handle = TimerHandle(self._now + max(0.0, delay), callback)
            self._queue.push(handle)
        return handle

    def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds``, running the timers that fall due."""
        if seconds < 0:
            raise ValueError(f"a clock cannot go backwards: advance({seconds})")
        target = self._now + seconds
        while True:
            with self._lock:
                due = self._queue.next_due()
                if due is None or due > target:
                    break
                handle = self._queue.pop()
                self._now = max(self._now, handle.when)
            handle._run()
        with self._lock:
            self._now = max(self._now, target)

    def pending(self) -> int:
        """How many timers are scheduled and not cancelled."""
        with self._lock:
            return sum(1 for _, _, h in self._queue._heap if not h.cancelled)
