"""`herder check`: a consistent store passes; each kind of damage is reported by its key."""

from __future__ import annotations

import contextlib
import datetime
import io
import itertools
import json
import shutil
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import lmdb
import pytest

from herder.runtime import (
    Agent,
    InvalidInput,
    Permanent,
    RetryPolicy,
    Runtime,
    StepContext,
    StoreError,
    Workflow,
)
from herder.runtime._check import check_store
from herder.runtime._check_history import UNTOLD
from herder.runtime._cli import main
from herder.runtime.testing import FakeClock, wait_until
from herder.store import (
    BATCH_TIMER,
    RECENT_AT_DB,
    RECENT_COUNTS,
    RECENT_DB,
    Delete,
    Put,
    Store,
    StoreCorrupt,
    Transition,
    batch_items,
    encode,
    purge,
    read_history,
)
from herder.store._keys import definition_key, history_key, step_key, timer_key, workflow_key
from herder.store._records import StepRecord, StepState, WorkflowRecord

FAST = RetryPolicy(max_attempts=2, initial_interval=0.0, jitter=0.0)
RELEASE = threading.Event()


class Shop(Agent):
    def buy(self, ctx: StepContext) -> dict[str, str]:
        if ctx.input.get("hang") and ctx.step == "ship":
            RELEASE.wait(30)
        if ctx.input.get("sold_out") and ctx.step == "ship":
            raise Permanent("out of stock")
        return {"item": ctx.step}

    def refund(self, ctx: StepContext) -> None:
        if ctx.input.get("refunds_down"):
            raise Permanent("refunds are down")


ORDER = (
    Workflow("order", version=1)
    .step("pay", agent="shop", action="buy", compensate="refund")
    .step("pack", agent="shop", action="buy", compensate="refund", after=["pay"])
    .step("ship", agent="shop", action="buy", after=["pack"], timeout=60.0)
)
INPUTS = {
    "o-ok": {},
    "o-undone": {"sold_out": 1},
    "o-stuck": {"sold_out": 1, "refunds_down": 1},
    "o-retrying": {"n": 1},
    "o-running": {"hang": 1},
}


class Flaky(Agent):
    def buy(self, ctx: StepContext) -> None:
        raise ConnectionError("down")


@pytest.fixture(scope="module")
def good_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every workflow state the check must accept, left by a runtime that stopped:
    succeeded, compensated, needs attention, waiting to retry, and running (dispatched)."""
    path = tmp_path_factory.mktemp("check") / "store"
    clock = FakeClock()
    retry = RetryPolicy(max_attempts=3, initial_interval=30.0, jitter=0.0)
    with Runtime(path, clock=clock, default_retry=FAST, instance_shutdown=0.05) as rt:
        rt.add_agent("shop", Shop, concurrency=2)
        rt.add_agent("flaky", Flaky)
        rt.add_workflow(ORDER)
        rt.add_workflow(
            Workflow("flaky", version=1).step("x", agent="flaky", action="buy", retry=retry)
        )
        for wid, data in INPUTS.items():
            if wid == "o-retrying":
                rt.start("flaky", data, workflow_id=wid)
            else:
                rt.start("order", data, workflow_id=wid)
        for wid in ("o-ok", "o-undone", "o-stuck"):
            rt._wait_final(wid, 10)
        # Flaky's attempt answers on a worker thread: wait for its failure to be recorded.
        wait_until(rt, lambda: rt.status("o-retrying").steps["x"].state is StepState.RETRY_WAIT)
        wait_until(rt, lambda: rt.status("o-running").steps["ship"].state is StepState.DISPATCHED)
    RELEASE.set()
    return path


@pytest.fixture
def damaged(good_store: Path, tmp_path: Path) -> Callable[[list[Put | Delete]], Path]:
    """A copy of the good store with some writes applied behind the engine's back."""

    copies = itertools.count()

    def make(ops: list[Put | Delete]) -> Path:
        path = tmp_path / f"store-{next(copies)}"
        shutil.copytree(good_store, path)
        with Store(path) as store:
            store.writer.submit(Transition(ops=tuple(ops))).result(timeout=10)
        return path

    return make


def _problems(path: Path) -> list[tuple[str, bytes, str]]:
    with Store(path, readonly=True) as store:
        return [(p.db, p.key, p.message) for p in check_store(store).problems]


