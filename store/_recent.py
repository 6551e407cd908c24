"""The ``recent`` index: every workflow by its last update, so ``herder ls`` (newest
first) and retention (oldest finished first) read a range instead of the whole store.

Two databases, kept by the writer in the same transaction as every write of a
``workflows`` record (see :func:`maintain`, which the :class:`Writer` calls with every
such write of a transaction), so they can never disagree with the records:

- ``recent``: key ``updated ms (8 bytes, big-endian) + workflow key``, value the
  workflow's state (encoded); a range scan in either direction, and the state filter
  compares encoded bytes without decoding.
- ``recent_at``: key ``workflow key``, value the 8-byte ``updated ms`` it is indexed
  under, so the old entry is found without reading the old record.

and in ``meta`` under :data:`COUNTS_KEY` how many entries hold each (encoded) state,
so ``rt.stats()`` reads one value instead of counting the index (:func:`stored_counts`):
kept by :func:`maintain` in the same transaction, and carried over to each lease taken
(:func:`take_counts`) if the holder before kept them, else counted afresh: a store an
older herder wrote, or whose value was damaged, is right again from then on.

A store written before the index existed gets it built once, in the transaction that
first takes its lease (:func:`build`; a standby does not build it while an older runtime
writes); until then a reader falls back to a scan (``indexed`` false).
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import operator
import struct
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any, cast

import lmdb

from herder.store._codec import decode, encode
from herder.store._errors import StoreCorrupt
from herder.store._records import WorkflowRecord, WorkflowState

RECENT_DB = "recent"
RECENT_AT_DB = "recent_at"
BUILT_KEY = b"recent_index"
"""``meta`` key set once the index covers every workflow."""
COUNTS_KEY = b"recent_counts"
"""``meta`` key of the index's entries counted by state (see the module docstring)."""

_MS = struct.Struct(">Q")
PAGE = 1000


def to_ms(t: float) -> int:
    """Seconds (the records' ``updated``) to the index's non-negative milliseconds."""
    return max(0, int(t * 1000))


UNREADABLE = ""
"""The state indexed for a value that is not a readable record: listed (so readers
report it as corrupt), never purged."""

_FIELDS = [f.name for f in dataclasses.fields(WorkflowRecord)]
_STATE_AT = 1 + _FIELDS.index("state")  # in a schema 3 array, [3, field, field, ...]
_UPDATED_AT = 1 + _FIELDS.index("updated")
_STATES = {str(s): encode(str(s)) for s in WorkflowState}
"""Each state's encoded index value, encoded once (the writer indexes every workflow write)."""
_UNREADABLE_STATE = encode(UNREADABLE)
_NOT_A_RECORD = (StoreCorrupt, LookupError, TypeError, ValueError, OverflowError, struct.error)


class Indexed(bytes):
    """An encoded workflow value that carries its index facts (``facts``: the 8-byte
    ``updated ms`` and the encoded state), made by :func:`indexed` where the record was
    just built (a new workflow), so the writer's upkeep does not decode it again."""

    facts: tuple[bytes, bytes]


def indexed(raw: bytes, updated: float, state: WorkflowState) -> Indexed:
    """``raw`` (the encoded workflow record) with the index facts of its ``updated`` and
    ``state``: they must be the record's own (tested against decoding)."""
    value = Indexed(raw)
    value.facts = (_MS.pack(to_ms(updated)), _STATES[state])
    return value


def index_entry(key: bytes, raw: bytes, old: bytes | None) -> tuple[bytes, bytes]:
    """The 8-byte ``updated ms`` and the encoded state to index the workflow value ``raw``
    under; an unreadable value keeps its old time (``old``, else 0) and the state
    :data:`UNREADABLE`. Reads the two fields of either layout (a schema 3 array or a
    schema 2 map) straight from the decoded value, without building a record, or takes
    them from an :class:`Indexed` value. (``herder check`` holds the index to it.)"""
    if type(raw) is Indexed:
        return raw.facts
    try:
        data = decode(raw, db="workflows", key=key)
        if type(data) is list:
            state, updated = data[_STATE_AT], data[_UPDATED_AT]
        elif type(data) is dict:
            state, updated = data["state"], data["updated"]
        else:
            raise TypeError(f"a workflow record is an array or a map, not {type(data).__name__}")
        ms = _MS.pack(to_ms(updated))
    except _NOT_A_RECORD:
        return old or _MS.pack(0), _UNREADABLE_STATE
    value = _STATES.get(state) if type(state) is str else None
    return ms, encode(str(state)) if value is None else value


