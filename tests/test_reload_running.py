"""A workflow read back after a failed commit waits for its attempts that still run: the
step is not run again beside them (actors/_reload.py)."""

from __future__ import annotations

import collections
import errno
import threading
from pathlib import Path
from typing import Any

import pytest

from herder.runtime import Agent, Runtime, StepContext, StepState, Workflow
from herder.runtime.testing import wait_until

pytestmark = pytest.mark.timeout(60)
WAIT = 20.0


class Gated(Agent):
    calls: collections.Counter[str]
    started: dict[str, threading.Event]
    gates: dict[str, threading.Event]

    def go(self, ctx: StepContext) -> Any:
        Gated.calls[ctx.step] += 1
        Gated.started[ctx.step].set()
        Gated.gates[ctx.step].wait(WAIT)
        return {"step": ctx.step, "attempt": ctx.attempt}


class FailOnce:
    """The writer's fault hook: the next commit fails (ENOSPC), then all succeed."""

    def __init__(self) -> None:
        self.armed = False

    def __call__(self) -> None:
        if self.armed:
            self.armed = False
            raise OSError(errno.ENOSPC, "No space left on device (injected)")


def test_an_attempt_still_running_when_its_workflow_is_read_back_is_not_run_again(
    tmp_path: Path,
) -> None:
    Gated.calls = collections.Counter()
    Gated.started = {s: threading.Event() for s in "ab"}
    Gated.gates = {s: threading.Event() for s in "ab"}
    fault = FailOnce()
    with Runtime(tmp_path / "s") as rt:
        rt.add_agent("g", Gated, concurrency=4)
        rt.add_workflow(
            Workflow("par").step("a", agent="g", action="go").step("b", agent="g", action="go")
        )
        rt._store.writer.fault = fault
        handle = rt.start("par", {}, workflow_id="w")
        assert Gated.started["a"].wait(WAIT)
        assert Gated.started["b"].wait(WAIT)
        fault.armed = True
        Gated.gates["b"].set()  # b's SUCCEEDED fails: the workflow is read back
        wait_until(rt, lambda: Gated.calls["b"] == 2, WAIT)  # b ran again: its result was lost
        Gated.gates["a"].set()
        assert handle.result(timeout=WAIT) == {
            "a": {"step": "a", "attempt": 1},
            "b": {"step": "b", "attempt": 2},
        }
        assert Gated.calls["a"] == 1
        assert rt.status("w").steps["a"].state is StepState.SUCCEEDED
