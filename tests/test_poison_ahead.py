"""Poison counting and attempts reserved ahead (``prefetch``): an attempt recorded
DISPATCHED while it waits for its agent's busy instance never ran, yet a crash counts it
as running (the store cannot tell). Once is harmless (a suspect is deferred from the
second crash in a row); but when it was reserved ahead again after the restart and the
process died again, it was parked as poison work, its action never having run once. A
workflow with a crash counted against it is not reserved ahead, so its DISPATCHED at the
next crash means it held an instance.

The child is this file run as a script, twice on one store, each SIGKILLed once
``ready``: the agent (one instance) is timed by a quick attempt of another definition,
then ``w1`` holds the instance for good and ``w2``, ``w3`` queue behind it."""

from __future__ import annotations

import os
import pathlib
import signal
import sys
import threading
from pathlib import Path

import pytest

from herder.runtime import Agent, Runtime, StepContext, Workflow, WorkflowFailed, WorkflowState

WAIT = 30.0
FLOW = Workflow("one", version=1).step("s", agent="gated", action="act")
TIMER = Workflow("timer", version=1).step("s", agent="gated", action="act")


def _note(log: Path, ctx: StepContext) -> None:
    """Append "workflow attempt" to ``log``, synced: what ran survives the kill."""
    with open(log, "a") as f:
        f.write(f"{ctx.workflow_id} {ctx.attempt}\n")
        f.flush()
        os.fsync(f.fileno())


def _child(store: Path, log: Path, first: bool) -> None:
    from herder.runtime.testing import settle

    holding = threading.Event()

    class Held(Agent):
        def act(self, ctx: StepContext) -> int:
            _note(log, ctx)
            if not ctx.workflow_id.startswith("t"):
                holding.set()
                threading.Event().wait()  # holds the instance until the kill
            return ctx.attempt

    rt = Runtime(store, prefetch=3, max_recoveries=1)
    rt.__enter__()
    rt.add_agent("gated", Held, concurrency=1)
    # Timed first (nothing is reserved ahead for an agent not yet timed): after the
    # restart the recovered workflows wait for their definition meanwhile.
    rt.add_workflow(TIMER)
    timing = rt.start("timer", {}, workflow_id="t1" if first else "t2")
    assert timing.result(timeout=WAIT) == {"s": 1}
    rt.add_workflow(FLOW)
    if first:
        for wid in ("w1", "w2", "w3"):
            rt.start("one", {}, workflow_id=wid)
    assert holding.wait(WAIT)
    settle(rt)  # w2 and w3 wait behind w1 (reserved ahead if they may be)
    print("ready", flush=True)
    threading.Event().wait()


@pytest.mark.timeout(180)
def test_attempts_reserved_ahead_at_two_crashes_never_park_a_workflow(tmp_path: Path) -> None:
    sys.path.insert(0, str(pathlib.Path(__file__).parent))
    from _child_kit import Child

    store, log = tmp_path / "store", tmp_path / "ran"
    for first in ("1", ""):
        child = Child([__file__, str(store), str(log), first])
        try:
            child.wait_for("ready", WAIT)
        finally:
            os.kill(child.proc.pid, signal.SIGKILL)
            assert child.kill(WAIT) == -signal.SIGKILL
    assert log.read_text().split("\n")[:-1] == ["t1 1", "w1 1", "t2 1", "w1 2"]

    class Free(Agent):
        def act(self, ctx: StepContext) -> int:
            _note(log, ctx)
            return ctx.attempt

    with Runtime(store, max_recoveries=1) as rt:
        rt.add_agent("gated", Free, concurrency=1)
        rt.add_workflow(TIMER)
        rt.add_workflow(FLOW)
        for wid in ("w2", "w3"):  # never ran: no crash of theirs to count twice
            assert rt.handle(wid).result(timeout=WAIT) == {"s": 2}, wid
        # w1 was running at both crashes: poison work, parked.
        with pytest.raises(WorkflowFailed, match="poison work"):
            rt.handle("w1").result(timeout=WAIT)
        assert rt.status("w1").state is WorkflowState.NEEDS_ATTENTION
    assert sorted(log.read_text().split("\n")[4:-1]) == ["w2 2", "w3 2"]


if __name__ == "__main__":
    _child(Path(sys.argv[1]), Path(sys.argv[2]), bool(sys.argv[3]))
