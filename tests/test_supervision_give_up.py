"""An agent's restart intensity exceeded: the runtime gives up on its instances, and the
attempts its other instances were running are lost through no fault of their own.

On both hosts, under a FakeClock, such an attempt runs again without spending one of
its step's attempts (a step allowed one attempt still succeeds), while the attempt whose
action crashed its instance is charged as ever; one that cannot run again (its workflow
compensates) fails with an error that names the give-up, not another attempt's crash.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from herder.runtime import (
    Agent,
    RetryPolicy,
    Runtime,
    StepContext,
    Workflow,
    WorkflowFailed,
    WorkflowHandle,
)
from herder.runtime.testing import FakeClock, crash_instance, hang_until

WAIT = 10.0
ONCE = RetryPolicy(max_attempts=1, initial_interval=0.0, jitter=0.0)
THRICE = RetryPolicy(max_attempts=3, initial_interval=0.0, jitter=0.0)


class Shared:
    """What the test and the agent's instances share: the bystander's first attempt is
    running, and may end (it hangs until then)."""

    def __init__(self) -> None:
        self.running = threading.Event()
        self.release = threading.Event()
        self.runs = 0  # of the bystander's action
        self.fail = False  # its runs after the first fail (each is a real try)


class Svc(Agent):
    def __init__(self, shared: Shared) -> None:
        self.shared = shared

    def wait(self, ctx: StepContext) -> int:
        self.shared.runs += 1
        if self.shared.runs == 1:  # hangs on its instance while the other one crash-loops
            self.shared.running.set()
            hang_until(self.shared.release, WAIT)
        elif self.shared.fail:
            raise RuntimeError(f"real try {ctx.attempt}")
        return ctx.attempt

    def crash(self, ctx: StepContext) -> None:
        assert self.shared.running.wait(WAIT)  # (the bystander is running: it will be lost)
        crash_instance("boom")


@pytest.fixture
def shared() -> Iterator[Shared]:
    shared = Shared()
    yield shared
    shared.release.set()  # the abandoned first attempt's thread ends


def open_runtime(path: Path, host: str) -> Runtime:
    return Runtime(
        path,
        clock=FakeClock(),
        agent_host=host,
        agent_restarts=(2, 60.0),  # the third crash within a minute gives up
        instance_shutdown=0.1,  # (the thread host waits that long for a busy instance)
    )


def bystander_beside_crasher(
    rt: Runtime, shared: Shared, retry: RetryPolicy
) -> tuple[WorkflowHandle, WorkflowHandle]:
    """Workflow ``b`` runs its one step (policy ``retry``) on one instance of ``svc``,
    then workflow ``c`` crashes the other until the runtime gives up on both; their
    handles."""
    rt.add_agent("svc", functools.partial(Svc, shared), concurrency=2)
    rt.add_workflow(Workflow("bystander").step("s", agent="svc", action="wait", retry=retry))
    rt.add_workflow(Workflow("crasher").step("c", agent="svc", action="crash", retry=THRICE))
    bystander = rt.start("bystander", workflow_id="b")
    assert shared.running.wait(WAIT)
    return bystander, rt.start("crasher", workflow_id="c")


@pytest.mark.parametrize("host", ["pool", "thread"])
def test_an_attempt_lost_when_its_agent_is_given_up_on_is_not_charged(
    tmp_path: Path, host: str, shared: Shared
) -> None:
    with open_runtime(tmp_path / "s", host) as rt:
        bystander, crasher = bystander_beside_crasher(rt, shared, ONCE)
        # The crashing attempts are charged as ever: the third one is its last.
        with pytest.raises(WorkflowFailed, match="agent instance crashed: InstanceCrash: boom"):
            crasher.result(timeout=WAIT)
        # The bystander's one attempt was lost with the instances given up on, not spent:
        # it ran again, still its attempt 1, and succeeded.
        assert bystander.result(timeout=WAIT) == {"s": 1}
        assert shared.runs == 2
        assert rt.stats()["steps"]["crashes"] == 3  # the crasher's; the bystander crashed not


@pytest.mark.parametrize("host", ["pool", "thread"])
def test_an_attempt_lost_to_a_give_up_leaves_the_step_all_its_tries(
    tmp_path: Path, host: str, shared: Shared
) -> None:
    # The lost attempt kept its number: with max_attempts=3 the step had two real tries.
    shared.fail = True
    with open_runtime(tmp_path / "s", host) as rt:
        bystander, crasher = bystander_beside_crasher(rt, shared, THRICE)
        with pytest.raises(WorkflowFailed):
            crasher.result(timeout=WAIT)
        with pytest.raises(WorkflowFailed, match="real try 3"):
            bystander.result(timeout=WAIT)
        assert shared.runs == 4  # the lost one, then three real tries
        assert rt.status("b").steps["s"].attempt == 3


@pytest.mark.parametrize("host", ["pool", "thread"])
def test_an_attempt_given_up_on_that_cannot_run_again_names_the_give_up(
    tmp_path: Path, host: str, shared: Shared
) -> None:
    with open_runtime(tmp_path / "s", host) as rt:
        rt.add_agent("svc", functools.partial(Svc, shared), concurrency=2)
        both = Workflow("both").step("s", agent="svc", action="wait", retry=ONCE)
        rt.add_workflow(both.step("c", agent="svc", action="crash", retry=THRICE))
        with pytest.raises(WorkflowFailed) as failed:
            rt.start("both", workflow_id="w").result(timeout=WAIT)
    # The crashing step failed the workflow; the bystander step, lost once it compensated,
    # may have taken effect and is given up on, for what did happen to it.
    steps = failed.value.status.steps
    assert steps["c"].error == "agent instance crashed: InstanceCrash: boom"
    assert steps["s"].error == (
        "restart intensity of agent 'svc' exceeded: its instances were given up on while"
        " this attempt ran"
    )
    assert steps["s"].attempt == 1