def _workflow(path: Path, wid: str) -> dict:
    """A stored workflow as a (schema 2) map to edit."""
    with Store(path, readonly=True) as store:
        data = store.get("workflows", workflow_key(wid))
    assert data is not None
    return WorkflowRecord.from_dict(data).to_dict()


def _step(path: Path, wid: str, name: str) -> dict:
    """A stored step as a (schema 2) map to edit: written back, it reads as well."""
    with Store(path, readonly=True) as store:
        data = store.get("steps", step_key(wid, name))
    assert data is not None
    return StepRecord.from_dict(data).to_dict()


def test_a_store_left_by_the_runtime_passes_the_check(good_store: Path) -> None:
    with Store(good_store, readonly=True) as store:
        report = check_store(store)
    assert report.problems == []
    assert (report.workflows, report.steps, report.definitions) == (5, 13, 2)
    # The retry wait's own entry, and the batch entries of the attempts the runtime
    # recorded (the dispatched step's among them; the others' are stale until due).
    with Store(good_store, readonly=True) as store:
        kinds = Counter(wf == BATCH_TIMER for _, wf, _, _ in store.due_timers(2**62))
    assert kinds[False] == 1
    assert kinds[True] >= 1
    assert report.timers == kinds[False] + kinds[True]


def test_check_store_takes_a_store_path_as_the_docs_tell_users_to_check_one_on_disk(
    good_store: Path, tmp_path: Path
) -> None:
    # (Store is not exported from herder.runtime: a path is how a user names one on disk.)
    for path in (good_store, str(good_store)):
        report = check_store(path)
        assert report.problems == []
        assert report.workflows == 5
    empty = tmp_path / "not-a-store"
    empty.mkdir()
    with pytest.raises(StoreError, match=r"no store at .*not-a-store"):
        check_store(empty)
    assert list(empty.iterdir()) == []  # (nothing created in it)
    with pytest.raises(InvalidInput, match="an open Store or a store's path, got int"):
        check_store(5)  # type: ignore[arg-type]


def test_the_cli_exits_zero_on_a_good_store_and_one_on_a_damaged_one(
    good_store: Path, damaged: Callable[[list[Put | Delete]], Path]
) -> None:
    out = io.StringIO()
    assert main(["check", "--store", str(good_store)], out) == 0
    assert out.getvalue().startswith("ok: ")
    bad = damaged([Delete("definitions", definition_key("order", 1))])
    out = io.StringIO()
    assert main(["check", "--store", str(bad), "--json"], out) == 1
    report = json.loads(out.getvalue())
    assert report["ok"] is False
    assert {
        "db": "workflows",
        "key": "o-ok",
        "problem": "its definition order@1 is not stored",
    } in (report["problems"])


