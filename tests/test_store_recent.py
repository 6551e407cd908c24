"""The ``recent`` index the writer keeps beside every workflow record (``_recent.py``):
it agrees with the records whatever their layout, and an unreadable record never fails
the batch that writes it."""

from __future__ import annotations

import pathlib
import struct
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
from herder.store._recent import BUILT_KEY, RECENT_AT_DB, RECENT_DB, UNREADABLE, build

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
    assert store.workflow_counts() == {
        "RUNNING": 1,
        "SUCCEEDED": 3,
        "NEEDS_ATTENTION": 1,
        "CANCELLED": 1,
        "SOMETHING_NEW": 1,
        UNREADABLE: 1,
    }
