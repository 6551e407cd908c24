"""Workflows waiting long on timers leave memory and come back (``passivate_after``):
by their timer, their deadline, an operator's action, or a restart; the rule itself
(``herder.actors.engine.dormant``) on each kind of step."""

from __future__ import annotations

import pathlib
from typing import Any

import pytest

from herder.actors.engine import WorkflowRun, dormant
from herder.runtime import (
    Agent,
    CompletionRefused,
    InvalidInput,
    RetryPolicy,
    Runtime,
    State,
    StepContext,
    StepState,
    Workflow,
    WorkflowFailed,
)
from herder.runtime.testing import FakeClock, advance, check_store, settle, wait_until
from herder.store import (
    Plan,
    Put,
    StepRecord,
    StepSpec,
    Transition,
    WorkflowRecord,
    WorkflowState,
    ms,
    workflow_key,
)

pytestmark = pytest.mark.timeout(60)
WAIT = 10.0
TICK = 6.0  # past the Supervisor's Tick (every 5 s), which looks for dormant workflows
SLOW = RetryPolicy(initial_interval=900.0, max_interval=900.0, jitter=0.0)


class Svc(Agent):
    failures: dict[str, int] = {}
    tokens: list[str] = []  # the task tokens handed off by ``hand``, in order

    def go(self, ctx: StepContext) -> str:
        return ctx.step

    def hand(self, ctx: StepContext) -> object:  # hands its first attempt off
        if ctx.attempt > 1:
            return "again"
        Svc.tokens.append(ctx.task_token)
        return ctx.complete_later()

    def flaky(self, ctx: StepContext) -> str:  # fails its first attempt
        if ctx.attempt == 1:
            raise ConnectionError("the service is down")
        return "ok"


def _register(rt: Runtime) -> None:
    rt.add_agent("svc", Svc)
    rt.add_workflow(Workflow("later").step("s", agent="svc", action="go"))
    flaky = Workflow("retry").step("f", agent="svc", action="flaky", retry=SLOW)
    rt.add_workflow(flaky.step("g", agent="svc", action="go", after=["f"]))
    handed = Workflow("handed").step("h", agent="svc", action="hand", timeout=3600.0)
    rt.add_workflow(handed.step("g", agent="svc", action="go", after=["h"]))


def _runtime(
    path: pathlib.Path, clock: FakeClock, *, setup: bool = False, **settings: Any
) -> Runtime:
    """A runtime with the agent and definitions, registered in ``setup=`` (before its
    recovery) or after it opened (its recovered workflows await them meanwhile)."""
    if setup:
        return Runtime(path, clock=clock, setup=_register, **settings)
    rt = Runtime(path, clock=clock, **settings)
    _register(rt)
    return rt


def _doze(rt: Runtime, clock: FakeClock, workflow_id: str) -> None:
    """Start ``workflow_id`` delayed an hour, and let a Tick send it out of memory."""
    rt.start("later", delay=3600, workflow_id=workflow_id)
    advance(rt, clock, TICK)
    settle(rt)


def _counts(rt: Runtime) -> tuple[int, int]:
    steps = rt.stats()["steps"]
    return steps["dormant_workflows"], steps["active_workflows"]


def test_workflows_waiting_long_leave_memory_and_their_timers_bring_them_back(
    tmp_path: pathlib.Path,
) -> None:
    clock = FakeClock()
    with _runtime(tmp_path / "s", clock) as rt:
        later = rt.start("later", delay=3600, workflow_id="later")
        retry = rt.start("retry", workflow_id="retry")
        wait_until(rt, lambda: rt.status("retry").steps["f"].state is StepState.RETRY_WAIT)
        advance(rt, clock, TICK)
        settle(rt)
        assert _counts(rt) == (2, 2)  # out of memory, still counted as active
        advance(rt, clock, 900.0)  # the retry's backoff ends: f runs again, then g
        assert retry.result(timeout=WAIT) == {"f": "ok", "g": "g"}
        assert _counts(rt) == (1, 1)
        advance(rt, clock, 3600.0)
        assert later.result(timeout=WAIT) == {"s": "s"}
        assert _counts(rt) == (0, 0)
        assert check_store(rt._store).problems == []


