"""Operator commands from another process: the CLI against a live daemon, and queued."""

from __future__ import annotations

import io
import json
import pathlib
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from operator_child import TRIP, Travel

from herder.runtime import (
    Agent,
    Permanent,
    RetryPolicy,
    Runtime,
    State,
    StepState,
    Workflow,
    WorkflowFailed,
)
from herder.runtime._check import check_store
from herder.runtime._cli import main as cli
from herder.runtime.testing import FakeClock, advance, settle, wait_until
from herder.store import Store, append_command, new_command, pending_commands, wait_outcome

CHILD = pathlib.Path(__file__).with_name("operator_child.py")
WAIT = 20.0


def parked_trip(path: Path) -> Path:
    """A store, with no runtime on it, holding trip ``w`` parked in NEEDS_ATTENTION (its
    car failed, then the hotel's refund)."""
    with Runtime(path, default_retry=RetryPolicy(max_attempts=1)) as rt:
        rt.add_agent("t", Travel)
        rt.add_workflow(TRIP)
        with pytest.raises(WorkflowFailed):
            rt.start("trip", workflow_id="w").result(timeout=WAIT)
    return path


def run(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    return cli(list(argv), out), out.getvalue()


def show(store: Path, workflow_id: str) -> dict[str, Any]:
    code, out = run("show", workflow_id, "--store", str(store), "--json")
    assert code == 0
    return json.loads(out)  # type: ignore[no-any-return]


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(
        [sys.executable, str(CHILD), str(tmp_path / "store")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # blocks until the child is ready (or died)
        assert line.strip() == "ready", proc.stderr and proc.stderr.read()
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(WAIT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(WAIT)


def test_operator_commands_reach_a_live_daemon_and_land_in_the_history(
    tmp_path: Path, daemon: subprocess.Popen[str], capsys: pytest.CaptureFixture[str]
) -> None:
    store = str(tmp_path / "store")
    code, out = run("inbox", "--store", store, "--json")
    assert code == 0
    assert [(i["id"], i["step"], i["step_state"]) for i in json.loads(out)] == [
        ("w-1", "hotel", "COMPENSATING"),
        ("w-2", "hotel", "COMPENSATING"),
    ]

    code, out = run("skip", "w-1", "--store", store, "--who", "ada", "--why", "refunded by phone")
    assert code == 0, capsys.readouterr().err
    assert "skip w-1: done, step 'hotel' (command #1" in out  # (the one it took: none named)
    assert daemon.stdout is not None
    assert daemon.stdout.readline().strip() == "compensated w-1"  # the flight's undo ran

    code, out = run("abandon", "w-2", "--store", store, "--why", "refunded in full")
    assert code == 0, capsys.readouterr().err
    w2 = show(tmp_path / "store", "w-2")
    assert w2["state"] == "ABANDONED"  # durable when the command said done
    assert w2["error"].startswith("abandoned by ")

    # A command that does not apply is refused with the runtime's reason.
    code, _ = run("retry", "w-2", "--store", store, "--why", "try again")
    assert code == 1
    assert "refused" in capsys.readouterr().err

    history = show(tmp_path / "store", "w-1")["history"]
    [skip] = [e for e in history if e["kind"] == "operator"]
    assert (skip["action"], skip["who"], skip["why"]) == ("skip", "ada", "refunded by phone")
    assert history[-1]["to"] == "COMPENSATED"
    code, out = run("show", "w-1", "--store", store)
    assert "operator skip" in out
    assert "by ada: refunded by phone" in out
    assert json.loads(run("inbox", "--store", store, "--json")[1]) == []


def test_the_cli_refuses_to_write_when_lock_mdb_was_deleted_under_the_daemon(
    tmp_path: Path, daemon: subprocess.Popen[str], capsys: pytest.CaptureFixture[str]
) -> None:
    # Deleting LMDB's lock file (a "stale lock" clean-up) would give the CLI a writer
    # mutex of its own: two writers at once, and a store that can lose or mangle commits.
    store = tmp_path / "store"
    (store / "lock.mdb").unlink()
    code, _ = run("abandon", "w-2", "--store", str(store), "--why", "cleaning up")
    assert code == 1
    assert "lock.mdb is not the one the running runtime uses" in capsys.readouterr().err
    with Store(store, readonly=True) as ro:
        assert list(ro.raw_scan("commands")) == []  # nothing was written
        assert check_store(ro).ok
    assert daemon.poll() is None


def test_with_no_runtime_running_a_deleted_lock_mdb_is_no_reason_to_refuse(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = parked_trip(tmp_path / "store")
    (path / "lock.mdb").unlink()  # the runtime that recorded it is gone: harmless now
    code, _ = run("abandon", "w", "--store", str(path), "--why", "later", "--timeout", "0")
    assert code == 3, capsys.readouterr().err  # queued for the next runtime


def test_a_command_sent_while_no_runtime_runs_is_applied_by_the_next_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = parked_trip(tmp_path / "store")
    code, _ = run("skip", "w", "--store", str(path), "--step", "hotel", "--why", "by hand")
    assert code == 3
    assert "queued" in capsys.readouterr().err
    assert show(path, "w")["state"] == "NEEDS_ATTENTION"

    with Runtime(path, default_retry=RetryPolicy(max_attempts=1), sweep_interval=0.05) as rt:
        rt.add_agent("t", Travel)
        rt.add_workflow(TRIP)  # commands for w wait until its definition is registered
        wait_until(rt, lambda: rt.status("w").state is State.COMPENSATED, WAIT)
        settle(rt)
        assert rt.status("w").steps["hotel"].state is StepState.COMPENSATED
        assert [e["why"] for e in rt.history("w") if e["kind"] == "operator"] == ["by hand"]
        assert check_store(rt._store).ok


def test_a_queued_command_the_runtime_refuses_is_told_in_the_history_and_the_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The refusal was recorded only on the command: nothing an operator reads (herder
    # show, the console, the log) said the queued skip had not been applied.
    path = parked_trip(tmp_path / "store")
    skip = new_command("skip", "w", args={"step": "nope"}, who="t", why="x")
    command = append_command(path, skip)  # (queued as the CLI queues it)
    with Runtime(path, default_retry=RetryPolicy(max_attempts=1), sweep_interval=0.05) as rt:
        rt.add_agent("t", Travel)
        rt.add_workflow(TRIP)
        outcome = wait_outcome(path, command, timeout=WAIT)
        assert outcome is not None
        assert outcome["state"] == "FAILED"
        settle(rt)
        refused = [e for e in rt.history("w") if e["kind"] == "operator" and e.get("refused")]
    assert [(e["action"], e["step"]) for e in refused] == [("skip", "nope")]
    assert "has no step 'nope'" in refused[0]["refused"]
    assert f"command #{command} (skip of w) refused" in caplog.text
    _, text = run("show", "w", "--store", str(path))
    assert "operator skip step nope" in text
    assert "refused: workflow 'w' has no step 'nope'" in text


def test_skip_takes_a_json_result_and_refuses_bad_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "store"
    with Runtime(path):
        pass
    code, _ = run("skip", "nope", "--store", str(path), "--result", "{bad", "--why", "x")
    assert code == 2
    assert "not valid JSON" in capsys.readouterr().err
    deep = "[" * 5000 + "]" * 5000  # json.loads raised RecursionError: a traceback
    code, _ = run("skip", "nope", "--store", str(path), "--result", deep, "--why", "x")
    assert code == 2
    assert "--result is nested too deeply" in capsys.readouterr().err
    code, _ = run("skip", "nope", "--store", str(path), "--result", "{}", "--why", "x")
    assert code == 1
    assert "no workflow with id 'nope'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("options", "says"),
    [
        (("--who", "w" * 201, "--why", "x"), "who is 201 characters; the limit is 200"),
        (("--why", "y" * 8193), "why is 8193 characters"),
        (("--why", "  "), "--why is empty"),
        (("--who", "caf\udce9", "--why", "x"), "who is not valid UTF-8"),  # latin-1 argv
    ],
)
def test_the_cli_refuses_what_the_api_refuses_before_anything_is_queued(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], options: tuple[str, ...], says: str
) -> None:
    from herder.store._commands import pending_commands

    path = tmp_path / "store"
    with Runtime(path):
        pass
    code, _ = run("abandon", "w", "--store", str(path), *options)
    assert code == 2
    err = capsys.readouterr().err
    assert says in err
    assert "nothing was queued" in err
    with Store(path, readonly=True) as store:
        assert pending_commands(store) == []


def test_command_ids_keep_growing_and_the_sweep_reads_only_pending_ones(tmp_path: Path) -> None:
    from herder.store import Store, Transition
    from herder.store._commands import (
        append_command,
        finished_ops,
        new_command,
        pending_commands,
        wait_outcome,
    )

    path = tmp_path / "store"
    Store(path).close()
    ids = [append_command(path, new_command("retry", f"w{n}", who="t", why="x")) for n in "123"]
    assert ids == [1, 2, 3]
    with Store(path) as store:
        [third] = [c for c in pending_commands(store) if c["id"] == 3]
        store.writer.submit(Transition(ops=finished_ops(third, "refused", 0.0))).result(WAIT)
    assert append_command(path, new_command("skip", "w4", who="t", why="x")) == 4
    with Store(path, readonly=True) as store:
        assert [c["id"] for c in pending_commands(store)] == [1, 2, 4]
    done = wait_outcome(path, 3, timeout=0.0)
    assert done is not None
    assert (done["state"], done["error"]) == ("FAILED", "refused")
    assert wait_outcome(path, 1, timeout=0.0) is None  # still pending
    with Store(path):  # this process holds the store: the append goes through its writer
        assert append_command(path, new_command("skip", "w5", who="t", why="x")) == 5


def test_malformed_commands_are_refused_on_the_record_and_the_runtime_carries_on(
    tmp_path: Path,
) -> None:
    from herder.store._commands import append_command, new_command, wait_outcome

    path = tmp_path / "store"
    with Runtime(path, sweep_interval=0.05) as rt:
        odd = [
            new_command("explode", "w", who="t", why="x"),  # no such action
            new_command("skip", "", who="t", why="x"),  # no such workflow can exist
            {**new_command("skip", "w", who="t", why="x"), "args": ["not", "a", "map"]},
            # Any process may write a command: the Scheduler checks what the API does.
            new_command("abandon", "w", who="t" * 201, why="x"),
            new_command("skip", "w", args={"step": ["hotel"]}, who="t", why="x"),
        ]
        ids = [append_command(path, c) for c in odd]  # this process: through its writer
        outcomes = [wait_outcome(path, i, timeout=WAIT) for i in ids]
        assert [o and o["state"] for o in outcomes] == ["FAILED"] * 5
        errors = [str(o and o["error"]) for o in outcomes]
        assert "unknown operator action 'explode'" in errors[0]
        assert "workflow id" in errors[1]
        assert "no workflow with id 'w'" in errors[2]
        assert "who is 201 characters" in errors[3]
        assert "step must be a step name (a str) or None, got list" in errors[4]
        assert rt.stats()["steps"]["dispatched"] == 0  # and the Scheduler still answers


def test_a_command_that_arrives_while_its_workflow_is_ending_is_refused_on_the_record(
    tmp_path: Path,
) -> None:
    # The workflow's last transition is on its way to disk when the channel hands the
    # Scheduler a cancel: the refusal waits for that commit (so the store already shows
    # the state it speaks of), and it is recorded on the command in it. It was once
    # only told to a caller nobody held: the command stayed pending, and the CLI waited
    # until its timeout. (Found by the exact simulation, seed 18746.)
    from _ending import completing_while_held, waiting_workflow

    path, clock = tmp_path / "store", FakeClock()
    with Runtime(path, clock=clock, sweep_interval=1.0) as rt:
        tokens = waiting_workflow(rt)
        command_id = append_command(path, new_command("cancel", "w", who="t", why="x"))
        settle(rt)
        assert wait_outcome(path, command_id, timeout=0) is None  # not swept yet
        held, completing = completing_while_held(rt, tokens[0])
        clock.advance(1.0)
        rt._sweep_now()  # the channel hands the cancel over, ahead of the commit's news
        held.release.set()
        completing.join(WAIT)
        outcome = wait_outcome(path, command_id, timeout=WAIT)
        assert outcome is not None, "the command was never answered"
        assert outcome["state"] == "FAILED", outcome
        assert "has just finished" in str(outcome["error"]), outcome
        assert rt.handle("w").result(timeout=WAIT) == {"a": "done"}


def test_a_damaged_queued_command_is_passed_over_and_the_others_still_apply(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # One damaged pending command (a torn write, a flipped bit) made the sweep give up on
    # the whole commands database, every sweep: an operator's cancel was never applied,
    # the error was logged ten times a second and `herder check` said the store was fine.
    from herder.store import Put, Transition
    from herder.store._commands import pending_key

    path = tmp_path / "store"
    with Store(path) as store:
        damaged = Transition(ops=(Put("commands", pending_key(1), b"\x81\xa1v\x01garbage"),))
        store.writer.submit(damaged).result(WAIT)
    release = threading.Event()

    class Held(Agent):
        def work(self, ctx: Any) -> int:
            assert release.wait(WAIT)
            return 1

    clock = FakeClock()
    with Runtime(path, clock=clock) as rt:
        rt.add_agent("svc", Held)
        rt.add_workflow(Workflow("one").step("a", agent="svc", action="work", timeout=60.0))
        rt.start("one", {}, workflow_id="w")
        command_id = append_command(path, new_command("cancel", "w", who="t", why="x"))
        for _ in range(3):  # three sweeps meet the damaged command
            advance(rt, clock, 1.0)
        release.set()
        done = wait_outcome(path, command_id, timeout=WAIT)
        assert done is not None
        assert done["state"] == "DONE"
        wait_until(rt, lambda: rt.status("w").state is State.CANCELLED)
    damaged_logs = [r for r in caplog.records if "damaged operator command" in r.getMessage()]
    assert len(damaged_logs) == 1, damaged_logs
    with Store(path, readonly=True) as store:
        report = check_store(store)
    assert [(p.db, p.key) for p in report.problems] == [("commands", pending_key(1))]


class Trips(Agent):
    """Books every step but the car; cannot undo the hotel: a trip parks."""

    held = threading.Event()  # workflow "running" waits on it in its first step

    def book(self, ctx: Any) -> int:
        if ctx.workflow_id == "running":
            Trips.held.wait(WAIT)
            raise ConnectionError("the process stopped meanwhile")
        if ctx.step == "car":
            raise Permanent("sold out")
        return 1

    def cancel(self, ctx: Any) -> None:
        if ctx.step == "hotel":
            raise Permanent("the hotel refuses to refund")


def test_queued_commands_for_a_workflow_whose_definition_is_missing_are_answered(
    tmp_path: Path,
) -> None:
    # With the definition not registered, a queued retry of a parked workflow waits for
    # it, as documented; but once an abandon had ended the workflow, that retry stayed
    # PENDING for good (re-sent every sweep) instead of being refused. And a queued
    # abandon of an unfinished workflow was held, though abandon needs no definition.
    once = RetryPolicy(max_attempts=1)
    trip = (
        Workflow("trip")
        .step("flight", agent="t", action="book", compensate="cancel")
        .step("hotel", agent="t", action="book", compensate="cancel", after=["flight"])
        .step("car", agent="t", action="book", compensate="cancel", after=["hotel"])
    )
    path = tmp_path / "store"
    with Runtime(path, default_retry=once) as rt:
        rt.add_agent("t", Trips)
        rt.add_workflow(trip)
        with pytest.raises(WorkflowFailed):
            rt.start("trip", workflow_id="parked").result(timeout=WAIT)
        assert rt.status("parked").state is State.NEEDS_ATTENTION
        rt.start("trip", workflow_id="running")
    Trips.held.set()  # (the attempt of the stopped runtime ends; nothing records it)
    retry = append_command(path, new_command("retry", "parked", who="t", why="x"))
    abandon = append_command(path, new_command("abandon", "parked", who="t", why="x"))
    running = append_command(path, new_command("abandon", "running", who="t", why="x"))
    clock = FakeClock()
    with Runtime(path, clock=clock) as rt:  # "trip" is not registered in this one
        advance(rt, clock, 1.0)
        advance(rt, clock, 1.0)
        done = wait_outcome(path, abandon, timeout=WAIT)
        assert done is not None
        assert done["state"] == "DONE"
        advance(rt, clock, 10.0)  # the retry, passed over while it waited, is sent again
        refused = wait_outcome(path, retry, timeout=WAIT)
        assert refused is not None
        assert refused["state"] == "FAILED"
        assert "ABANDONED" in refused["error"]
        assert rt.status("parked").state is State.ABANDONED
        done = wait_outcome(path, running, timeout=WAIT)  # it awaited its definition
        assert done is not None
        assert done["state"] == "DONE"
        assert rt.status("running").state is State.ABANDONED


def test_a_command_for_a_workflow_whose_definition_the_runtime_lacks_says_what_it_waits_for(
    tmp_path: Path,
) -> None:
    # After an upgrade that dropped trip's version, the command waited for it in the
    # runtime, and the CLI said only that the runtime had not got to it yet.
    path = parked_trip(tmp_path / "store")
    with Runtime(path, sweep_interval=0.05) as rt:
        rt.add_agent("t", Travel)  # trip is not registered
        argv = ["skip", "w", "--store", str(path), "--step", "hotel", "--why", "x"]
        done = subprocess.run(
            [sys.executable, "-m", "herder.runtime", *argv, "--timeout", "0.5"],
            capture_output=True,
            text=True,
            timeout=WAIT,
            check=False,
        )
        assert done.returncode == 3, done.stderr
        assert "'trip' version 1" in done.stderr
        assert "add_workflow" in done.stderr
        assert rt.status("w").state is State.NEEDS_ATTENTION


def test_a_runtime_that_stops_before_applying_a_command_ends_the_wait(
    tmp_path: Path,
    daemon: subprocess.Popen[str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The CLI asked whether a runtime held the store once, before sending: a runtime
    # that died (or stopped for a deploy) meanwhile left the operator waiting the whole
    # --timeout, then told "the runtime did not apply it within 20 s" and sent looking
    # for a missing definition, of a runtime that was gone.
    from herder.runtime import _operator_cli

    real = _operator_cli.append_command

    def killed_first(path: Any, command: dict[str, Any]) -> int:
        daemon.kill()  # SIGKILL, after the CLI saw it hold the store
        daemon.wait(WAIT)
        return real(path, command)

    monkeypatch.setattr(_operator_cli, "append_command", killed_first)
    store = str(tmp_path / "store")
    code, _ = run("retry", "w-1", "--store", store, "--why", "x", "--timeout", str(WAIT))
    err = capsys.readouterr().err
    assert code == 3
    assert "let go of the store" in err  # (after WAIT s: "did not apply ... within")
    assert "command #1" in err
    with Store(store, readonly=True) as st:
        assert [c["action"] for c in pending_commands(st)] == ["retry"]  # queued still


def test_a_runtime_that_stops_before_finishing_a_purge_ends_its_wait(
    tmp_path: Path,
    daemon: subprocess.Popen[str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # As for retry above: purge asked once, before sending, and then waited its whole
    # --timeout (600 s by default) and said the runtime "has not finished" it.
    from herder.runtime import _cli_admin

    real = _cli_admin.append_command

    def killed_first(path: Any, command: dict[str, Any]) -> int:
        daemon.kill()  # SIGKILL, after purge saw it hold the store
        daemon.wait(WAIT)
        return real(path, command)

    monkeypatch.setattr(_cli_admin, "append_command", killed_first)
    store = str(tmp_path / "store")
    code, _ = run("purge", "--store", store, "--older-than", "1d", "--timeout", str(WAIT))
    err = capsys.readouterr().err
    assert code == 3
    assert "let go of the store" in err  # (after WAIT s: "has not finished ... within")
    assert "command #1" in err
    with Store(store, readonly=True) as st:
        assert [c["action"] for c in pending_commands(st)] == ["purge"]  # queued still


@pytest.mark.parametrize(
    ("result", "says"),
    [
        ("1e400", "1e400 is beyond a float's range"),  # (read as infinity: stored so)
        ("[18446744073709551616]", "an int in it is out of range"),  # (exit 1, after opening)
        ('"\\ud800"', "surrogates not allowed"),
    ],
)
def test_skip_refuses_a_result_the_store_cannot_keep_before_anything_is_queued(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], result: str, says: str
) -> None:
    path = parked_trip(tmp_path / "store")
    code, _ = run("skip", "w", "--store", str(path), "--why", "x", "--result", result)
    err = capsys.readouterr().err
    assert code == 2, err
    assert says in err
    assert "nothing was queued" in err
    with Store(path, readonly=True) as store:
        assert pending_commands(store) == []


def test_ctrl_c_while_waiting_says_the_command_stays_queued_and_is_applied(
    tmp_path: Path,
    daemon: subprocess.Popen[str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Ctrl-C during the wait said only "herder abandon: interrupted": an operator who
    # pressed it to take back a wrong command believed it undone, and the runtime
    # abandoned the workflow all the same.
    from herder.runtime import _cli_admin, _operator_cli

    def ctrl_c(*args: object) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(_operator_cli, "wait_while_held", ctrl_c)
    monkeypatch.setattr(_cli_admin, "wait_while_held", ctrl_c)
    store = str(tmp_path / "store")
    code, _ = run("abandon", "w-2", "--store", store, "--why", "oops")
    err = capsys.readouterr().err
    assert code == 130, err
    assert "command #1 stays queued (ending the wait does not withdraw it)" in err
    assert "see `herder show w-2`" in err
    assert err.endswith("herder abandon: interrupted\n")
    applied = wait_outcome(store, 1, WAIT)
    assert applied is not None
    assert applied["state"] == "DONE"  # all the same
    assert show(tmp_path / "store", "w-2")["state"] == "ABANDONED"

    code, _ = run("purge", "--store", store, "--before", "2999-01-01")
    err = capsys.readouterr().err
    assert code == 130, err
    assert "command #2 stays queued" in err
    assert "carries the purge on" in err
    purged = wait_outcome(store, 2, WAIT)
    assert purged is not None
    assert purged["deleted"] == 1


def test_herder_show_lists_the_commands_queued_for_the_workflow_until_applied(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A command queued while no runtime ran (exit 3) showed nowhere but on the console:
    # `herder show` gave a teammate no sign of a decision already on its way.
    path = parked_trip(tmp_path / "store")
    code, _ = run("retry", "w", "--store", str(path), "--who", "ada", "--why", "hotel is back")
    assert code == 3, capsys.readouterr().err
    code, out = run("show", "w", "--store", str(path))
    assert code == 0
    assert "queued: not applied yet" in out
    assert "#1" in out
    assert "hotel is back" in out
    [queued] = show(path, "w")["queued"]
    assert (queued["id"], queued["action"], queued["who"]) == (1, "retry", "ada")
    with Runtime(path, sweep_interval=0.05, default_retry=RetryPolicy(max_attempts=1)) as rt:
        rt.add_agent("t", Travel)
        rt.add_workflow(TRIP)
        assert wait_outcome(path, 1, WAIT) is not None
    assert show(path, "w")["queued"] == []
    code, out = run("show", "w", "--store", str(path))
    assert "queued" not in out
    assert "operator retry" in out
