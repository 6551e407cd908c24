"""Recovery corner cases found by the SIGKILL crash test (test_engine_crash.py), each
reproduced deterministically: a process stops at the exact moment that once left a
workflow stuck, and a new Runtime over the same store must finish it."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from herder.runtime import (
    Agent,
    Permanent,
    RetryPolicy,
    Runtime,
    State,
    StepContext,
    StepState,
    Workflow,
    WorkflowFailed,
)
from herder.runtime.testing import FakeClock, advance, settle, wait_until

FAST = RetryPolicy(max_attempts=3, initial_interval=0.0, jitter=0.0)
WAIT = 10.0


def _runtime(path: Path, clock: FakeClock, **settings: object) -> Runtime:
    return Runtime(path, clock=clock, default_retry=FAST, instance_shutdown=0.1, **settings)


def test_an_immediate_retry_still_queued_at_a_crash_resumes_after_reopening(
    tmp_path: Path,
) -> None:
    # A retry without backoff is stored RETRY_WAIT with no timer and waits in memory for a
    # free instance; if the process dies then, only recovery can queue it again. (With
    # prefetch it is recorded ahead instead: DISPATCHED, an orphan after the crash.)
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
    with _runtime(path, clock, prefetch=0) as rt:
        rt.add_agent("svc", Busy, concurrency=1)
        rt.add_workflow(one)
        rt.start("one", workflow_id="a")
        assert a_entered.wait(WAIT)
        rt.start("one", workflow_id="b")
        settle(rt)  # b waits in the agent's queue, ahead of a's retry
        go.set()
        # settle() does not wait for a's agent thread to raise: wait for the commit.
        wait_until(rt, lambda: rt.status("a").steps["s"].state is StepState.RETRY_WAIT)
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


def test_a_step_in_flight_when_a_compensating_workflow_crashed_does_not_block_it(
    tmp_path: Path,
) -> None:
    # left fails for good while right runs; the process dies before right answers. After
    # reopening nobody will ever answer right's attempt, and the workflow had turned back
    # before the crash: right's forward action is not run again. Its effect may have
    # happened, so it ends FAILED marked done (undone, had it a compensation), and it
    # must not block compensation.
    clock, path = FakeClock(), tmp_path / "s"
    right_entered, hold = threading.Event(), threading.Event()
    undone: list[str] = []

    class Branches(Agent):
        def work(self, ctx: StepContext) -> str:
            if ctx.step == "left":
                right_entered.wait(WAIT)
                raise Permanent("left is impossible")
            if ctx.step == "right":
                right_entered.set()
                hold.wait(WAIT)
            return ctx.step

        def undo(self, ctx: StepContext) -> None:
            undone.append(ctx.step)

    pair = (
        Workflow("pair")
        .step("first", agent="a", action="work", compensate="undo")
        .step("left", agent="a", action="work", after=["first"])
        .step("right", agent="b", action="work", after=["first"], timeout=5.0)
    )
    with _runtime(path, clock) as rt:
        rt.add_agent("a", Branches)
        rt.add_agent("b", Branches)
        rt.add_workflow(pair)
        rt.start("pair", workflow_id="w")
        assert right_entered.wait(WAIT)
        # left's answer races with this thread: wait for its commit, not for a settle
        wait_until(rt, lambda: rt.status("w").state is State.COMPENSATING)
        status = rt.status("w")
        assert status.steps["right"].state is StepState.DISPATCHED
    hold.set()

    right_entered.clear()
    with _runtime(path, clock) as rt:
        rt.add_agent("a", Branches)
        rt.add_agent("b", Branches)
        rt.add_workflow(pair)
        with pytest.raises(WorkflowFailed) as failed:
            rt.handle("w").result(timeout=WAIT)
        status = failed.value.status
        assert status.state is State.COMPENSATED
        right = status.steps["right"]
        assert (right.state, right.attempt) == (StepState.FAILED, 1)  # not run again
        assert right.error == (
            "the attempt running at a crash was not run again: its workflow is compensating"
        )
        assert not right_entered.is_set()
        assert status.steps["first"].state is StepState.COMPENSATED
        assert undone == ["first"]