def split(index_key: bytes) -> tuple[int, str]:
    """Inverse of the ``recent`` key: (updated ms, workflow id); StoreCorrupt for a key
    that is not one (damaged: too short, or an id that is not UTF-8)."""
    try:
        (ms,) = _MS.unpack_from(index_key)
        return ms, index_key[_MS.size :].decode("utf-8")
    except (struct.error, UnicodeDecodeError) as exc:
        raise StoreCorrupt(RECENT_DB, index_key, f"not an index key: {exc}") from None


def maintain(
    txn: lmdb.Transaction,
    written: list[tuple[bytes, bytes | None]],
    absent: set[bytes],
    handles: dict[str, Any],
) -> None:
    """Move the index entries of the workflow records a write transaction wrote (a value)
    or deleted (None), each key once (called by the writer thread, in that transaction).
    ``absent``: keys the transaction read as absent before it wrote (a new workflow's):
    they have no entry to move. Every py-lmdb call may hand the GIL to another thread (a
    ``getmulti`` gives it up three times per key found, a ``get`` once), so the new
    entries are written with one ``putmulti`` per database; an old entry is found and
    deleted by one cursor, which reads its state on the way for the counts by state
    (:data:`COUNTS_KEY`, read and written once per transaction that moves a state)."""
    at_db, recent_db = handles[RECENT_AT_DB], handles[RECENT_DB]
    get, delete = txn.get, txn.delete
    entries: list[tuple[bytes, bytes]] = []
    times: list[tuple[bytes, bytes]] = []
    lost: list[bytes] = []  # the states of the entries moved or deleted, for the counts
    with txn.cursor(db=recent_db) as moving:
        for key, value in written:
            old = None if key in absent else cast("bytes | None", get(key, db=at_db))
            if old is not None and len(old) != _MS.size:  # damaged: a scan finds its entry
                lost += _drop_entries(txn, recent_db, key)
                old = None
            if old is not None and moving.set_key(old + key):
                lost.append(cast(bytes, moving.value()))
                moving.delete()
            if value is None:
                if old is not None:
                    delete(key, db=at_db)
                continue
            ms, state = index_entry(key, value, old)
            entries.append((ms + key, state))
            times.append((key, ms))
    if entries:
        with txn.cursor(db=recent_db) as cursor:
            cursor.putmulti(entries)
        with txn.cursor(db=at_db) as cursor:
            cursor.putmulti(times)
    gained, gone = Counter(map(operator.itemgetter(1), entries)), Counter(lost)  # (in C)
    if gained != gone:
        gained.subtract(gone)
        _add_counts(txn, handles["meta"], gained)


def _drop_entries(txn: lmdb.Transaction, recent_db: Any, key: bytes) -> list[bytes]:
    """Delete every ``recent`` entry of workflow ``key`` (a scan of the whole index: only
    when its ``recent_at`` value, which names the one entry, is damaged); their states."""
    with txn.cursor(db=recent_db) as cursor:
        pairs = cast(Iterator[tuple[bytes, bytes]], cursor)
        stale = [(k, v) for k, v in pairs if k[_MS.size :] == key]
    for k, _ in stale:
        txn.delete(k, db=recent_db)
    return [v for _, v in stale]


def _add_counts(txn: lmdb.Transaction, meta: Any, moved: Counter[bytes]) -> None:
    """Add ``moved`` to the stored counts (none stored: the lease's take counts them)."""
    raw = cast("bytes | None", txn.get(COUNTS_KEY, db=meta))
    kept = None if raw is None else read_counts(raw)
    if kept is None:
        return  # (damaged: counted again at the next take; readers count the index)
    incarnation, counts = kept
    counts.update(moved)
    txn.put(COUNTS_KEY, _counts_value(incarnation, counts), db=meta)


def _counts_value(incarnation: int, counts: Counter[bytes]) -> bytes:
    return encode([incarnation, [[v, n] for v, n in counts.items() if n]])  # (no zeros)


