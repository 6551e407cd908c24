"""A reader process SIGKILLed inside a read transaction leaves a stale slot in LMDB's
reader table; a stale slot pins old pages so the file grows without bound. Opening the
store reclaims it (``Environment.reader_check()``)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from herder.store import Put, Store, Transition, encode

READER = """
import sys
from herder.store import Store
store = Store(sys.argv[1], readonly=True)
txn = store._env.begin()  # a read transaction that is never ended
txn.get(b"k", db=store._handles["meta"])
print("reading", flush=True)
sys.stdin.read()
"""


def kill_inside_a_read(path: Path) -> int:
    """Run a reader process, SIGKILL it inside its read transaction; return its pid."""
    reader = subprocess.Popen(
        [sys.executable, "-c", READER, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert reader.stdout is not None
        assert reader.stdout.readline().strip() == "reading"
        os.kill(reader.pid, signal.SIGKILL)
    finally:
        reader.wait(timeout=10)
    return reader.pid


def pids(store: Store) -> set[int]:
    """PIDs in the reader table (a header line, then "pid thread txnid" rows)."""
    rows = store._env.readers().splitlines()[1:]  # type: ignore[union-attr]
    return {int(row.split()[0]) for row in rows if row.strip()}


def test_a_stale_reader_slot_of_a_killed_process_is_reclaimed(tmp_path: Path) -> None:
    path = tmp_path / "s"
    # The slot outlives its process only while another process has the store open (the
    # last one to open resets the table), so this process plays the running daemon.
    with Store(path) as store:
        store.writer.submit(Transition(ops=(Put("meta", b"k", encode(1)),))).result(10)
        dead = kill_inside_a_read(path)
        assert dead in pids(store)
        # Any open reclaims it: here a read-only open in another process, as `herder ls`.
        subprocess.run(
            [sys.executable, "-m", "herder.runtime", "stats", "--store", str(path)],
            capture_output=True,
            timeout=60,
            check=True,
        )
        assert dead not in pids(store)
        # And the running store itself reclaims slots (its Supervisor calls this).
        dead = kill_inside_a_read(path)
        assert dead in pids(store)
        assert store.reclaim_readers() == 1
        assert dead not in pids(store)
        for i in range(50):  # the writer works on
            store.writer.submit(Transition(ops=(Put("meta", b"k", encode(i)),))).result(10)


def _put_workflows(store: Store, ids: range, state: str, steps: int = 2) -> None:
    from herder.store import StepRecord, StepState, WorkflowRecord, step_key, workflow_key

    ops = []
    for n in ids:
        wid = f"w{n:05d}"
        record = WorkflowRecord(wid, "f", 1, None, state)  # type: ignore[arg-type]
        ops.append(Put("workflows", workflow_key(wid), encode(record.to_stored())))
        for s in range(steps):
            st = StepRecord(wid, f"s{s}", StepState.DISPATCHED, attempt=1, token=n)
            ops.append(Put("steps", step_key(wid, st.name), encode(st.to_stored())))
    store.writer.submit(Transition(ops=tuple(ops))).result(30)


def test_unfinished_workflows_come_in_chunks_with_their_steps_read_as_consumed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from herder.store import StoreCorrupt

    with Store(tmp_path / "s") as store:
        _put_workflows(store, range(0, 1200, 2), "RUNNING")
        _put_workflows(store, range(1, 1200, 2), "SUCCEEDED")  # final: skipped
        store.writer.submit(Transition(ops=(Put("workflows", b"w00003", b"\xc1"),))).result(10)
        corrupt: list[StoreCorrupt] = []
        chunks = store.unfinished_chunks(chunk=250, corrupt=corrupt)
        first = next(chunks)
        assert [r.id for r, _ in first][:2] == ["w00000", "w00002"]
        assert all([s.name for s in steps] == ["s0", "s1"] for _, steps in first)
        assert len(first) <= 250
        # Read as consumed: a workflow that finished meanwhile, past this chunk, is left out.
        _put_workflows(store, range(1198, 1199), "SUCCEEDED")
        rest = [r.id for chunk in chunks for r, _ in chunk]
        ids = [r.id for r, _ in first] + rest
        assert ids == [f"w{n:05d}" for n in range(0, 1198, 2)]
        assert [(e.db, e.key) for e in corrupt] == [("workflows", b"w00003")]
        # The same without the index (a store older than it): a scan, a chunk at a time.
        monkeypatch.setattr(Store, "indexed", property(lambda _self: False))
        chunks = store.unfinished_chunks(chunk=250, corrupt=[])
        scanned = [r.id for chunk in chunks for r, _ in chunk]
        assert scanned == ids


def test_herder_stats_counts_the_workflows_as_of_one_instant(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``herder stats`` read each workflow's state at another moment of its scan (a few
    seconds per 100,000 on a busy store): two workflows finished in one transaction were
    counted one running and one finished, a state the store never was in. It counts them
    as the writer keeps them, at one instant, as ``rt.stats()`` does."""
    from herder.runtime._inspect import store_stats
    from herder.store import WorkflowRecord, WorkflowState, workflow_key

    def put(wid: str, state: WorkflowState) -> Put:
        record = WorkflowRecord(wid, "w", 1, {}, state, 1e9, 1e9)
        return Put("workflows", workflow_key(wid), encode(record.to_stored()))

    monkeypatch.setattr("herder.store._access.PAGE", 1)  # (a record per page, as at scale)
    with Store(tmp_path / "s") as store:
        submit = store.writer.submit
        ops = (put("a", WorkflowState.RUNNING), put("b", WorkflowState.RUNNING))
        submit(Transition(ops=ops)).result(timeout=10)
        real, moved = store.get_plan, []

        def get_plan(name: str, version: int) -> Any:  # the runtime finishes both mid-scan
            if not moved:  # (read for the first workflow scanned, before the second)
                ops = (put("a", WorkflowState.SUCCEEDED), put("b", WorkflowState.SUCCEEDED))
                moved.append(submit(Transition(ops=ops)).result(timeout=10))
            return real(name, version)

        monkeypatch.setattr(store, "get_plan", get_plan)
        counted = store_stats(store, corrupt=[])["workflows"]
    assert moved
    assert (counted["RUNNING"], counted["SUCCEEDED"]) in {(2, 0), (0, 2)}
