"""A supervisor's restart rules: whether a child that exited is restarted, which children
restart with it, how soon, and when the supervisor gives up.

Decisions only, over plain data: the supervisor actor (``_supervision``) starts and stops
the threads. Restart type x exit reason says *whether* (:func:`restarted`), the strategy
says *which* (:func:`restart_group`), and :class:`Intensity` says *when*: the backoff
delay, and a sliding window of restart times on ``clock.monotonic()`` that, past
``max_restarts`` within ``period`` seconds, makes the supervisor give up.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pykka

from herder.actors._errors import RestartIntensityExceeded
from herder.actors._supervision_specs import Backoff, ChildSpec, Restart, Strategy

if TYPE_CHECKING:
    from herder.actors._clock import Clock

# Whether a child is restarted: (restart type, crashed?) -> restart?
_RESTART: dict[tuple[Restart, bool], bool] = {
    (Restart.PERMANENT, True): True,
    (Restart.PERMANENT, False): True,
    (Restart.TRANSIENT, True): True,
    (Restart.TRANSIENT, False): False,
    (Restart.TEMPORARY, True): False,
    (Restart.TEMPORARY, False): False,
}


def restarted(restart: Restart, *, crashed: bool) -> bool:
    """Whether a child of this restart type is restarted after it exited (or crashed)."""
    return _RESTART[(restart, crashed)]


def forgotten(restart: Restart, strategy: Strategy) -> bool:
    """Whether a child that exited and is not restarted is forgotten (its spec dropped):
    a temporary child, and any child of a simple_one_for_one pool."""
    return restart is Restart.TEMPORARY or strategy is Strategy.SIMPLE_ONE_FOR_ONE


@dataclass(eq=False, slots=True)
class Child:
    """A supervisor's record of one child."""

    spec: ChildSpec
    ref: pykka.ActorRef[Any] | None = None
    restarts: int = 0
    pending: int | None = None  # token of the scheduled restart, None if not waiting


def restart_group(strategy: Strategy, children: Sequence[Child], child: Child) -> list[Child]:
    """The children to restart (in start order) when ``child`` died or failed to restart:
    every child of its group, running or not (OTP starts each non-temporary child of the
    group; a temporary one in it is running, and is stopped)."""
    if strategy in (Strategy.ONE_FOR_ONE, Strategy.SIMPLE_ONE_FOR_ONE):
        return [child]
    order = list(children)
    if strategy is Strategy.REST_FOR_ONE:
        order = order[order.index(child) :]
    return order


class RestartWindow:
    """Restart intensity as OTP keeps it: the restart times within the last ``period``
    seconds of ``clock.monotonic()``."""

    __slots__ = ("_clock", "_max_restarts", "_period", "_times")

    def __init__(self, max_restarts: int, period: float, clock: Clock) -> None:
        self._max_restarts = max_restarts
        self._period = period
        self._clock = clock
        self._times: deque[float] = deque()

    def record(self) -> bool:
        """Count one restart now; True if that makes more than ``max_restarts`` within
        ``period`` (the intensity is exceeded: give up)."""
        now = self._clock.monotonic()
        times = self._times
        times.append(now)
        while times and times[0] < now - self._period:
            times.popleft()
        return len(times) > self._max_restarts

    def __len__(self) -> int:
        """Restarts in the window as of the last :meth:`record`."""
        return len(self._times)


class Intensity:
    """How many restarts and how soon: the window, the backoff, and the tokens that tell
    one scheduled group restart from a later one."""

    __slots__ = ("_backoff", "_tokens", "period", "window")

    def __init__(
        self, max_restarts: int, period: float, backoff: Backoff | None, clock: Clock
    ) -> None:
        self.period = period
        self.window = RestartWindow(max_restarts, period, clock)
        self._backoff = backoff
        self._tokens = itertools.count(1)

    def exceeded(self, supervisor: str, child_id: str) -> RestartIntensityExceeded | None:
        """Count one restart (of ``child_id``) now; the error to give up with, if this one
        is one too many."""
        if not self.window.record():
            return None
        return RestartIntensityExceeded(supervisor, child_id, len(self.window), self.period)

    def delay(self) -> float:
        """Seconds to wait before the next restart (the backoff; 0 without one)."""
        return 0.0 if self._backoff is None else self._backoff.delay(len(self.window))

    def pend(self, children: Sequence[Child]) -> int:
        """Mark ``children`` as waiting for one new scheduled restart; its token."""
        token = next(self._tokens)
        for child in children:
            child.pending = token
        return token
