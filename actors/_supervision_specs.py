"""The data of a supervision tree: child specs, flags, and what a supervisor reports.

Everything here is a frozen value validated once at construction, with messages that name
the bad field and value (in the spirit of OTP's ``check_childspecs``).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Container, Iterable
from dataclasses import dataclass
from typing import Any

import pykka

from herder.store import InvalidInput


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


def check_new_specs(
    specs: Iterable[object], where: str, *, taken: Container[str] = (), owner: str = ""
) -> list[ChildSpec]:
    """``specs`` as a list, if each is a :class:`ChildSpec` with an id new to ``taken``
    (the ids ``owner`` already has) and to the others; ``where`` names the caller."""
    checked: list[ChildSpec] = []
    seen: set[str] = set()
    for spec in specs:
        if not isinstance(spec, ChildSpec):
            raise InvalidInput(f"{where} takes ChildSpec values, got {spec!r}")
        if spec.id in taken:
            raise InvalidInput(
                f"{owner} already has a child with id {spec.id!r}; "
                "pick a unique id or delete_child it first"
            )
        if spec.id in seen:
            raise InvalidInput(f"{where}: duplicate child id {spec.id!r}")
        seen.add(spec.id)
        checked.append(spec)
    return checked


def check_flags(
    owner: str,
    *,
    max_restarts: int,
    period: float,
    start_timeout: float,
    backoff: Backoff | None,
    callbacks: dict[str, object],
) -> None:
    """Refuse a supervisor's flags that are not what ``start_supervisor`` documents."""
    if isinstance(max_restarts, bool) or not isinstance(max_restarts, int) or max_restarts < 0:
        raise InvalidInput(f"{owner}.max_restarts must be an int >= 0, got {max_restarts!r}")
    for field, value in (("period", period), ("start_timeout", start_timeout)):
        _finite(field, value, owner=owner)
        if value <= 0:
            raise InvalidInput(f"{owner}.{field} must be > 0, got {value!r}")
    if backoff is not None and not isinstance(backoff, Backoff):
        raise InvalidInput(f"{owner}.backoff must be a Backoff or None, got {backoff!r}")
    for field, fn in callbacks.items():
        if fn is not None and not callable(fn):
            raise InvalidInput(f"{owner}.{field} must be callable or None, got {fn!r}")


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