def test_the_cli_exits_three_when_it_could_not_read_the_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A store it could not read (a wrong path, a foreign file) exited 1, as a store whose
    records break an invariant does: a script could not tell "restore a backup" from
    "fix the path"."""
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "data.mdb").write_bytes(b"not lmdb")
    for path, why in ((tmp_path / "nowhere", "no store at"), (foreign, "not an LMDB file")):
        out = io.StringIO()
        assert main(["check", "--store", str(path), "--json"], out) == 3
        assert out.getvalue() == ""
        assert why in capsys.readouterr().err


@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
def test_the_cli_exits_one_on_problems_though_its_reader_left(
    damaged: Callable[[list[Put | Delete]], Path], as_json: bool
) -> None:
    """``herder check | head`` (with ``set -o pipefail``) exited 0 on a store with
    thousands of problems: the reader left before all were printed, and a closed pipe
    ends a command with 0."""
    ghosts = [Put("steps", step_key(f"ghost-{n}", "x"), encode({"v": 1})) for n in range(3000)]
    path = damaged(ghosts)
    command = [sys.executable, "-m", "herder.runtime", "check", "--store", str(path)]
    with subprocess.Popen(
        command + (["--json"] if as_json else []),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as check:
        assert check.stdout is not None
        assert check.stderr is not None
        assert check.stdout.read(100)  # (as `head -c 100`)
        check.stdout.close()
        code = check.wait(timeout=60)
        error = check.stderr.read()
    assert code == 1, error
    assert error == b""


@pytest.mark.timeout(60)
def test_a_store_damaged_throughout_lists_a_thousand_problems_and_counts_the_rest(
    damaged: Callable[[list[Put | Delete]], Path],
) -> None:
    """``herder check`` held every problem it found, and ``--json`` printed them all in
    one document: a store damaged throughout (a problem per record) took 1 GB for half a
    million. It holds and lists the first 1,000 and counts the rest; the exit code is 1."""
    ghosts = [Put("steps", step_key(f"ghost-{n}", "x"), encode({"v": 1})) for n in range(2500)]
    path = damaged(ghosts)
    out = io.StringIO()
    assert main(["check", "--store", str(path), "--json"], out) == 1
    report = json.loads(out.getvalue())
    assert report["ok"] is False
    assert len(report["problems"]) == 1000
    assert report["more_problems"] == 1500
    out = io.StringIO()
    assert main(["check", "--store", str(path)], out) == 1
    lines = out.getvalue().splitlines()
    assert lines[0].startswith(f"2500 problems in {path}")
    assert len(lines) == 1 + 1000 + 1
    assert lines[-1] == "  ... and 1500 more (the first 1000 are listed)"


def test_a_missing_timer_entry_is_reported_by_its_key(
    damaged: Callable[[list[Put | Delete]], Path],
) -> None:
    st = _step(damaged([]), "o-retrying", "x")
    key = timer_key(st["timer_ms"], "o-retrying", "x")
    path = damaged([Delete("timers", key)])
    at = datetime.datetime.fromtimestamp(st["retry_at"], datetime.UTC)
    assert _problems(path) == [
        (
            "timers",
            key,
            "missing: step o-retrying/x waits on it, and nothing else wakes it: restart the "
            f"runtime once {at.isoformat(timespec='seconds')} has passed: recovery runs the "
            "step again from its record and watches it anew",
        )
    ]


def test_a_missing_deadline_timer_names_the_workflow_and_what_to_do(
    damaged: Callable[[list[Put | Delete]], Path],
) -> None:
    """A workflow deadline's timer is kept under the reserved step name "": its missing
    entry was reported as "missing: step o-running/ waits on it", naming a step that
    does not exist, and neither that nor the other timer problems said what to do."""
    running = _workflow(damaged([]), "o-running")
    running["deadline"] = 1_000_500.0
    path = damaged([Put("workflows", workflow_key("o-running"), encode(running))])
    problems = {(db, key): message for db, key, message in _problems(path)}
    key = timer_key(1_000_500_000, "o-running", "")
    assert problems[("timers", key)] == (
        "missing: the deadline of workflow o-running is never enforced: `herder show "
        "o-running`, then settle it by an operator action (docs/operator.md), or restore a "
        "backup"
    )


def test_a_running_attempt_in_no_batch_entry_is_reported(
    good_store: Path, damaged: Callable[[list[Put | Delete]], Path]
) -> None:
    st = _step(damaged([]), "o-running", "ship")
    assert st["timer_ms"] is None  # its deadline is watched by its commit's batch entry
    with Store(good_store, readonly=True) as store:
        holding = [
            timer_key(due, wf, first)
            for due, wf, first, value in store.due_timers(2**62)
            if wf == BATCH_TIMER and ("o-running", "ship", st["token"]) in batch_items(value)
        ]
    assert len(holding) == 1
    path = damaged([Delete("timers", holding[0])])
    message = f"attempt {st['token']} of o-running/ship is in no batch deadline entry: "
    [(db, key, said)] = _problems(path)
    assert (db, key) == ("steps", step_key("o-running", "ship"))
    assert said.startswith(message)
    assert said.endswith(
        "it is never timed out: restart the runtime: recovery runs the step again from its "
        "record and watches it anew"
    )
    # A handed-off step (WAITING on complete_later) is not run again by a restart, which
    # leaves its deadline unwatched too: an operator settles it.
    waiting = dict(st, state=str(StepState.WAITING))
    path = damaged(
        [Delete("timers", holding[0]), Put("steps", step_key("o-running", "ship"), encode(waiting))]
    )
    # (its history, which has it DISPATCHED, is reported too)
    [(db, key, said)] = [p for p in _problems(path) if "batch deadline entry" in p[2]]
    assert (db, key) == ("steps", step_key("o-running", "ship"))
    assert said.endswith(
        "it is never timed out: `herder show o-running`, then settle it by an operator action "
        "(docs/operator.md), or restore a backup"
    )


def test_a_timer_of_no_waiting_step_and_a_stale_token_are_reported(
    damaged: Callable[[list[Put | Delete]], Path],
) -> None:
    stray = timer_key(5, "o-ok", "pay")
    st = _step(damaged([]), "o-retrying", "x")
    live = timer_key(st["timer_ms"], "o-retrying", "x")
    path = damaged(
        [Put("timers", stray, encode({"token": 1})), Put("timers", live, encode({"token": 7}))]
    )
    problems = _problems(path)
    assert (
        "timers",
        stray,
        "timer entry of no step waiting on a timer: harmless, the sweep drops it when it falls due",
    ) in problems
    assert ("timers", live, f"token 7, the step's is {st['token']}") in problems
    assert len(problems) == 2


def test_step_states_that_contradict_the_workflow_state_are_reported(
    damaged: Callable[[list[Put | Delete]], Path],
) -> None:
    pay = _step(damaged([]), "o-undone", "pay")
    pay.update(state=StepState.SUCCEEDED)
    ok = _step(damaged([]), "o-ok", "ship")
    ok.update(state=StepState.DISPATCHED, timer_ms=None)
    path = damaged(
        [
            Put("steps", step_key("o-undone", "pay"), encode(pay)),
            Put("steps", step_key("o-ok", "ship"), encode(ok)),
        ]
    )
    problems = _problems(path)
    assert ("steps", step_key("o-undone", "pay"), "succeeded and never undone") in problems
    assert ("steps", step_key("o-ok", "ship"), "DISPATCHED in a SUCCEEDED workflow") in problems


def test_a_failed_step_that_may_have_taken_effect_and_was_never_undone_is_reported(
    damaged: Callable[[list[Put | Delete]], Path],
) -> None:
    # The engine undoes a failure with a done_token (to_undo) as it undoes a success:
    # a COMPENSATED workflow that still holds one was not compensated.
    pay = _step(damaged([]), "o-undone", "pay")
    pay.update(state=StepState.FAILED, succeeded=False)
    assert pay["done_token"] is not None
    path = damaged([Put("steps", step_key("o-undone", "pay"), encode(pay))])
    why = "failed in a way that may have taken effect, and never undone"
    assert ("steps", step_key("o-undone", "pay"), why) in _problems(path)


def test_a_step_dispatched_before_its_dependency_succeeded_is_reported(
    damaged: Callable[[list[Put | Delete]], Path],
) -> None:
    pack = _step(damaged([]), "o-running", "pack")
    pack.update(state=StepState.PENDING, done_token=None)
    path = damaged([Put("steps", step_key("o-running", "pack"), encode(pack))])
    problems = {(db, key): message for db, key, message in _problems(path)}
    message = problems[("steps", step_key("o-running", "ship"))]
    assert message.startswith("DISPATCHED while its dependencies ['pack'] have not succeeded: ")
    assert "`herder show o-running`" in message


def test_a_step_that_ran_or_completed_before_its_dependency_is_reported_in_any_state(
    damaged: Callable[[list[Put | Delete]], Path],
) -> None:
    """The order was checked in RUNNING workflows only: a SUCCEEDED workflow whose last
    step completed before the one it runs after, or a compensated one whose second step
    ran (and was undone) while its first never succeeded, passed the check."""
    ship = _step(damaged([]), "o-ok", "ship")
    pack = _step(damaged([]), "o-ok", "pack")
    ship.update(token=pack["done_token"] - 1, done_token=pack["done_token"] - 1)
    pay = _step(damaged([]), "o-undone", "pay")
    pay.update(state=StepState.PENDING, token=0, attempt=0, done_token=None, succeeded=False)
    path = damaged(
        [
            Put("steps", step_key("o-ok", "ship"), encode(ship)),
            Put("steps", step_key("o-undone", "pay"), encode(pay)),
        ]
    )
    problems = {(db, key): message for db, key, message in _problems(path)}
    assert problems[("steps", step_key("o-ok", "ship"))].startswith(
        "completed before its dependencies ['pack'] succeeded: herder dispatches a step only"
    )
    assert problems[("steps", step_key("o-undone", "pack"))].startswith(
        "COMPENSATED while its dependencies ['pay'] have not succeeded: "
    )
    assert len(problems) == 3  # and pay's record, no longer where its history ends


def test_compensation_out_of_reverse_completion_order_is_reported(
    damaged: Callable[[list[Put | Delete]], Path],
) -> None:
    pay = _step(damaged([]), "o-undone", "pay")
    pack = _step(damaged([]), "o-undone", "pack")
    assert pay["done_token"] < pack["done_token"]
    assert pay["token"] > pack["token"]
    pay["token"], pack["token"] = pack["token"], pay["token"]
    path = damaged(
        [
            Put("steps", step_key("o-undone", "pay"), encode(pay)),
            Put("steps", step_key("o-undone", "pack"), encode(pack)),
        ]
    )
    assert (
        "workflows",
        workflow_key("o-undone"),
        "step 'pay' completed before 'pack' but was compensated first: compensation must "
        "run in reverse completion order",
    ) in _problems(path)


def test_orphans_missing_steps_corrupt_records_and_future_tokens_are_reported(
    damaged: Callable[[list[Put | Delete]], Path],
) -> None:
    ship = _step(damaged([]), "o-ok", "ship")
    ship["token"] = 99 << 32
    path = damaged(
        [
            Put("steps", step_key("ghost", "pay"), encode({"v": 1})),
            Delete("steps", step_key("o-ok", "pay")),
            Put("workflows", workflow_key("o-stuck"), b"\xc1garbage"),
            Put("steps", step_key("o-ok", "ship"), encode(ship)),
        ]
    )
    problems = _problems(path)
    assert ("steps", step_key("ghost", "pay"), "step record of a workflow that does not exist") in (
        problems
    )
    # A step without a record is PENDING, which a SUCCEEDED workflow cannot have.
    assert ("steps", step_key("o-ok", "pay"), "PENDING in a SUCCEEDED workflow") in problems
    corrupt = [p for p in problems if p[:2] == ("workflows", workflow_key("o-stuck"))]
    assert len(corrupt) == 1
    assert corrupt[0][2].startswith("corrupt: ")
    assert (
        "steps",
        step_key("o-ok", "ship"),
        f"token {99 << 32} is from a future incarnation",
    ) in problems


def test_a_workflow_the_recent_index_leaves_out_or_lists_as_final_is_reported(
    good_store: Path, damaged: Callable[[list[Put | Delete]], Path]
) -> None:
    """Recovery reads the unfinished workflows off the ``recent`` index: one missing
    from it, or listed there as final, is never resumed. The check held the index only
    to itself (each entry the one its ``recent_at`` names), so it passed such a store."""
    with Store(good_store, readonly=True) as store:
        at = dict(store.raw_scan(RECENT_AT_DB))
    running, retrying = workflow_key("o-running"), workflow_key("o-retrying")
    path = damaged(
        [
            Delete(RECENT_AT_DB, running),
            Delete(RECENT_DB, at[running] + running),
            Put(RECENT_DB, at[retrying] + retrying, encode("SUCCEEDED")),
        ]
    )
    with Store(path, readonly=True) as store:
        assert store.unfinished_ids() == []  # what recovery would resume
    problems = {(db, key): message for db, key, message in _problems(path)}
    assert problems[("workflows", running)].startswith("not in the recent index: recovery")
    listed = problems[(RECENT_DB, at[retrying] + retrying)]
    assert listed.startswith("lists it as 'SUCCEEDED' updated at ")
    assert "but its record is 'RUNNING' updated at " in listed
    # (and the counts by state kept beside the index, which the writes above passed by)
    assert problems[("meta", RECENT_COUNTS)].startswith("counts ")
    assert len(problems) == 3


def test_an_index_entry_lost_under_its_recent_at_says_the_workflow_never_resumes(
    good_store: Path, damaged: Callable[[list[Put | Delete]], Path]
) -> None:
    """A ``recent`` entry lost while its ``recent_at`` value stayed leaves the workflow
    out of recovery as surely as a lost ``recent_at``, but the check said only "names no
    entry of the recent index", with neither that nor the way out."""
    with Store(good_store, readonly=True) as store:
        at = dict(store.raw_scan(RECENT_AT_DB))
    running = workflow_key("o-running")
    path = damaged([Delete(RECENT_DB, at[running] + running)])
    with Store(path, readonly=True) as store:
        assert "o-running" not in store.unfinished_ids()  # what recovery would resume
    problems = {(db, key): message for db, key, message in _problems(path)}
    said = problems[(RECENT_AT_DB, running)]
    assert said.startswith("names no entry of the recent index: recovery reads the unfinished")
    assert said.endswith(
        "never resumes this one, and herder ls and retention miss it; restore a backup"
    )


