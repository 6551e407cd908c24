"""The console's list of workflows: newest first, filtered, one bounded page at a time.

A page walks the ``started`` index (``store/_started.py``) backwards from a cursor and
reads only the records it shows or must test against a filter. Each request examines at
most ``budget`` index entries, so a page costs the same on a store of a hundred workflows
or of a million; when a rare state is asked for and the budget runs out first, the page
says how far back it looked and offers to go on from there.
"""

from __future__ import annotations

import binascii
import datetime
from dataclasses import dataclass, field
from typing import Any

from herder.runtime._inspect import _Reader
from herder.runtime._status import WorkflowStatus
from herder.store import (
    STARTED_DB,
    Snapshot,
    Store,
    StoreCorrupt,
    WorkflowState,
    decode,
    split_started_key,
    time_key,
)

PAGE_SIZE = 50
BUDGET = 5000
"""Index entries one page request may examine at most."""

_CHUNK = 500  # index entries read per read transaction
_TIME_BYTES = len(time_key(0))  # a started key: created ms, then the workflow key


@dataclass(frozen=True, slots=True)
class Filters:
    """What the list is narrowed to; every field optional."""

    state: WorkflowState | None = None
    name: str | None = None
    since: float | None = None  # created at or after (seconds since the epoch)
    until: float | None = None  # created before

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
        return datetime.datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise ValueError(f"{what}: {text!r} is not a date and time (YYYY-MM-DDTHH:MM)") from None


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
    """The newest ``size`` workflows matching ``filters``, older than ``cursor``."""
    page = Page()
    if store.count(STARTED_DB) == 0:  # nothing started, or a store older than the index
        return page
    reader = _Reader(store)
    upper = _cursor_key(cursor) if cursor else None
    if filters.until is not None:
        bound = time_key(filters.until)
        upper = bound if upper is None else min(upper, bound)
    lower = time_key(filters.since) if filters.since is not None else b""
    while len(page.rows) < size:
        if page.examined >= budget:
            page.budget_spent = True
            break
        limit = min(_CHUNK, budget - page.examined)
        # One entry more than it may examine, to know whether the oldest one is reached.
        start = upper

        def read(snap: Snapshot, start: bytes | None = start, n: int = limit + 1) -> _Entries:
            return _entries(snap, start, lower, n, with_state=filters.state is not None)

        chunk = store.view(read)
        for i, (key, raw, state) in enumerate(chunk[:limit]):
            page.examined += 1
            upper = key
            page.oldest_examined = split_started_key(key)[0]
            if filters.state is None or state == filters.state.value:
                _add_if_matching(page, reader, filters, key, raw)
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


_Entries = list[tuple[bytes, bytes, Any]]


def _entries(
    snap: Snapshot, upper: bytes | None, lower: bytes, limit: int, *, with_state: bool
) -> _Entries:
    """Up to ``limit`` index entries below ``upper`` (all when None), newest first, each
    with its workflow's stored state when ``with_state`` (read in the same snapshot: a
    state filter then costs no read transaction per entry)."""
    cur = snap.cursor(STARTED_DB)
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
        state = None
        if with_state:
            raw = snap.raw("workflows", key[_TIME_BYTES:])
            state = _state_of(raw, key) if raw is not None else None
        out.append((key, bytes(cur.value()), state))
        found = cur.prev()
    return out


def _state_of(raw: bytes, key: bytes) -> Any:
    """The ``state`` field of a stored workflow record (None if it cannot be read: the
    entry is then skipped, and the record's own read reports it)."""
    try:
        value = decode(raw, db="workflows", key=key)
    except StoreCorrupt:
        return None
    return value.get("state") if isinstance(value, dict) else None


def _add_if_matching(page: Page, reader: _Reader, filters: Filters, key: bytes, raw: bytes) -> None:
    """Add the workflow of one index entry to the page if it passes the filters."""
    try:
        if filters.name is not None and decode(raw, db=STARTED_DB, key=key) != filters.name:
            return
        record = reader.store.get_workflow(split_started_key(key)[1])
        if record is None or (filters.state is not None and record.state is not filters.state):
            return
        page.rows.append(reader.status(record))
    except StoreCorrupt as exc:
        page.corrupt.append(exc)
    except UnicodeDecodeError as exc:
        page.corrupt.append(StoreCorrupt(STARTED_DB, key, str(exc)))


def _cursor_key(cursor: str) -> bytes:
    try:
        return binascii.unhexlify(cursor)
    except (binascii.Error, ValueError):
        raise ValueError(f"cursor {cursor!r} is not one this console gave out") from None


def has_index(store: Store) -> bool:
    """False for a store written before the ``started`` index (then nothing is listed)."""
    return store.count(STARTED_DB) > 0 or store.count("workflows") == 0
