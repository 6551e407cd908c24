"""Fuzzing the decoder: whatever bytes sit in the store, reading them yields a record or
:class:`StoreCorrupt` naming the key, never a hang, MemoryError, RecursionError, or any
other exception.

"Reading" is the full path a stored record takes: ``decode`` (msgpack with limits) and
``_parse`` (build the record, check every field's type).
"""

from __future__ import annotations

import struct
import time
import zlib
from collections.abc import Callable
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from herder.store import StoreCorrupt
from herder.store._codec import decode, encode
from herder.store._plan import Plan, StepSpec
from herder.store._policy import RetryPolicy
from herder.store._reads import _parse
from herder.store._records import StepRecord, StepState, WorkflowRecord, WorkflowState
from herder.store._validate import check_plan

KEY = b"k\x00ey"


def read_plan(data: Any) -> Plan:
    plan = _parse(Plan.from_dict, data, "definitions", KEY)
    try:
        check_plan(plan)
    except TypeError as exc:
        raise StoreCorrupt("definitions", KEY, str(exc)) from exc
    return plan


READERS: dict[str, Callable[[Any], Any]] = {
    "workflows": lambda data: _parse(WorkflowRecord.from_dict, data, "workflows", KEY),
    "steps": lambda data: _parse(StepRecord.from_dict, data, "steps", KEY),
    "definitions": read_plan,
}

WORKFLOW = WorkflowRecord(
    "order-42",
    "trip",
    3,
    {"who": "ada", "n": [1, 2.5, None]},
    WorkflowState.RUNNING,
    1.5,
    2.5,
    "an error",
    recoveries=2,
)
STEP = StepRecord(
    "order-42",
    "hotel",
    StepState.RETRY_WAIT,
    attempt=2,
    token=(7 << 32) + 9,
    deadline=10.5,
    retry_at=12.25,
    timer_ms=12250,
    result={"pnr": "X1"},
    error="RuntimeError: down",
    error_type="builtins.RuntimeError",
    heartbeat=[1],
)
RECORDS: dict[str, Any] = {  # by "database" or "database/layout": each layout is fuzzed
    "workflows": WORKFLOW.to_stored(),
    "workflows/v2": WORKFLOW.to_dict(),
    "steps": STEP.to_stored(),
    "steps/v2": STEP.to_dict(),
    "definitions": Plan("trip", 3, (
        StepSpec("flight", "airline", "book", compensate="cancel", timeout=30.0,
                 retry=RetryPolicy(max_attempts=5)),
        StepSpec("hotel", "hotels", "book", after=("flight",)),
    )).to_dict(),
}  # fmt: skip


def read(label: str, raw: bytes) -> Any:
    """Read raw bytes as the database of ``label`` would: a record, or StoreCorrupt.
    Anything else fails."""
    db = label.split("/", maxsplit=1)[0]
    return READERS[db](decode(raw, db=db, key=KEY))


def with_checksum(body: bytes) -> bytes:
    """Stored bytes for a msgpack body, as ``encode`` writes them."""
    return body + zlib.crc32(body).to_bytes(4, "big")


def assert_reads_or_is_corrupt(label: str, raw: bytes) -> None:
    try:
        read(label, raw)
    except StoreCorrupt as exc:
        error = exc
    else:
        return
    assert error.key == KEY
    assert error.db == label.split("/", maxsplit=1)[0]


@pytest.mark.parametrize("db", sorted(RECORDS))
def test_every_truncation_of_a_record_is_store_corrupt(db: str) -> None:
    raw = encode(RECORDS[db])
    assert read(db, raw) is not None
    body = msgpack.packb(RECORDS[db], use_bin_type=True)
    for cut in range(len(raw)):
        with pytest.raises(StoreCorrupt) as raised:
            read(db, raw[:cut])
        assert raised.value.key == KEY
        if cut < len(body):  # the body cut short behind a valid checksum
            with pytest.raises(StoreCorrupt):
                read(db, with_checksum(body[:cut]))


@pytest.mark.parametrize("db", sorted(RECORDS))
@pytest.mark.parametrize("tail", [b"\x00", b"\xc1", b"\x91\xc0", b"garbage" * 100])
def test_trailing_garbage_after_a_record_is_store_corrupt(db: str, tail: bytes) -> None:
    with pytest.raises(StoreCorrupt, match="checksum mismatch"):
        read(db, encode(RECORDS[db]) + tail)
    # Behind a valid checksum (a bug writing records), msgpack itself notices.
    with pytest.raises(StoreCorrupt, match="ExtraData"):
        read(db, with_checksum(msgpack.packb(RECORDS[db]) + tail))