def test_a_recent_index_database_lost_is_reported_not_a_traceback(
    good_store: Path, tmp_path: Path
) -> None:
    """A store whose ``recent`` database is gone (its name lost from a damaged main
    database) while ``recent_at`` stayed: ``herder check`` raised KeyError('recent')."""
    path = tmp_path / "store"
    shutil.copytree(good_store, path)
    env = lmdb.open(str(path), max_dbs=16)
    with env.begin(write=True) as txn:
        txn.drop(env.open_db(RECENT_DB.encode(), txn=txn, create=False), delete=True)
    env.close()
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(["check", "--store", str(path)], out=out)
    assert code == 1, err.getvalue()
    problems = _problems(path)
    assert {db for db, _, _ in problems} == {RECENT_AT_DB, "meta"}
    assert all(
        m.startswith("names no entry of the recent index: recovery")
        for db, _, m in problems
        if db == RECENT_AT_DB
    )


def test_counts_by_state_that_disagree_with_the_recent_index_are_reported(
    good_store: Path, damaged: Callable[[list[Put | Delete]], Path]
) -> None:
    """``rt.stats()`` reads the counts the writer keeps beside the index: the check holds
    them to its entries, state by state, and names a value that is not counts."""
    path = damaged([Put("meta", RECENT_COUNTS, encode([2, [[encode("SUCCEEDED"), 7]]]))])
    messages = sorted(m for db, key, m in _problems(path) if (db, key) == ("meta", RECENT_COUNTS))
    assert len(messages) == len(_problems(path)) == 4  # (every state the good store has)
    heads = [m.partition(":")[0] for m in messages]
    assert "counts 7 workflows 'SUCCEEDED', the recent index lists 1" in heads
    assert "counts 0 workflows 'RUNNING', the recent index lists 2" in heads
    assert messages[0].endswith(
        ": rt.stats() reports them (an older herder that held the store since left them "
        "behind: the next runtime to take it counts them again)"
    )
    path = damaged([Put("meta", RECENT_COUNTS, encode({"SUCCEEDED": 1}))])
    assert [m.partition(":")[0] for _, _, m in _problems(path)] == ["not counts by state"]


