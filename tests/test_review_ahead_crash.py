"""Adversarial review of reserve-ahead (hot-path.md §6, §10): attempts recorded ahead of a
free instance, durable and waiting in their lane when the process is SIGKILLed, never ran;
recovery re-runs each of them (and the one that was running) with attempt + 1, once.

The child is this file run as a script: it holds the one instance of a concurrency-1
agent with w1's action, has w2 and w3 reserved ahead and durable, prints ``ready`` and
waits for the kill."""

from __future__ import annotations

import os
import pathlib
import signal
import sys
import threading
from pathlib import Path

import pytest

from herder.runtime import Agent, Runtime, StepContext, Workflow

WAIT = 30.0
FLOW = Workflow("one", version=1).step("s", agent="gated", action="act")


def _note(log: Path, ctx: StepContext) -> None:
    """Append "workflow attempt" to ``log``, synced: what ran survives the kill."""
    with open(log, "a") as f:
        f.write(f"{ctx.workflow_id} {ctx.attempt}\n")
        f.flush()
        os.fsync(f.fileno())


def _child(store: Path, log: Path) -> None:
    from herder.runtime.testing import settle, wait_until

    class Held(Agent):
        def act(self, ctx: StepContext) -> int:
            _note(log, ctx)
            if ctx.workflow_id != "w0":
                threading.Event().wait()  # holds the instance until the kill
            return ctx.attempt

    rt = Runtime(store, prefetch=3)
    rt.__enter__()
    rt.add_agent("gated", Held, concurrency=1)
    rt.add_workflow(FLOW)
    assert rt.start("one", {}, workflow_id="w0").result(timeout=WAIT) == {"s": 1}  # timed
    rt.start("one", {}, workflow_id="w1")
    rt.start("one", {}, workflow_id="w2")
    rt.start("one", {}, workflow_id="w3")
    wait_until(rt, lambda: rt.stats()["steps"]["reserved_ahead"] == 2, timeout=WAIT)
    settle(rt)  # their DISPATCHED is durable: they wait in the lane
    print("ready", flush=True)
    threading.Event().wait()


@pytest.mark.timeout(120)
def test_attempts_waiting_in_a_lane_at_a_sigkill_rerun_with_the_next_attempt_once(
    tmp_path: Path,
) -> None:
    sys.path.insert(0, str(pathlib.Path(__file__).parent))
    from _child_kit import Child

    store, log = tmp_path / "store", tmp_path / "ran"
    child = Child([__file__, str(store), str(log)])
    try:
        child.wait_for("ready", WAIT)
    finally:
        os.kill(child.proc.pid, signal.SIGKILL)
        assert child.kill(WAIT) == -signal.SIGKILL
    assert log.read_text().split("\n")[:-1] == ["w0 1", "w1 1"]  # w2, w3 never ran

    class Free(Agent):
        def act(self, ctx: StepContext) -> int:
            _note(log, ctx)
            return ctx.attempt

    with Runtime(store, prefetch=3) as rt:
        rt.add_agent("gated", Free, concurrency=1)
        rt.add_workflow(FLOW)
        for wid in ("w1", "w2", "w3"):
            assert rt.handle(wid).result(timeout=WAIT) == {"s": 2}, wid
            assert rt.status(wid).steps["s"].attempt == 2
    after = log.read_text().split("\n")[2:-1]
    assert sorted(after) == ["w1 2", "w2 2", "w3 2"]  # each re-run once, attempt + 1


if __name__ == "__main__":
    _child(Path(sys.argv[1]), Path(sys.argv[2]))
