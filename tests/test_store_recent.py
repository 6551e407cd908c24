"""The ``recent`` index the writer keeps beside every workflow record (``_recent.py``):
it agrees with the records whatever their layout, and an unreadable record never fails
the batch that writes it."""

from __future__ import annotations

import dataclasses
import pathlib
import struct
import subprocess
import sys
from collections.abc import Iterator

import pytest

from herder.store import (
    Delete,
    Put,
    Store,
    Transition,
    WorkflowRecord,
    WorkflowState,
    decode,
    encode,
    workflow_key,
)
from herder.store import _recent as recent
from herder.store._lease import read_lease
from herder.store._recent import (
    BUILT_KEY,
    COUNTS_KEY,
    RECENT_AT_DB,
    RECENT_DB,
    UNREADABLE,
    build,
    count,
)

T0 = 1_700_000_000.0


def record(wid: str, state: WorkflowState, updated: float) -> WorkflowRecord:
    return WorkflowRecord(
        id=wid, name="w", version=1, input={"big": "x" * 300}, state=state, updated=updated
    )


def array(wid: str, state: WorkflowState, updated: float) -> Put:
    """A schema 3 record (the array layout every write uses today)."""
    return Put("workflows", workflow_key(wid), encode(record(wid, state, updated).to_stored()))


def old_map(wid: str, state: WorkflowState, updated: float) -> Put:
    """A schema 2 record (the map layout of older stores)."""
    return Put("workflows", workflow_key(wid), encode(record(wid, state, updated).to_dict()))


def raw(wid: str, value: bytes) -> Put:
    return Put("workflows", workflow_key(wid), value)


def write(store: Store, *groups: tuple[Put | Delete, ...]) -> None:
    """Each group is one transition; all of them go into one write transaction."""
    outcomes: list[list[BaseException | None]] = []
    store.writer.submit_many([Transition(ops=ops) for ops in groups], outcomes.append)
    store.writer.flush(timeout=30)
    assert outcomes == [[None] * len(groups)]


def index(store: Store) -> dict[str, tuple[int, str]]:
    """Workflow id -> (updated ms, state) as the index holds it, checking that its two
    databases agree."""
    entries = {
        key[8:].decode(): (struct.unpack(">Q", key[:8])[0], value)
        for key, value in store.raw_scan(RECENT_DB)
    }
    times = {
        key.decode(): struct.unpack(">Q", value)[0] for key, value in store.raw_scan("recent_at")
    }
    assert {wid: ms for wid, (ms, _) in entries.items()} == times
    return {wid: (ms, decode(value, db=RECENT_DB, key=b"")) for wid, (ms, value) in entries.items()}


def rebuilt(store: Store) -> dict[str, tuple[int, str]]:
    """What building the index from scratch over the records gives (in a transaction
    that is thrown away)."""
    env, handles = store._env, store._handles
    assert env is not None
    txn = env.begin(write=True)
    try:
        for db in (RECENT_DB, RECENT_AT_DB):
            txn.drop(handles[db], delete=False)
        txn.delete(BUILT_KEY, db=handles["meta"])
        build(txn, handles)
        cursor = txn.cursor(db=handles[RECENT_DB])
        pairs: Iterator[tuple[bytes, bytes]] = iter(cursor)
        return {
            key[8:].decode(): (
                struct.unpack(">Q", key[:8])[0],
                decode(value, db=RECENT_DB, key=key),
            )
            for key, value in pairs
        }
    finally:
        txn.abort()


def scanned(store: Store) -> dict[str, int]:
    """The counts by state of a scan of the whole index."""
    return count(store._read, store._handles[RECENT_DB])


def key(wid: str) -> bytes:
    return workflow_key(wid)


def _scan_of(store: Store) -> dict[str, int]:
    """:func:`scanned` without the states no entry holds (any more)."""
    return {s: n for s, n in scanned(store).items() if n}


@pytest.fixture
def store(tmp_path: pathlib.Path) -> Iterator[Store]:
    with Store(tmp_path / "s") as s:
        yield s


