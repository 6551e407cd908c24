"""A stored schedule as ``rt.schedules()``, ``herder schedules`` and the console show it:
:class:`ScheduleStatus`, read from the store's ``schedules`` database. The slots
themselves are ``_schedules``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from herder.runtime._schedules import next_slot
from herder.store import HerderError, ScheduleRecord, Store, StoreCorrupt, decode, get_logger

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
        digest = hashlib.blake2b(raw, digest_size=16).digest()
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


def _record(key: bytes, raw: bytes) -> ScheduleRecord:
    data = decode(raw, db="schedules", key=key)
    try:
        return ScheduleRecord.from_dict(data)
    except (TypeError, ValueError, AttributeError) as exc:
        raise StoreCorrupt("schedules", key, f"bad record: {exc}") from None


def schedule_statuses(
    store: Store, corrupt: list[StoreCorrupt] | None = None
) -> list[ScheduleStatus]:
    """The status of every readable schedule in ``store``, by name (``corrupt``: as
    :func:`read_schedules`)."""
    return [ScheduleStatus.of(record) for record in read_schedules(store, corrupt)]
