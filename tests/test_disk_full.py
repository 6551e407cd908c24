"""A disk that refuses writes: acknowledged work survives, the runtime waits without
spinning, and it resumes by itself once space returns.

Two ways to fill the disk: the writer's ``fault`` hook raising ENOSPC (deterministic,
on the fake clock), and a real one in a subprocess whose file size limit
(``RLIMIT_FSIZE``, which needs no root) stops LMDB's writes with EFBIG mid-run; and,
where mounting is permitted, a small tmpfs filled to its last block.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import shutil
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

import lmdb
import pytest

from herder.runtime import Agent, Runtime, State, StepContext, StepState, StoreError, Workflow
from herder.runtime.testing import FakeClock, advance, settle, wait_until
from herder.store import Store, append_command, new_command, wait_outcome
from herder.store._locktable import LOCK_TABLE_BYTES
from herder.store._open import MAX_READERS

WAIT = 10.0
CHILD = Path(__file__).with_name("disk_full_child.py")


def _child(store: Path, *args: str) -> dict:
    """Run the disk-full child on ``store``; the JSON report it prints last."""
    proc = subprocess.run(
        [sys.executable, str(CHILD), str(store), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    report: dict = json.loads(proc.stdout.strip().splitlines()[-1])
    return report


class Steps(Agent):
    """Each step returns its name; ``gate`` holds every action until it is set."""

    def __init__(self, gate: threading.Event) -> None:
        self.gate = gate

    def run(self, ctx: StepContext) -> str:
        self.gate.wait(WAIT)
        return ctx.step


def chain() -> Workflow:
    return (
        Workflow("chain")
        .step("a", agent="svc", action="run")
        .step("b", agent="svc", action="run", after=["a"])
        .step("c", agent="svc", action="run", after=["b"])
    )


class Disk:
    """The writer's fault hook: while ``full`` is set every commit fails with ENOSPC."""

    def __init__(self) -> None:
        self.full = threading.Event()

    def __call__(self) -> None:
        if self.full.is_set():
            raise OSError(errno.ENOSPC, "No space left on device (injected)")


def test_a_full_disk_fails_new_starts_keeps_acknowledged_work_and_resumes(
    tmp_path: Path,
) -> None:
    clock = FakeClock()
    gate = threading.Event()
    disk = Disk()
    path = tmp_path / "s"
    with Runtime(path, clock=clock) as rt:
        rt.add_agent("svc", lambda: Steps(gate), concurrency=4)
        rt.add_workflow(chain())
        rt._store.writer.fault = disk
        acked = [rt.start("chain", i, workflow_id=f"w{i}") for i in range(8)]
        wait_until(rt, lambda: rt.stats()["steps"]["in_flight_attempts"] == 4, WAIT)
        disk.full.set()
        before = rt._store.writer.stats()["io_errors"]
        with pytest.raises(StoreError, match="No space left on device"):
            rt.start("chain", "late", workflow_id="late")  # not acknowledged
        gate.set()  # the running attempts finish; recording their results fails
        # Every workflow is set aside until the next try (forgotten in memory, kept in
        # the store); with the clock standing still nothing more is tried.
        wait_until(rt, lambda: rt.stats()["steps"]["active_workflows"] == 0, WAIT)
        failed = rt._store.writer.stats()["io_errors"]
        settle(rt)
        assert rt._store.writer.stats()["io_errors"] == failed
        assert failed - before <= 10  # without the back-off: hundreds per second
        disk.full.clear()
        clock.advance(5.0)  # the longest back-off
        for handle in acked:
            assert handle.result(timeout=WAIT) == {"a": "a", "b": "b", "c": "c"}
        assert rt.stats()["corrupt"] == {}
    with Store(path, readonly=True) as store:
        states = {r.id: r.state for r in store.workflows()}
    assert states == {f"w{i}": State.SUCCEEDED for i in range(8)}  # and no "late"


def test_a_disk_full_for_over_a_thousand_failed_batches_leaves_the_runtime_running(
    tmp_path: Path,
) -> None:
    # The wait before re-reading a failed batch's workflows was 0.05 * 2.0 ** failures:
    # past 1,025 failed batches in a row it overflowed (OverflowError), the Scheduler
    # crashed at every failure after that (each restart counting afresh), and its
    # supervisor gave up on the runtime within seconds: a busy runtime on a full disk
    # fails that many batches in a second or two.
    clock = FakeClock()
    gate = threading.Event()
    gate.set()
    disk = Disk()
    with Runtime(tmp_path / "s", clock=clock) as rt:
        rt.add_agent("svc", lambda: Steps(gate))
        rt.add_workflow(chain())
        rt._store.writer.fault = disk
        disk.full.set()
        for i in range(1600):  # (some share a batch: over 1,100 batches fail)
            with pytest.raises(StoreError, match="No space left on device"):
                rt.start("chain", i, workflow_id=f"refused{i}")
        disk.full.clear()
        settle(rt)  # every failure handled (a Scheduler behind them failed "after" too)
        handle = rt.start("chain", 0, workflow_id="after")
        advance(rt, clock, 5.0)  # the longest back-off
        assert handle.result(timeout=WAIT) == {"a": "a", "b": "b", "c": "c"}
        assert rt.stats()["restarts"]["scheduler"] == 0  # (four in five seconds: stopped)


