"""The ``schedules`` database: periodic schedules, one record per schedule name.

Key: the schedule name (UTF-8). Value: a :class:`ScheduleRecord` map. The record holds
what the schedule is (workflow, input, cadence, policies) and how far it has got:
``cursor_ms`` is the time of the last slot it handled (fired or passed over), so the
slots still to handle are those after it. The runtime writes the record that advances
the cursor in the same transaction that creates the slot's workflow, so the cursor and
the workflows it fired never disagree, whatever crashes in between.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from herder.store._codec import encode
from herder.store._errors import InvalidInput
from herder.store._records import MAP_VERSION


class Overlap(enum.StrEnum):
    """What a slot does while the workflow of the schedule's previous firing still runs."""

    SKIP = "skip"  # the slot is passed over (counted in ``skipped``)
    QUEUE = "queue"  # the slot waits until the previous workflow ended, then fires
    ALLOW = "allow"  # the slot fires anyway


class CatchUp(enum.StrEnum):
    """Which of several slots that fell due at once (after downtime, a pause, a queue) fire."""

    LATEST = "latest"  # only the newest
    ALL = "all"  # every one, oldest first
    NONE = "none"  # only the newest, and only if it is on time (see runtime/_schedules)


@dataclass(frozen=True, slots=True)
class ScheduleRecord:
    """The durable state of one schedule.

    Exactly one of ``cron`` (a cron expression read in ``timezone``) and ``every``
    (seconds; slots are the multiples of it since the epoch) is set. ``jitter`` delays
    each firing's first steps by a fixed pseudo-random share of it, derived from the name
    and the slot. ``last_id`` is the workflow of the latest firing; ``fired`` and
    ``skipped`` count slots fired and slots passed over (by ``overlap="skip"``, or by a
    catch-up: the due slots ``"latest"`` and ``"none"`` do not fire).
    """

    name: str
    workflow: str
    input: Any = None
    cron: str | None = None
    every: float | None = None
    timezone: str = "UTC"
    overlap: Overlap = Overlap.SKIP
    catch_up: CatchUp = CatchUp.LATEST
    jitter: float = 0.0
    paused: bool = False
    cursor_ms: int = 0
    last_id: str | None = None
    fired: int = 0
    skipped: int = 0
    created: float = 0.0
    updated: float = 0.0

    def evolve(self, **changes: Any) -> ScheduleRecord:
        """A copy with ``changes`` applied."""
        return replace(self, **changes)

    def same_definition(self, other: ScheduleRecord) -> bool:
        """True when ``other`` defines the same schedule (progress and times aside). The
        inputs are compared as stored: ``==`` took ``True`` for ``1`` (and ``1.0``), so
        a schedule given another of them kept starting its workflows with the old one,
        and took an input holding NaN for changed at every declaration."""
        return encode(self.input) == encode(other.input) and all(
            getattr(self, name) == getattr(other, name) for name in DEFINITION if name != "input"
        )

    def same_slots(self, other: ScheduleRecord) -> bool:
        """True when ``other``'s slots are this schedule's (the other settings aside)."""
        return all(getattr(self, name) == getattr(other, name) for name in SLOTS)

    def from_now(self, now: float) -> ScheduleRecord:
        """This schedule with its cursor moved up to ``now`` (seconds): slots before it
        are passed over (resumed, or its slots changed)."""
        return self.evolve(cursor_ms=max(self.cursor_ms, clock_ms(now)))

    def redefined(self, other: ScheduleRecord) -> ScheduleRecord:
        """This schedule with ``other``'s definition (its progress kept)."""
        return replace(self, updated=other.updated, **{n: getattr(other, n) for n in DEFINITION})

    def to_dict(self) -> dict[str, Any]:
        """The record as a msgpack-ready map."""
        return {"v": MAP_VERSION, **{f.name: getattr(self, f.name) for f in fields(self)}}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ScheduleRecord:
        """Rebuild a record from :meth:`to_dict` output (unknown keys are ignored).

        Raises ``TypeError``/``ValueError`` for a map that is not a schedule record (or
        anything but a map).
        """
        if not isinstance(data, dict):
            raise TypeError(f"a schedule record is a map, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        record = cls(**values)
        record = record.evolve(overlap=Overlap(record.overlap), catch_up=CatchUp(record.catch_up))
        _check_types(record)
        return record


DEFINITION = ("workflow", "input", "cron", "every", "timezone", "overlap", "catch_up", "jitter")
"""The fields that say what a schedule is; the others say how far it got."""

SLOTS = ("cron", "every", "timezone")
"""The fields that say when its slots are."""

_TYPES: dict[str, tuple[type, ...]] = {
    "name": (str,),
    "workflow": (str,),
    "cron": (str, type(None)),
    "every": (float, int, type(None)),
    "timezone": (str,),
    "jitter": (float, int),
    "paused": (bool,),
    "cursor_ms": (int,),
    "last_id": (str, type(None)),
    "fired": (int,),
    "skipped": (int,),
    "created": (float, int),
    "updated": (float, int),
}


def _check_types(record: ScheduleRecord) -> None:
    for name, allowed in _TYPES.items():
        value = getattr(record, name)
        if not isinstance(value, allowed) or (bool in allowed) != isinstance(value, bool):
            raise TypeError(f"field {name!r} is {type(value).__name__} {value!r:.60}")
    if (record.cron is None) == (record.every is None):
        raise ValueError("exactly one of 'cron' and 'every' must be set")
    # Values no schedule was given: each stopped every schedule's firing (a cursor past
    # the dates a cron iterator can hold raised out of the pass) or fired one every ms.
    if record.every is not None and not (math.isfinite(record.every) and record.every >= 1):
        raise ValueError(f"field 'every' is {record.every!r}: not seconds >= 1")
    if not (math.isfinite(record.jitter) and record.jitter >= 0):
        raise ValueError(f"field 'jitter' is {record.jitter!r}: not seconds >= 0")
    if not 0 <= record.cursor_ms < _CURSOR_END:
        raise ValueError(f"field 'cursor_ms' is {record.cursor_ms!r}: not a time from 1970 to 9000")


_CURSOR_END = 221_845_392_000_000  # 9000-01-01 UTC in ms: the cursor is a time of the clock


def clock_ms(now: float) -> int:
    """The clock time ``now`` (seconds) in ms, as a schedule's cursor and slots are; a
    time outside 1970-9000 (a custom clock, ``FakeClock(start=1e12)``) raises InvalidInput:
    its slots are no dates a workflow id or a cron iterator can name, and a cursor there
    makes the record read as damaged."""
    ms = math.floor(now * 1000)
    if not 0 <= ms < _CURSOR_END:
        when = "before 1970" if ms < 0 else "after 9000"  # (not the time: said once a pass)
        raise InvalidInput(
            f"the runtime's clock reads a time {when}, not a time from 1970 to 9000, and a "
            "schedule's slots are dates: give Runtime(clock=) the time of day (a FakeClock "
            "a start such as time.time())"
        )
    return ms


def schedule_key(name: str) -> bytes:
    """The ``schedules`` key of a schedule name."""
    return name.encode("utf-8")