def test_an_operator_action_and_a_deadline_reach_a_dormant_workflow(
    tmp_path: pathlib.Path,
) -> None:
    clock = FakeClock()
    with _runtime(tmp_path / "s", clock) as rt:
        cancelled = rt.start("later", delay=3600, workflow_id="cancelled")
        due = rt.start("retry", deadline=600.0, workflow_id="due")  # f retries at 900 s
        wait_until(rt, lambda: rt.status("due").steps["f"].state is StepState.RETRY_WAIT)
        advance(rt, clock, TICK)
        settle(rt)
        assert _counts(rt) == (2, 2)
        rt.cancel("cancelled", who="op", why="not needed")
        with pytest.raises(WorkflowFailed):
            cancelled.result(timeout=WAIT)
        assert rt.status("cancelled").state is State.CANCELLED
        advance(rt, clock, 600.0)  # its deadline passes before the retry
        with pytest.raises(WorkflowFailed, match="deadline"):
            due.result(timeout=WAIT)
        assert rt.status("due").state is State.COMPENSATED
        assert rt.status("due").steps["f"].attempt == 1  # not run again
        assert _counts(rt) == (0, 0)
        assert check_store(rt._store).problems == []


@pytest.mark.parametrize("setup", [True, False])
def test_a_restart_finds_dormant_workflows_in_the_store(
    tmp_path: pathlib.Path, setup: bool
) -> None:
    clock = FakeClock()
    with _runtime(tmp_path / "s", clock) as rt:
        _doze(rt, clock, "w")
        assert _counts(rt) == (1, 1)
    with _runtime(tmp_path / "s", clock, setup=setup) as rt:
        settle(rt)
        assert _counts(rt) == (1, 1)  # read by recovery, and out of memory again at once
        advance(rt, clock, 3600.0)
        assert rt.handle("w").result(timeout=WAIT) == {"s": "s"}


def test_passivate_after_none_keeps_every_workflow_in_memory(tmp_path: pathlib.Path) -> None:
    clock = FakeClock()
    with _runtime(tmp_path / "s", clock, passivate_after=None) as rt:
        rt.start("later", delay=3600, workflow_id="w")
        advance(rt, clock, TICK)
        settle(rt)
        assert _counts(rt) == (0, 1)
    with pytest.raises(InvalidInput, match="passivate_after"):
        Runtime(tmp_path / "bad", passivate_after=-1.0)


def _hand_off(rt: Runtime, clock: FakeClock, workflow_id: str) -> str:
    """Start ``workflow_id``, whose step h waits on its completion (timeout an hour), let
    a Tick send it out of memory; its task token."""
    Svc.tokens.clear()
    rt.start("handed", workflow_id=workflow_id)
    wait_until(rt, lambda: rt.status(workflow_id).steps["h"].state is StepState.WAITING)
    advance(rt, clock, TICK)
    settle(rt)
    assert _counts(rt) == (1, 1)
    return Svc.tokens[-1]


def test_a_step_waiting_on_its_completion_leaves_memory_and_the_completion_brings_it_back(
    tmp_path: pathlib.Path,
) -> None:
    clock = FakeClock()
    with _runtime(tmp_path / "s", clock) as rt:
        token = _hand_off(rt, clock, "w")
        rt.complete_step(token, {"done": True})
        assert rt.handle("w").result(timeout=WAIT) == {"h": {"done": True}, "g": "g"}
        assert _counts(rt) == (0, 0)
        assert check_store(rt._store).problems == []


def test_a_cancel_reaches_a_dormant_waiting_step_and_its_completion_still_counts(
    tmp_path: pathlib.Path,
) -> None:
    clock = FakeClock()
    with _runtime(tmp_path / "s", clock) as rt:
        token = _hand_off(rt, clock, "w")
        rt.cancel("w", who="op", why="not needed")
        # It waits, compensating, for its partner's word: only then is there an undo to know.
        assert rt.status("w").state is State.COMPENSATING
        assert _counts(rt) == (0, 1)
        rt.complete_step(token, "booked")
        with pytest.raises(WorkflowFailed):
            rt.handle("w").result(timeout=WAIT)
        assert rt.status("w").state is State.CANCELLED
        assert rt.status("w").steps["g"].state is StepState.PENDING  # never ran
        assert check_store(rt._store).problems == []


def test_a_dormant_waiting_step_times_out_on_its_deadline_and_survives_a_restart(
    tmp_path: pathlib.Path,
) -> None:
    clock = FakeClock()
    with _runtime(tmp_path / "s", clock) as rt:
        token = _hand_off(rt, clock, "w")
    with _runtime(tmp_path / "s", clock, setup=True) as rt:
        settle(rt)
        assert _counts(rt) == (1, 1)  # recovered, and out of memory again
        assert rt.status("w").steps["h"].state is StepState.WAITING
        advance(rt, clock, 3600.0)  # its timeout lapses: woken, retried (attempt 2 answers)
        assert rt.handle("w").result(timeout=WAIT) == {"h": "again", "g": "g"}
        assert rt.status("w").steps["h"].attempt == 2
        with pytest.raises(CompletionRefused):
            rt.complete_step(token, "late")  # its attempt is no longer the current one
        assert check_store(rt._store).problems == []


