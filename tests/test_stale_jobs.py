"""Regressions found by the simulation under load: a job left stale in an agent's queue
must neither unqueue a live one (seed 465) nor keep its step's compensation from being
queued (seeds 129 and 28, the second test).

A failed commit reloads a workflow while one of its steps waits in an agent's queue, so
the queue holds two jobs for that step: the old run's and the reloaded run's. The old one
ran the step; the other stayed behind. When the workflow then compensated and the step's
compensation was queued after that leftover forward job, popping the leftover (no longer
valid) took the step's "queued" mark with it, the compensation job was dropped as
invalid, and the workflow sat in COMPENSATING forever (until a restart).
"""

from __future__ import annotations

import threading
from pathlib import Path

from herder.runtime import (
    Agent,
    Permanent,
    RetryPolicy,
    Runtime,
    State,
    StepContext,
    StepState,
    Workflow,
)
from herder.runtime.testing import FakeClock, check_store, wait_until

WAIT = 10.0


def test_a_compensation_queued_behind_a_stale_job_of_its_step_still_runs(
    tmp_path: Path,
) -> None:
    blocker_go, c_first, c_second, b_go = (threading.Event() for _ in range(4))
    undone: list[str] = []

    class Svc(Agent):
        def work(self, ctx: StepContext) -> str:
            if ctx.workflow_id == "blocker":
                blocker_go.wait(WAIT)  # holds the only beta instance
            elif ctx.step == "c" and ctx.attempt == 1:
                c_first.wait(WAIT)
                raise ConnectionError("transient")  # its commit is made to fail
            elif ctx.step == "c":
                c_second.wait(WAIT)
                raise Permanent("c is impossible")
            elif ctx.step == "b":
                b_go.wait(WAIT)
            return ctx.step

        def undo(self, ctx: StepContext) -> None:
            undone.append(ctx.step)

    fail_next = threading.Event()

    def fault() -> None:
        if fail_next.is_set():
            fail_next.clear()
            raise OSError(5, "injected write error")

    retry = RetryPolicy(max_attempts=5, initial_interval=0.0, jitter=0.0)
    flow = (
        Workflow("flow")
        .step("a", agent="alpha", action="work", compensate="undo")
        .step("b", agent="beta", action="work", compensate="undo", after=["a"])
        .step("c", agent="alpha", action="work", after=["a"])
    )
    single = Workflow("single").step("x", agent="beta", action="work")
    with Runtime(tmp_path / "s", clock=FakeClock(), default_retry=retry) as rt:
        rt.add_agent("alpha", Svc, concurrency=2)
        rt.add_agent("beta", Svc, concurrency=1)
        rt.add_workflow(single)
        rt.add_workflow(flow)
        rt.start("single", workflow_id="blocker")
        wait_until(rt, lambda: rt.status("blocker").steps["x"].attempt == 1)
        rt.start("flow", workflow_id="w")  # b waits in beta's queue (job 1), c runs
        wait_until(rt, lambda: rt.status("w").steps["c"].attempt == 1)
        rt.start("single", workflow_id="other")  # queued on beta behind job 1
        rt._settle()
        rt._store.writer.fault = fault
        fail_next.set()
        c_first.set()  # c's failure does not commit: w is reloaded, b queued again (job 2)
        wait_until(rt, lambda: rt.status("w").steps["c"].attempt == 2)
        blocker_go.set()  # job 1 runs b on the one instance; "other" and job 2 wait
        wait_until(rt, lambda: rt.status("w").steps["b"].attempt == 1)
        c_second.set()  # w compensates while b runs
        wait_until(rt, lambda: rt.status("w").state is State.COMPENSATING)
        b_go.set()  # b succeeds; its compensation queues behind "other" and job 2
        wait_until(rt, lambda: rt.status("w").state.is_final, timeout=WAIT)
        assert rt.status("w").state is State.COMPENSATED
        assert undone == ["b", "a"]
        assert rt.handle("other").result(timeout=WAIT) == {"x": "x"}
        assert check_store(rt._store).problems == []


def test_a_retry_queued_when_its_workflow_begins_compensating_is_still_undone(
    tmp_path: Path,
) -> None:
    """Regression (the simulation, seeds 129 and 28 under load): b's retry waits in beta's
    queue when c fails for good. Compensation turns b from RETRY_WAIT into FAILED (its
    attempt may have taken effect) and must undo it, but b kept its "queued" mark from the
    forward job, so the compensation was never queued; popping the stale forward job then
    cleared the mark without waking the workflow, which sat in COMPENSATING forever."""
    b_first, blocker_go, c_go = (threading.Event() for _ in range(3))
    undone: list[str] = []

    class Svc(Agent):
        def work(self, ctx: StepContext) -> str:
            if ctx.workflow_id == "blocker":
                blocker_go.wait(WAIT)  # holds the only beta instance
            elif ctx.step == "b":
                b_first.wait(WAIT)
                raise ConnectionError("transient")  # retried at once: queued behind blocker
            elif ctx.step == "c":
                c_go.wait(WAIT)
                raise Permanent("c is impossible")
            return ctx.step

        def undo(self, ctx: StepContext) -> None:
            undone.append(ctx.step)

    retry = RetryPolicy(max_attempts=5, initial_interval=0.0, jitter=0.0)
    flow = (
        Workflow("flow")
        .step("a", agent="alpha", action="work", compensate="undo")
        .step("b", agent="beta", action="work", compensate="undo", after=["a"])
        .step("c", agent="alpha", action="work", after=["a"])
    )
    single = Workflow("single").step("x", agent="beta", action="work")
    # prefetch=0: b's retry must wait queued (with prefetch it is recorded ahead).
    with Runtime(tmp_path / "s", clock=FakeClock(), default_retry=retry, prefetch=0) as rt:
        rt.add_agent("alpha", Svc, concurrency=2)
        rt.add_agent("beta", Svc, concurrency=1)
        rt.add_workflow(single)
        rt.add_workflow(flow)
        rt.start("flow", workflow_id="w")
        wait_until(rt, lambda: rt.status("w").steps["b"].attempt == 1)
        wait_until(rt, lambda: rt.status("w").steps["c"].attempt == 1)
        rt.start("single", workflow_id="blocker")  # queued on beta behind b's attempt
        rt._settle()
        b_first.set()  # b fails; the blocker takes the instance, b's retry waits behind it
        wait_until(rt, lambda: rt.status("blocker").steps["x"].attempt == 1)
        assert rt.status("w").steps["b"].state is StepState.RETRY_WAIT
        c_go.set()  # w compensates while b's forward job is still queued
        wait_until(rt, lambda: rt.status("w").state is not State.RUNNING)
        blocker_go.set()  # beta frees: the stale forward job of b leaves the queue
        wait_until(rt, lambda: rt.status("w").state.is_final, timeout=WAIT)
        assert rt.status("w").state is State.COMPENSATED
        assert undone == ["b", "a"]
        assert check_store(rt._store).problems == []
