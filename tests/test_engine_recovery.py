"""Recovery corner cases found by the SIGKILL crash test (test_engine_crash.py), each
reproduced deterministically: a process stops at the exact moment that once left a
workflow stuck, and a new Runtime over the same store must finish it."""

from __future__ import annotations

import threading
from pathlib import Path

from herder.runtime import (
    Agent,
    RetryPolicy,
    Runtime,
    StepContext,
    StepState,
    Workflow,
)
from herder.runtime.testing import FakeClock, advance, settle

FAST = RetryPolicy(max_attempts=3, initial_interval=0.0, jitter=0.0)
WAIT = 10.0


def _runtime(path: Path, clock: FakeClock) -> Runtime:
    return Runtime(path, clock=clock, default_retry=FAST, instance_shutdown=0.1)


def test_an_immediate_retry_still_queued_at_a_crash_resumes_after_reopening(
    tmp_path: Path,
) -> None:
    # A retry without backoff is stored RETRY_WAIT with no timer and waits in memory for a
    # free instance; if the process dies then, only recovery can queue it again.
    clock, path = FakeClock(), tmp_path / "s"
    a_entered, go, hold = threading.Event(), threading.Event(), threading.Event()

    class Busy(Agent):
        def work(self, ctx: StepContext) -> str:
            if ctx.workflow_id == "a":
                a_entered.set()
                go.wait(WAIT)
                raise RuntimeError("transient")  # retried at once, but b holds the instance
            hold.wait(WAIT)
            return ctx.workflow_id

    one = Workflow("one").step("s", agent="svc", action="work")
    with _runtime(path, clock) as rt:
        rt.add_agent("svc", Busy, concurrency=1)
        rt.add_workflow(one)
        rt.start("one", workflow_id="a")
        assert a_entered.wait(WAIT)
        rt.start("one", workflow_id="b")
        settle(rt)  # b waits in the agent's queue, ahead of a's retry
        go.set()
        settle(rt)
        assert rt.status("a").steps["s"].state is StepState.RETRY_WAIT
    hold.set()

    class Fine(Agent):
        def work(self, ctx: StepContext) -> str:
            return ctx.workflow_id

    with _runtime(path, clock) as rt:
        rt.add_agent("svc", Fine, concurrency=1)
        rt.add_workflow(one)
        advance(rt, clock, 1.0)
        assert rt.handle("a").result(timeout=WAIT) == {"s": "a"}
        assert rt.handle("b").result(timeout=WAIT) == {"s": "b"}
