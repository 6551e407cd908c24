"""Periodic schedules as data: validating one, and the slots it falls due at (pure).

A schedule's *slots* are instants: for ``every=N`` the multiples of N seconds since the
epoch (so ``every=3600`` fires on the hour, UTC, and a restart cannot shift them); for
``cron=`` the times a cron expression matches in the schedule's ``timezone``, as
evaluated by `cronsim <https://pypi.org/project/cronsim/>`_ (the ``cron`` extra), which
follows Debian cron at DST changes (six fields too: :func:`_cron`): a job in the skipped
hour runs when the clock jumps, a job at a fixed time in the repeated hour runs once,
and a job every hour runs at both of its instants. Slots are whole milliseconds. Each
slot's workflow id is ``"<schedule>@<slot in UTC>"``, e.g.
``nightly@2026-12-05T02:00:00Z``: the id, not memory, is what makes a firing happen once.

Which of the slots due at one moment fire is :func:`to_fire`'s rule (``catch_up``); the
firing itself (``overlap``, the store) is in ``_firing``.
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import itertools
import math
from collections.abc import Iterator
from typing import Any

from herder.runtime._zones import new_zone, zone_of
from herder.store import (
    CatchUp,
    InvalidInput,
    MissingExtra,
    Overlap,
    Plan,
    ScheduleRecord,
    clock_ms,
    validate_name,
)

ON_TIME = 60.0
"""Seconds after its time a slot still counts as on time under ``catch_up="none"``."""

MAX_BATCH = 100
"""Most slots one pass fires for one schedule under ``catch_up="all"``; the rest next pass."""

_SCAN = 1000  # forward steps before the newest due cron slot is looked up backwards
_DST_SHIFT_MS = 2 * 3600 * 1000  # the largest shift of a clock at a DST change (2 h)

MAX_COUNT = 10_000
"""Most slots of a cron schedule one catch-up counts as skipped (each costs a step of the
cron iterator, ~20 us: 10,000 are a fifth of a second); ``every=`` schedules are counted
exactly."""


def new_schedule(
    name: str,
    workflow: str,
    now: float,
    *,
    input: Any,
    cron: str | None,
    every: float | None,
    overlap: str,
    catch_up: str,
    jitter: float,
    timezone: str,
) -> ScheduleRecord:
    """A validated schedule whose first slot is the first one after ``now``.

    Raises :class:`InvalidInput` naming the bad argument, or :class:`MissingExtra` for a
    cron schedule without the ``cron`` extra installed.
    """
    validate_name("schedule", name)
    if (cron is None) == (every is None):
        raise InvalidInput(
            f"schedule {name!r}: give exactly one of cron='0 2 * * *' and every=seconds"
        )
    if cron is not None and not isinstance(cron, str):
        raise InvalidInput(
            f"schedule {name!r}: cron must be a cron expression such as '0 2 * * *', got {cron!r}"
        )
    if every is not None and (
        isinstance(every, bool)
        or not isinstance(every, int | float)
        or not 1 <= every <= 366 * 86400
    ):
        raise InvalidInput(
            f"schedule {name!r}: every must be a number of seconds from 1 to one year, "
            f"got {every!r}"
        )
    try:
        overlap_, catch_up_ = Overlap(overlap), CatchUp(catch_up)
    except ValueError:
        raise InvalidInput(
            f"schedule {name!r}: overlap must be one of {[o.value for o in Overlap]} and "
            f"catch_up one of {[c.value for c in CatchUp]}; got {overlap!r}, {catch_up!r}"
        ) from None
    if isinstance(jitter, bool) or not isinstance(jitter, int | float) or not jitter >= 0:
        raise InvalidInput(f"schedule {name!r}: jitter must be seconds >= 0, got {jitter!r}")
    if every is not None and jitter >= every:
        raise InvalidInput(f"schedule {name!r}: jitter {jitter} must be less than every {every}")
    record = ScheduleRecord(
        name=name,
        workflow=workflow,
        input=input,
        cron=cron,
        every=None if every is None else float(every),
        timezone=new_zone(name, timezone),
        overlap=overlap_,
        catch_up=catch_up_,
        jitter=float(jitter),
        cursor_ms=clock_ms(now),
        created=now,
        updated=now,
    )
    if cron is not None:
        if next_slot(record, record.cursor_ms) is None:  # (it parses, and never matches)
            raise InvalidInput(
                f"schedule {name!r}: cron {cron!r} matches no time in the next 50 years "
                "(cronsim gives up there): check its day-of-month and day-of-week fields"
            )
        # As for every=: a firing's delay stays under the gap between slots (an endless
        # or huge jitter made every firing fail, retried for ever, and none ever ran).
        # Slots are whole seconds, so no gap is under one: a shorter jitter (the default
        # 0) needs no look at them, which costs ~10 ms of cron steps per expression.
        gap = _shortest_gap(record) if jitter >= 1 else None
        if gap is not None and jitter * 1000 >= gap:
            raise InvalidInput(
                f"schedule {name!r}: jitter {jitter} must be less than the {gap / 1000:g} s "
                "between its closest slots"
            )
    return record


_GAP_FROM = 1_767_225_600_000  # 2026-01-01 UTC: where _shortest_gap looks (today's rules)
_GAP_SLOTS = 200
_GAP_YEARS = 2  # the span whose clock changes _shortest_gap probes
_DAY_MS = 86_400_000


def _shortest_gap(record: ScheduleRecord) -> int | None:
    """The shortest time (ms) between two of a cron schedule's slots: among its first
    :data:`_GAP_SLOTS` after a fixed day, and around each change of its zone's UTC offset
    (DST) in the :data:`_GAP_YEARS` from that day, which shortens a day wherever in the
    year it falls. The same answer whenever it is asked (the next two slots from now
    would accept a jitter at 02:30 and refuse it at 03:30), so it is kept per expression
    and zone: many schedules of one cadence cost one look."""
    assert record.cron is not None
    return _gap_of(record.cron, record.timezone)


@functools.lru_cache(maxsize=1024)
def _gap_of(cron: str, timezone: str) -> int | None:
    """:func:`_shortest_gap` of an expression (valid, as is the zone) in a zone."""
    record = ScheduleRecord(name="", workflow="", cron=cron, timezone=timezone)
    shortest = _walk(record, next_slot(record, _GAP_FROM), None, None)
    for change, shift in _clock_changes(zone_of(record.name, record.timezone)):
        # From the slot before the change's local times (the first pass of a repeated
        # hour too) to the first one after them: the slots the change moves or repeats.
        start = _slot_before(record, change - shift)
        if start is not None:
            shortest = _walk(record, next_slot(record, start - 1), change + shift, shortest)
    return shortest


def _walk(
    record: ScheduleRecord, slot: int | None, until: int | None, shortest: int | None
) -> int | None:
    """``shortest`` or a shorter gap between the slots from ``slot`` on: :data:`_GAP_SLOTS`
    gaps, or (with ``until``) those up to the first slot after ``until``."""
    for _ in range(_GAP_SLOTS if until is None else MAX_COUNT):
        following = None if slot is None else next_slot(record, slot)
        if slot is None or following is None:
            break
        gap = following - slot
        shortest = gap if shortest is None else min(shortest, gap)
        if shortest <= 1000 or (until is not None and following > until):
            break  # (slots are whole seconds: none are closer than one second)
        slot = following
    return shortest


def _slot_before(record: ScheduleRecord, at_ms: int) -> int | None:
    """The last slot strictly before ``at_ms`` (a reverse cronsim scan), or None."""
    for slot in _cron(record, at_ms, reverse=True):
        if slot < at_ms:
            return slot
    return None


def _clock_changes(zone: datetime.tzinfo) -> list[tuple[int, int]]:
    """Each change of ``zone``'s UTC offset in the :data:`_GAP_YEARS` from
    :data:`_GAP_FROM`: (its instant in ms, how far the clock moved in ms)."""

    def offset(seconds: int) -> datetime.timedelta | None:
        return datetime.datetime.fromtimestamp(seconds, zone).utcoffset()

    out, day, end = [], _GAP_FROM // 1000, (_GAP_FROM + _GAP_YEARS * 366 * _DAY_MS) // 1000
    while day < end:
        lo, hi = day, day + _DAY_MS // 1000
        before, after = offset(lo), offset(hi)
        if before != after and before is not None and after is not None:
            while hi - lo > 1:  # the first second of the new offset
                mid = (lo + hi) // 2
                lo, hi = (mid, hi) if offset(mid) == before else (lo, mid)
            out.append((hi * 1000, abs(round((after - before).total_seconds() * 1000))))
        day += _DAY_MS // 1000
    return out


def slot_id(name: str, slot_ms: int) -> str:
    """The id of the workflow a schedule's slot starts: ``name@<UTC time>``."""
    when = datetime.datetime.fromtimestamp(slot_ms // 1000, datetime.UTC)
    fraction = f".{slot_ms % 1000:03d}" if slot_ms % 1000 else ""
    return f"{name}@{when:%Y-%m-%dT%H:%M:%S}{fraction}Z"


def slot_of(name: str, workflow_id: str) -> int | None:
    """The slot (ms) of a workflow id :func:`slot_id` made for schedule ``name``, or None."""
    prefix = f"{name}@"
    if not workflow_id.startswith(prefix) or not workflow_id.endswith("Z"):
        return None
    text, _, fraction = workflow_id[len(prefix) : -1].partition(".")
    try:
        when = datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S")
    except ValueError:
        return None
    if fraction and not (len(fraction) == 3 and fraction.isdigit()):
        return None
    seconds = int(when.replace(tzinfo=datetime.UTC).timestamp())
    return seconds * 1000 + (int(fraction) if fraction else 0)


def slot_time(slot_ms: int) -> str:
    """A slot as an ISO time in UTC (for listings)."""
    return slot_id("", slot_ms)[1:]


def jitter_past_deadline(record: ScheduleRecord, plan: Plan) -> str | None:
    """What is wrong if ``record``'s jitter passes the deadline of ``plan`` (the version it
    fires), else None: a firing is a delayed start whose deadline counts from the slot."""
    if plan.deadline is None or record.jitter <= plan.deadline:
        return None
    return (
        f"schedule {record.name!r}: jitter {record.jitter:g} s passes the deadline of "
        f"workflow {plan.name!r} version {plan.version} ({plan.deadline:g} s), which counts "
        "from each slot: the firings delayed past it end COMPENSATED before their first "
        "step runs"
    )


def jitter_of(record: ScheduleRecord, slot_ms: int) -> float:
    """Seconds a slot's firing waits: a fixed share of ``jitter`` from name and slot, so
    a firing repeated after a crash waits as long as the first would have."""
    if not record.jitter:
        return 0.0
    digest = hashlib.blake2b(f"{record.name}@{slot_ms}".encode(), digest_size=8).digest()
    return record.jitter * int.from_bytes(digest, "big") / 2**64


def next_slot(record: ScheduleRecord, after_ms: int) -> int | None:
    """The first slot strictly after ``after_ms``; None if a cron expression has no more."""
    if record.every is not None:
        step = _every_ms(record)
        return (after_ms // step + 1) * step
    assert record.cron is not None
    return _cron_after(record.name, record.cron, record.timezone, after_ms)


@functools.lru_cache(maxsize=1 << 15)  # (~240 bytes each)
def _cron_after(name: str, cron: str, timezone: str, after_ms: int) -> int | None:
    """:func:`next_slot` of a cron schedule, kept (~0.1 ms of cron steps each): listings
    ask it of every schedule (the firer keeps each one's own: ``KeptSlots``), walks too."""
    record = ScheduleRecord(name=name, workflow="", cron=cron, timezone=timezone)
    # Not always the first one cronsim yields: from the second pass of a repeated
    # (fall-back) hour, its fixed-time rule yields that night's one instant, which was
    # in the first pass, before ``after_ms``. The ones after it are strictly later.
    for slot in _cron(record, after_ms):
        if slot > after_ms:
            return slot
    return None


def to_fire(record: ScheduleRecord, now_ms: int) -> tuple[list[int], int | None]:
    """The slots due by ``now_ms`` that fire, oldest first, and the slot the cursor may
    pass over to without firing (the newest due one, under ``latest`` and ``none``).

    ``all``: every slot after the cursor up to now (at most :data:`MAX_BATCH` at once).
    ``latest``: the newest due slot. ``none``: the newest due slot if it is at most
    :data:`ON_TIME` seconds old; older ones are passed over.
    """
    if record.catch_up is CatchUp.ALL:
        out: list[int] = []
        cursor = record.cursor_ms
        while len(out) < MAX_BATCH:
            slot = next_slot(record, cursor)
            if slot is None or slot > now_ms:
                break
            out.append(slot)
            cursor = slot
        return out, None
    newest = newest_due(record, now_ms)
    if newest is None:
        return [], None
    if record.catch_up is CatchUp.NONE and now_ms - newest > ON_TIME * 1000:
        return [], newest
    return [newest], newest


def count_slots(record: ScheduleRecord, after_ms: int, upto_ms: int) -> int:
    """How many slots lie in (``after_ms``, ``upto_ms``]; a cron schedule's are counted
    up to :data:`MAX_COUNT` (a frequent one after a long downtime)."""
    if record.every is not None:
        step = _every_ms(record)
        return max(0, upto_ms // step - after_ms // step)
    n, cursor = 0, after_ms
    while n < MAX_COUNT:
        slot = next_slot(record, cursor)
        if slot is None or slot > upto_ms:
            break
        n, cursor = n + 1, slot
    return n


def newest_due(record: ScheduleRecord, now_ms: int) -> int | None:
    """The newest slot after the cursor and at or before ``now_ms``, or None."""
    if record.every is not None:
        step = _every_ms(record)
        newest = now_ms // step * step
        return newest if newest > record.cursor_ms else None
    found, cursor = None, record.cursor_ms
    for _ in range(_SCAN):
        slot = next_slot(record, cursor)
        if slot is None or slot > now_ms:
            return found
        found = cursor = slot
    # Far behind (a long downtime of a frequent schedule): look back from now for a slot,
    # then forward again from a DST change's shift before it, as the forward scan alone
    # says which slots there are (backwards, cronsim may land on another one there).
    for probe in _cron(record, now_ms + 1000, reverse=True):
        if probe <= now_ms:
            break
    else:  # pragma: no cover - a reverse scan always finds the slots found forwards
        return None
    found, cursor = None, max(record.cursor_ms, probe - _DST_SHIFT_MS)
    for _ in range(MAX_COUNT):
        slot = next_slot(record, cursor)
        if slot is None or slot > now_ms:
            break
        found = cursor = slot
    return found


def _every_ms(record: ScheduleRecord) -> int:
    assert record.every is not None
    return max(1, round(record.every * 1000))


def _ms(seconds: float) -> int:
    return math.floor(seconds * 1000)


def _cron(record: ScheduleRecord, after_ms: int, *, reverse: bool = False) -> Iterator[int]:
    """The slots (ms) after (before) ``after_ms``, some maybe not (callers filter). Six
    fields: the last five's minutes at each second (Debian's DST rules, cronsim's for five)."""
    try:
        from cronsim import CronSim, CronSimError
    except ImportError:
        raise MissingExtra(
            f"schedule {record.name!r} uses cron={record.cron!r}, which needs the 'cron' "
            "extra: pip install 'herder[cron]' (every= needs nothing)"
        ) from None
    assert record.cron is not None
    zone = zone_of(record.name, record.timezone)  # (a zone gone from this tz data: InvalidInput)
    fields, expr, margin = record.cron.split(), record.cron, 0
    seconds: tuple[int, ...] = (0,)
    try:
        if len(fields) == 6:  # (a minute's slots lie within the 60 s after it)
            expr, seconds, margin = " ".join(fields[1:]), _seconds(fields[0]), 60_000
        start = after_ms + margin if reverse else after_ms - margin
        minutes = CronSim(
            expr, datetime.datetime.fromtimestamp(start / 1000, zone), reverse=reverse
        )
    except CronSimError as exc:
        raise InvalidInput(
            f"schedule {record.name!r}: cron {record.cron!r} is not a cron expression: {exc}"
        ) from None
    for minute in minutes:
        at = _ms(minute.timestamp())
        yield from (at + 1000 * s for s in (seconds[::-1] if reverse else seconds))


@functools.lru_cache(maxsize=256)
def _seconds(field: str) -> tuple[int, ...]:
    """The seconds a cron seconds field matches, ascending (CronSimError if it is bad)."""
    from cronsim import CronSim

    minutes = CronSim(f"{field} * * * * *", datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC))
    return tuple(sorted({when.second for when in itertools.islice(minutes, 60)}))
