"""A stored schedule as ``rt.schedules()``, ``herder schedules`` and the console show it:
:class:`ScheduleStatus`, read from the store's ``schedules`` database. The slots
themselves are ``_schedules``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from herder.runtime._schedules import count_slots, next_slot
from herder.store import (
    HerderError,
    ScheduleRecord,
    Snapshot,
    Store,
    StoreCorrupt,
    decode,
    get_logger,
)

_log = get_logger("herder.schedules")


@dataclass(frozen=True, slots=True)
class ScheduleStatus:
    """A stored schedule as ``rt.schedules()`` and ``herder schedules`` show it.

    ``next_at`` is the clock time of the next slot to handle (None while paused, or for
    a cron schedule read where the ``cron`` extra is missing); it may be in the past
    when a slot is due and waits (``overlap="queue"``, the workflow not registered yet).
    ``last_id`` is the workflow of the latest firing; ``fired`` and ``skipped`` count
    slots fired and slots passed over.
    """

    name: str
    workflow: str
    cron: str | None
    every: float | None
    timezone: str
    overlap: str
    catch_up: str
    jitter: float
    paused: bool
    next_at: float | None
    last_id: str | None
    fired: int
    skipped: int
    input: Any = None

    @classmethod
    def of(cls, record: ScheduleRecord) -> ScheduleStatus:
        """The status of a stored schedule record."""
        next_at = None
        if not record.paused:
            try:
                slot = next_slot(record, record.cursor_ms)
            except HerderError:  # (no cron extra, a zone or cron this machine cannot read)
                slot = None
            next_at = None if slot is None else slot / 1000
        return cls(
            name=record.name,
            workflow=record.workflow,
            cron=record.cron,
            every=record.every,
            timezone=record.timezone,
            overlap=str(record.overlap),
            catch_up=str(record.catch_up),
            jitter=record.jitter,
            paused=record.paused,
            next_at=next_at,
            last_id=record.last_id,
            fired=record.fired,
            skipped=record.skipped,
            input=record.input,
        )

    @property
    def cadence(self) -> str:
        """``cron '0 2 * * *' (Europe/Riga)`` or ``every 60s``."""
        if self.cron is not None:
            return f"cron {self.cron!r} ({self.timezone})"
        return f"every {self.every:.15g}s"  # (:g wrote a fortnight 1.2096e+06s)

    def to_dict(self) -> dict[str, Any]:
        """The status as plain data, e.g. for JSON."""
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


def read_schedules(
    store: Store,
    corrupt: list[StoreCorrupt] | None = None,
    known: dict[bytes, tuple[bytes, ScheduleRecord]] | None = None,
) -> list[ScheduleRecord]:
    """Every readable schedule in ``store``, by name: a damaged one (it does not decode, or
    is no schedule) is left out, added to ``corrupt`` if given, else logged (``herder
    check`` names it too). ``known``, the records a reader that comes back (the firer's
    passes) read last time by key, with a digest of their bytes (not the bytes: an input
    may be a MiB): an unchanged one is not decoded again (~40 us each: 0.4 s a pass for
    10,000); it is refilled with what was read."""
    bad: list[StoreCorrupt] = [] if corrupt is None else corrupt
    before, out = {} if known is None else dict(known), []
    if known is not None:
        known.clear()  # (a deleted schedule is forgotten)
    for key, raw in store.raw_scan("schedules"):  # (one bad record raised, hiding all)
        # (only a reader that comes back keeps digests: rt.schedules() hashes nothing)
        digest = b"" if known is None else hashlib.blake2b(raw, digest_size=16).digest()
        last = before.get(key)
        try:
            record = last[1] if last is not None and last[0] == digest else _record(key, raw)
        except StoreCorrupt as exc:
            bad.append(exc)
            continue
        out.append(record)
        if known is not None:
            known[key] = (digest, record)
    if corrupt is None:
        for problem in bad:
            _log.error("skipping a schedule: %s", problem)
    return out


class KeptSlots:
    """What the firer looks up of each schedule at every pass, kept by name while the
    schedule stays as it was: its next slot after its cursor (:func:`next_slot`; most
    schedules have not moved: a bounded cache of slots thrashed once they outnumbered it,
    2.5 s a pass for 40,000 cron ones against 0.05 s for 10,000), and a catch-up's count."""

    def __init__(self) -> None:
        self._kept: dict[str, tuple[tuple[Any, ...], int | None]] = {}
        self._counted: dict[str, tuple[tuple[Any, ...], int]] = {}  # by name: see count

    def of(self, record: ScheduleRecord) -> int | None:
        """The first slot after ``record``'s cursor; None if it has no more."""
        cadence = _cadence(record)
        kept = self._kept.get(record.name)
        if kept is not None and kept[0] == cadence:
            return kept[1]
        slot = next_slot(record, record.cursor_ms)  # (raises as it does: kept only once found)
        self._kept[record.name] = (cadence, slot)
        return slot

    def count(self, record: ScheduleRecord, pass_to: int) -> int:
        """:func:`count_slots` from the cursor to ``pass_to``, counted once per catch-up (a
        pass that fires nothing, a queued slot waiting, counted it again every pass)."""
        asked = (*_cadence(record), pass_to)
        kept = self._counted.get(record.name)
        if kept is not None and kept[0] == asked:
            return kept[1]
        n = count_slots(record, record.cursor_ms, pass_to)
        self._counted[record.name] = (asked, n)
        return n

    def keep_only(self, records: list[ScheduleRecord]) -> None:
        """Forget the schedules not among ``records`` (deleted ones)."""
        names = {record.name for record in records}
        self._kept = {name: kept for name, kept in self._kept.items() if name in names}
        self._counted = {name: n for name, n in self._counted.items() if name in names}

    def next_at(self, records: list[ScheduleRecord]) -> dict[str, float]:
        """The clock time of each of ``records``' next slot to handle, by name, as
        ``rt.schedules()`` says it (``next_at``): none for a paused one, one without
        slots or one whose slots cannot be read here."""
        out: dict[str, float] = {}
        for record in records:
            try:
                slot = None if record.paused else self.of(record)
            except HerderError:  # (no cron extra, a zone or cron this machine cannot read)
                continue
            if slot is not None:
                out[record.name] = slot / 1000
        return out