def read_counts(raw: bytes) -> tuple[int, Counter[bytes]] | None:
    """The stored counts (:data:`COUNTS_KEY`'s value): the incarnation of the lease they
    were last carried over to (:func:`take_counts`), and the entries by encoded state."""
    try:
        incarnation, pairs = decode(raw, db="meta", key=COUNTS_KEY)
        return int(incarnation), Counter({bytes(v): int(n) for v, n in pairs})
    except (StoreCorrupt, TypeError, ValueError):
        return None


def take_counts(
    txn: lmdb.Transaction, handles: dict[str, Any], incarnation: int, before: int | None
) -> bool:
    """Carry the counts over to lease ``incarnation`` if they carry the one it replaced,
    ``before`` (not always ours less one: ``reserve_incarnations``). True if counted afresh."""
    meta = handles["meta"]
    raw = cast("bytes | None", txn.get(COUNTS_KEY, db=meta))
    kept = None if raw is None else read_counts(raw)
    if kept is not None and kept[0] == before:
        txn.put(COUNTS_KEY, _counts_value(incarnation, kept[1]), db=meta)
        return False
    with txn.cursor(db=handles[RECENT_DB]) as cursor:
        found = Counter(cast(Iterator[bytes], cursor.iternext(keys=False, values=True)))
    txn.put(COUNTS_KEY, _counts_value(incarnation, found), db=meta)
    return True


def stored_counts(txn: lmdb.Transaction, meta: Any) -> tuple[int, dict[str, int]] | None:
    """The counts :func:`maintain` keeps, as :func:`count` returns them, with the lease's
    incarnation they carry; None if there are none (or they are damaged)."""
    raw = cast("bytes | None", txn.get(COUNTS_KEY, db=meta))
    kept = None if raw is None else read_counts(raw)
    return None if kept is None else (kept[0], _by_state(kept[1]))


def build(txn: lmdb.Transaction, handles: dict[str, Any]) -> int:
    """Index every workflow of a store written before the index existed; returns how many."""
    meta = handles["meta"]
    if txn.get(BUILT_KEY, db=meta) is not None:
        return 0
    n = 0
    recent_db, at_db = handles[RECENT_DB], handles[RECENT_AT_DB]
    for key, raw in cast(Iterator[tuple[bytes, bytes]], txn.cursor(db=handles["workflows"])):
        ms, state = index_entry(key, raw, None)
        txn.put(ms + key, state, db=recent_db)
        txn.put(key, ms, db=at_db)
        n += 1
    txn.put(BUILT_KEY, encode(1), db=meta)
    return n


def scan(
    read: Callable[[Callable[[lmdb.Transaction], Any]], Any],
    handle: Any,
    *,
    newest_first: bool,
    states: frozenset[str] | None = None,
    since_ms: int | None = None,
    until_ms: int | None = None,
    damaged: list[StoreCorrupt] | None = None,
) -> Iterator[tuple[int, str, str]]:
    """(updated ms, workflow id, state) from the index, paged in short read transactions;
    a damaged key (:func:`split`) is passed over, noted in ``damaged`` if given (``herder
    check`` names it; the workflow's own record is intact).

    ``newest_first`` walks from the newest update down to ``since_ms``; otherwise from
    the oldest up to (not including) ``until_ms``. ``states`` keeps only those states.
    """
    wanted = None if states is None else {encode(s): s for s in states}
    low = b"" if since_ms is None else _MS.pack(since_ms)
    high = None if until_ms is None else _MS.pack(until_ms)
    position: bytes | None = None
    while True:

        def page(
            txn: lmdb.Transaction, after: bytes | None = position
        ) -> list[tuple[bytes, bytes]]:
            cur = txn.cursor(db=handle)
            out: list[tuple[bytes, bytes]] = []
            if newest_first:
                if after is None:
                    ok = cur.last()
                else:  # the page starts right below the last key yielded
                    ok = cur.prev() if cur.set_range(after) else cur.last()
                while ok and len(out) < PAGE:
                    key = cast(bytes, cur.key())
                    if key < low:
                        break
                    out.append((key, cast(bytes, cur.value())))
                    ok = cur.prev()
            else:
                ok = cur.set_range(low) if after is None else cur.set_range(after)
                if ok and after is not None and cur.key() == after:
                    ok = cur.next()
                while ok and len(out) < PAGE:
                    key = cast(bytes, cur.key())
                    if high is not None and key >= high:
                        break
                    out.append((key, cast(bytes, cur.value())))
                    ok = cur.next()
            return out

        items = cast(list[tuple[bytes, bytes]], read(page))
        for key, value in items:
            if wanted is not None and value not in wanted:
                continue
            try:
                ms, wid = split(key)
            except StoreCorrupt as exc:
                if damaged is not None:
                    damaged.append(exc)
                continue
            if wanted is not None:
                yield ms, wid, wanted[value]
                continue
            try:
                state = str(decode(value, db=RECENT_DB, key=key))
            except StoreCorrupt:  # a damaged index value: listed, so the workflow's
                state = UNREADABLE  # own record tells (or is reported corrupt)
            yield ms, wid, state
        if len(items) < PAGE:
            return
        position = items[-1][0]


