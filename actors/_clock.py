"""Time as an injectable dependency.

Every actor takes a :class:`Clock` instead of calling :mod:`time` directly, so tests run
time-dependent behaviour (timeouts, backoff, restart intensity) instantly and
deterministically with :class:`FakeClock`.

``monotonic()`` measures intervals (timeouts, intensity windows); ``time()`` is wall-clock
seconds for deadlines that are persisted and must survive a restart; ``call_later`` runs a
callback once after a delay. Callbacks run on the clock's own thread (or, for the fake
clock, on the thread that advances it), so they must be short: typically an actor ``tell``.

The wall clock can step (an NTP correction, a VM resumed from a snapshot). So the engine
does not read it directly: a runtime runs on a :class:`SteadyClock` over the clock it was
given, whose ``time()`` is wall-clock seconds that advance with the monotonic clock and
drift back towards the wall clock by at most :data:`SLEW` of the elapsed time. A step
either way then neither stalls timeouts, backoffs and breakers nor fires every timer at
once. Persisted deadlines are re-based when a store is opened: the steady clock starts no
earlier than the last time the store's previous holder recorded (its lease's ``clock``).
"""

from __future__ import annotations

import heapq
import itertools
import math
import threading
import time
from collections.abc import Callable
from typing import Protocol

from herder.store import InvalidInput, get_logger, real_number

_log = get_logger("herder.clock")


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
                if due > now:  # (at most TIMEOUT_MAX: a wait of centuries overflows)
                    self._cond.wait(min(due - now, threading.TIMEOUT_MAX))
                    continue
                handle = self._queue.pop()
            handle._run()


SLEW = 0.05
"""How much faster or slower than the monotonic clock a :class:`SteadyClock` may run while
it converges on a wall clock that stepped (5%: a one-hour step is absorbed in 20 hours)."""


class SteadyClock:
    """Wall-clock seconds that follow ``clock``'s monotonic time (see the module doc).

    ``time()`` starts at ``max(clock.time(), floor)`` and then advances with
    ``clock.monotonic()``, at most ``slew`` faster or slower while the wall clock is
    ahead or behind; it never goes backwards. ``monotonic()`` and ``call_later`` are
    ``clock``'s own. Thread-safe.
    """

    def __init__(self, clock: Clock, *, floor: float = 0.0, slew: float = SLEW) -> None:
        self.clock = clock
        # The system clock's readings straight from the time module (no wrapper call:
        # the Scheduler reads this clock once per message).
        system = type(clock) is SystemClock
        self._read_mono = time.monotonic if system else clock.monotonic
        self._read_wall = time.time if system else clock.time
        self._slew = slew
        self._lock = threading.Lock()
        self._mono = clock.monotonic()
        self._now = max(clock.time(), floor)

    def monotonic(self) -> float:
        """``clock.monotonic()``."""
        return self.clock.monotonic()

    def time(self) -> float:
        """Seconds since the epoch, advancing with the monotonic clock (see the class doc)."""
        return self.read()[1]

    def read(self) -> tuple[float, float]:
        """``(monotonic(), time())`` at one instant, from one reading of the monotonic
        clock (:class:`MessageClock` takes both per message for the price of one)."""
        with self._lock:
            mono = self._read_mono()
            elapsed = mono - self._mono
            if elapsed > 0:
                self._mono = mono
                gap = self._read_wall() - (self._now + elapsed)  # > 0: the wall is ahead
                bound = self._slew * elapsed
                self._now += elapsed + max(-bound, min(bound, gap))
            return mono, self._now

    def call_later(self, delay: float, callback: Callable[[], None]) -> TimerHandle:
        """``clock.call_later``: delays are intervals, on the monotonic clock."""
        return self.clock.call_later(delay, callback)


class MessageClock:
    """An actor's view of ``clock``, read once per message: :meth:`tick` reads the time
    as a message arrives, and ``now`` (:meth:`time`) and ``mono`` (:meth:`monotonic`) are
    that instant until the next one, as if the message were handled at once (the
    Scheduler reads the time 5-6 times per step, and each read of a :class:`SteadyClock`
    takes its lock). A :class:`SteadyClock` gives both in one reading (``read``); the hot
    path reads the attributes, without a call. ``call_later`` is ``clock``'s own. Only
    the actor's own thread may use it."""

    __slots__ = ("_read", "clock", "mono", "now")

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        read = getattr(clock, "read", None)
        self._read: Callable[[], tuple[float, float]] = (
            read if read is not None else lambda: (clock.monotonic(), clock.time())
        )
        self.mono: float
        self.now: float
        self.mono, self.now = self._read()

    def tick(self) -> float:
        """Read the time for the message that just arrived."""
        self.mono, self.now = self._read()
        return self.now

    def time(self) -> float:
        """The time the current message arrived."""
        return self.now

    def monotonic(self) -> float:
        """``clock.monotonic()`` as the current message arrived."""
        return self.mono

    def call_later(self, delay: float, callback: Callable[[], None]) -> TimerHandle:
        """``clock.call_later``."""
        return self.clock.call_later(delay, callback)


class FakeClock:
    """A clock that moves only when told to.

    ``advance(seconds)`` moves time forward and runs every timer that falls due, in due
    order, on the calling thread, with ``monotonic()`` and ``time()`` reading each timer's
    due time while it runs. ``step_wall(seconds)`` moves only the wall clock, either way,
    as an NTP correction or a VM resumed from a snapshot does.
    """

    def __init__(self, start: float = 1_000_000.0) -> None:
        self._now = _finite(start, f"FakeClock(start={start!r}): a clock starts at a")
        self._wall_offset = 0.0
        self._queue = _TimerQueue()
        self._lock = threading.RLock()

    def monotonic(self) -> float:
        """The fake current time."""
        return self._now

    def time(self) -> float:
        """The fake wall-clock time: :meth:`monotonic` plus every :meth:`step_wall` so far."""
        return self._now + self._wall_offset

    def step_wall(self, seconds: float) -> None:
        """Step the wall clock by ``seconds`` (negative: back); monotonic time stays."""
        step = _finite(seconds, f"step_wall({seconds!r}): a clock steps by a")
        with self._lock:
            self._wall_offset += step

    def call_later(self, delay: float, callback: Callable[[], None]) -> TimerHandle:
        """Schedule ``callback`` to run when the clock is advanced past ``now + delay``."""
        with self._lock:
            handle = TimerHandle(self._now + max(0.0, delay), callback)
            self._queue.push(handle)
        return handle

    def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds``, running the timers that fall due."""
        target = self._now + advance_seconds(seconds)
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


def _finite(value: object, refusal: str) -> float:
    number = real_number(value)
    if number is None or not math.isfinite(number):
        raise InvalidInput(refusal + " finite number of seconds")
    return number


def advance_seconds(seconds: object) -> float:
    """``seconds`` a clock is advanced by, as a float: :class:`InvalidInput` unless it
    is a finite number >= 0 (NaN would run every timer without moving time, infinity
    move the clock to no time). ``FakeClock.advance`` and the testing kit's ``advance``."""
    number = real_number(seconds)
    if number is None or not 0 <= number < math.inf:  # (NaN is neither)
        raise InvalidInput(
            f"a clock cannot go backwards or to no time: advance({seconds!r}) takes a "
            "finite number of seconds >= 0"
        )
    return number