def test_a_damaged_lease_or_handoff_request_is_reported(
    damaged: Callable[[list[Put | Delete]], Path],
) -> None:
    """Every open that writes reads the lease (a damaged one keeps every runtime out of
    the store) and a running runtime reads a handoff request at each sweep; the check
    passed a store whose lease no herder could read."""
    path = damaged(
        [
            Put("meta", b"lease", encode({"owner": "x"})),
            Put("meta", b"handoff", encode(["soon"])),
        ]
    )
    with pytest.raises(StoreCorrupt, match="lease"):
        Runtime(path).stop()
    problems = {(db, key): message for db, key, message in _problems(path)}
    assert problems[("meta", b"lease")] == "bad record: KeyError: 'incarnation'"
    assert problems[("meta", b"handoff")].startswith("bad record: TypeError: ")
    assert len(problems) == 2


def test_a_store_no_runtime_took_over_yet_needs_no_incarnation(
    tmp_path: Path, damaged: Callable[[list[Put | Delete]], Path]
) -> None:
    """A standby creates the store it opens, but the incarnation is written with the
    first lease taken: after a standby whose app failed in setup (``herder run
    --standby`` on a first deploy), the check called the new store damaged, exit 1."""

    def broken(rt: Runtime) -> None:
        raise RuntimeError("the app's config is missing")

    path = tmp_path / "new"
    with pytest.raises(RuntimeError, match="config"):
        Runtime(path, standby=True, setup=broken)
    assert _problems(path) == []
    Runtime(path).stop()  # (a runtime opens it as it is)
    # Where a runtime held the lease, or wrote workflows, a missing one is damage.
    lost = damaged([Delete("meta", b"incarnation")])
    assert ("meta", b"incarnation", "missing") in _problems(lost)


