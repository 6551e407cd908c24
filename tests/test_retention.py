"""Retention: finished workflows older than ``retention`` are deleted whole, in bounded
batches from the Supervisor's sweep; ``herder purge`` and ``herder compact`` (the real
executable in a subprocess), with and without a running runtime."""

from __future__ import annotations

import datetime
import errno
import logging
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from herder.actors._channel import Channel
from herder.runtime import (
    Agent,
    InvalidInput,
    Permanent,
    RetryPolicy,
    Runtime,
    State,
    StepContext,
    Workflow,
)
from herder.runtime._check import check_store
from herder.runtime._retention import Retention
from herder.runtime.testing import FakeClock, advance, wait_until
from herder.store import (
    Store,
    StoreCorrupt,
    Transition,
    WorkflowRecord,
    answered_before,
    append_command,
    command_outcome,
    finished_ops,
    new_command,
    pending_commands,
    purge,
    wait_outcome,
)
from herder.store import _retention as store_retention

HERDER = str(Path(sys.executable).parent / "herder")
WAIT = 30.0
DAY = 86400.0
T0 = 1_700_000_000.0
PER_WORKFLOW_DBS = ("workflows", "steps", "history", "recent", "recent_at")


class Shop(Agent):
    def buy(self, ctx: StepContext) -> str:
        if ctx.input.get("fail") and ctx.step == "ship":
            raise Permanent("sold out")
        return "ok"

    def refund(self, ctx: StepContext) -> None:
        if ctx.input.get("stuck"):
            raise Permanent("refunds are down")


ORDER = (
    Workflow("order")
    .step("pay", agent="shop", action="buy", compensate="refund")
    .step("ship", agent="shop", action="buy", after=["pay"])
)


def register(rt: Runtime) -> None:
    rt.add_agent("shop", Shop)
    rt.add_workflow(ORDER)


def counts(store: Store) -> dict[str, int]:
    return {db: store.count(db) for db in PER_WORKFLOW_DBS}


def finish(rt: Runtime, wid: str, data: dict[str, object]) -> None:
    rt._wait_final(rt.start("order", data, workflow_id=wid).id, WAIT)


def test_finished_workflows_past_retention_are_deleted_whole_and_the_rest_kept(
    tmp_path: Path,
) -> None:
    clock = FakeClock(start=T0)
    retry = RetryPolicy(max_attempts=1)
    with Runtime(
        tmp_path / "s", clock=clock, setup=register, retention=DAY, default_retry=retry
    ) as rt:
        finish(rt, "old-ok", {})
        finish(rt, "old-undone", {"fail": 1})
        finish(rt, "old-stuck", {"fail": 1, "stuck": 1})  # NEEDS_ATTENTION: kept
        rt.start("order", {}, workflow_id="waiting", delay=3 * DAY)  # unfinished: kept
        advance(rt, clock, DAY / 2)
        finish(rt, "young", {})
        advance(rt, clock, DAY / 2 + 1)
        kept = {s.id: s.state for s in rt.list()}
        assert kept == {
            "old-stuck": State.NEEDS_ATTENTION,
            "waiting": State.RUNNING,
            "young": State.SUCCEEDED,
        }
        store = rt._store
        # Nothing of the deleted ones is left: steps, history, index entries.
        assert counts(store)["workflows"] == 3
        assert counts(store)["recent"] == counts(store)["recent_at"] == 3
        for db in ("steps", "history"):
            owners = {k.split(b"\x00")[0] for k, _ in store.raw_scan(db)}
            assert owners == {b"old-stuck", b"waiting", b"young"}


def test_a_step_of_the_wall_clock_does_not_age_finished_workflows(tmp_path: Path) -> None:
    """Workflows carry the engine's (steady) times: a wall clock stepped 2 h ahead (NTP, a
    VM resumed) must not make one that ended a second ago older than a 1 h retention,
    or a repeated start of its id would run it again."""
    clock = FakeClock(start=T0)
    with Runtime(tmp_path / "s", clock=clock, setup=register, retention=3600) as rt:
        finish(rt, "just-done", {})
        clock.step_wall(7200.0)
        advance(rt, clock, 1.0)
        advance(rt, clock, 1.0)
        assert rt.status("just-done").state is State.SUCCEEDED
        advance(rt, clock, 3600.0)  # an hour of elapsed time: now it is past retention
        assert [s.id for s in rt.list()] == []