def test_a_full_disk_under_load_logs_a_line_per_ten_seconds_not_one_per_batch(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Each failed batch logged two errors (the writer's "store commit failed", the
    # Scheduler's "transitions of N workflows failed"): a runtime taking starts on a
    # full tmpfs wrote 13,700 lines in 4 s, to a log that is often on the full disk.
    # Every caller still gets its StoreIOError.
    clock = FakeClock()
    disk = Disk()
    with Runtime(tmp_path / "s", clock=clock) as rt:
        rt.add_agent("svc", lambda: Steps(threading.Event()))
        rt.add_workflow(chain())
        rt._store.writer.fault = disk
        disk.full.set()
        caplog.set_level(logging.ERROR)
        for i in range(200):
            with pytest.raises(StoreError, match="No space left on device"):
                rt.start("chain", i, workflow_id=f"refused{i}")
        disk.full.clear()
    lines = Counter(r.getMessage().partition(":")[0] for r in caplog.records)
    assert lines["store commit failed"] <= 2, lines  # (one; and one more if 10 s passed)
    assert lines["transitions of 1 workflows failed"] <= 2, lines


class Later(Agent):
    def run(self, ctx: StepContext) -> object:
        return ctx.complete_later()


def test_an_operator_command_whose_commit_failed_is_applied_once_the_disk_has_room(
    tmp_path: Path,
) -> None:
    clock = FakeClock()
    disk = Disk()
    path = tmp_path / "s"
    with Runtime(path, clock=clock, sweep_interval=1.0) as rt:
        rt.add_agent("svc", Later)
        rt.add_workflow(Workflow("one").step("a", agent="svc", action="run"))
        rt.start("one", workflow_id="w")
        wait_until(rt, lambda: rt.status("w").steps["a"].state is StepState.WAITING, WAIT)
        skip = new_command("skip", "w", args={"step": "a", "result": "by hand"}, who="t", why="x")
        command_id = append_command(path, skip)  # as the CLI does, from another process
        rt._store.writer.fault = disk
        disk.full.set()
        errors = rt._store.writer.stats()["io_errors"]
        advance(rt, clock, 1.0)  # the sweep hands the command over; recording it fails
        assert rt._store.writer.stats()["io_errors"] > errors
        assert wait_outcome(path, command_id, timeout=0) is None  # still pending
        disk.full.clear()
        advance(rt, clock, 5.0)  # the next sweeps find it pending still: applied now
        outcome = wait_outcome(path, command_id, timeout=WAIT)
        assert outcome is not None
        assert outcome["state"] == "DONE", outcome
        assert rt.handle("w").result(timeout=WAIT) == {"a": "by hand"}


def test_a_real_write_failure_mid_run_is_survived_and_the_runtime_resumes(
    tmp_path: Path,
) -> None:
    # The child runs workflows with large results, lowers its file size limit below
    # what they need, lets the commits fail for a while, raises the limit again, and
    # reports what happened as JSON.
    report = _child(tmp_path / "s")
    assert report["refused_starts"] > 0  # new work was refused, not silently dropped
    assert report["io_errors"] > 0
    # A page write wholly past the cap fails with EFBIG; one that straddles it is short,
    # which LMDB reports as EIO. Which one comes first depends on the page layout.
    assert "File too large" in report["error"] or "Input/output error" in report["error"]
    assert report["finished"] == report["acknowledged"] > 0
    assert report["resumed_after_s"] < 10.0
    with Store(tmp_path / "s", readonly=True) as store:
        done = [r for r in store.workflows() if r.state is State.SUCCEEDED]
    assert len(done) == report["acknowledged"]


def test_a_bug_inside_a_commit_fails_that_batch_only_and_the_writer_carries_on(
    tmp_path: Path,
) -> None:
    # Only lmdb.Error and OSError aborted the write transaction: anything else (a bug in
    # the writer's apply, the index or the guard; a MemoryError) left it open, and every
    # later write failed with "another write transaction is active", for good.
    fired = threading.Event()

    def once() -> None:
        if not fired.is_set():
            fired.set()
            raise MemoryError("injected, once")

    clock = FakeClock()
    gate = threading.Event()
    gate.set()
    with Runtime(tmp_path / "s", clock=clock) as rt:
        rt.add_agent("svc", lambda: Steps(gate))
        rt.add_workflow(chain())
        rt._store.writer.fault = once
        with pytest.raises(MemoryError, match="injected"):
            rt.start("chain", 0, workflow_id="w0")
        handles = [rt.start("chain", i, workflow_id=f"w{i}") for i in (1, 2)]
        for handle in handles:
            assert handle.result(timeout=WAIT) == {"a": "a", "b": "b", "c": "c"}


def test_stop_on_a_stalled_disk_answers_the_waiters_in_time_and_may_be_called_again(
    tmp_path: Path,
) -> None:
    # Closing the store waited 10 s whatever stop's timeout, then raised a bare
    # TimeoutError('') that skipped the rest of stop(): result() waiters stayed blocked,
    # a second stop() did nothing, and the store stayed open (StoreLocked on reopen).
    from herder.runtime import RuntimeClosed

    stalled, unstall = threading.Event(), threading.Event()

    def stall() -> None:
        if stalled.is_set():
            assert unstall.wait(WAIT)

    gate = threading.Event()
    path = tmp_path / "s"
    rt = Runtime(path)
    rt.add_agent("svc", lambda: Steps(gate))
    rt.add_workflow(chain())
    handle = rt.start("chain", 0, workflow_id="w0")
    rt._store.writer.fault = stall
    stalled.set()
    gate.set()  # a: its SUCCEEDED commit stalls
    heard: list[BaseException] = []
    waiter = threading.Thread(target=lambda: heard.append(_raised(handle.result)))
    waiter.start()
    with pytest.raises(TimeoutError, match="call stop\\(\\) again"):
        rt.stop(timeout=0.5)
    waiter.join(WAIT)
    assert not waiter.is_alive()
    assert isinstance(heard[0], RuntimeClosed)
    unstall.set()
    rt.stop(timeout=WAIT)  # the store closes now
    with Runtime(path) as again:  # not locked: it resumes the workflow
        again.add_agent("svc", lambda: Steps(gate))
        again.add_workflow(chain())
        assert again.handle("w0").result(timeout=WAIT) == {"a": "a", "b": "b", "c": "c"}


def _raised(call: object) -> BaseException:
    try:
        call()  # type: ignore[operator]
    except BaseException as exc:
        return exc
    raise AssertionError("it returned")


def test_opening_a_store_on_a_full_disk_is_a_store_io_error_that_says_so(tmp_path: Path) -> None:
    # The disk's refusals reach LMDB as EFBIG or EIO (a short write), not only ENOSPC:
    # at open they became a plain StoreError ("Error: ... File too large") with no word
    # of the disk, where the same refusal on a commit is a StoreIOError that says to
    # check free disk space.
    report = _child(tmp_path / "s", "open")
    assert report["error"] == "StoreIOError", report
    assert "check free disk space" in report["message"]


OPEN_ON_A_FULL_DISK = """
import sys
from herder.store import Store, StoreIOError
for path, mode in (sys.argv[1:3], sys.argv[3:5]):
    try:
        Store(path, mode=mode).close()
        print("opened")
    except StoreIOError as exc:
        print(f"StoreIOError: {exc}")
"""


@pytest.mark.timeout(60)
def test_opening_a_store_on_a_disk_without_a_free_block_is_an_error_not_sigbus(
    tmp_path: Path,
) -> None:
    # LMDB creates lock.mdb as a sparse file and writes it through a shared mapping: on a
    # disk with no block free, Store(new_path) (and a reader of a copy without its
    # lock.mdb) died with SIGBUS, no message. A real full file system: a small tmpfs.
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1M", "tmpfs", str(disk)],
        capture_output=True,
        timeout=30,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr!r:.200}")
    try:
        Store(disk / "copy").close()
        (disk / "copy" / "lock.mdb").unlink()  # (a copy of a store's data.mdb)
        _fill(disk / "fill")
        opens = (str(disk / "new"), "writer", str(disk / "copy"), "readonly")
        done = subprocess.run(
            [sys.executable, "-c", OPEN_ON_A_FULL_DISK, *opens],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
        lines = done.stdout.splitlines()
        assert len(lines) == 2, done.stdout
        assert all("lock table" in s and "check free disk space" in s for s in lines), lines
    finally:
        subprocess.run(["umount", str(disk)], timeout=30, check=False)


def _fill(path: Path) -> None:
    """Take every free block of the file system ``path`` is on."""
    with open(path, "wb", buffering=0) as f, contextlib.suppress(OSError):
        while True:
            f.write(b"\0" * 4096)
    assert shutil.disk_usage(path.parent).free < 4096


def test_the_lock_table_reserved_is_the_size_lmdb_makes_it(tmp_path: Path) -> None:
    # (were it smaller, LMDB would extend it sparse again; larger, it would hold more
    # reader slots than MAX_READERS)
    env = lmdb.open(str(tmp_path / "plain"), max_readers=MAX_READERS)
    env.close()
    assert (tmp_path / "plain" / "lock.mdb").stat().st_size == LOCK_TABLE_BYTES
    Store(tmp_path / "s").close()
    assert (tmp_path / "s" / "lock.mdb").stat().st_size == LOCK_TABLE_BYTES