def _history_keys(path: Path, wid: str) -> list[bytes]:
    with Store(path, readonly=True) as store:
        return [key for key, _ in store.scan("history", workflow_key(wid) + b"\x00")]


NOT_EVENTS = {
    "a string": ("moved", "a str, neither an event's map nor its array"),
    "nil": (None, "a NoneType, neither"),
    "a map of no kind": ({"t": 1.0, "to": "RUNNING"}, "a map whose kind is None"),
    "a step map without its fields": ({"kind": "step", "t": 1.0}, "a step event without step"),
    "a time that is no number": (
        {"kind": "operator", "t": "noon", "action": "retry"},
        "a operator event whose time is 'noon', not a number",
    ),
    "an array of no layout": ([7, 1.0], "a list that is no event's array (it starts [7])"),
    "a workflow array cut short": ([1, 1.0, None], "a workflow event of 2 fields, not 4"),
}


@pytest.mark.parametrize(("value", "flaw"), NOT_EVENTS.values(), ids=NOT_EVENTS.keys())
def test_a_history_value_that_is_no_event_is_reported_as_show_marks_it(
    damaged: Callable[[list[Put | Delete]], Path], value: object, flaw: str
) -> None:
    # Its CRC was fine, so check passed it while `herder show` listed it as damaged (or,
    # a map of no known kind or fields, as a garbled row).
    key = _history_keys(damaged([]), "o-ok")[1]
    path = damaged([Put("history", key, encode(value))])
    [(db, where, message)] = _problems(path)
    assert (db, where) == ("history", key)
    assert message.startswith("not a history event: ")
    assert flaw in message
    assert "`herder show o-ok` lists it as damaged" in message
    with Store(path, readonly=True) as store:
        shown = read_history(store, "o-ok")
    assert shown[1]["kind"] == "damaged"  # the same rule, in one place
    assert [e["kind"] for e in shown].count("damaged") == 1