def test_the_index_follows_every_write_and_delete_in_either_record_layout(store: Store) -> None:
    write(
        store,
        (array("a", WorkflowState.RUNNING, T0),),
        (old_map("b", WorkflowState.PENDING, T0 + 1),),
        (array("c", WorkflowState.RUNNING, T0 + 2),),
    )
    assert index(store) == {
        "a": (int(T0 * 1000), "RUNNING"),
        "b": (int(T0 * 1000) + 1000, "PENDING"),
        "c": (int(T0 * 1000) + 2000, "RUNNING"),
    }
    # One transaction: a moves on, b is rewritten twice (the last write wins), c goes.
    write(
        store,
        (array("a", WorkflowState.SUCCEEDED, T0 + 10),),
        (old_map("b", WorkflowState.RUNNING, T0 + 11),),
        (array("b", WorkflowState.CANCELLED, T0 + 12), Delete("workflows", workflow_key("c"))),
        (array("d", WorkflowState.COMPENSATED, T0 + 3),),
    )
    assert index(store) == {
        "a": (int(T0 * 1000) + 10_000, "SUCCEEDED"),
        "b": (int(T0 * 1000) + 12_000, "CANCELLED"),
        "d": (int(T0 * 1000) + 3000, "COMPENSATED"),
    }
    assert index(store) == rebuilt(store)
    assert [wid for _, wid, _ in store.recent(newest_first=True)] == ["b", "a", "d"]


@pytest.mark.parametrize(
    "value",
    [
        encode(record("x", WorkflowState.RUNNING, float("inf")).to_stored()),
        encode(record("x", WorkflowState.RUNNING, float("nan")).to_stored()),
        encode(record("x", WorkflowState.RUNNING, 1e30).to_stored()),
        encode({"v": 2, "state": "RUNNING"}),
        encode([3, "x"]),
        encode("not a record"),
        b"\x93\x01\x02",  # no checksum
    ],
    ids=[
        "updated-inf",
        "updated-nan",
        "updated-past-2^64-ms",
        "map-without-updated",
        "short-array",
        "a-string",
        "no-crc",
    ],
)
def test_an_unreadable_workflow_value_is_listed_as_unreadable_and_fails_nothing(
    store: Store, value: bytes
) -> None:
    write(store, (array("ok", WorkflowState.RUNNING, T0),), (raw("x", value),))
    assert index(store) == {"ok": (int(T0 * 1000), "RUNNING"), "x": (0, UNREADABLE)}
    assert index(store) == rebuilt(store)
    # Written over a readable one, it keeps the time it was indexed under.
    write(store, (array("y", WorkflowState.RUNNING, T0 + 5),))
    write(store, (raw("y", value),))
    assert index(store)["y"] == (int(T0 * 1000) + 5000, UNREADABLE)


def test_a_state_that_is_not_one_of_ours_is_indexed_as_written(store: Store) -> None:
    stored = record("z", WorkflowState.RUNNING, T0).to_stored()
    stored[stored.index("RUNNING")] = "SOMETHING_NEW"
    write(store, (raw("z", encode(stored)),))
    assert index(store) == {"z": (int(T0 * 1000), "SOMETHING_NEW")}


@pytest.mark.parametrize("page", [3, 4, 50_000])  # (8 entries: pages that end short, exact)
def test_the_counts_by_state_read_the_index_alone_page_by_page(
    store: Store, monkeypatch: pytest.MonkeyPatch, page: int
) -> None:
    monkeypatch.setattr("herder.store._recent.COUNT_PAGE", page)
    new_state = record("h", WorkflowState.RUNNING, T0 + 7).to_stored()
    new_state[new_state.index("RUNNING")] = "SOMETHING_NEW"
    write(
        store,
        (array("a", WorkflowState.RUNNING, T0), array("b", WorkflowState.SUCCEEDED, T0 + 1)),
        (
            old_map("c", WorkflowState.SUCCEEDED, T0 + 2),
            array("d", WorkflowState.NEEDS_ATTENTION, T0 + 3),
        ),
        (raw("e", b"\xc1 not a record"), array("f", WorkflowState.SUCCEEDED, T0 + 5)),
        (array("g", WorkflowState.CANCELLED, T0 + 6), raw("h", encode(new_state))),
    )

    def undecoded(*args: object, **kwargs: object) -> None:
        raise AssertionError("a workflow record was read")

    monkeypatch.setattr(store, "workflows", undecoded)
    assert (
        scanned(store)
        == store.workflow_counts()
        == {
            "RUNNING": 1,
            "SUCCEEDED": 3,
            "NEEDS_ATTENTION": 1,
            "CANCELLED": 1,
            "SOMETHING_NEW": 1,
            UNREADABLE: 1,
        }
    )


