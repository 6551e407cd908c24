"""Workflows whose steps wait on complete_later() out of memory: every way back (a
completion, async or failed, a heartbeat or step timeout, the workflow deadline, an
operator's action, a Scheduler crash, a completion during the recovery after one), two
waiting steps, and a batch entry shared with another workflow."""

from __future__ import annotations

import asyncio
import pathlib
import threading
from typing import Any

import pytest

from herder.runtime import (
    Agent,
    CompletionRefused,
    Runtime,
    State,
    StepContext,
    StepState,
    Workflow,
    WorkflowFailed,
)
from herder.runtime.testing import (
    FakeClock,
    advance,
    check_store,
    crash_scheduler,
    settle,
    wait_until,
)

pytestmark = pytest.mark.timeout(60)
WAIT = 10.0
TICK = 6.0


class Hand(Agent):
    tokens: list[str] = []

    def hand(self, ctx: StepContext) -> object:
        if ctx.attempt > 1:
            return "again"
        Hand.tokens.append(ctx.task_token)
        return ctx.complete_later()

    def beat_hand(self, ctx: StepContext) -> object:
        if ctx.attempt > 1:
            return "again"
        ctx.heartbeat("alive")
        Hand.tokens.append(ctx.task_token)
        return ctx.complete_later()

    def go(self, ctx: StepContext) -> str:
        return ctx.step


def _register(rt: Runtime) -> None:
    rt.add_agent("svc", Hand)
    rt.add_workflow(
        Workflow("handed")
        .step("h", agent="svc", action="hand", timeout=3600.0)
        .step("g", agent="svc", action="go", after=["h"])
    )
    rt.add_workflow(
        Workflow("hb")
        .step("h", agent="svc", action="hand", timeout=3600.0, heartbeat_timeout=1000.0)
        .step("g", agent="svc", action="go", after=["h"])
    )
    rt.add_workflow(
        Workflow("hbeat")
        .step("h", agent="svc", action="beat_hand", timeout=3600.0, heartbeat_timeout=1000.0)
        .step("g", agent="svc", action="go", after=["h"])
    )
    rt.add_workflow(Workflow("short").step("h", agent="svc", action="hand", timeout=20.0))


def _rt(path: pathlib.Path, clock: FakeClock, **kw: Any) -> Runtime:
    return Runtime(path, clock=clock, setup=_register, **kw)


def _counts(rt: Runtime) -> tuple[int, int]:
    steps = rt.stats()["steps"]
    return steps["dormant_workflows"], steps["active_workflows"]


def _hand_off(rt: Runtime, clock: FakeClock, wid: str, name: str = "handed", **kw: Any) -> str:
    Hand.tokens.clear()
    rt.start(name, workflow_id=wid, **kw)
    wait_until(rt, lambda: rt.status(wid).steps["h"].state is StepState.WAITING)
    advance(rt, clock, TICK)
    settle(rt)
    return Hand.tokens[-1]


@pytest.mark.parametrize("workflow", ["hb", "hbeat"])  # (hbeat: heartbeats, then hands off)
def test_the_heartbeat_timeout_of_a_dormant_waiting_step_fires(
    tmp_path: pathlib.Path, workflow: str
) -> None:
    clock = FakeClock()
    with _rt(tmp_path / "s", clock) as rt:
        _hand_off(rt, clock, "w", workflow)
        assert _counts(rt) == (1, 1)
        advance(rt, clock, 1000.0)
        assert rt.handle("w").result(timeout=WAIT) == {"h": "again", "g": "g"}


def test_workflow_deadline_while_waiting_dormant(tmp_path: pathlib.Path) -> None:
    clock = FakeClock()
    with _rt(tmp_path / "s", clock) as rt:
        tok = _hand_off(rt, clock, "w", deadline=1000.0)
        assert _counts(rt) == (1, 1)
        advance(rt, clock, 1000.0)
        with pytest.raises(WorkflowFailed, match="deadline"):
            rt.handle("w").result(timeout=WAIT)
        with pytest.raises(CompletionRefused):
            rt.complete_step(tok, "late")
        assert _counts(rt) == (0, 0)
        assert check_store(rt._store).problems == []


def test_fail_step_on_dormant_retries(tmp_path: pathlib.Path) -> None:
    clock = FakeClock()
    with _rt(tmp_path / "s", clock) as rt:
        tok = _hand_off(rt, clock, "w")
        assert _counts(rt) == (1, 1)
        rt.fail_step(tok, "nope")
        advance(rt, clock, 60.0)
        assert rt.handle("w").result(timeout=WAIT) == {"h": "again", "g": "g"}
        assert _counts(rt) == (0, 0)