def test_history_left_behind_by_its_workflow_and_malformed_keys_are_reported(
    damaged: Callable[[list[Put | Delete]], Path],
) -> None:
    # A purge deletes a workflow with its history in one transaction: what it leaves is
    # a consistent store. An event of no workflow (or under no history key) only comes
    # from damage or an edit, and check passed it.
    path = damaged([])
    first = _history_keys(path, "o-ok")[0]
    with Store(path) as store:
        event = store.get("history", first)
        assert purge(store, before=2.0**40) == 2  # o-ok and o-undone: the finished ones
    assert _problems(path) == []
    assert _history_keys(path, "o-ok") == []
    orphan = history_key("o-ok", 7)
    odd = [b"o-ok\x00seq", b"o-running", history_key("o-running", 1)[:-1]]
    with Store(path) as store:
        ops = [Put("history", key, encode(event)) for key in (orphan, *odd)]
        store.writer.submit(Transition(ops=tuple(ops))).result(timeout=10)
    problems = {key: message for _, key, message in _problems(path)}
    assert set(problems) == {orphan, *odd}
    assert problems[orphan].startswith("event of workflow 'o-ok', which does not exist")
    assert "a workflow started as 'o-ok' would list it as its own" in problems[orphan]
    for key in odd:
        assert problems[key].startswith("not a history key (a workflow id, NUL, an 8-byte")


def test_a_resource_record_with_a_field_of_the_wrong_type_is_reported_and_fails_no_scrape(
    damaged: Callable[[list[Put | Delete]], Path],
) -> None:
    """A resources record that decodes but holds a counter of another type (a flipped
    bit, a foreign tool's map) or a negative one passed the check, and a runtime served
    it as it was: ``stats()`` showed ``crashes: 'many'`` and every scrape of the
    Prometheus registry it shares raised (``float('many')``)."""
    from prometheus_client import CollectorRegistry, generate_latest

    path = damaged(
        [
            Put("resources", b"shop", encode({"v": 1, "agent": "shop", "crashes": "many"})),
            Put("resources", b"flaky", encode({"v": 1, "agent": "flaky", "lost": -2})),
        ]
    )
    problems = {(db, key): message for db, key, message in _problems(path)}
    assert problems == {
        ("resources", b"shop"): "bad record: TypeError: field 'crashes' is str 'many', "
        "expected int",
        ("resources", b"flaky"): "bad record: ValueError: field 'lost' is -2: a count is >= 0",
    }
    with Runtime(path, clock=FakeClock()) as rt:  # (each read as unreadable: reset)
        rt.add_agent("shop", Shop)
        registry = CollectorRegistry()
        registry.register(rt.prometheus_collector())
        text = generate_latest(registry).decode()
        stats = rt.stats()["resources"]
    assert "herder_up 1.0" in text
    assert "many" not in repr(stats)


