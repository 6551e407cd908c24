"""An agent's restart intensity exceeded: the runtime gives up on its instances, but an
attempt another instance is running runs on to its end (its thread cannot be stopped):
its answer counts and its slot stays taken until then. Both hosts reported it lost and
ran it again at once beside the first run, its slot already free: one step twice at
once, and more than ``concurrency`` attempts of the agent. The attempt whose action
crashed its instance is charged as ever. (An attempt given up on before it started runs
again uncharged: tests/test_engine_answer.py and test_engine_retry.py.)
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from _supervision_kit import Abandoned

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
        self.began = threading.Event()
        self.release = threading.Event()
        self.runs = 0  # of the bystander's action
        self.lock = threading.Lock()
        self.running = 0  # actions of the agent running now, and the most at once
        self.most = 0


class Svc(Agent):
    def __init__(self, shared: Shared) -> None:
        self.shared = shared

    def wait(self, ctx: StepContext) -> int:
        with self.counted():
            self.shared.runs += 1
            if self.shared.runs == 1:  # hangs on its instance while the other crash-loops
                self.shared.began.set()
                hang_until(self.shared.release, WAIT)
            return ctx.attempt

    def crash(self, ctx: StepContext) -> None:
        assert self.shared.began.wait(WAIT)  # (the bystander is running)
        with self.counted():
            crash_instance("boom")

    @contextlib.contextmanager
    def counted(self) -> Iterator[None]:
        shared = self.shared
        with shared.lock:
            shared.running += 1
            shared.most = max(shared.most, shared.running)
        try:
            yield
        finally:
            with shared.lock:
                shared.running -= 1


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
    assert shared.began.wait(WAIT)
    return bystander, rt.start("crasher", workflow_id="c")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("host", ["pool", "thread"])
def test_an_attempt_running_when_its_agent_is_given_up_on_runs_on_and_its_answer_counts(
    tmp_path: Path, host: str, shared: Shared
) -> None:
    with Abandoned.watch("svc") as abandoned, open_runtime(tmp_path / "s", host) as rt:
        bystander, crasher = bystander_beside_crasher(rt, shared, ONCE)
        # The crashing attempts are charged as ever: the third one is its last.
        with pytest.raises(WorkflowFailed, match="agent instance crashed: InstanceCrash: boom"):
            crasher.result(timeout=WAIT)
        if host == "thread":  # its supervisor gave up on the bystander's busy thread
            assert abandoned.seen.wait(WAIT)
        shared.release.set()
        # The bystander's one attempt ran on: its answer is the step's, not a second run's.
        assert bystander.result(timeout=WAIT) == {"s": 1}
        assert rt.status("b").steps["s"].attempt == 1
        assert rt.stats()["steps"]["crashes"] == 3  # the crasher's; the bystander crashed not
    assert shared.runs == 1
    assert shared.most == 2  # its concurrency, though the crasher ran on after the give-up


@pytest.mark.timeout(60)
@pytest.mark.parametrize("host", ["pool", "thread"])
def test_after_a_give_up_the_agent_serves_afresh_once_the_attempt_running_then_ends(
    tmp_path: Path, host: str, shared: Shared
) -> None:
    with open_runtime(tmp_path / "s", host) as rt:
        bystander, crasher = bystander_beside_crasher(rt, shared, ONCE)
        with pytest.raises(WorkflowFailed):
            crasher.result(timeout=WAIT)
        shared.release.set()
        assert bystander.result(timeout=WAIT) == {"s": 1}
        later = [rt.start("bystander", workflow_id=f"later{i}") for i in range(4)]
        assert [h.result(timeout=WAIT) for h in later] == [{"s": 1}] * 4
    assert shared.most == 2


class _Crashes(Agent):
    def run(self, ctx: StepContext) -> None:
        crash_instance()


@pytest.mark.parametrize("host", ["pool", "thread"])
def test_an_agents_give_up_names_the_setting_that_allows_more(
    tmp_path: Path, host: str, caplog: pytest.LogCaptureFixture
) -> None:
    # The log said to "raise max_restarts/period", names no setting a user has: an
    # agent's instances are allowed Runtime(agent_restarts=(max_restarts, period)).
    crashy = Workflow("c").step("s", agent="crashy", action="run", retry=THRICE)
    with Runtime(tmp_path / "s", agent_host=host, agent_restarts=(1, 10.0)) as rt:
        rt.add_agent("crashy", _Crashes)
        rt.add_workflow(crashy)
        with pytest.raises(WorkflowFailed):
            rt.start("c", {}, workflow_id="w").result(timeout=WAIT)
    gave_up = [r.getMessage() for r in caplog.records if "gave up" in r.getMessage()]
    assert gave_up
    assert all("Runtime(agent_restarts=(max_restarts, period))" in m for m in gave_up)
