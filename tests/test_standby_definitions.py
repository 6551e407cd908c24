"""What a standby that takes over knows of workflow definitions: the ones it registered,
checked against what the store holds by the time it becomes active."""

from __future__ import annotations

import pathlib
import signal
import threading
from collections.abc import Callable, Iterator

import pytest
from _child_kit import Child

from herder.runtime import Agent, Runtime, StepContext, Workflow
from herder.runtime.testing import check_store, wait_until
from herder.store import Store
from herder.store._records import StepState

TESTS = pathlib.Path(__file__).parent
WAIT = 30.0  # seconds any single expected line may take on a loaded machine

TYPO = Workflow("w", version=1).step("typo", agent="svc", action="work")


class Held(Agent):
    """Runs until the test lets it go: the workflow is unfinished when the runtime stops."""

    release = threading.Event()

    def work(self, ctx: StepContext) -> str:
        self.release.wait(WAIT)
        return ctx.step


@pytest.fixture
def standby() -> Iterator[Callable[[pathlib.Path], Child]]:
    children: list[Child] = []

    def start(store: pathlib.Path) -> Child:
        argv = ["-m", "herder.runtime", "run", "--store", str(store), "--standby"]
        child = Child([*argv, "--app", "redefine_app:build", "--lease", "1"], cwd=TESTS)
        children.append(child)
        return child

    yield start
    Held.release.set()
    for child in children:
        child.kill(WAIT)


def test_a_promoted_standby_runs_started_workflows_under_their_stored_definition(
    tmp_path: pathlib.Path, standby: Callable[[pathlib.Path], Child]
) -> None:
    """The standby registered ``w``@1 with other steps while no workflow of it had
    started, so add_workflow accepted it (to replace the stored one at promotion). The
    active runtime then started a workflow under the stored steps. Becoming active, the
    standby kept its own plan in memory and recovered that workflow under it: it ran a
    step the workflow never had, which a started definition must never see."""
    path = tmp_path / "store"
    with Runtime(path, instance_shutdown=0.05) as rt:
        rt.add_agent("svc", Held)
        rt.add_workflow(TYPO)
        child = standby(path)
        child.wait_for("standby on", WAIT)  # its setup registered the other plan
        rt.start("w", workflow_id="w-1")
        wait_until(rt, lambda: rt.status("w-1").steps["typo"].state is StepState.DISPATCHED)
    Held.release.set()  # (its answer comes after the stop: not recorded)
    assert child.wait_for("ran w-1", WAIT) == "ran w-1 typo"
    child.proc.send_signal(signal.SIGTERM)  # drains: the step's answer is recorded
    assert child.proc.wait(WAIT) == 0, child.stderr()
    # Its own plan's Define, queued while no Scheduler ran, had the first one replace the
    # stored plan with it, and crash recovering w-1 (KeyError 'typo'); the next one, which
    # read the stored plan again, ran it.
    assert "Unhandled exception" not in child.stderr()
    with Store(path, readonly=True) as store:
        assert store.get_workflow("w-1").state == "SUCCEEDED"
        assert check_store(store).problems == []