def test_a_record_whose_history_does_not_end_in_its_state_is_reported(
    damaged: Callable[[list[Put | Delete]], Path],
) -> None:
    """Every transition is stored with its event in one transaction. A workflow whose
    history lost its last events (or all of them) passed the check, though `herder show`
    then says it is still RUNNING, or tells nothing at all."""
    ok_events = _history_keys(damaged([]), "o-ok")
    retrying_events = _history_keys(damaged([]), "o-retrying")
    path = damaged(
        [
            Delete("history", ok_events[-1]),  # o-ok's end: RUNNING -> SUCCEEDED
            *(Delete("history", key) for key in retrying_events),
        ]
    )
    problems = {(db, key): message for db, key, message in _problems(path)}
    assert problems == {
        ("workflows", workflow_key("o-ok")): "SUCCEEDED, but the last event of its history "
        f"has it RUNNING: {UNTOLD.format(wid='o-ok')}",
        ("workflows", workflow_key("o-retrying")): "RUNNING, but its history has no event "
        f"of it: {UNTOLD.format(wid='o-retrying')}",
        ("steps", step_key("o-retrying", "x")): "RETRY_WAIT, but its history has no event "
        f"of it: {UNTOLD.format(wid='o-retrying')}",
    }
    assert "`herder show o-ok`" in UNTOLD.format(wid="o-ok")


def test_an_event_missing_from_the_middle_of_a_history_is_reported(
    damaged: Callable[[list[Put | Delete]], Path],
) -> None:
    """Each event starts where the one before it (of the same step, or the workflow)
    ended: a history that lost an event between two others passed the check, its records
    and its last events agreeing."""
    path = damaged([])
    with Store(path, readonly=True) as store:
        events = [(event["seq"], event) for event in read_history(store, "o-undone")]
    keys = dict(zip((seq for seq, _ in events), _history_keys(path, "o-undone"), strict=True))
    pack = [(seq, e) for seq, e in events if e["kind"] == "step" and e["step"] == "pack"]
    assert [(e["from"], e["to"]) for _, e in pack[:2]] == [
        ("PENDING", "DISPATCHED"),
        ("DISPATCHED", "SUCCEEDED"),
    ]
    path = damaged([Delete("history", keys[pack[0][0]])])
    assert _problems(path) == [
        (
            "history",
            keys[pack[1][0]],
            "goes from DISPATCHED, but step 'pack' was PENDING before it: "
            + UNTOLD.format(wid="o-undone"),
        )
    ]


def test_a_foreign_step_event_naming_no_step_is_passed_over(
    damaged: Callable[[list[Put | Delete]], Path],
) -> None:
    """A foreign map of the step kind whose step is a list is an event by ``as_event``'s
    rule (the console passes it over): following each step's history, the check raised
    TypeError (unhashable) instead of reporting."""
    event = {"kind": "step", "t": 1.0, "step": ["x"], "from": "PENDING", "to": "DISPATCHED"}
    path = damaged([Put("history", history_key("o-ok", 99), encode(event))])
    assert _problems(path) == []


@pytest.mark.timeout(60)
def test_a_lost_retry_timer_is_healed_by_the_restart_check_names(tmp_path: Path) -> None:
    """For a step whose retry timer was lost, `herder check` said to settle it by an
    operator action (for a running workflow: cancel or abandon it) or to restore a
    backup. Recovery runs a retry from the step's record, timer or not, once its time
    has come: a restart then does, as the check now says."""
    calls: list[str] = []

    class Flaky(Agent):
        def go(self, ctx: StepContext) -> str:
            calls.append(ctx.step)
            if len(calls) == 1:
                raise RuntimeError("not yet")
            return "ok"

    hour = RetryPolicy(max_attempts=3, initial_interval=3600, max_interval=3600, jitter=0.0)
    wf = Workflow("w").step("s", agent="a", action="go", retry=hour)

    def setup(rt: Runtime) -> None:
        rt.add_agent("a", Flaky)
        rt.add_workflow(wf)

    path, t0 = tmp_path / "s", 1_800_000_000.0
    with Runtime(path, clock=FakeClock(start=t0), setup=setup, sweep_interval=0.05) as rt:
        rt.start("w", {}, workflow_id="x")
        wait_until(rt, lambda: rt.status("x").steps["s"].state == "RETRY_WAIT", 30.0)
    st = _step(path, "x", "s")
    with Store(path) as store:
        lost = Delete("timers", timer_key(st["timer_ms"], "x", "s"))
        store.writer.submit(Transition(ops=(lost,))).result(30.0)
    [(_, _, said)] = _problems(path)
    assert "restart the runtime once" in said
    with Runtime(path, clock=FakeClock(start=t0 + 3601), setup=setup) as rt:
        assert rt.handle("x").result(timeout=30.0) == {"s": "ok"}
    assert _problems(path) == []