def window(
    cur: lmdb.Cursor,
    *,
    after: bytes | None,
    until_ms: int,
    states: frozenset[str],
    limit: int,
    most: int,
) -> tuple[list[tuple[int, str, str]], bytes | None]:
    """(updated ms, workflow id, state) of the entries in ``states`` from just after the
    key ``after`` (None: the oldest) up to (not including) ``until_ms``, oldest first, at
    most ``limit`` of them and reading at most ``most`` entries (``cur``: a cursor on
    ``recent`` in one read transaction); and the key to go on after, or None when the
    range is read to its end.

    For a caller that comes back (retention, each sweep): its cost is bounded however
    many entries in other states (unfinished workflows) lie in the range."""
    wanted = {encode(s): s for s in states}
    high = _MS.pack(until_ms)
    ok = cur.set_range(b"" if after is None else after)
    if ok and after is not None and cur.key() == after:
        ok = cur.next()
    out: list[tuple[int, str, str]] = []
    key = None
    for _ in range(most):
        if not ok or cast(bytes, cur.key()) >= high:
            return out, None
        key = cast(bytes, cur.key())
        state = wanted.get(cast(bytes, cur.value()))
        if state is not None:
            with contextlib.suppress(StoreCorrupt):  # (a damaged key: passed over)
                out.append((*split(key), state))
            if len(out) >= limit:
                return out, key
        ok = cur.next()
    return out, key if ok and cast(bytes, cur.key()) < high else None


COUNT_PAGE = 50_000
"""Index entries :func:`count` reads per read transaction (~7 ms of the GIL each)."""


def count(read: Callable[[Callable[[lmdb.Transaction], Any]], Any], handle: Any) -> dict[str, int]:
    """How many workflows the index lists in each state: one of ours, or another the
    record was written with (see :func:`index_entry`), or :data:`UNREADABLE` (a record the
    writer could not read, or a damaged index value). Only its values
    are read, counted as they are stored (a few distinct encoded states) in C, a page
    per short read transaction: ~0.2 s per million workflows, where decoding their
    records takes ~4 s (200,000: 0.04 s against 0.85 s)."""
    counted: Counter[bytes] = Counter()
    after: bytes | None = None
    while True:

        def page(
            txn: lmdb.Transaction, after: bytes | None = after
        ) -> tuple[bytes, Counter[bytes]]:
            cur = txn.cursor(db=handle)
            ok = cur.first() if after is None else cur.set_range(after)
            if ok and after is not None and cur.key() == after:
                ok = cur.next()
            if not ok:
                return b"", Counter()
            values = cast(Iterator[bytes], cur.iternext(keys=False, values=True))
            found = Counter(itertools.islice(values, COUNT_PAGE))
            return cast(bytes, cur.key()), found  # (the key of the last one counted)

        after, found = cast(tuple[bytes, Counter[bytes]], read(page))
        counted.update(found)
        if found.total() < COUNT_PAGE:
            break
    return _by_state(counted)


def _by_state(counted: Counter[bytes]) -> dict[str, int]:
    """Counts by encoded state to counts by state (:data:`UNREADABLE` for a value that is
    not a state)."""
    states: Counter[str] = Counter()
    for value, n in counted.items():
        try:
            state = decode(value, db=RECENT_DB, key=b"")
        except StoreCorrupt:
            state = UNREADABLE
        states[state if type(state) is str else UNREADABLE] += n
    return dict(states)
