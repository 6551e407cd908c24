"""Review of 2325ae7 (an attempt reserved ahead that has not started when its timer comes
is restamped, not timed out): what waits ahead must not wait for ever behind an instance
nothing will free. (Its other findings are tested in tests/test_prefetch.py.)"""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import pytest

from herder.runtime import Agent, RetryPolicy, Runtime, State, StepContext, StepState, Workflow
from herder.runtime.testing import FakeClock, advance, settle, wait_until
from herder.store._entries import Batch

WAIT = 30.0
HANG = 300.0  # longer than the test: only the test's end lets the hung attempt go


class Svc(Agent):
    """Step ``a`` of w hangs on its first attempt; ``b`` waits for ``b_go``."""

    hang = threading.Event()  # set at the end: lets the hung thread go
    hung = threading.Event()
    b_go = threading.Event()

    def work(self, ctx: StepContext) -> int:
        if ctx.workflow_id == "w" and ctx.step == "a" and ctx.attempt == 1:
            Svc.hung.set()
            Svc.hang.wait(HANG)
        elif ctx.workflow_id == "w" and ctx.step == "b":
            Svc.b_go.wait(WAIT)
        return ctx.attempt


@pytest.mark.timeout(120)
@pytest.mark.parametrize("host", ["pool", "thread"])
def test_a_step_reloaded_while_its_attempt_hangs_is_not_held_for_ever(
    tmp_path: Path, host: str
) -> None:
    """A failed commit reloads w while a's attempt hangs on the one instance of svc.
    (2325ae7: a was queued to run again and, with prefetch, reserved ahead under a new
    token: the hung attempt's timer was stale, the new attempt, never started, was
    restamped at each of its own timers, and nothing freed the instance: w stayed
    RUNNING for good.) Now the workflow read back keeps waiting for the hung attempt,
    whose timeout replaces the instance; a's next attempt then succeeds."""
    Svc.hang, Svc.hung, Svc.b_go = threading.Event(), threading.Event(), threading.Event()
    clock = FakeClock()
    fail_next = threading.Event()

    def fault() -> None:  # the writer's hook: fail the next commit of w (b's success)
        batch = sys._getframe(1).f_locals.get("batch", ())  # (Writer._commit's)
        ours = any(isinstance(e, Batch) and any(w == "w" for w, _ in e.effects) for e in batch)
        if ours and fail_next.is_set():
            fail_next.clear()
            raise OSError(5, "injected write error")

    retry = RetryPolicy(max_attempts=3, initial_interval=0.0, jitter=0.0)
    flow = (
        Workflow("flow", version=1)
        .step("a", agent="svc", action="work", timeout=10, retry=retry)
        .step("b", agent="other", action="work", timeout=10, retry=retry)
    )
    warm = Workflow("warm", version=1).step("a", agent="svc", action="work", timeout=10)
    try:
        with Runtime(tmp_path / "s", clock=clock, prefetch=3, agent_host=host) as rt:
            rt.add_agent("svc", Svc, concurrency=1)
            rt.add_agent("other", Svc, concurrency=1)
            rt.add_workflow(flow)
            rt.add_workflow(warm)
            assert rt.start("warm", {}, workflow_id="w0").result(timeout=WAIT) == {"a": 1}
            handle = rt.start("flow", {}, workflow_id="w")
            assert Svc.hung.wait(WAIT)  # a's attempt 1 holds svc's one instance
            settle(rt)
            rt._store.writer.fault = fault
            fail_next.set()
            Svc.b_go.set()  # a commit of w fails: w is reloaded
            # b's result was lost: b runs again; a's attempt 1 still runs, and the
            # workflow read back waits for it (actors/_reload.py), as before the failure.
            wait_until(rt, lambda: b_done(rt), timeout=WAIT)
            settle(rt)
            for _ in range(6):  # a's timeout (10 s) passes six times over
                advance(rt, clock, 11.0)
            # (2325ae7: a stays DISPATCHED at attempt 2, waiting ahead behind the hung
            # attempt 1 for good; svc's stats say busy 1, ahead 1)
            wait_until(rt, lambda: rt.status("w").state.is_final, timeout=WAIT)
            a = rt.status("w").steps["a"]
            assert rt.status("w").state is State.SUCCEEDED, a
            assert handle.result(timeout=WAIT)["a"] == a.attempt, a
    finally:
        Svc.hang.set()


def b_done(rt: Runtime) -> bool:
    """Whether w, read back, has run b again (its first success was not written)."""
    return rt.status("w").steps["b"].state is StepState.SUCCEEDED
