"""Operator actions at start-up: commands queued while no daemon ran, and actions on a
backlog that recovery has not taken back yet (issue 14, defects 2 and 3)."""

from __future__ import annotations

import io
import json
import pathlib
import subprocess
import sys
from typing import Any

import pytest
from _child_kit import Child

from herder.runtime import (
    Agent,
    InvalidState,
    Runtime,
    State,
    StepContext,
    StepState,
    Workflow,
    WorkflowFailed,
)
from herder.runtime._cli import main as cli
from herder.runtime.testing import check_store, settle, wait_until

CHILD = pathlib.Path(__file__).with_name("startup_child.py")
WAIT = 30.0


def herder(*argv: str) -> subprocess.CompletedProcess[str]:
    """The real ``herder`` command line, in its own process."""
    return subprocess.run(
        [sys.executable, "-m", "herder.runtime", *argv],
        capture_output=True,
        text=True,
        timeout=WAIT,
        check=False,
    )


@pytest.mark.timeout(120)
@pytest.mark.parametrize("order", ["sweep", "register"])
def test_a_cancel_queued_while_no_daemon_ran_applies_before_anything_of_it_runs_again(
    tmp_path: pathlib.Path, order: str
) -> None:
    store, effects = tmp_path / "store", tmp_path / "effects"
    first = Child([str(CHILD), str(store), str(effects), "run"])
    first.wait_for("running", WAIT)  # the flight's action runs: DISPATCHED at the kill
    first.kill(WAIT)

    queued = herder("cancel", "w", "--store", str(store), "--why", "customer called")
    assert queued.returncode == 3, queued.stderr
    assert "queued" in queued.stderr

    # "sweep": the watchdog hands the command over before the definition is registered;
    # "register": the definition comes at once, so recovery could re-dispatch first.
    second = Child([str(CHILD), str(store), str(effects), order])
    assert second.wait_for("final", WAIT) == "final CANCELLED", second.errors
    assert second.proc.wait(WAIT) == 0
    # The flight was not booked again: it was marked failed (it may have taken effect)
    # and undone, once; the hotel never ran.
    assert effects.read_text().splitlines() == ["book w/flight 1", "cancel w/flight 1"]
    out = io.StringIO()
    assert cli(["show", "w", "--store", str(store), "--json"], out) == 0
    shown = json.loads(out.getvalue())
    [cancel] = [e for e in shown["history"] if e["kind"] == "operator"]
    assert (cancel["action"], cancel["why"]) == ("cancel", "customer called")
    assert cli(["check", "--store", str(store)], io.StringIO()) == 0


class Idle(Agent):
    def book(self, ctx: StepContext) -> None:
        return None


LATER = Workflow("later").step("a", agent="t", action="book")
BACKLOG = 500  # recovery takes a backlog back 200 workflows per message


def backlog(path: pathlib.Path, size: int) -> list[str]:
    """A store with ``size`` unfinished workflows (each waits an hour to start)."""
    ids = [f"w-{i:04d}" for i in range(size)]  # the store's (and recovery's) order
    with Runtime(path) as rt:
        rt.add_agent("t", Idle)
        rt.add_workflow(LATER)
        for wid in ids:
            rt.start("later", workflow_id=wid, delay=3600.0)
    return ids


def test_an_action_on_a_workflow_awaiting_its_definition_is_refused_naming_it(
    tmp_path: pathlib.Path,
) -> None:
    [wid] = backlog(tmp_path / "store", 1)
    with Runtime(tmp_path / "store") as rt:
        for action in (rt.cancel, rt.compensate, rt.skip):
            with pytest.raises(InvalidState, match="awaits its definition 'later' version 1"):
                action(wid)
        rt.abandon(wid)  # needs no definition: nothing of it runs
        assert rt.status(wid).state is State.ABANDONED
        report = check_store(rt._store)
        assert report.ok, report.problems


def test_operator_actions_apply_at_once_to_a_backlog_recovery_has_not_taken_back(
    tmp_path: pathlib.Path,
) -> None:
    path = tmp_path / "store"
    ids = backlog(path, BACKLOG)
    with Runtime(path) as rt:
        rt.add_agent("t", Idle)
        rt.add_workflow(LATER)
        # The last chunk is still waiting to be taken back: the actions apply at once.
        rt.cancel(ids[-1], who="ada", why="no longer wanted")
        rt.abandon(ids[-2], who="ada", why="handled by phone")
        assert rt.status(ids[-1]).state is State.CANCELLED
        assert rt.status(ids[-2]).state is State.ABANDONED
        with pytest.raises(WorkflowFailed):
            rt.handle(ids[-1]).result(timeout=WAIT)
        settle(rt)
        assert rt.status(ids[-3]).state is State.RUNNING  # the others still wait
        assert rt.status(ids[-3]).steps["a"].state is StepState.PENDING
        assert rt.stats()["awaiting_definition"] == {}
        report = check_store(rt._store)
        assert report.ok, report.problems


class Partner(Agent):
    """Hands the step off to a partner who completes it later."""

    tokens: list[str] = []

    def book(self, ctx: StepContext) -> Any:
        self.tokens.append(ctx.task_token)
        return ctx.complete_later()


def test_a_completion_applies_at_once_to_a_workflow_recovery_has_not_taken_back(
    tmp_path: pathlib.Path,
) -> None:
    path = tmp_path / "store"
    ids = backlog(path, BACKLOG)
    with Runtime(path) as rt:
        rt.add_agent("t", Partner)
        rt.add_workflow(LATER)
        rt.start("later", workflow_id="w-9999")  # sorts last: in recovery's last chunk
        wait_until(rt, lambda: rt.status("w-9999").steps["a"].state is StepState.WAITING)
    with Runtime(path) as rt:
        rt.add_agent("t", Partner)
        rt.add_workflow(LATER)
        rt.complete_step(Partner.tokens[-1], {"booked": "by the partner"})
        assert rt.handle("w-9999").result(timeout=WAIT) == {"a": {"booked": "by the partner"}}
        assert rt.status(ids[-1]).state is State.RUNNING
