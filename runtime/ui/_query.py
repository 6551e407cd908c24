"""The console's list of workflows: newest update first, filtered, one bounded page at a time.

A page walks the store's ``recent`` index (``store/_recent.py``: every workflow by its
last update, with its state) backwards from a cursor, in the same read transaction reads
the name of each record it must test against a name filter (not its input), and then
only the records it shows, and of them and their steps only the fields a row shows. A
state filter compares the index's values, reading nothing else. Each request examines at
most ``budget`` index entries, so a page costs the same on a store of a hundred
workflows or of a million; when a rare state or name is asked for and the budget runs
out first, the page says how far back it looked and offers to go on from there.
"""

from __future__ import annotations

import binascii
import datetime
import struct
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from herder.runtime._inspect import _Reader
from herder.runtime._status import WorkflowStatus, in_plan_order
from herder.store import (
    RECENT_DB,
    Snapshot,
    StepRecord,
    StepState,
    Store,
    StoreCorrupt,
    WorkflowRecord,
    WorkflowState,
    check_record,
    encode,
    peek_field,
    peek_fields,
    split_recent_key,
    step_key,
    workflow_key,
)

PAGE_SIZE = 50
BUDGET = 5000
"""Index entries one page request may examine at most."""

_CHUNK = 500  # index entries read per read transaction
_MS = struct.Struct(">Q")  # a recent key: updated ms, then the workflow key


@dataclass(frozen=True, slots=True)
class Filters:
    """What the list is narrowed to; every field optional."""

    state: WorkflowState | None = None
    name: str | None = None
    since: float | None = None  # last updated at or after (seconds since the epoch)
    until: float | None = None  # last updated before

    @classmethod
    def parse(cls, query: dict[str, str]) -> Filters:
        """Filters from URL query values; a bad value is a ValueError naming it."""
        state = query.get("state") or None
        if state is not None and state not in WorkflowState.__members__:
            raise ValueError(f"unknown state {state!r}; use one of {', '.join(WorkflowState)}")
        return cls(
            state=None if state is None else WorkflowState(state),
            name=query.get("name") or None,
            since=_parse_time("since", query.get("since")),
            until=_parse_time("until", query.get("until")),
        )


def _parse_time(what: str, text: str | None) -> float | None:
    if not text:
        return None
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{what}: {text!r} is not a date and time (YYYY-MM-DDTHH:MM)") from None
    try:
        return moment.timestamp()
    except (ValueError, OverflowError, OSError) as exc:  # "year 0 is out of range"
        raise ValueError(
            f"{what}: {text!r} is out of range ({exc}); use a date after 1970 (no workflow "
            "is older)"
        ) from None


@dataclass(slots=True)
class Page:
    """One page of the list, and where the next (older) one starts."""

    rows: list[WorkflowStatus] = field(default_factory=list)
    next_cursor: str | None = None
    examined: int = 0
    budget_spent: bool = False  # stopped by the budget, not by a full page or the end
    oldest_examined: float | None = None
    corrupt: list[StoreCorrupt] = field(default_factory=list)


def workflow_page(
    store: Store,
    filters: Filters,
    cursor: str | None = None,
    *,
    size: int = PAGE_SIZE,
    budget: int = BUDGET,
) -> Page:
    """The ``size`` most recently updated workflows matching ``filters``, below ``cursor``."""
    page = Page()
    if not store.indexed:  # a store older than the index, not opened by a writer since
        return page
    reader = _Reader(store)
    upper = _cursor_key(cursor) if cursor else None
    if filters.until is not None:
        bound = _MS.pack(_ms(filters.until))
        upper = bound if upper is None else min(upper, bound)
    lower = _MS.pack(_ms(filters.since)) if filters.since is not None else b""
    state = None if filters.state is None else encode(str(filters.state))
    while len(page.rows) < size:
        if page.examined >= budget:
            page.budget_spent = True
            break
        limit = min(_CHUNK, budget - page.examined)
        # One entry more than it may examine, to know whether the oldest one is reached.
        start = upper

        def read(snap: Snapshot, start: bytes | None = start, n: int = limit + 1) -> _Entries:
            return _entries(snap, start, lower, n, state=state, name=filters.name)

        chunk = store.view(read)
        for i, (key, matches) in enumerate(chunk[:limit]):
            page.examined += 1
            upper = key
            if isinstance(matches, StoreCorrupt):  # a damaged index key: named, passed over
                page.corrupt.append(matches)
                continue
            page.oldest_examined = _MS.unpack_from(key)[0] / 1000
            if matches:
                _add(page, reader, key, filters.state)
            if len(page.rows) >= size:
                if i + 1 == len(chunk):
                    upper = None  # full, and nothing older is left
                break
        else:
            if len(chunk) <= limit:  # the oldest entry was examined
                upper = None
                break
    page.next_cursor = None if upper is None else binascii.hexlify(upper).decode()
    page.corrupt += reader.corrupt
    return page


