"""The data of a supervision tree: child specs, flags, and what a supervisor reports.

Everything here is a frozen value validated once at construction, with messages that name
the bad field and value (in the spirit of OTP's ``check_childspecs``).
"""

from __future__ import annotations

import enum
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pykka

from herder.store import InvalidInput

if TYPE_CHECKING:
    from herder.actors._clock import Clock


class Restart(enum.StrEnum):
    """When a child is restarted after it exits (see the decision table in _supervision)."""

    PERMANENT = "permanent"  # always
    TRANSIENT = "transient"  # only after a crash, not after a normal stop
    TEMPORARY = "temporary"  # never; the child is removed when it exits


class Strategy(enum.StrEnum):
    """Which children a supervisor restarts when one of them dies."""

    ONE_FOR_ONE = "one_for_one"  # only the dead child
    ONE_FOR_ALL = "one_for_all"  # every child: stop the others, restart all in order
    REST_FOR_ONE = "rest_for_one"  # the dead child and the children started after it
    SIMPLE_ONE_FOR_ONE = "simple_one_for_one"  # a dynamic pool restarted like one_for_one


def _finite(field: str, value: object, *, minimum: float = 0.0, owner: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidInput(f"{owner}.{field} must be a number, got {value!r}")
    if not math.isfinite(value) or value < minimum:
        raise InvalidInput(f"{owner}.{field} must be a finite number >= {minimum}, got {value!r}")


def _coerce(enum_type: type[enum.StrEnum], field: str, value: object, owner: str) -> Any:
    if isinstance(value, str) and value in enum_type._value2member_map_:
        return enum_type(value)
    allowed = ", ".join(repr(m.value) for m in enum_type)
    raise InvalidInput(f"{owner}.{field} must be one of {allowed}, got {value!r}")


@dataclass(frozen=True)
class ChildSpec:
    """How to start one child and how to treat its exits.

    ``start`` is called on the supervisor's thread and must construct a
    :class:`~herder.actors.SupervisedActor` there (``SomeActor.start(...)`` or
    ``start_supervisor(...)``) and return its ref. ``shutdown`` is how many seconds a
    graceful stop may take before the child is abandoned (threads cannot be killed).
    """

    id: str
    start: Callable[[], pykka.ActorRef[Any]]
    restart: Restart = Restart.PERMANENT
    shutdown: float = 5.0

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not self.id:
            raise InvalidInput(f"ChildSpec.id must be a non-empty string, got {self.id!r}")
        if not callable(self.start):
            raise InvalidInput(
                f"ChildSpec.start of child {self.id!r} must be callable, got {self.start!r}"
            )
        object.__setattr__(self, "restart", _coerce(Restart, "restart", self.restart, "ChildSpec"))
        _finite("shutdown", self.shutdown, owner=f"ChildSpec({self.id!r})")


@dataclass(frozen=True)
class Backoff:
    """Exponential delay before restarts: the k-th restart within the intensity window
    waits ``min(max, initial * factor ** (k - 1))`` seconds (``initial=0`` makes the first
    restart immediate)."""

    initial: float = 0.01
    factor: float = 2.0
    max: float = 1.0

    def __post_init__(self) -> None:
        _finite("initial", self.initial, owner="Backoff")
        _finite("factor", self.factor, minimum=1.0, owner="Backoff")
        _finite("max", self.max, minimum=self.initial, owner="Backoff")

    def delay(self, k: int) -> float:
        """Seconds to wait before the ``k``-th restart (k >= 1) within the window."""
        return float(min(self.max, self.initial * self.factor ** max(0, k - 1)))


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


class ChildEventKind(enum.StrEnum):
    """What happened to a child; the values are the lower-case names."""

    STARTED = "started"
    RESTARTED = "restarted"
    EXITED = "exited"  # a normal stop
    CRASHED = "crashed"  # an exception; also a failed (re)start, then ``ref`` is None
    ABANDONED = "abandoned"  # it did not stop within its shutdown timeout
    TERMINATED = "terminated"  # the supervisor stopped it


@dataclass(frozen=True)
class ChildEvent:
    """Something that happened to a child (``kind``), as delivered to a supervisor's listener."""

    supervisor: str
    child_id: str
    kind: ChildEventKind
    ref: pykka.ActorRef[Any] | None
    reason: BaseException | None


@dataclass(frozen=True)
class ChildInfo:
    """One row of ``which_children()``; ``restarts`` counts successful restarts."""

    id: str
    ref: pykka.ActorRef[Any] | None
    restart: Restart
    restarts: int
    alive: bool