# -- the rule --------------------------------------------------------------------------

NOW = 1_000.0
PLAN = Plan(
    "p",
    1,
    (
        StepSpec("a", agent="svc", action="x"),
        StepSpec("b", agent="svc", action="x", after=("a",)),
    ),
)


def _run(a: StepRecord, b: StepRecord, **record: Any) -> WorkflowRun:
    wf = WorkflowRecord(
        id="w", name="p", version=1, state=WorkflowState.RUNNING, input=None, **record
    )
    specs = {spec.name: spec for spec in PLAN.steps}
    return WorkflowRun(wf, PLAN, {"a": a, "b": b}, specs)


def _step(name: str, state: StepState, at: float | None = None) -> StepRecord:
    timer = None if at is None else ms(at)
    return StepRecord("w", name, state=state, retry_at=at, timer_ms=timer)


def _waiting(deadline: float | None, *, beat: float | None = None) -> StepRecord:
    """Step a, handed off: WAITING under ``deadline`` (and heartbeat deadline ``beat``)."""
    return StepRecord("w", "a", state=StepState.WAITING, deadline=deadline, heartbeat_deadline=beat)


AFTER = ms(NOW + 300)  # passivate_after 300 s


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        (_step("a", StepState.RETRY_WAIT, NOW + 600), _step("b", StepState.PENDING), True),
        (_step("a", StepState.PENDING, NOW + 600), _step("b", StepState.PENDING), True),
        (_step("a", StepState.SUCCEEDED), _step("b", StepState.PENDING, NOW + 600), True),
        (_step("a", StepState.RETRY_WAIT, NOW + 60), _step("b", StepState.PENDING), False),
        (_step("a", StepState.DISPATCHED), _step("b", StepState.PENDING), False),
        (_step("a", StepState.WAITING), _step("b", StepState.PENDING), True),  # completion
        (_waiting(NOW + 600), _step("b", StepState.PENDING), True),
        (_waiting(NOW + 60), _step("b", StepState.PENDING), False),  # times out soon
        (_waiting(NOW + 600, beat=NOW + 60), _step("b", StepState.PENDING), False),
        (_waiting(None, beat=NOW + 600), _step("b", StepState.PENDING), False),  # no entry
        (_step("a", StepState.UNKNOWN), _step("b", StepState.PENDING), False),
        (_step("a", StepState.SUCCEEDED), _step("b", StepState.PENDING), False),  # may run
        (_step("a", StepState.PENDING), _step("b", StepState.PENDING), False),  # no timer
    ],
)
def test_the_rule_holds_a_workflow_dormant_only_when_timers_alone_wake_it(
    a: StepRecord, b: StepRecord, expected: bool
) -> None:
    assert dormant(_run(a, b), AFTER) is expected


def test_the_rule_keeps_in_memory_what_runs_is_queued_ends_soon_or_is_not_running() -> None:
    a, b = _step("a", StepState.RETRY_WAIT, NOW + 600), _step("b", StepState.PENDING)
    assert dormant(_run(a, b), AFTER)
    running = _run(a, b)
    running.attempts.add(7)
    queued = _run(a, b)
    queued.queued.add("a")
    assert not dormant(running, AFTER)
    assert not dormant(queued, AFTER)
    assert not dormant(_run(a, b, deadline=NOW + 60), AFTER)  # its deadline comes first
    assert dormant(_run(a, b, deadline=NOW + 3600), AFTER)
    parked = _run(a, b)
    parked.record = parked.record.evolve(state=WorkflowState.NEEDS_ATTENTION)
    assert not dormant(parked, AFTER)


def test_a_dormant_workflow_whose_record_was_damaged_stays_where_it_is(
    tmp_path: pathlib.Path,
) -> None:
    # Its wake read the damaged record inside the Scheduler's handler of due timers: the
    # StoreCorrupt escaped and the supervision tree restarted the Scheduler (every other
    # timer of that sweep late, running attempts superseded). Now it is as in recovery:
    # that one workflow is logged and counted, everything else runs on.
    clock = FakeClock()
    with _runtime(tmp_path / "s", clock) as rt:
        _doze(rt, clock, "bad")
        assert _counts(rt) == (1, 1)
        damage = Put("workflows", workflow_key("bad"), b"not a record")
        rt._store.writer.submit(Transition(ops=(damage,))).result(timeout=WAIT)
        advance(rt, clock, 3600.0)
        settle(rt)
        assert rt.stats()["restarts"]["scheduler"] == 0
        assert any("bad" in key for key in rt.stats()["corrupt"])
        assert rt.start("later", workflow_id="good").result(timeout=WAIT) == {"s": "s"}