def test_retention_runs_on_the_engine_clock_after_the_wall_clock_stepped_back(
    tmp_path: Path,
) -> None:
    """The previous holder ran with the wall clock 30 days ahead (then corrected): the
    next runtime's engine clock starts no earlier than the store's newest update, and
    records its times on it. Retention must compare them on that clock too, not on one
    30 days behind it (which deleted nothing for 30 days)."""
    with Runtime(tmp_path / "s", clock=FakeClock(start=T0 + 30 * DAY), setup=register) as rt:
        finish(rt, "before", {})
    clock = FakeClock(start=T0)
    with Runtime(tmp_path / "s", clock=clock, setup=register, retention=3600) as rt:
        assert rt._ctx.clock.time() >= T0 + 30 * DAY  # re-based at activation
        finish(rt, "after", {})
        advance(rt, clock, 1800.0)
        assert sorted(s.id for s in rt.list()) == ["after", "before"]
        # (The engine's clock drifts towards the wall clock, 5% slower: 1.5 h is 1.4 h.)
        advance(rt, clock, 3600.0)  # over an hour since both ended, by the engine's clock
        advance(rt, clock, 1.0)
        assert [s.id for s in rt.list()] == []


def test_retention_none_keeps_everything(tmp_path: Path) -> None:
    clock = FakeClock(start=T0)
    with Runtime(tmp_path / "s", clock=clock, setup=register, retention=None) as rt:
        finish(rt, "a", {})
        advance(rt, clock, 365 * DAY)
        assert [s.id for s in rt.list()] == ["a"]