@pytest.mark.parametrize("db", sorted(RECORDS))
def test_every_single_bit_flip_is_store_corrupt(db: str) -> None:
    raw = encode(RECORDS[db])
    for bit in range(len(raw) * 8):
        flipped = bytearray(raw)
        flipped[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(StoreCorrupt, match="checksum mismatch"):
            read(db, bytes(flipped))


@pytest.mark.parametrize("db", sorted(RECORDS))
def test_a_flipped_body_behind_a_valid_checksum_reads_well_typed_or_is_corrupt(db: str) -> None:
    body = msgpack.packb(RECORDS[db], use_bin_type=True)
    corrupt = 0
    for bit in range(len(body) * 8):  # what a bug writing records could produce
        flipped = bytearray(body)
        flipped[bit // 8] ^= 1 << (bit % 8)
        try:
            read(db, with_checksum(bytes(flipped)))  # _parse checks every field's type
        except StoreCorrupt:
            corrupt += 1
    assert corrupt > len(body)  # type bytes, lengths and field names are all caught


HUGE_HEADERS = {
    "array32 of 4G items": b"\xdd\xff\xff\xff\xff" + b"\xc0" * 8,
    "map32 of 4G pairs": b"\xdf\xff\xff\xff\xff" + b"\xa1a\xc0" * 4,
    "str32 of 4 GB": b"\xdb\xff\xff\xff\xff" + b"abc",
    "bin32 of 4 GB": b"\xc6\xff\xff\xff\xff" + b"abc",
    "ext32 of 4 GB": b"\xc9\xff\xff\xff\xff\x01" + b"abc",
    "array16 of 65535 items": b"\xdc\xff\xff" + b"\xc0",
    "nested arrays of 4G items": b"\xdd\xff\xff\xff\xff" * 50,
    "record map claiming 2G fields": b"\xdf\x7f\xff\xff\xff\xa1v\x01",
}


@pytest.mark.parametrize("raw", HUGE_HEADERS.values(), ids=HUGE_HEADERS.keys())
def test_huge_length_headers_over_a_tiny_body_fail_fast(raw: bytes) -> None:
    started = time.perf_counter()
    for db in RECORDS:
        with pytest.raises(StoreCorrupt):
            read(db, with_checksum(raw))  # a valid checksum: msgpack's limits must hold
    assert time.perf_counter() - started < 1.0  # nothing was allocated for the claim


NESTED = {
    "arrays 100k deep": b"\x91" * 100_000 + b"\xc0",
    "maps 100k deep": b"\x81\xa1a" * 100_000 + b"\xc0",
    "arrays 100k deep, truncated": b"\x91" * 100_000,
    "a record whose input is 100k deep": (b"\x82\xa1v\x01\xa5input" + b"\x91" * 100_000 + b"\xc0"),
}


@pytest.mark.parametrize("raw", NESTED.values(), ids=NESTED.keys())
def test_deeply_nested_data_is_store_corrupt_not_a_recursion_error(raw: bytes) -> None:
    for db in RECORDS:
        with pytest.raises(StoreCorrupt):
            read(db, with_checksum(raw))


def test_a_record_at_the_size_ceiling_is_refused_before_decoding() -> None:
    from herder.store._codec import MAX_RECORD_BYTES

    with pytest.raises(StoreCorrupt, match="over"):
        decode(b"\xc0" * (MAX_RECORD_BYTES + 5), db="steps", key=KEY)


def _plain(depth: int = 3) -> st.SearchStrategy[Any]:
    ints = st.integers(min_value=-(2**63), max_value=2**64 - 1)
    leaves = st.none() | st.booleans() | ints | st.floats() | st.text() | st.binary()
    return st.recursive(
        leaves,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
        max_leaves=20,
    )


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(db=st.sampled_from(sorted(RECORDS)), raw=st.binary(max_size=400))
def test_arbitrary_bytes_read_as_a_record_or_store_corrupt(db: str, raw: bytes) -> None:
    assert_reads_or_is_corrupt(db, raw)
    assert_reads_or_is_corrupt(db, with_checksum(raw))  # past the checksum, into msgpack


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    db=st.sampled_from(sorted(RECORDS)),
    field=st.text(max_size=20),
    value=_plain(),
    drop=st.booleans(),
)
def test_a_record_with_any_field_changed_or_missing_reads_or_is_store_corrupt(
    db: str, field: str, value: Any, drop: bool
) -> None:
    if isinstance(RECORDS[db], list):  # a schema 3 array: change or drop one position
        items = list(RECORDS[db])
        at = len(field) % len(items)
        if drop:
            del items[at:]
        else:
            items[at] = value
        assert_reads_or_is_corrupt(db, with_checksum(msgpack.packb(items, use_bin_type=True)))
        return
    record = dict(RECORDS[db])
    target = field if field in record or not record else sorted(record)[len(field) % len(record)]
    if drop:
        record.pop(target, None)
    else:
        record[target] = value
    assert_reads_or_is_corrupt(db, with_checksum(msgpack.packb(record, use_bin_type=True)))


@settings(max_examples=100, deadline=None)
@given(raw=st.binary(min_size=0, max_size=64))
def test_malformed_timer_keys_are_store_corrupt(raw: bytes) -> None:
    from herder.store._keys import split_timer_key

    try:
        due, wf, step = split_timer_key(raw)
    except (struct.error, UnicodeDecodeError):
        return  # Store.due_timers turns exactly these into StoreCorrupt
    assert isinstance(due, int)
    assert isinstance(wf, str)
    assert isinstance(step, str)