def test_the_lease_holder_keeps_the_counts_by_state_in_every_write_without_a_scan(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``rt.stats()`` reads one value (it counted the whole index at every call: ~20 ms
    at 100,000 workflows), and the value follows every kind of write."""
    kept_by_holder = store.workflow_counts
    monkeypatch.setattr("herder.store._recent.count", lambda *a: pytest.fail("a scan"))
    assert kept_by_holder() == {}
    writes: list[tuple[tuple[Put | Delete, ...], ...]] = [
        (
            (array("a", WorkflowState.RUNNING, T0),),
            (old_map("b", WorkflowState.PENDING, T0 + 1),),
            (array("c", WorkflowState.RUNNING, T0 + 2), raw("e", b"\xc1 not a record")),
        ),
        (  # a moves on in the same millisecond; b twice in one transaction; c goes
            (array("a", WorkflowState.SUCCEEDED, T0),),
            (old_map("b", WorkflowState.RUNNING, T0 + 11),),
            (array("b", WorkflowState.CANCELLED, T0 + 12), Delete("workflows", key("c"))),
            (array("d", WorkflowState.COMPENSATED, T0 + 3),),
        ),
        ((array("e", WorkflowState.RUNNING, T0 + 4), raw("a", b"\xc1 unreadable now")),),
        ((Delete("workflows", key("a")), Delete("workflows", key("nothing"))),),
        ((array("d", WorkflowState.COMPENSATED, T0 + 20),),),  # (no state moves)
    ]
    for groups in writes:
        write(store, *groups)
        assert kept_by_holder() == _scan_of(store)
    assert kept_by_holder() == {"CANCELLED": 1, "COMPENSATED": 1, "RUNNING": 1}
    # A damaged recent_at value: the entries found by a scan go, and their counts.
    txn = store._env.begin(write=True)  # type: ignore[union-attr]
    txn.put(key("e"), b"bad", db=store._handles[RECENT_AT_DB])
    txn.commit()
    write(store, (array("e", WorkflowState.SUCCEEDED, T0 + 30),))
    assert kept_by_holder() == _scan_of(store)
    assert kept_by_holder() == {"CANCELLED": 1, "COMPENSATED": 1, "SUCCEEDED": 1}


def test_the_counts_are_carried_over_to_the_next_lease_or_counted_afresh(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The next runtime to take the store carries the counts over without counting (its
    open would take ~0.2 s per million workflows); it counts afresh when an older herder
    (which does not keep them) held the store since, or the value is damaged; so does a
    reader, which reads them only while they carry the store's incarnation."""
    path = tmp_path / "s"
    with Store(path) as store:
        write(store, (array("a", WorkflowState.RUNNING, T0),))
    afresh: list[bool] = []
    real = recent.take_counts
    monkeypatch.setattr(recent, "take_counts", lambda *a: afresh.append(real(*a)) or False)
    with Store(path) as store:
        write(store, (array("b", WorkflowState.SUCCEEDED, T0),))
        # An older herder: it takes the lease (a new incarnation) and moves a state.
        with monkeypatch.context() as m:
            m.setattr(recent, "_add_counts", lambda *a: None)
            store.incarnation += 1
            meta = store._handles["meta"]
            txn = store._env.begin(write=True)  # type: ignore[union-attr]
            txn.put(b"incarnation", encode(store.incarnation), db=meta)
            taken = dataclasses.replace(read_lease(txn, meta), incarnation=store.incarnation)
            txn.put(b"lease", encode(taken.to_dict()), db=meta)  # (still ours to write)
            txn.commit()
            store._lease = taken  # (its release writes it)
            write(store, (array("a", WorkflowState.SUCCEEDED, T0 + 1),))
        left = store._read(lambda txn: recent.stored_counts(txn, store._handles["meta"]))
        assert left == (store.incarnation - 1, {"RUNNING": 1, "SUCCEEDED": 1})  # (behind)
        assert store.kept_workflow_counts() is None  # (so not read: the index is counted)
    truth = {"SUCCEEDED": 2}
    with Store(path, readonly=True) as reader:
        assert reader.workflow_counts() == truth
    with Store(path) as store:
        assert store.workflow_counts() == truth
        txn = store._env.begin(write=True)  # type: ignore[union-attr]
        txn.put(COUNTS_KEY, b"junk", db=store._handles["meta"])
        txn.commit()
        assert store.workflow_counts() == truth  # (junk: not read; the index is counted)
    with Store(path) as store:
        assert store.workflow_counts() == truth
    assert afresh == [False, True, True]


def test_the_counts_are_carried_over_from_a_holder_that_reserved_incarnations(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A holder whose fencing tokens ran on raised the incarnation counter ahead of them
    (``reserve_incarnations``); the next take, a standby's or an open's, starts above
    those and carried the counts over all the same: it compared them with its own
    incarnation less one and counted the whole index again (~0.2 s per million)."""
    path = tmp_path / "s"
    with Store(path) as store:
        write(store, (array("a", WorkflowState.RUNNING, T0),))
        store.reserve_incarnations(store.incarnation + 2).result(timeout=10)
    afresh: list[bool] = []
    real = recent.take_counts
    monkeypatch.setattr(recent, "take_counts", lambda *a: afresh.append(real(*a)) or False)
    with Store(path, standby=True) as store:
        assert store.try_take_lease() == "released"
        assert store.kept_workflow_counts() == {"RUNNING": 1}
        store.reserve_incarnations(store.incarnation + 1).result(timeout=10)
    with Store(path) as store:
        assert store.kept_workflow_counts() == {"RUNNING": 1}
    assert afresh == [False, False]


def test_a_reader_reads_the_kept_counts_while_they_carry_the_stores_incarnation(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``herder stats``, the console's counters and inbox: a store that does not hold the
    lease reads the one value too (each counted the whole index, ~0.2 s per million
    workflows, or read every record), while no older herder (which keeps no counts) took
    the lease since they were kept; then, or with none kept, it counts the index."""
    path = tmp_path / "s"
    with Store(path) as store:
        write(store, (array("a", WorkflowState.RUNNING, T0),))
        write(
            store,
            (array("b", WorkflowState.SUCCEEDED, T0), array("a", WorkflowState.SUCCEEDED, T0)),
        )
    counted: list[int] = []
    real = recent.count
    monkeypatch.setattr(recent, "count", lambda *a: counted.append(1) or real(*a))
    truth = {"SUCCEEDED": 2}
    with Store(path, readonly=True) as reader:
        assert reader.kept_workflow_counts() == reader.workflow_counts() == truth
    assert counted == []
    with Store(path) as store:  # a holder whose tokens run on reserves incarnations
        store.reserve_incarnations(store.incarnation + 1).result(timeout=10)
        assert store.kept_workflow_counts() == truth  # (they were stale after that)
    with Store(path, readonly=True) as reader:
        assert reader.kept_workflow_counts() == truth
    assert counted == []
    with Store(path) as store:  # an older herder takes the lease: a new incarnation
        meta = store._handles["meta"]
        txn = store._env.begin(write=True)  # type: ignore[union-attr]
        older = dataclasses.replace(
            read_lease(txn, meta), incarnation=store.incarnation + 9, owner="older", expires=0.0
        )
        txn.put(b"incarnation", encode(older.incarnation), db=meta)
        txn.put(b"lease", encode(older.to_dict()), db=meta)
        txn.commit()
    with Store(path, readonly=True) as reader:
        assert reader.kept_workflow_counts() is None
        assert reader.workflow_counts() == truth
    assert counted == [1]
    with Store(path) as store:  # none kept: a store no herder that keeps them held
        txn = store._env.begin(write=True)  # type: ignore[union-attr]
        txn.delete(COUNTS_KEY, db=store._handles["meta"])
        txn.commit()
    with Store(path, readonly=True) as reader:
        assert reader.kept_workflow_counts() is None
        assert reader.workflow_counts() == truth
    assert counted == [1, 1]


_WRITER = """
import sys
from herder.store import Put, Store, Transition, encode, workflow_key
from herder.store._records import WorkflowRecord, WorkflowState
states = list(WorkflowState)
with Store(sys.argv[1]) as store:
    n = 0
    while True:
        ops = []
        for i in range(50):
            wid = f"w{(n * 7 + i) % 300}"
            rec = WorkflowRecord(id=wid, name="w", version=1, input={},
                                 state=states[(n + i) % len(states)], updated=1e9 + n)
            ops.append(Put("workflows", workflow_key(wid), encode(rec.to_stored())))
        store.writer.submit(Transition(ops=tuple(ops))).result(timeout=30)
        n += 1
        if n == 20:
            print("going", flush=True)
"""


def test_the_kept_counts_agree_with_the_index_after_a_sigkill_mid_writes(
    tmp_path: pathlib.Path,
) -> None:
    """The counts are written in the transaction that moves the entries: a crash leaves
    them agreeing (read here as the crash left them, before any take counts them again)."""
    path = tmp_path / "s"
    child = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == "going\n"
    finally:
        child.kill()
        child.wait(timeout=30)
    with Store(path, readonly=True) as reader:
        kept = reader.kept_workflow_counts()  # (still those of the killed holder's lease)
        assert kept is not None
        assert kept == scanned(reader)
        assert sum(kept.values()) == reader.count("workflows") > 100
