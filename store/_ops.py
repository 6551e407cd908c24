"""What a write is: the operations the writer applies and the checks around them.

A :class:`Transition` is a few :class:`Put`/:class:`Delete` operations applied all or
nothing if every :class:`Expect` condition holds. :data:`Ops` is the Scheduler's plain
form, ``(db, key) -> bytes | None`` with no conditions. :func:`validate` refuses a
malformed transition before it is queued; :func:`check` evaluates conditions inside the
write transaction, through the batch's pending writes, against the values
:func:`stored_values` read for the whole batch at once. The thread that applies them is
``_writer.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, cast

import lmdb

from herder.store._codec import decode
from herder.store._errors import ConditionFailed, EncodeError, InvalidInput, StoreCorrupt
from herder.store._records import StepRecord, WorkflowRecord, stored_field

_RECORDS: dict[str, type[WorkflowRecord | StepRecord]] = {
    "workflows": WorkflowRecord,
    "steps": StepRecord,
}


def field_of(db: str, record: Any, field: str) -> Any:
    """Field ``field`` of a decoded value of ``db`` (a record in either layout, or any
    map); KeyError if it has none."""
    kind = _RECORDS.get(db)
    if kind is not None:
        return stored_field(record, kind, field)
    if not isinstance(record, dict):
        raise KeyError(field)
    return record[field]


@dataclass(slots=True, unsafe_hash=True)  # not frozen: made per write, 3x cheaper
class Put:
    """Store ``value`` (already msgpack-encoded) under ``key`` in database ``db``."""

    db: str
    key: bytes
    value: bytes


@dataclass(slots=True, unsafe_hash=True)  # not frozen: made per write, 3x cheaper
class Delete:
    """Remove ``key`` from database ``db``; deleting a missing key is not an error."""

    db: str
    key: bytes


@dataclass(slots=True, unsafe_hash=True)  # not frozen: made per write, 3x cheaper
class Expect:
    """A compare-and-set condition checked inside the write transaction.

    It sees the effects of earlier transitions of the same batch.

    - ``exists=False``: the key must be absent.
    - ``field=None`` (and ``exists=True``): the key must exist.
    - otherwise the decoded record (a map) must hold ``value`` under ``field``.
    """

    db: str
    key: bytes
    field: str | None = None
    value: Any = None
    exists: bool = True


@dataclass(slots=True, unsafe_hash=True)  # not frozen: made per write, 3x cheaper
class Transition:
    """Operations applied atomically, all or nothing, if every ``expect`` holds."""

    ops: tuple[Put | Delete, ...]
    expect: tuple[Expect, ...] = ()


Outcome = BaseException | None
Callback = Callable[[list[Outcome]], None]
Ops = dict[tuple[str, bytes], "bytes | None"]
"""Plain writes: ``(db, key) -> encoded value``, or None to delete the key."""
BatchSink = Callable[[list[Any], Outcome], None]
"""Called once per write transaction with the effects of every batch it held, in order."""


def validate(
    t: Transition, handles: Mapping[str, Any], max_key: int, max_value: int | None
) -> None:
    """Raise :class:`InvalidInput` (or :class:`EncodeError` for a value over ``max_value``)
    if ``t`` names an unknown database, a bad key (a condition's too) or a value that is
    not encoded bytes."""
    for op in t.ops:
        if op.db not in handles:
            raise InvalidInput(f"unknown database {op.db!r}; use one of {sorted(handles)}")
        key = op.key
        if type(key) is not bytes or not 0 < len(key) <= max_key:
            raise InvalidInput(
                f"key for database {op.db!r} must be 1..{max_key} bytes, got {key!r:.80}"
            )
        if type(op) is Put:
            if not isinstance(op.value, bytes):  # (or _recent.Indexed)
                raise InvalidInput(
                    f"Put value must be msgpack-encoded bytes (use encode()), "
                    f"got {type(op.value).__name__}"
                )
            # The limit guards against user payloads; meta holds herder's own records.
            limit = None if op.db == "meta" else max_value
            if limit is not None and len(op.value) > limit:
                raise EncodeError(
                    f"value for {op.db!r} key {key!r:.80} is {len(op.value)} bytes; the "
                    f"limit is {limit}: store large payloads elsewhere"
                )
        elif type(op) is not Delete:
            raise InvalidInput(f"a transition's ops must be Put or Delete, got {op!r:.80}")
    for e in t.expect:  # (its key is read in the batch's write: a bad one failed them all)
        if e.db not in handles or type(e.key) is not bytes or not 0 < len(e.key) <= max_key:
            validate(Transition(ops=(Delete(e.db, e.key),)), handles, max_key, max_value)


def check(
    expects: tuple[Expect, ...], pending: Ops, stored: Mapping[tuple[str, bytes], bytes]
) -> Outcome:
    """The first of ``expects`` that does not hold, as the error that skips its
    transition, or None; ``pending`` (the batch's earlier writes) is read before
    ``stored`` (what the write transaction held of those keys before the batch,
    :func:`stored_values`)."""
    for e in expects:
        db_key = (e.db, e.key)
        raw = pending[db_key] if db_key in pending else stored.get(db_key)
        if not e.exists:
            if raw is not None:
                return ConditionFailed(f"{e.db} key {e.key!r} exists but was expected absent")
            continue
        if raw is None:
            return ConditionFailed(f"{e.db} key {e.key!r} is absent but was expected")
        if e.field is None:
            continue
        try:
            record = decode(raw, db=e.db, key=e.key)
        except StoreCorrupt as exc:
            return exc
        try:
            value = field_of(e.db, record, e.field)
        except KeyError:
            return ConditionFailed(f"{e.db} key {e.key!r} has no field {e.field!r}")
        if value != e.value:
            return ConditionFailed(
                f"{e.db} key {e.key!r}: {e.field} is {value!r:.80}, expected {e.value!r:.80}"
            )
    return None


def stored_values(
    txn: lmdb.Transaction, handles: Mapping[str, Any], expects: list[Expect]
) -> dict[tuple[str, bytes], bytes]:
    """What ``txn`` holds under the keys ``expects`` read (absent keys left out), with one
    ``getmulti`` per database: a ``txn.get`` per condition (one per ``start()``) hands
    the GIL to a waiting thread, which was about a tenth of the writer's futex calls."""
    keys: dict[str, list[bytes]] = {}
    for e in expects:
        got = keys.get(e.db)
        if got is None:
            keys[e.db] = got = []
        got.append(e.key)
    stored: dict[tuple[str, bytes], bytes] = {}
    for db, wanted in keys.items():
        with txn.cursor(db=handles[db]) as cursor:
            for key, value in cursor.getmulti(wanted):  # (bytes: no buffers=True)
                stored[(db, cast("bytes", key))] = cast("bytes", value)
    return stored


def validate_ops(ops: Ops, handles: Mapping[str, Any], max_key: int, max_value: int | None) -> None:
    """:func:`validate` for plain ops (``Writer.submit_batch``): checked as a transition of
    the same puts and deletes would be, in one pass while they are all well formed."""
    for db, key in ops:
        if db not in handles or type(key) is not bytes or not 0 < len(key) <= max_key:
            validate(Transition(ops=(Delete(db, key),)), handles, max_key, max_value)  # raises
    if max_value is not None:
        for (db, key), value in ops.items():
            if value is not None and len(value) > max_value and db != "meta":
                validate(Transition(ops=(Put(db, key, value),)), handles, max_key, max_value)