def _cadence(record: ScheduleRecord) -> tuple[Any, ...]:
    """What a schedule's slots after its cursor depend on."""
    return (record.cron, record.every, record.timezone, record.cursor_ms)


def _record(key: bytes, raw: bytes) -> ScheduleRecord:
    data = decode(raw, db="schedules", key=key)
    try:
        return ScheduleRecord.from_dict(data)
    except (TypeError, ValueError, AttributeError) as exc:
        raise StoreCorrupt("schedules", key, f"bad record: {exc}") from None


def schedule_page(
    store: Store, after: bytes | None, size: int, corrupt: list[StoreCorrupt]
) -> tuple[list[ScheduleStatus], bytes | None]:
    """The status of up to ``size`` schedules by name, those whose keys follow ``after``
    (from the first when None), read in one snapshot; and the key to go on after, None
    if they were the last. A damaged one is added to ``corrupt`` (it takes a place)."""

    def read(snap: Snapshot) -> list[tuple[bytes, bytes]]:
        out: list[tuple[bytes, bytes]] = []
        cur = snap.cursor("schedules")
        found = cur.first() if after is None else cur.set_range(after)
        while found and len(out) <= size:  # (one more: is there a next page?)
            if (key := bytes(cur.key())) != after:
                out.append((key, bytes(cur.value())))
            found = cur.next()
        return out

    if not store.count("schedules"):  # (none, or a store older than schedules)
        return [], None
    entries, statuses = store.view(read), []
    for key, raw in entries[:size]:
        try:
            statuses.append(ScheduleStatus.of(_record(key, raw)))
        except StoreCorrupt as exc:
            corrupt.append(exc)
    return statuses, (entries[size - 1][0] if len(entries) > size else None)


def schedule_statuses(
    store: Store, corrupt: list[StoreCorrupt] | None = None
) -> list[ScheduleStatus]:
    """The status of every readable schedule in ``store``, by name (``corrupt``: as
    :func:`read_schedules`)."""
    return [ScheduleStatus.of(record) for record in read_schedules(store, corrupt)]