_Entries = list[tuple[bytes, bool | StoreCorrupt]]


def _entries(
    snap: Snapshot,
    upper: bytes | None,
    lower: bytes,
    limit: int,
    *,
    state: bytes | None,
    name: str | None,
) -> _Entries:
    """Up to ``limit`` index entries below ``upper`` (all when None), newest first, each
    with whether it passes the filters: ``state`` (encoded) against the index's value, and
    ``name`` against the record, read in this same snapshot; a damaged key (no index
    key's shape) with what is wrong with it."""
    cur = snap.cursor(RECENT_DB)
    if upper is None:
        found = cur.last()
    elif cur.set_range(upper):
        found = cur.prev()
    else:
        found = cur.last()
    out: _Entries = []
    while found and len(out) < limit:
        key = bytes(cur.key())
        if key < lower:
            break
        try:
            split_recent_key(key)
        except StoreCorrupt as exc:  # (its id cannot be looked up: an empty key fails)
            out.append((key, exc))
            found = cur.prev()
            continue
        matches = state is None or bytes(cur.value()) == state
        if matches and name is not None:
            raw = snap.raw("workflows", key[_MS.size :])
            matches = raw is not None and _name_of(raw) == name
        out.append((key, matches))
        found = cur.prev()
    return out


def _name_of(raw: bytes) -> Any:
    """The ``name`` field of a stored workflow record, its input left undecoded (a name
    filter passes over thousands of records; decoding each whole cost seconds when they
    held inputs of some KB). None if it cannot be read: the entry is then left out, and
    ``herder check`` reports the record."""
    try:
        return peek_field(raw, WorkflowRecord, "name")
    except (KeyError, ValueError):
        return None


def _add(page: Page, reader: _Reader, key: bytes, state: WorkflowState | None) -> None:
    """Add the workflow of one index entry to the page, unless it is gone or has left
    ``state`` since the entry was read (it moved to the top of the list then)."""
    try:
        found = reader.store.view(partial(_row, key[_MS.size :]))
        if found is not None and state in (None, found[0].state):
            steps = in_plan_order(found[0], found[1], reader.plan(found[0]))
            page.rows.append(WorkflowStatus.from_records(found[0], steps))
    except StoreCorrupt as exc:
        page.corrupt.append(exc)


_SHOWN = ("id", "name", "version", "state", "created", "updated", "error")
"""The fields of a workflow record a row shows (not its input, nor its steps' results: a
page of 50 workflows with inputs and results near the 1 MB a value may have took 3.4 to
5.7 s to decode)."""


def _row(wkey: bytes, snap: Snapshot) -> tuple[WorkflowRecord, list[StepRecord]] | None:
    """The workflow at ``wkey`` and its steps, with only the fields a row shows read (in
    one snapshot); None if it is gone, StoreCorrupt for a record that does not read. (Its
    page reads it whole, checksum and all.)"""
    raw, db, at = snap.raw("workflows", wkey), "workflows", wkey
    if raw is None:
        return None
    try:
        fields = peek_fields(raw, WorkflowRecord, _SHOWN)  # (a field it lacks: its default)
        fields["state"] = WorkflowState(fields["state"])
        record = WorkflowRecord(**fields, input=None)
        check_record(record)
        if workflow_key(record.id) != wkey:
            raise ValueError(f"the record holds id {record.id!r:.80}")
        steps, prefix, db = [], step_key(record.id, ""), "steps"
        for at, value in snap.items("steps", prefix):
            state = StepState(peek_field(value, StepRecord, "state"))
            steps.append(StepRecord(record.id, at[len(prefix) :].decode("utf-8"), state))
            check_record(steps[-1])
    except (KeyError, TypeError, ValueError) as exc:  # (UnicodeDecodeError too)
        raise StoreCorrupt(db, at, f"bad record: {type(exc).__name__}: {exc}") from None
    return record, steps


def _ms(t: float) -> int:
    return max(0, int(t * 1000))


def _cursor_key(cursor: str) -> bytes:
    try:
        return binascii.unhexlify(cursor)
    except (binascii.Error, ValueError):
        raise ValueError(f"cursor {cursor!r} is not one this console gave out") from None
