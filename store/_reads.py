"""Typed reads of the store: records by key, scans, the timer index, snapshots.

:class:`Reads` is a base class of :class:`~herder.store.Store`; it turns raw LMDB reads,
done by the Store's plumbing (``_read``: one short read transaction outside any map
resize; ``_paged``: a prefix scan in pages; ``_handle``), into decoded and checked
records. A record that does not decode or does not check out raises
:class:`StoreCorrupt` naming its database and key.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Callable, Iterator
from typing import Any, TypeVar, cast

import lmdb

from herder.store import _recent as recent
from herder.store._access import Access
from herder.store._backlog import id_chunk, scan_chunk
from herder.store._codec import decode
from herder.store._errors import StoreCorrupt
from herder.store._keys import (
    definition_key,
    split_timer_key,
    step_key,
    timer_upper_bound,
    validate_id,
    workflow_key,
)
from herder.store._logs import get_logger
from herder.store._plan import Plan
from herder.store._recent import RECENT_DB
from herder.store._records import StepRecord, WorkflowRecord, WorkflowState
from herder.store._validate import check_plan, check_record

_T = TypeVar("_T")
_log = get_logger("herder.store")


class Reads(Access):
    """The typed read methods of a Store (see the module docstring)."""

    def get(self, db: str, key: bytes) -> Any | None:
        """The decoded record under ``key`` in ``db``, or None if there is none."""
        handle = self._handle(db)
        if handle is None:
            return None
        raw = self._read(lambda txn: cast("bytes | None", txn.get(key, db=handle)))
        return None if raw is None else decode(raw, db=db, key=key)

    def get_workflow(self, workflow_id: str) -> WorkflowRecord | None:
        """The workflow record of ``workflow_id``, or None.

        An id no workflow could have (not a str, empty, NUL, not UTF-8, too long) raises
        :class:`InvalidInput` rather than reaching LMDB.
        """
        key = workflow_key(validate_id(workflow_id))
        data = self.get("workflows", key)
        if data is None:
            return None
        record = _parse(WorkflowRecord.from_dict, data, "workflows", key)
        if record.id != workflow_id:
            raise StoreCorrupt("workflows", key, f"record holds id {record.id!r:.80}")
        return record

    def get_plan(self, name: str, version: int) -> Plan | None:
        """The stored definition ``name`` at ``version``, or None."""
        key = definition_key(name, version)
        data = self.get("definitions", key)
        if data is None:
            return None
        plan = _parse(Plan.from_dict, data, "definitions", key)
        try:
            check_plan(plan)
        except TypeError as exc:
            raise StoreCorrupt("definitions", key, f"bad definition: {exc}") from exc
        if (plan.name, plan.version) != (name, version):
            raise StoreCorrupt("definitions", key, f"holds {plan.name!r:.80}@{plan.version}")
        return plan

    def get_step(self, workflow_id: str, step: str) -> StepRecord | None:
        """The record of one step, or None."""
        key = step_key(workflow_id, step)
        data = self.get("steps", key)
        return None if data is None else _parse(StepRecord.from_dict, data, "steps", key)

    def steps_of(self, workflow_id: str) -> list[StepRecord]:
        """Every step record of one workflow, in step-name byte order."""
        return [
            _step(workflow_id, k, v) for k, v in self._paged("steps", step_key(workflow_id, ""))
        ]

    def workflows(
        self,
        state: WorkflowState | str | None = None,
        *,
        corrupt: list[StoreCorrupt] | None = None,
    ) -> Iterator[WorkflowRecord]:
        """Every workflow record (only those in ``state`` if given), in id byte order; a
        corrupt one raises :class:`StoreCorrupt`, or goes to ``corrupt`` if given. With
        ``state`` and a whole ``recent`` index only the records it lists in that state
        or as unreadable are read (the inbox reads the parked workflows, not the store)."""
        wanted = None if state is None else WorkflowState(state)
        ids = None if wanted is None else self._indexed_ids({str(wanted)}, "the listing")
        reads = (
            (functools.partial(self.get_workflow, wid) for wid in ids)
            if ids is not None
            else (functools.partial(_workflow_at, k, v) for k, v in self._paged("workflows", b""))
        )
        for read in reads:
            try:
                record = read()
            except StoreCorrupt as exc:
                if corrupt is None:
                    raise
                corrupt.append(exc)
                continue
            if record is not None and (wanted is None or record.state is wanted):  # (moved on)
                yield record

    def unfinished(self, *, corrupt: list[StoreCorrupt]) -> Iterator[WorkflowRecord]:
        """Every workflow not in a final state; unreadable ones go to ``corrupt``.

        Through the ``recent`` index when the store has it (its values are the states,
        compared as bytes), so a store of a million finished workflows decodes only the
        unfinished ones: what recovery reads when a runtime opens. Otherwise a full scan.
        """
        ids = self.unfinished_ids()
        if ids is None:
            yield from (r for r in self.workflows(corrupt=corrupt) if not r.state.is_final)
            return
        for wid in ids:  # id order, as a full scan gives
            try:
                record = self.get_workflow(wid)
            except StoreCorrupt as exc:
                corrupt.append(exc)
                continue
            if record is not None and not record.state.is_final:  # (it may have ended since)
                yield record

    def unfinished_chunks(
        self,
        chunk: int = 500,
        *,
        corrupt: list[StoreCorrupt] | None = None,
        ids: list[str] | None = None,
    ) -> Iterator[list[tuple[WorkflowRecord, list[StepRecord]]]]:
        """Every workflow that is not final, with its stored steps, up to ``chunk``
        workflows at a time, in id order: a lazy iterator for recovery, so that a backlog
        of 100k is read and decoded as it is consumed, each chunk in one short read
        transaction (its workflows and their steps), never all at once. Which workflows
        are unfinished comes from the ``recent`` index when the store has it (as for
        :meth:`unfinished`); otherwise the workflows are scanned a chunk at a time.

        A corrupt workflow or step record raises :class:`StoreCorrupt`; pass a list as
        ``corrupt`` to have it collected there and that workflow skipped instead.
        ``ids``: those workflows only (as :meth:`unfinished_ids` gave them).
        """
        ids = self.unfinished_ids() if ids is None else ids
        start, skip, at = b"", False, 0
        while True:
            if ids is None:
                read = functools.partial(scan_chunk, self._handles, start=start, skip=skip, n=chunk)
            else:
                read = functools.partial(id_chunk, self._handles, ids=ids[at : at + chunk])
                at += chunk
            raw, more = self._read(read)
            out = []
            for wkey, value, steps in raw:
                try:
                    record = _parse(
                        WorkflowRecord.from_dict,
                        decode(value, db="workflows", key=wkey),
                        "workflows",
                        wkey,
                    )
                    if workflow_key(record.id) != wkey:
                        raise StoreCorrupt("workflows", wkey, f"record holds id {record.id!r:.80}")
                    if record.state.is_final:
                        continue  # (it may have ended since the index was read)
                    out.append((record, [_step(record.id, k, v) for k, v in steps]))
                except StoreCorrupt as exc:
                    if corrupt is None:
                        raise
                    corrupt.append(exc)
            if out:
                yield out
            if (ids is None and not more) or (ids is not None and at >= len(ids)):
                return
            if raw:
                start, skip = raw[-1][0], True

    def unfinished_ids(self) -> list[str] | None:
        """The ids of the workflows the ``recent`` index lists as not final, sorted (the
        index alone is read: no record is decoded); None for a store without the index."""
        return self._indexed_ids({str(s) for s in WorkflowState if not s.is_final}, "recovery")

    def _indexed_ids(self, states: set[str], who: str) -> list[str] | None:
        """The ids the ``recent`` index lists in ``states`` or as unreadable, sorted; None
        for a store without the index, or with a damaged key in it (whose it was is
        unknown: ``who`` reads every workflow record instead)."""
        if not self.indexed:
            return None
        damaged: list[StoreCorrupt] = []
        listed = frozenset(states | {recent.UNREADABLE})
        rows = self.recent(newest_first=False, states=listed, damaged=damaged)
        ids = sorted(wid for _ms, wid, _state in rows)
        if damaged:
            _log.warning("%s; %s reads every workflow record instead", damaged[0], who)
            return None
        return ids

    def recent(
        self,
        *,
        newest_first: bool = True,
        states: frozenset[str] | None = None,
        since: float | None = None,
        until: float | None = None,
        damaged: list[StoreCorrupt] | None = None,
    ) -> Iterator[tuple[float, str, str]]:
        """(updated, workflow id, state) by last update: newest first down to ``since``,
        or oldest first up to ``until``; only ``states`` if given. Paged and cheap on a
        store of millions (it reads the ``recent`` index, see ``_recent.py``); a damaged
        index key (without the index: record) is passed over, noted in ``damaged``."""
        if not self.indexed:  # an older store never opened by a writer since
            rows = sorted(
                (r.updated, r.id, str(r.state))
                for r in self.workflows(corrupt=[] if damaged is None else damaged)
                if (states is None or str(r.state) in states)
                and (since is None or r.updated >= since)
                and (until is None or r.updated < until)
            )
            yield from reversed(rows) if newest_first else rows
            return
        for ms, wid, state in recent.scan(
            self._read,
            self._handles[RECENT_DB],
            newest_first=newest_first,
            states=states,
            since_ms=None if since is None else recent.to_ms(since),
            until_ms=None if until is None else recent.to_ms(until),
            damaged=damaged,
        ):
            yield ms / 1000, wid, state

    @property
    def indexed(self) -> bool:
        """True when the ``recent`` index covers every workflow (see :meth:`recent`)."""
        if RECENT_DB not in self._handles:
            return False
        meta = self._handles["meta"]
        return bool(self._read(lambda txn: txn.get(recent.BUILT_KEY, db=meta) is not None))

    def due_timers(
        self,
        until_ms: int,
        limit: int | None = None,
        *,
        after: bytes | None = None,
        corrupt: list[StoreCorrupt] | None = None,
    ) -> list[tuple[int, str, str, Any]]:
        """Timers due at or before ``until_ms``, earliest first: (due ms, id, step, value).

        ``after`` starts the scan strictly after that timer key (to page through a long
        backlog with ``limit``). A malformed entry raises :class:`StoreCorrupt`, or, when a
        ``corrupt`` list is given, is appended to it and skipped.
        """
        handle = self._handles["timers"]
        upper = timer_upper_bound(until_ms)

        def scan(txn: lmdb.Transaction) -> list[tuple[bytes, bytes]]:
            out: list[tuple[bytes, bytes]] = []
            cur = txn.cursor(db=handle)
            if after is None:
                if not cur.first():
                    return out
            elif not cur.set_range(after) or (cur.key() == after and not cur.next()):
                return out
            for key, value in cast(Iterator[tuple[bytes, bytes]], cur):
                if key >= upper or (limit is not None and len(out) >= limit):
                    break
                out.append((key, value))
            return out

        result = []
        for key, raw in self._read(scan):
            try:
                try:
                    due, wf, step = split_timer_key(key)
                except (struct.error, UnicodeDecodeError) as exc:
                    raise StoreCorrupt("timers", key, f"malformed timer key: {exc}") from exc
                result.append((due, wf, step, decode(raw, db="timers", key=key)))
            except StoreCorrupt as exc:
                if corrupt is None:
                    raise
                corrupt.append(exc)
        return result

    def scan(
        self, db: str, prefix: bytes = b"", *, corrupt: list[StoreCorrupt] | None = None
    ) -> Iterator[tuple[bytes, Any]]:
        """(key, decoded value) for every key of ``db`` starting with ``prefix``, paged.

        Each page is its own snapshot. ``corrupt`` works as in :meth:`workflows`.
        """
        for key, raw in self._paged(db, prefix):
            try:
                value = decode(raw, db=db, key=key)
            except StoreCorrupt as exc:
                if corrupt is None:
                    raise
                corrupt.append(exc)
                continue
            yield key, value

    def raw_scan(self, db: str) -> Iterator[tuple[bytes, bytes]]:
        """(key, raw bytes) for every key of ``db``, paged; for checks and the CLI."""
        return self._paged(db, b"")

    def view(self, fn: Callable[[Snapshot], _T]) -> _T:
        """Run ``fn`` on one consistent snapshot of every database (one read transaction).

        For whole-store checks that must not see a transition half-way between pages; keep
        ``fn`` short on a store that a runtime is writing (a long read grows the file).
        ``fn`` may run again if another process grows the map meanwhile.
        """
        handles = self._handles
        return self._read(lambda txn: fn(Snapshot(txn, handles)))

    def count(self, db: str) -> int:
        """Number of keys in ``db`` (one consistent snapshot)."""
        handle = self._handle(db)
        if handle is None:
            return 0
        entries: int = self._read(lambda txn: txn.stat(handle)["entries"])
        return entries


class Snapshot:
    """Reads inside one read transaction (see :meth:`Store.view`); valid only inside it."""

    def __init__(self, txn: lmdb.Transaction, handles: dict[str, Any]) -> None:
        self._txn = txn
        self._handles = handles

    def raw(self, db: str, key: bytes) -> bytes | None:
        """The stored bytes under ``key`` in ``db``, or None (as from a database an older
        store lacks, see ``ADDED_LATER``, or a damaged one lost: ``items`` reads none)."""
        handle = self._handles.get(db)
        return None if handle is None else cast("bytes | None", self._txn.get(key, db=handle))

    def cursor(self, db: str) -> lmdb.Cursor:
        """An LMDB cursor on ``db`` in this snapshot, for seeks that ``items`` cannot do."""
        return self._txn.cursor(db=self._handles[db])

    def items(self, db: str, prefix: bytes = b"") -> Iterator[tuple[bytes, bytes]]:
        """(key, raw bytes) of every key of ``db`` starting with ``prefix``, in key order
        (none for a database an older store lacks, see ``ADDED_LATER``)."""
        handle = self._handles.get(db)
        if handle is None:
            return
        cur = self._txn.cursor(db=handle)
        if not cur.set_range(prefix):
            return
        for key, value in cast(Iterator[tuple[bytes, bytes]], cur):
            if not key.startswith(prefix):
                return
            yield key, value


def _step(workflow_id: str, key: bytes, raw: bytes) -> StepRecord:
    st = _parse(StepRecord.from_dict, decode(raw, db="steps", key=key), "steps", key)
    if st.workflow_id != workflow_id or step_key(st.workflow_id, st.name) != key:
        raise StoreCorrupt("steps", key, f"record holds {st.workflow_id!r:.80}/{st.name!r:.80}")
    return st


def _parse(from_dict: Callable[[Any], _T], data: Any, db: str, key: bytes) -> _T:
    """Build a record from a decoded map; a missing field, a value of the wrong type or
    a bad value is StoreCorrupt."""
    if not isinstance(data, dict | list):
        raise StoreCorrupt(db, key, f"expected a record, got {type(data).__name__}")
    try:
        record = from_dict(data)
        check_record(record)
    except (KeyError, TypeError, ValueError) as exc:
        raise StoreCorrupt(db, key, f"bad record: {type(exc).__name__}: {exc}") from exc
    return record


def _workflow_at(key: bytes, raw: bytes) -> WorkflowRecord:
    """The workflow record stored at ``key``; StoreCorrupt if it is not one, or not its."""
    data = decode(raw, db="workflows", key=key)
    record = _parse(WorkflowRecord.from_dict, data, "workflows", key)
    if workflow_key(record.id) != key:
        raise StoreCorrupt("workflows", key, f"record holds id {record.id!r:.80}")
    return record
