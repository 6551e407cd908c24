"""Review of 2325ae7 (an attempt reserved ahead that has not started when its timer comes
is restamped, not timed out): what waits ahead must neither wait for ever behind an
instance nothing will free, nor leave the lane's count of waiting attempts behind it."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import pytest

from herder.runtime import (
    Agent,
    RetryPolicy,
    Runtime,
    State,
    StepContext,
    StepState,
    Workflow,
)
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
    """A failed commit reloads w while a's attempt hangs on the one instance of svc. The
    store says a is DISPATCHED: queued to run again. Without prefetch the hung attempt's
    timer finds it queued and busy and replaces the instance (Engine._timer_due, hung).
    With prefetch it is reserved ahead at once, under a new token: the hung attempt's
    timer is stale, and the new attempt, never started, is restamped at each of its own
    timers. Nothing frees the instance: w stays RUNNING for good."""
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
            Svc.b_go.set()  # a commit of w fails: w is reloaded, a queued again
            wait_until(rt, lambda: reloaded(rt), timeout=WAIT)
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


def reloaded(rt: Runtime) -> bool:
    """Whether a runs again: queued (or waiting ahead) while its attempt 1 hangs."""
    svc = rt.stats()["agents"]["svc"]
    return bool(svc["queued"] or svc["ahead"])


class Fragile(Agent):
    """Builds until ``broken`` is set; then its factory fails."""

    broken = False

    def __init__(self) -> None:
        if Fragile.broken:
            raise ConnectionError("cannot connect")

    def ok(self, ctx: StepContext) -> int:
        return ctx.attempt


@pytest.mark.timeout(60)
def test_an_attempt_charged_for_an_instance_that_failed_to_start_leaves_its_lane(
    tmp_path: Path,
) -> None:
    """The thread host charges an instance that fails to start to the oldest attempt
    waiting ahead (Dispatcher.instance_event, Lanes.oldest): that attempt leaves its lane,
    so the lane's count of attempts waiting ahead drops with it. Otherwise each such charge
    keeps one place of the agent's room taken for good ('ahead' in the stats, and the
    threaded simulation's _quiet, which waits for it)."""
    clock = FakeClock()
    Fragile.broken = False
    with Runtime(
        tmp_path / "s", clock=clock, prefetch=3, agent_host="thread", instance_idle_timeout=5
    ) as rt:
        rt.add_agent("fragile", Fragile, concurrency=1)
        rt.add_workflow(
            Workflow("one", version=1).step(
                "s", agent="fragile", action="ok", timeout=60, retry=RetryPolicy(max_attempts=2)
            )
        )
        assert rt.start("one", {}, workflow_id="w0").result(timeout=WAIT) == {"s": 1}  # timed
        advance(rt, clock, 6.0)  # its instance idled past the idle timeout: stopped
        wait_until(rt, lambda: rt.stats()["agents"]["fragile"]["instances"] == 0)
        Fragile.broken = True
        rt.start("one", {}, workflow_id="w1")  # reserved ahead of the instance it starts
        wait_until(rt, lambda: rt.status("w1").state.is_final)
        settle(rt)
        assert rt.stats()["steps"]["reserved_ahead"] >= 1
        assert rt.stats()["steps"]["in_flight_attempts"] == 0
        assert rt.stats()["agents"]["fragile"]["ahead"] == 0
        assert rt.stats()["steps"]["ahead"] == 0


class Held(Agent):
    """Each workflow's action starts (``started``), then waits for its own ``go``."""

    started: dict[str, threading.Event] = {}
    go: dict[str, threading.Event] = {}

    def act(self, ctx: StepContext) -> int:
        Held.started.setdefault(ctx.workflow_id, threading.Event()).set()
        Held.go.setdefault(ctx.workflow_id, threading.Event()).wait(HANG)
        return ctx.attempt


@pytest.mark.timeout(120)
@pytest.mark.parametrize("host", ["pool", "thread"])
def test_an_attempt_restamped_while_it_waited_still_times_out_once_it_hangs(
    tmp_path: Path, host: str
) -> None:
    """w2, reserved ahead at t=0 (timeout 10), waits behind w1 until t=33: each of its
    timers meanwhile restamps it. Handed over at t=33, it hangs: the batch entry still
    watches it, and it times out once 10 s have passed since then (not before)."""
    clock = FakeClock()
    Held.started, Held.go = {}, {}
    retry = RetryPolicy(max_attempts=1)
    try:
        with Runtime(tmp_path / "s", clock=clock, prefetch=3, agent_host=host) as rt:
            rt.add_agent("held", Held, concurrency=1)
            rt.add_workflow(
                Workflow("one", version=1).step(
                    "s", agent="held", action="act", timeout=10, retry=retry
                )
            )
            rt.add_workflow(
                Workflow("long", version=1).step("s", agent="held", action="act", timeout=100)
            )
            Held.go["w0"] = threading.Event()
            Held.go["w0"].set()
            assert rt.start("one", {}, workflow_id="w0").result(timeout=WAIT) == {"s": 1}
            rt.start("long", {}, workflow_id="w1")  # holds the one instance until t=33
            assert Held.started.setdefault("w1", threading.Event()).wait(WAIT)
            rt.start("one", {}, workflow_id="w2")  # recorded ahead: deadline t=10
            wait_until(rt, lambda: rt.stats()["agents"]["held"]["ahead"] == 1)
            for _ in range(3):  # t=33
                advance(rt, clock, 11.0)
            assert rt.status("w2").steps["s"].state is StepState.DISPATCHED
            Held.go.setdefault("w1", threading.Event()).set()  # w2 starts now, and hangs
            assert Held.started.setdefault("w2", threading.Event()).wait(WAIT)
            settle(rt)
            step = rt.status("w2").steps["s"]
            assert (step.state, step.attempt) == (StepState.DISPATCHED, 1), step
            advance(rt, clock, 5.0)  # t=38: within its timeout from its hand-over
            assert rt.status("w2").steps["s"].state is StepState.DISPATCHED
            for _ in range(2):  # t=50: past it (a batch entry is reported again when due)
                advance(rt, clock, 6.0)
            wait_until(rt, lambda: rt.status("w2").state.is_final, timeout=WAIT)
            assert "timed out" in (rt.status("w2").steps["s"].error or "")
    finally:
        for event in Held.go.values():
            event.set()
