"""A deadline that passes while no process runs is honoured at recovery: the workflow is
compensated (the step running at the crash included) and nothing new starts."""

from __future__ import annotations

import os
import pathlib
import signal
import threading
import time
from pathlib import Path

import pytest
from _child_kit import Child
from deadline_child import HOUR, TWO

from herder.runtime import Agent, Runtime, StepContext, WorkflowFailed
from herder.runtime._check import check_store
from herder.runtime.testing import FakeClock, advance
from herder.store import Store

CHILD = pathlib.Path(__file__).with_name("deadline_child.py")
WAIT = 30.0


@pytest.mark.timeout(120)
def test_a_deadline_that_passed_while_down_compensates_at_recovery(tmp_path: Path) -> None:
    store = tmp_path / "store"
    child = Child([str(CHILD), str(store)])
    try:
        child.wait_for("ready", WAIT)
    finally:
        os.kill(child.proc.pid, signal.SIGKILL)
        assert child.kill(WAIT) == -signal.SIGKILL
    with Store(store, readonly=True) as s:
        assert check_store(s).problems == []

    lock = threading.Lock()
    calls: list[tuple[str, bool]] = []

    class Worker(Agent):
        def do(self, ctx: StepContext) -> str:
            with lock:
                calls.append((ctx.step, False))
            return ctx.step

        def undo(self, ctx: StepContext) -> None:
            with lock:
                calls.append((ctx.step, True))

    clock = FakeClock(start=time.time() + 2 * HOUR)  # the process was down past it
    with Runtime(store, clock=clock, sweep_interval=0.05) as rt:
        rt.add_agent("w", Worker)
        rt.add_workflow(TWO)
        advance(rt, clock, 0.0)
        with pytest.raises(WorkflowFailed, match="deadline passed"):
            rt.handle("w1").result(timeout=WAIT)
        assert sorted(calls) == [("a", True), ("b", True)]  # undone; nothing run again
    with Store(store, readonly=True) as s:
        assert check_store(s).problems == []