@pytest.mark.timeout(60)
def test_a_backlog_is_deleted_faster_than_one_batch_per_sweep(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each sweep deleted one batch (500) at most, 2,000 workflows a second with sweeps
    every 0.25 s, while a runtime finishes up to 4,000 a second: with a short retention
    under such a load the store grew without bound. A full batch (a backlog) that
    committed within half a sweep interval doubles the next (up to GROWTH batches, and
    MOST_DELETES deletes); one that took longer halves it, never below a batch; one
    that was not full (no backlog) sets it back to a batch."""
    clock = FakeClock(start=T0)
    with Runtime(tmp_path / "s", clock=clock, setup=register, retention=None) as rt:
        rt.start_many(
            [{"workflow": "order", "workflow_id": f"w{i:02d}", "input": {}} for i in range(50)]
        )
        wait_until(rt, lambda: rt.stats()["workflows"].get("SUCCEEDED") == 50)
        clock.advance(120.0)
        store = rt._store
        took, later = [0.0], [0.0]  # what each commit takes; the clock moved by them
        submit = store.writer.submit_many

        def timed(transitions: Any, on_done: Any, **kw: Any) -> None:
            def done(outcomes: Any) -> None:
                later[0] += took[0]
                on_done(outcomes)

            submit(transitions, done, **kw)

        monkeypatch.setattr(store.writer, "submit_many", timed)
        # What each of the runtime's sweeps runs (its own retention is off, so only ours);
        # sweeps every 0.25 s (the default).
        retention = Retention(store, lambda: clock.time() + later[0], 60.0, batch=2)

        def sweeps(n: int) -> list[int]:
            left = []
            for _ in range(n):
                retention.on_sweep()
                store.writer.flush(WAIT)
                left.append(store.count("workflows"))
            return left

        took[0] = 1.0  # slower than half a sweep interval: a batch per sweep, as before
        assert sweeps(3) == [48, 46, 44]
        took[0] = 0.0  # a backlog, committed fast: 2, 4, 8 (the next 16)
        assert sweeps(3) == [42, 38, 30]
        took[0] = 1.0  # slow again: 16, 8, 4, 2 (the last 2 a full batch, staying at 2)
        assert sweeps(4) == [14, 6, 2, 0]
        assert retention.deleted == 50
        took[0] = 0.0
        assert retention._size == 2
        assert sweeps(1) == [0]


WIDE = Workflow("wide")
for _i in range(20):
    WIDE = WIDE.step(f"s{_i}", agent="shop", action="buy")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("through", ["retention", "purge"])
def test_a_batch_of_large_workflows_stops_at_a_bound_of_deletes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, through: str
) -> None:
    """A batch of 500 finished workflows of 100 steps each was one group of 150,000
    deletes: the writer, and every step commit queued behind it, waited for it (a one-step
    workflow's p99 from start to result went from 22 ms to 140-200 ms, the slowest start()
    from 26 to 240-370 ms, while such a backlog was purged). A batch takes no
    more workflows once it holds MOST_DELETES deletes (here 500, for 20-step workflows
    of about 60 keys each); the next batches take the rest, and unfinished workflows
    among them are passed over as before."""
    monkeypatch.setattr(store_retention, "MOST_DELETES", 500, raising=False)
    clock = FakeClock(start=T0)
    with Runtime(tmp_path / "s", clock=clock, setup=register, retention=None) as rt:
        rt.add_workflow(WIDE)
        for i in range(30):
            rt._wait_final(rt.start("wide", {}, workflow_id=f"w{i:02d}").id, WAIT)
            if i % 7 == 0:
                rt.start("order", {}, workflow_id=f"u{i:02d}", delay=DAY)
        clock.advance(120.0)
        store, groups = rt._store, []
        submit, here = store.writer.submit_many, threading.get_ident()

        def seen(transitions: Any, on_done: Any, **kw: Any) -> None:
            if threading.get_ident() == here:  # (the batches, not the runtime's own)
                groups.append([len(t.ops) for t in transitions])
            submit(transitions, on_done, **kw)

        monkeypatch.setattr(store.writer, "submit_many", seen)
        if through == "purge":
            assert purge(store, T0 + 60.0) == 30
        else:
            retention = Retention(store, clock.time, 60.0, scan=12)
            for _ in range(200):
                retention.on_sweep()
                store.writer.flush(WAIT)
                if store.count("workflows") == 5:
                    break
            assert retention.deleted == 30
        assert len(groups) > 3
        for ops in groups:  # (a batch stops once it holds them: one workflow more at most)
            assert sum(ops[:-1]) < 500, ops
        assert sorted(s.id for s in rt.list()) == [f"u{i:02d}" for i in range(0, 30, 7)]
        report = check_store(store)
        assert report.ok, report.problems


def counting_reads(monkeypatch: pytest.MonkeyPatch, store: Store) -> list[int]:
    """A list that grows by one with each read transaction ``store`` runs on this thread
    (the runtime's threads read it too)."""
    reads: list[int] = []
    real, here = store._read, threading.get_ident()

    def counted(fn: Any) -> Any:
        if threading.get_ident() == here:
            reads.append(1)
        return real(fn)

    monkeypatch.setattr(store, "_read", counted)
    return reads


def test_a_sweep_reads_a_bounded_range_however_many_unfinished_workflows_are_older(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """5000 delayed starts, all older than the cutoff and none finished: a sweep that
    read them all from the oldest, 4 times a second, cost ~2 ms per 1000 for nothing."""
    clock = FakeClock(start=T0)
    with Runtime(
        tmp_path / "s", clock=clock, setup=register, sweep_interval=3600, retention=1
    ) as rt:
        rt.start_many(
            [{"workflow": "order", "workflow_id": f"u{i}", "delay": DAY} for i in range(5000)]
        )
        clock.advance(2.0)
        reads = counting_reads(monkeypatch, rt._store)
        for _ in range(6):  # a whole pass (5 windows of 1000) and the start of the next
            reads.clear()
            rt._retention.on_sweep()
            assert len(reads) <= 3  # is the index built; one window; the oldest commands
        assert rt._store.count("workflows") == 5000


def test_a_bounded_sweep_still_deletes_every_finished_workflow_in_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Finished workflows among unfinished ones, each sweep reading 3 index entries: one
    pass after another, each finished one past the cutoff is deleted, including one that
    finished after a pass had gone by it (its update moved it to the newest end)."""
    clock = FakeClock(start=T0)
    with Runtime(tmp_path / "s", clock=clock, setup=register, retention=None) as rt:
        for i in range(6):
            rt.start("order", {}, workflow_id=f"u{i}", delay=DAY)
            finish(rt, f"f{i}", {})
        clock.advance(120.0)
        retention = Retention(rt._store, clock.time, 60.0, batch=2, scan=3)
        reads = counting_reads(monkeypatch, rt._store)

        unfinished = [f"u{i}" for i in range(6)]

        def sweeps_until_only(left: list[str]) -> int:
            for n in range(1, 13):
                reads.clear()
                retention.on_sweep()
                assert len(reads) <= 4  # is the index built, a window, a batch's, commands
                rt._store.writer.flush(WAIT)
                if sorted(s.id for s in rt.list()) == left:
                    return n
            raise AssertionError(f"left after 12 sweeps: {sorted(s.id for s in rt.list())}")

        assert sweeps_until_only(unfinished) <= 4  # 12 entries, 3 a sweep
        assert retention.deleted == 6
        rt.cancel("u0")  # finished now, after the pass went by it
        wait_until(rt, lambda: rt.status("u0").state is State.CANCELLED)
        clock.advance(120.0)
        assert sweeps_until_only(unfinished[1:]) <= 3  # the pass's end, a new one from the oldest


def test_a_purge_command_read_in_bounded_windows_deletes_all_then_reports(
    tmp_path: Path,
) -> None:
    clock = FakeClock(start=T0)
    with Runtime(tmp_path / "s", clock=clock, setup=register, retention=None) as rt:
        for i in range(5):
            rt.start("order", {}, workflow_id=f"u{i}", delay=DAY)
            finish(rt, f"f{i}", {})
        command = {"id": 7, "action": "purge", "args": {"before": T0 + 1}, "who": "test"}
        retention = Retention(rt._store, clock.time, None, batch=2, scan=3)
        retention.on_command(command)
        for _ in range(10):
            retention.on_sweep()
            rt._store.writer.flush(WAIT)
        outcome = command_outcome(rt._store, 7)
        assert outcome is not None
        assert outcome["deleted"] == 5
        assert sorted(s.id for s in rt.list()) == [f"u{i}" for i in range(5)]


def test_a_purge_command_seen_again_while_its_result_commits_is_not_run_twice(
    tmp_path: Path,
) -> None:
    # A sweep that read the command while it was still pending hands it over again after
    # it finished; running it a second time would find nothing and overwrite its
    # recorded result ("deleted 3") with "deleted 0".
    clock = FakeClock(start=T0)
    with Runtime(tmp_path / "s", clock=clock, setup=register, retention=None) as rt:
        for i in range(3):
            finish(rt, f"w{i}", {})
        command = {"id": 7, "action": "purge", "args": {"before": T0 + DAY}, "who": "test"}
        retention = Retention(rt._store, clock.time, None)
        retention.on_command(command)
        retention.on_sweep()  # deletes the three
        rt._store.writer.flush(WAIT)
        retention.on_sweep()  # nothing left: the command is done
        retention.on_command(command)  # seen by a sweep that read it before that landed
        retention.on_sweep()
        rt._store.writer.flush(WAIT)
        outcome = command_outcome(rt._store, 7)
        assert outcome is not None
        assert outcome["deleted"] == 3


@pytest.mark.timeout(60)
def test_a_purge_whose_outcome_could_not_be_recorded_records_it_once_the_disk_has_room(
    tmp_path: Path,
) -> None:
    # Its outcome's commit failed (a full disk: just when an operator purges) and the
    # runtime took the command for finished all the same: it stayed pending for good,
    # the CLI waiting for it ran into its --timeout (exit 3), and the log said it had
    # deleted its workflows as if that were recorded.
    clock = FakeClock(start=T0)
    room = threading.Event()
    path = tmp_path / "s"
    with Runtime(path, clock=clock, setup=register, retention=None, sweep_interval=1.0) as rt:

        def disk() -> None:  # the writer's fault hook: full once the three are deleted
            # (the deletion's callback, which counts them, runs before the next commit's
            # hook: the outcome's commit fails, whichever sweep makes it)
            if rt._retention.deleted >= 3 and not room.is_set():
                raise OSError(errno.ENOSPC, "No space left on device (injected)")

        for i in range(3):
            finish(rt, f"w{i}", {})
        rt._store.writer.fault = disk
        purging = new_command("purge", "", args={"before": T0 + DAY}, who="t", why="test")
        command_id = append_command(path, purging)
        advance(rt, clock, 1.0)  # handed over: one batch deletes the three
        rt._store.writer.flush(WAIT)
        assert counts(rt._store)["workflows"] == 0
        advance(rt, clock, 1.0)  # a pass finds no more (if the first did not): recording fails
        rt._store.writer.flush(WAIT)
        assert wait_outcome(path, command_id, timeout=0) is None  # pending still
        room.set()
        advance(rt, clock, 3.0)  # the next sweeps hand it over again: recorded now
        outcome = wait_outcome(path, command_id, timeout=WAIT)
        assert outcome is not None
        assert (outcome["state"], outcome["deleted"]) == ("DONE", 3)


@pytest.mark.timeout(60)
def test_a_purge_goes_over_the_range_again_after_a_batch_failed_to_commit(
    tmp_path: Path,
) -> None:
    # A batch that failed (a full disk) was passed over: the scan went on after it, and
    # the pass's last window, finding no more, finished the purge ("deleted 0") with
    # the batch's workflows still there.
    clock = FakeClock(start=T0)
    full = threading.Event()

    def disk() -> None:  # the writer's fault hook
        if full.is_set():
            raise OSError(errno.ENOSPC, "No space left on device (injected)")

    with Runtime(tmp_path / "s", clock=clock, setup=register, retention=None) as rt:
        for i in range(2):
            finish(rt, f"f{i}", {})
        command = {"id": 7, "action": "purge", "args": {"before": T0 + 1}, "who": "test"}
        retention = Retention(rt._store, clock.time, None, batch=2)
        retention.on_command(command)
        rt._store.writer.fault = disk
        full.set()
        retention.on_sweep()  # one full batch: its commit fails
        rt._store.writer.flush(WAIT)
        full.clear()
        for _ in range(5):
            retention.on_sweep()
            rt._store.writer.flush(WAIT)
        outcome = command_outcome(rt._store, 7)
        assert outcome is not None
        assert outcome["deleted"] == 2
        assert rt.list() == []


@pytest.mark.parametrize("bad", [-1, float("nan"), "7d", True, 10**400])
def test_a_bad_retention_is_refused(tmp_path: Path, bad: object) -> None:
    with pytest.raises(InvalidInput, match="retention"):  # (10**400: not an OverflowError)
        Runtime(tmp_path / "s", retention=bad)  # type: ignore[arg-type]


@pytest.mark.timeout(60)
def test_a_retention_longer_than_the_epoch_is_old_keeps_all_and_sweeps_quietly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """retention=1e308 (accepted: finite) put the cutoff at -1e308 s, which the index's
    milliseconds cannot hold: every sweep, 4 a second, logged an OverflowError traceback
    ("a sweep listener failed"), and no answered command was ever deleted."""
    clock = FakeClock(start=T0)
    with (
        caplog.at_level(logging.ERROR, logger="herder"),
        Runtime(tmp_path / "s", clock=clock, setup=register, retention=1e308) as rt,
    ):
        finish(rt, "a", {})
        advance(rt, clock, 1.0)
        advance(rt, clock, 1.0)
        assert [s.id for s in rt.list()] == ["a"]
    assert [r.getMessage() for r in caplog.records] == []


KEEPS_APP = """
import sys
def build(rt):
    print("keeps", rt._retention._keep, flush=True)
"""


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("given", "keeps"),
    [([], "604800.0"), (["--retention", "12h"], "43200.0"), (["--retention", "none"], "None")],
)
def test_herder_run_takes_the_retention(tmp_path: Path, given: list[str], keeps: str) -> None:
    """The daemon's own command had no way to set the retention: every `herder run`
    kept finished workflows 7 days, though the docs tell its owner to keep them longer
    than any caller may repeat a start (or for good, None)."""
    (tmp_path / "keeps_app.py").write_text(KEEPS_APP)
    argv = [HERDER, "run", "--store", str(tmp_path / "s"), "--app", "keeps_app:build", *given]
    proc = subprocess.Popen(argv, cwd=tmp_path, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().split() == ["keeps", keeps]
        assert proc.stdout.readline().startswith("active ")
    finally:
        proc.terminate()
        assert proc.wait(WAIT) == 0


def test_herder_run_refuses_a_retention_that_is_no_age(tmp_path: Path) -> None:
    refused = herder("run", "--store", str(tmp_path / "s"), "--app", "a:b", "--retention", "7")
    assert refused.returncode == 2  # (usage: before the app is imported or a store made)
    assert "'7' is not an age" in refused.stderr
    assert "or none to keep every one" in refused.stderr
    assert not (tmp_path / "s").exists()


def herder(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [HERDER, *argv], capture_output=True, text=True, timeout=WAIT * 2, check=False
    )


@pytest.fixture
def old_store(tmp_path: Path) -> Path:
    """Three finished workflows 30 days old and one stuck, on a store no runtime holds."""
    path = tmp_path / "s"
    clock = FakeClock(start=datetime.datetime.now().timestamp() - 30 * DAY)
    retry = RetryPolicy(max_attempts=1)
    with Runtime(path, clock=clock, setup=register, default_retry=retry) as rt:
        for i in range(3):
            finish(rt, f"w{i}", {"pad": "x" * 4000})
        finish(rt, "stuck", {"fail": 1, "stuck": 1})
    return path


def test_purge_without_a_runtime_deletes_directly_and_dry_run_only_counts(
    old_store: Path,
) -> None:
    dry = herder("purge", "--store", str(old_store), "--older-than", "7d", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.startswith("would delete 3 ")
    none = herder("purge", "--store", str(old_store), "--older-than", "60d")
    assert none.stdout.startswith("deleted 0 ")
    done = herder("purge", "--store", str(old_store), "--older-than", "7d")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("deleted 3 ")
    with Store(old_store, readonly=True) as store:
        assert [r.id for r in store.workflows()] == ["stuck"]
    stuck = herder(
        "purge", "--store", str(old_store), "--older-than", "7d", "--state", "needs_attention"
    )
    assert stuck.stdout.startswith("deleted 1 ")
    for option, far, instead in (
        ("--older-than", "1000000d", "give a shorter duration"),  # (not "a later one")
        ("--before", "0001-01-01T00:00", "give a later one"),
    ):
        refused = herder("purge", "--store", str(old_store), option, far, "--dry-run")
        assert refused.returncode == 2, refused.stderr  # bad usage, as any bad --older-than
        assert f"argument {option}: {far!r} is out of the range of dates" in refused.stderr
        assert instead in refused.stderr
        assert "Traceback" not in refused.stderr


def test_purge_of_a_mistyped_store_creates_nothing(tmp_path: Path) -> None:
    typo = tmp_path / "stroe"
    done = herder("purge", "--store", str(typo), "--older-than", "7d")
    assert done.returncode == 1
    assert f"no store at {typo}" in done.stderr
    assert "Traceback" not in done.stderr
    assert not typo.exists()


@pytest.mark.timeout(120)
def test_purge_goes_through_the_running_runtime(old_store: Path) -> None:
    with Runtime(old_store, setup=register, retention=None, sweep_interval=0.05) as rt:
        done = herder("purge", "--store", str(old_store), "--before", "2099-01-01")
        assert done.returncode == 0, done.stderr
        assert "deleted 3 " in done.stdout
        assert "through the running runtime" in done.stdout
        assert [s.id for s in rt.list()] == ["stuck"]


@pytest.mark.timeout(120)
def test_purge_older_than_through_a_runtime_ages_on_its_clock(old_store: Path) -> None:
    """The workflows ended 30 days ago by the wall clock, but a minute ago by the engine
    clock of the runtime that runs the store (a FakeClock here; a wall clock stepped
    ahead in production): ``--older-than 1h`` must age them on the runtime's clock, on
    which their ``updated`` times were written, not on the CLI's wall clock."""
    clock = FakeClock(start=datetime.datetime.now().timestamp() - 30 * DAY + 60)
    with Runtime(old_store, clock=clock, setup=register, retention=None) as rt:

        def purge_hour_old() -> str:
            proc = subprocess.Popen(
                [HERDER, "purge", "--store", str(old_store), "--older-than", "1h"],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            while True:  # the fake clock fires no sweep by itself: one per look
                rt._sweep_now()
                try:
                    out, err = proc.communicate(timeout=0.1)
                except subprocess.TimeoutExpired:
                    continue
                assert proc.returncode == 0, err
                return out

        assert purge_hour_old().startswith("deleted 0 ")
        assert sorted(s.id for s in rt.list()) == ["stuck", "w0", "w1", "w2"]
        advance(rt, clock, 7200.0)
        assert purge_hour_old().startswith("deleted 3 ")
        assert [s.id for s in rt.list()] == ["stuck"]


@pytest.mark.timeout(120)
def test_compact_shrinks_the_file_offline_and_refuses_while_a_runtime_runs(
    old_store: Path,
) -> None:
    with Runtime(old_store, setup=register, retention=None):
        busy = herder("compact", "--store", str(old_store))
        assert busy.returncode == 1
        assert "offline" in busy.stderr
    assert herder("purge", "--store", str(old_store), "--older-than", "7d").returncode == 0
    before = (old_store / "data.mdb").stat().st_size
    done = herder("compact", "--store", str(old_store))
    assert done.returncode == 0, done.stderr
    assert (old_store / "data.mdb").stat().st_size < before
    with Runtime(old_store, setup=register) as rt:  # the compacted store works
        assert [s.id for s in rt.list()] == ["stuck"]
        assert rt.start("order", {}, workflow_id="new").result(timeout=WAIT)


def test_a_store_compacted_to_more_than_map_size_opens_and_runs(tmp_path: Path) -> None:
    # A compacted file has no free page, and LMDB maps a store larger than ``map_size``
    # (64 MiB by default) at its exact size: the lease taken at open then found no room,
    # and the runtime refused to start with MDB_MAP_FULL ("check free disk space").
    path = tmp_path / "s"
    with Runtime(path, setup=register, retention=None, map_size=1 << 16) as rt:
        for i in range(40):
            finish(rt, f"w{i}", {"pad": "x" * 4000})
    assert (path / "data.mdb").stat().st_size > 1 << 17
    done = herder("compact", "--store", str(path))
    assert done.returncode == 0, done.stderr
    with Runtime(path, setup=register, map_size=1 << 16) as rt:
        assert rt.start("order", {}, workflow_id="new").result(timeout=WAIT)


def test_opening_decodes_only_the_unfinished_workflows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A runtime kept for months holds many finished workflows (up to the retention
    # period's worth); recovery finds the unfinished ones through the index, so opening
    # does not decode a million records it has nothing to do with.
    with Runtime(tmp_path / "s", setup=register, retention=None) as rt:
        for i in range(30):
            finish(rt, f"done-{i}", {})
        rt.start("order", {}, workflow_id="later", delay=DAY)
    decoded: list[str] = []
    real = WorkflowRecord.from_dict

    def counting(data: Any) -> WorkflowRecord:
        record = real(data)
        decoded.append(record.id)
        return record

    monkeypatch.setattr(WorkflowRecord, "from_dict", counting)
    with Store(tmp_path / "s") as store:
        corrupt: list[StoreCorrupt] = []
        assert [r.id for r in store.unfinished(corrupt=corrupt)] == ["later"]
        assert corrupt == []
    assert decoded == ["later"]
    monkeypatch.setattr(WorkflowRecord, "from_dict", real)
    with Runtime(tmp_path / "s", setup=register) as rt:
        assert rt.stats()["steps"]["active_workflows"] == 1  # recovered


def test_compact_keeps_the_store_when_its_copy_does_not_hold_the_same(
    old_store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A damaged store could copy into a file that opened as an empty store and passed
    # `herder check`, and compact swapped it in (the store review, D1). The copy must now
    # hold as many entries in each database as the store, or the store stays.
    from herder.store import StoreError, _compact

    before = (old_store / "data.mdb").read_bytes()
    counted = _compact.census

    def copy_lost_steps(path: Path) -> tuple[dict[str, int], int]:
        got, txnid = counted(path)
        return ({**got, "steps": 0} if path.name == _compact.TMP else got), txnid

    monkeypatch.setattr(_compact, "census", copy_lost_steps)
    with pytest.raises(StoreError, match="its compacted copy does not hold what the store"):
        _compact.compact(old_store)
    assert (old_store / "data.mdb").read_bytes() == before
    assert not (old_store / _compact.TMP).exists()


@pytest.mark.parametrize("schema", [99, "foreign"])
def test_compact_refuses_what_no_other_command_opens_with_a_message(
    tmp_path: Path, schema: int | str
) -> None:
    store = tmp_path / "s"
    with Runtime(store):
        pass
    if schema == "foreign":
        (store / "data.mdb").write_bytes(b"\x00not an lmdb file" * 4096)
        says = "MDB_INVALID"
    else:
        from herder.store import Put, Store, Transition, encode

        with Store(store) as raw:
            put = Put("meta", b"schema", encode(schema))
            raw.writer.submit(Transition(ops=(put,))).result(timeout=WAIT)
        says = "upgrade herder to open it"
    done = herder("compact", "--store", str(store))
    assert done.returncode == 1
    assert says in done.stderr
    assert "Traceback" not in done.stderr  # a foreign file printed one (the store review, D5)


@pytest.mark.parametrize(
    "args",
    [{}, {"before": float("inf")}, {"before": 1e300}, {"before": "soon"}, {"older_than": 1e306}],
)
def test_a_malformed_purge_command_is_refused_on_the_record_and_the_next_one_runs(
    tmp_path: Path, args: dict[str, Any]
) -> None:
    # Any process may write a command. One with no cutoff (KeyError) or one no index key
    # can hold (OverflowError, struct.error) raised out of every sweep: never answered,
    # and, first in line for ever, it stopped every later purge and the retention itself.
    clock = FakeClock(start=T0)
    with Runtime(tmp_path / "s", clock=clock, setup=register, retention=None) as rt:
        finish(rt, "w0", {})
        retention = Retention(rt._store, clock.time, None)
        retention.on_command({"id": 7, "action": "purge", "args": args, "who": "test"})
        good = {"before": T0 + DAY}
        retention.on_command({"id": 8, "action": "purge", "args": good, "who": "test"})
        for _ in range(3):
            retention.on_sweep()
            rt._store.writer.flush(WAIT)
        bad = command_outcome(rt._store, 7)
        assert bad is not None
        assert bad["state"] == "FAILED"
        assert "before" in bad["error"]
        done = command_outcome(rt._store, 8)
        assert done is not None
        assert (done["state"], done["deleted"]) == ("DONE", 1)


def test_a_command_refused_for_a_workflow_purged_meanwhile_leaves_no_history_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``herder cancel`` of a finished workflow is refused, with an event in its history,
    while retention deletes it: the event was written whatever the purge did after the
    Scheduler saw the workflow, and outlived it (``herder check``: restore a backup)."""
    path = tmp_path / "s"
    with Runtime(path, clock=FakeClock(start=T0), setup=register, sweep_interval=0.05) as rt:
        finish(rt, "old", {})
        seen = Channel._exists

        def purged_right_after(channel: Channel, workflow_id: str) -> bool:
            found = seen(channel, workflow_id)
            assert purge(rt._store, T0 + DAY) == 1  # the retention's commit lands now
            return found

        monkeypatch.setattr(Channel, "_exists", purged_right_after)
        command = append_command(path, new_command("cancel", "old", who="t", why="x"))
        rt._sweep_now()  # (on a FakeClock the sweep that hands commands over runs so)
        outcome = wait_outcome(path, command, timeout=WAIT)
        assert outcome is not None
        assert outcome["state"] == "FAILED"  # refused: it had ended
        assert rt.list() == []
        report = check_store(rt._store)
        assert report.ok, report.problems


def test_stats_counts_by_state_follow_the_workflows_and_retention_without_a_scan(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``rt.stats()["workflows"]`` reads the counts the writer keeps (it counted the whole
    ``recent`` index at every call): exact as workflows move and as retention deletes."""
    clock = FakeClock(start=T0)
    retry = RetryPolicy(max_attempts=1)
    with Runtime(
        tmp_path / "s", clock=clock, setup=register, retention=DAY, default_retry=retry
    ) as rt:
        monkeypatch.setattr("herder.store._recent.count", lambda *a: pytest.fail("a scan"))

        def by_state() -> dict[str, int]:
            return {str(s): n for s, n in rt.stats()["workflows"].items() if n}

        assert by_state() == {}
        finish(rt, "ok", {})
        finish(rt, "undone", {"fail": 1})
        rt.start("order", {}, workflow_id="waiting", delay=3 * DAY)
        assert by_state() == {"SUCCEEDED": 1, "COMPENSATED": 1, "RUNNING": 1}
        advance(rt, clock, DAY + 1)
        assert [s.id for s in rt.list()] == ["waiting"]
        assert by_state() == {"RUNNING": 1}


def test_answered_commands_go_with_retention_but_not_pending_young_or_newest_ones(
    tmp_path: Path,
) -> None:
    """An automation sending commands to a daemon that runs for months grew the store
    for ever: retention deleted workflows, never the answered commands. They go once
    answered longer ago than the retention (a day at least: a CLI reads its answer); a
    pending one stays, and so does the newest, whose id the next command counts on."""
    path = tmp_path / "s"
    with Store(path) as store:
        ids = [
            append_command(path, new_command("retry", f"w{n}", who="t", why="x")) for n in range(5)
        ]
        by_id = {c["id"]: c for c in pending_commands(store)}
        answered = {1: T0, 2: T0 + 10, 3: T0 + 2 * DAY, 5: T0 + 20}  # (4 stays pending)
        for command_id, at in answered.items():
            ops = finished_ops(by_id[command_id], None, at)
            store.writer.submit(Transition(ops=ops)).result(WAIT)
        assert ids == [1, 2, 3, 4, 5]
        old = answered_before(store, T0 + DAY, most=100)
        assert old is not None
        store.writer.submit(old).result(WAIT)
        # 1 and 2: old; 3: answered later (the rest waits for it); 5: the newest.
        assert [command_outcome(store, n) is not None for n in range(1, 6)] == [
            False,
            False,
            True,
            False,
            True,
        ]
        assert [c["id"] for c in pending_commands(store)] == [4]
        assert answered_before(store, T0 + 30 * DAY, most=1) is not None  # (at most 1)
    assert append_command(path, new_command("retry", "w6", who="t", why="x")) == 6


def test_a_running_retention_deletes_answered_commands_and_check_stays_clean(
    tmp_path: Path,
) -> None:
    path = tmp_path / "s"
    clock = FakeClock(start=T0)
    with Runtime(path, clock=clock, setup=register, retention=3600, sweep_interval=1.0) as rt:
        for n in range(3):
            finish(rt, f"w{n}", {})
            sent = append_command(path, new_command("cancel", f"w{n}", who="t", why="x"))
            rt._sweep_now()
            outcome = wait_outcome(path, sent, timeout=WAIT)
            assert outcome is not None
            assert outcome["state"] == "FAILED"  # (it had ended)
        advance(rt, clock, 3601.0)
        assert rt.list() == []  # the workflows went
        assert rt._store.count("commands") == 3  # an answer is kept a day at least
        advance(rt, clock, DAY)
        advance(rt, clock, 1.0)
        assert rt._store.count("commands") == 1  # the newest: the next id counts on from it
        report = check_store(rt._store)
        assert report.ok, report.problems
    assert append_command(path, new_command("cancel", "w9", who="t", why="x")) == 4