def test_async_complete_on_dormant(tmp_path: pathlib.Path) -> None:
    clock = FakeClock()
    with _rt(tmp_path / "s", clock) as rt:
        tok = _hand_off(rt, clock, "w")
        assert _counts(rt) == (1, 1)
        asyncio.run(rt.complete_step_async(tok, "x"))
        assert rt.handle("w").result(timeout=WAIT) == {"h": "x", "g": "g"}
        with pytest.raises(CompletionRefused):
            rt.complete_step(tok, "again")
        assert _counts(rt) == (0, 0)


def test_complete_after_deadline_passed_while_dormant(tmp_path: pathlib.Path) -> None:
    clock = FakeClock()
    with _rt(tmp_path / "s", clock) as rt:
        tok = _hand_off(rt, clock, "w")
        assert _counts(rt) == (1, 1)
        clock.advance(3700.0)  # no sweep yet
        with pytest.raises(CompletionRefused):
            rt.complete_step(tok, "late")
        advance(rt, clock, 10.0)
        assert rt.handle("w").result(timeout=WAIT) == {"h": "again", "g": "g"}


def test_scheduler_crash_while_dormant_waiting(tmp_path: pathlib.Path) -> None:
    clock = FakeClock()
    with _rt(tmp_path / "s", clock, max_active_workflows=3) as rt:
        t1 = _hand_off(rt, clock, "a")
        t2 = _hand_off(rt, clock, "b")
        assert _counts(rt) == (2, 2)
        crash_scheduler(rt)
        settle(rt)
        assert _counts(rt) == (2, 2)
        rt.complete_step(t1, "x")
        assert rt.handle("a").result(timeout=WAIT) == {"h": "x", "g": "g"}
        # capacity: 1 unfinished + new
        rt.start("short", workflow_id="c", timeout=2.0)
        rt.start("short", workflow_id="d", timeout=2.0)
        advance(rt, clock, 3600.0)
        assert rt.handle("b").result(timeout=WAIT) == {"h": "again", "g": "g"}
        with pytest.raises(CompletionRefused):
            rt.complete_step(t2, "late")


def test_skip_dormant_waiting(tmp_path: pathlib.Path) -> None:
    clock = FakeClock()
    with _rt(tmp_path / "s", clock) as rt:
        tok = _hand_off(rt, clock, "w")
        rt.skip("w", "h", "by hand")
        assert rt.handle("w").result(timeout=WAIT) == {"h": "by hand", "g": "g"}
        with pytest.raises(CompletionRefused):
            rt.complete_step(tok, "late")
        assert _counts(rt) == (0, 0)
        assert check_store(rt._store).problems == []


def test_abandon_dormant_waiting(tmp_path: pathlib.Path) -> None:
    clock = FakeClock()
    with _rt(tmp_path / "s", clock) as rt:
        tok = _hand_off(rt, clock, "w")
        rt.abandon("w")
        assert rt.status("w").state is State.ABANDONED
        with pytest.raises(CompletionRefused):
            rt.complete_step(tok, "late")
        assert _counts(rt) == (0, 0)
        assert check_store(rt._store).problems == []


def test_compensate_dormant_waiting(tmp_path: pathlib.Path) -> None:
    clock = FakeClock()
    with _rt(tmp_path / "s", clock) as rt:
        _hand_off(rt, clock, "w")
        rt.compensate("w")
        settle(rt)
        with pytest.raises(WorkflowFailed):
            rt.handle("w").result(timeout=WAIT)
        assert _counts(rt) == (0, 0)
        assert check_store(rt._store).problems == []


class Two(Agent):
    tokens: dict[str, str] = {}

    def hand(self, ctx: StepContext) -> object:
        if ctx.attempt > 1:
            return "again"
        Two.tokens[ctx.step] = ctx.task_token
        return ctx.complete_later()

    def hand_probe(self, ctx: StepContext) -> object:
        if ctx.attempt > 1:
            return "again"
        Two.tokens[ctx.step] = ctx.task_token
        return ctx.complete_later()

    def probe_hand_probe(self, ctx: StepContext) -> object:
        return ctx.not_done() if hasattr(ctx, "not_done") else None


def _reg2(rt: Runtime) -> None:
    rt.add_agent("two", Two)
    rt.add_workflow(
        Workflow("pair")
        .step("a", agent="two", action="hand", timeout=3600.0)
        .step("b", agent="two", action="hand", timeout=1800.0)
    )
    rt.add_workflow(Workflow("quick").step("q", agent="two", action="hand", timeout=20.0))


