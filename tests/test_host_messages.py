"""What an operator reads when an agent's factory fails or an action crashes its
instance: the same plain "Type: message" on every host, not nested reprs (the thread
host said ``SupervisorStartError("child 'a#2' failed to start: UserCodeFailed('...')")``
and ``InstanceCrash: InstanceCrash: ...``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from herder.runtime import (
    Agent,
    InstanceCrash,
    RetryPolicy,
    Runtime,
    StepContext,
    Workflow,
    WorkflowFailed,
)

WAIT = 20.0
ONCE = RetryPolicy(max_attempts=1)
pytestmark = pytest.mark.timeout(60)


class Wedged(Agent):
    def go(self, ctx: StepContext) -> None:
        raise InstanceCrash("client wedged")


def broken() -> Agent:
    raise RuntimeError("factory boom")


def error_of(tmp_path: Path, host: str, factory: object) -> str:
    with Runtime(tmp_path / "s", agent_host=host) as rt:
        rt.add_agent("a", factory)  # type: ignore[arg-type]
        rt.add_workflow(Workflow("w").step("s", agent="a", action="go", retry=ONCE))
        with pytest.raises(WorkflowFailed) as failed:
            rt.start("w").result(timeout=WAIT)
        return failed.value.status.steps["s"].error or ""


@pytest.mark.parametrize("host", ["thread", "pool"])
def test_a_crashed_instance_and_a_failed_factory_read_plainly(tmp_path: Path, host: str) -> None:
    crashed = error_of(tmp_path / "crash", host, Wedged)
    assert crashed == "agent instance crashed: InstanceCrash: client wedged"
    failed = error_of(tmp_path / "factory", host, broken)
    assert failed.endswith("an instance of agent 'a' failed to start: RuntimeError: factory boom")
    assert failed.count("failed to start") == 1, failed  # (the thread host said it twice)
    assert "('" not in failed, failed  # no repr inside a repr
    assert '("' not in failed, failed