def test_two_waiting_steps_dormant_each_completion_and_timeout(tmp_path: pathlib.Path) -> None:
    clock = FakeClock()
    with Runtime(tmp_path / "s", clock=clock, setup=_reg2) as rt:
        Two.tokens.clear()
        rt.start("pair", workflow_id="w")
        wait_until(
            rt, lambda: all(s.state is StepState.WAITING for s in rt.status("w").steps.values())
        )
        advance(rt, clock, TICK)
        settle(rt)
        assert _counts(rt) == (1, 1)
        rt.complete_step(Two.tokens["a"], "A")
        advance(rt, clock, TICK)
        settle(rt)
        assert _counts(rt) == (1, 1)
        advance(rt, clock, 1800.0)  # b times out, runs again
        assert rt.handle("w").result(timeout=WAIT) == {"a": "A", "b": "again"}
        assert _counts(rt) == (0, 0)
        assert check_store(rt._store).problems == []


def test_shared_batch_entry_keeps_dormant_watch(tmp_path: pathlib.Path) -> None:
    clock = FakeClock()
    with Runtime(tmp_path / "s", clock=clock, setup=_reg2) as rt:
        Two.tokens.clear()
        rt.start_many([("pair", None, "w"), ("quick", None, "x")]) if False else None
        rt.start("pair", workflow_id="w")
        rt.start("quick", workflow_id="x")
        wait_until(
            rt,
            lambda: (
                rt.status("x").steps["q"].state is StepState.WAITING
                and all(s.state is StepState.WAITING for s in rt.status("w").steps.values())
            ),
        )
        advance(rt, clock, TICK)
        settle(rt)
        advance(rt, clock, 30.0)  # x times out and runs again
        assert rt.handle("x").result(timeout=WAIT) == {"q": "again"}
        advance(rt, clock, TICK)
        settle(rt)
        assert _counts(rt) == (1, 1)
        advance(rt, clock, 3600.0)
        assert rt.handle("w").result(timeout=WAIT) == {"a": "again", "b": "again"}
        assert check_store(rt._store).problems == []


HANG = threading.Event()


class Mix(Agent):
    tokens: dict[str, str] = {}

    def hand(self, ctx: StepContext) -> object:
        Mix.tokens[ctx.workflow_id] = ctx.task_token
        return ctx.complete_later()

    def slow(self, ctx: StepContext) -> str:
        if ctx.attempt == 1:
            HANG.wait(30)
        return f"d{ctx.attempt}"

    def go(self, ctx: StepContext) -> str:
        return ctx.step


def _reg_mix(rt: Runtime) -> None:
    rt.add_agent("mix", Mix, concurrency=4)
    rt.add_workflow(
        Workflow("mix")
        .step("h", agent="mix", action="hand", timeout=3600.0)
        .step("d", agent="mix", action="slow", timeout=600.0)
    )
    rt.add_workflow(Workflow("later").step("s", agent="mix", action="go"))


def _mix_setup(rt: Runtime, clock: FakeClock) -> None:
    # dormant delayed starts: recovery reads them 200 at a time, "zz" in the last chunk
    rt.start_many(
        [{"workflow": "later", "delay": 3600, "workflow_id": f"a{i:05d}"} for i in range(3000)]
    )
    rt.start("mix", workflow_id="zz")
    wait_until(
        rt,
        lambda: (
            rt.status("zz").steps["h"].state is StepState.WAITING
            and rt.status("zz").steps["d"].state is StepState.DISPATCHED
        ),
    )
    advance(rt, clock, TICK)


def test_control_restart_reruns_step_left_running(tmp_path: pathlib.Path) -> None:
    HANG.clear()
    clock = FakeClock()
    try:
        with Runtime(tmp_path / "s", clock=clock, setup=_reg_mix) as rt:
            _mix_setup(rt, clock)
            crash_scheduler(rt)
            settle(rt)
            # Held back while its first attempt still runs (test_crash_concurrency.py),
            # then run again once it has ended.
            assert rt.status("zz").steps["d"].attempt == 1
            HANG.set()
            wait_until(rt, lambda: rt.status("zz").steps["d"].attempt == 2, timeout=5)
    finally:
        HANG.set()


def test_completion_during_recovery_of_dormant_backlog_skips_resume(tmp_path: pathlib.Path) -> None:
    # After a Scheduler restart, recovery reads the (mostly dormant) unfinished workflows
    # 200 at a time. A completion for a workflow in a later chunk takes it back first
    # (Recovery.take_back) as "not recovered, not crashed": its chunk then skips it, so
    # the step the crash left DISPATCHED is never queued again (resume_steps) and waits
    # out its whole 600 s timeout, charged as a timeout.
    HANG.clear()
    clock = FakeClock()
    try:
        with Runtime(tmp_path / "s", clock=clock, setup=_reg_mix) as rt:
            _mix_setup(rt, clock)
            crash_scheduler(rt)
            rt.complete_step(Mix.tokens["zz"], "H")
            HANG.set()  # (its first attempt ends: the step held back for it runs again)
            wait_until(rt, lambda: rt.status("zz").steps["d"].attempt == 2, timeout=5)
    finally:
        HANG.set()
