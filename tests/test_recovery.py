"""Recovery: whatever state a crash leaves in the store, opening the runtime finishes it.

The durable states are written directly (as a process killed at that instant would
leave them), then a Runtime is opened on the store; each test asserts the workflow ends
where the state machine says it must. Crashes inside a live runtime (a Scheduler crash, a
failed commit, a crash-looping agent) are injected for real.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from pathlib import Path
from typing import Any

import pytest

from herder.runtime import (
    Agent,
    NotActive,
    RetryPolicy,
    Runtime,
    State,
    StepContext,
    StepState,
    Workflow,
    WorkflowFailed,
)
from herder.runtime.testing import EffectLedger, FakeClock, crash_instance, crash_scheduler
from herder.store import Put, Store, Transition, encode, step_key, timer_key, workflow_key
from herder.store._records import StepRecord, WorkflowRecord, WorkflowState

WAIT = 10.0
FAST = RetryPolicy(max_attempts=3, initial_interval=0.0, jitter=0.0)
NOW = 1_000_000.0  # FakeClock's default start


class Booker(Agent):
    def __init__(self, ledger: EffectLedger) -> None:
        self.ledger = ledger

    def book(self, ctx: StepContext) -> str:
        return self.ledger.apply(ctx.idempotency_key, ctx.step)  # type: ignore[no-any-return]

    def cancel(self, ctx: StepContext) -> None:
        self.ledger.undo(ctx.idempotency_key.removesuffix("/compensate"))


def chain() -> Workflow:
    return (
        Workflow("chain")
        .step("a", agent="svc", action="book", compensate="cancel", timeout=30.0)
        .step("b", agent="svc", action="book", compensate="cancel", timeout=30.0, after=["a"])
    )


def write_state(path: Path, workflow: WorkflowRecord, steps: list[StepRecord]) -> None:
    """Leave ``workflow`` and ``steps`` in the store as a killed process would have."""
    ops = [Put("workflows", workflow_key(workflow.id), encode(workflow.to_dict()))]
    for st in steps:
        ops.append(Put("steps", step_key(st.workflow_id, st.name), encode(st.to_dict())))
        if st.timer_ms is not None:
            key = timer_key(st.timer_ms, st.workflow_id, st.name)
            ops.append(Put("timers", key, encode({"token": st.token})))
    with Store(path) as store:
        store.writer.submit(Transition(ops=tuple(ops))).result(timeout=WAIT)


def open_runtime(path: Path, ledger: EffectLedger) -> Runtime:
    rt = Runtime(path, clock=FakeClock(), default_retry=FAST)
    rt.add_agent("svc", functools.partial(Booker, ledger), concurrency=2)
    rt.add_workflow(chain())
    return rt


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "store"


def running(state: WorkflowState = WorkflowState.RUNNING, **kw: Any) -> WorkflowRecord:
    return WorkflowRecord("w", "chain", 1, {"n": 1}, state, NOW, NOW, **kw)


def test_a_retry_due_before_the_crash_runs_at_the_next_open(path: Path) -> None:
    ledger = EffectLedger()
    write_state(
        path,
        running(),
        [
            StepRecord("w", "a", StepState.RETRY_WAIT, attempt=1, token=5, retry_at=NOW - 1),
            StepRecord("w", "b"),
        ],
    )
    with open_runtime(path, ledger) as rt:
        assert rt.handle("w").result(timeout=WAIT) == {"a": "a", "b": "b"}
        assert rt.status("w").steps["a"].attempt == 2


def test_an_attempt_in_flight_at_the_crash_is_run_again_with_the_same_key(path: Path) -> None:
    ledger = EffectLedger()
    ledger.apply("w/a", "a")  # the dead process's attempt reached the service
    dispatched = StepRecord(
        "w",
        "a",
        StepState.DISPATCHED,
        attempt=1,
        token=7,
        deadline=NOW + 30,
        timer_ms=int((NOW + 30) * 1000),
    )
    write_state(path, running(), [dispatched, StepRecord("w", "b")])
    with open_runtime(path, ledger) as rt:
        assert rt.handle("w").result(timeout=WAIT) == {"a": "a", "b": "b"}
        assert rt.status("w").steps["a"].attempt == 2
    assert ledger.requests["w/a"] == 2  # re-sent; the idempotent service absorbed it
    assert ledger.effects == {"w/a": "a", "w/b": "b"}


def test_a_compensation_interrupted_by_the_crash_is_finished(path: Path) -> None:
    ledger = EffectLedger()
    ledger.apply("w/a", "a")
    write_state(
        path,
        running(WorkflowState.COMPENSATING, error="step 'b' failed: sold out"),
        [
            StepRecord(
                "w", "a", StepState.COMPENSATING, attempt=1, token=9, done_token=8, comp_attempt=0
            ),
            StepRecord("w", "b", StepState.FAILED, attempt=1, token=10),
        ],
    )
    with open_runtime(path, ledger) as rt, pytest.raises(WorkflowFailed) as failed:
        rt.handle("w").result(timeout=WAIT)
    assert failed.value.status.state is State.COMPENSATED
    assert ledger.undone == ["w/a"]


def test_an_orphaned_attempt_is_resolved_and_undone_when_its_sibling_failed(path: Path) -> None:
    """A parallel step was in flight when the crash hit and its sibling had failed:
    its effect may exist, so it is undone (not run again: the workflow had turned back)."""
    ledger = EffectLedger()
    ledger.apply("w/left", "left")
    plan = (
        Workflow("fork")
        .step("left", agent="svc", action="book", compensate="cancel", timeout=30.0)
        .step("right", agent="svc", action="book", compensate="cancel", timeout=30.0)
    )
    deadline = NOW + 30
    write_state(
        path,
        WorkflowRecord(
            "w", "fork", 1, None, WorkflowState.COMPENSATING, NOW, NOW, error="right failed"
        ),
        [
            StepRecord(
                "w",
                "left",
                StepState.DISPATCHED,
                attempt=1,
                token=3,
                deadline=deadline,
                timer_ms=int(deadline * 1000),
            ),
            StepRecord("w", "right", StepState.FAILED, attempt=1, token=4),
        ],
    )
    with Runtime(path, clock=FakeClock(), default_retry=FAST) as rt:
        rt.add_agent("svc", functools.partial(Booker, ledger))
        rt.add_workflow(plan)
        with pytest.raises(WorkflowFailed) as failed:
            rt.handle("w").result(timeout=WAIT)
    assert failed.value.status.state is State.COMPENSATED
    assert ledger.undone == ["w/left"]


def test_a_failed_commit_is_reloaded_from_the_store_and_the_workflow_still_finishes(
    path: Path,
) -> None:
    ledger = EffectLedger()
    armed = threading.Event()

    class FailsOnce:
        def __call__(self) -> None:
            if armed.is_set():
                armed.clear()
                raise OSError(28, "No space left on device (injected)")

    with open_runtime(path, ledger) as rt:
        rt._store.writer.fault = FailsOnce()

        class ArmsTheFault(Booker):
            def book(self, ctx: StepContext) -> str:
                if ctx.step == "b" and ctx.attempt == 1:
                    armed.set()  # the commit of b's result (and the final state) fails
                return super().book(ctx)

        rt.add_agent("svc", functools.partial(ArmsTheFault, ledger))
        assert rt.start("chain", workflow_id="w").result(timeout=WAIT) == {"a": "a", "b": "b"}
        assert rt.status("w").steps["b"].attempt == 2
        assert rt.stats()["store"]["io_errors"] == 1
    assert ledger.effects == {"w/a": "a", "w/b": "b"}


def test_a_crashed_scheduler_is_restarted_and_every_workflow_still_finishes(path: Path) -> None:
    ledger = EffectLedger()
    gate = threading.Event()

    class Gated(Booker):
        def book(self, ctx: StepContext) -> str:
            gate.wait(WAIT)
            return super().book(ctx)

    with open_runtime(path, ledger) as rt:
        rt.add_agent("svc", functools.partial(Gated, ledger), concurrency=4)
        handles = [rt.start("chain", workflow_id=f"w{n}") for n in range(8)]
        old = rt._ctx.scheduler
        crash_scheduler(rt, WAIT)
        gate.set()
        for handle in handles:
            assert handle.result(timeout=WAIT) == {"a": "a", "b": "b"}
        assert rt._ctx.scheduler is not old
        assert rt.stats()["restarts"]["scheduler"] >= 1
        assert rt._active == 0  # every capacity slot came back
    assert len(ledger.effects) == 16


def test_an_attempt_running_when_its_scheduler_crashes_is_told_it_was_superseded(
    path: Path,
) -> None:
    # Only the Scheduler that died could tell it; the next one runs the step again under a
    # new token. Untold, a hung attempt that returns late may apply its effect after the
    # step was compensated (exact simulation seed 2153, with a service that does not fence).
    ledger = EffectLedger()
    running, release, answered = threading.Event(), threading.Event(), threading.Event()
    seen: list[bool] = []

    class HangsOnce(Booker):
        def book(self, ctx: StepContext) -> str:
            if ctx.step == "a" and ctx.attempt == 1:
                running.set()
                release.wait(WAIT)
                seen.append(ctx.superseded)
                answered.set()
            return super().book(ctx)

    with open_runtime(path, ledger) as rt:
        rt.add_agent("svc", functools.partial(HangsOnce, ledger), concurrency=2)
        handle = rt.start("chain", workflow_id="w")
        assert running.wait(WAIT)
        crash_scheduler(rt, WAIT)
        release.set()
        assert answered.wait(WAIT)
        assert handle.result(timeout=WAIT) == {"a": "a", "b": "b"}
    assert seen == [True]


def test_a_crash_looping_agent_gets_a_fresh_supervisor_and_its_steps_finish(
    path: Path,
) -> None:
    class CrashesThenWorks(Agent):
        def work(self, ctx: StepContext) -> int:
            if ctx.attempt <= 6:
                crash_instance()
            return ctx.attempt

    policy = RetryPolicy(max_attempts=10, initial_interval=0.0)
    with Runtime(path, clock=FakeClock(), agent_restarts=(2, 60.0)) as rt:
        rt.add_agent("svc", CrashesThenWorks)
        rt.add_workflow(Workflow("loop").step("s", agent="svc", action="work", retry=policy))
        assert rt.start("loop", workflow_id="w").result(timeout=WAIT) == {"s": 7}
        assert rt.stats()["steps"]["crashes"] == 6


def test_calls_while_the_tree_replaces_a_crashed_scheduler_raise_herder_errors(
    path: Path,
) -> None:
    # The tree stops the agents before it starts a new Scheduler, and an instance busy in
    # an action may take its whole shutdown: meanwhile cancel() and cancel_async() raised
    # pykka's ActorDeadError (no HerderError), add_agent() too though the new Scheduler
    # takes its agent, and stats() said to open a new Runtime.
    entered, release = threading.Event(), threading.Event()

    class Holds(Agent):
        def hold(self, ctx: StepContext) -> str:
            entered.set()
            release.wait(WAIT)
            return "held"

    with Runtime(path, instance_shutdown=WAIT) as rt:
        rt.add_agent("h", Holds)
        rt.add_workflow(Workflow("w").step("s", agent="h", action="hold"))
        other = rt.start("w", workflow_id="other")
        rt.start("w", workflow_id="held")
        assert entered.wait(WAIT)
        old = rt._ctx.scheduler
        assert old is not None
        crashing = threading.Thread(target=crash_scheduler, args=(rt, 3 * WAIT))
        crashing.start()
        try:
            assert old.actor_stopped.wait(WAIT)  # the tree now waits for the held instance
            for call in (
                lambda: rt.cancel(other.id),
                lambda: asyncio.run(rt.cancel_async(other.id)),
                rt.stats,
            ):
                with pytest.raises(NotActive, match="call again"):
                    call()
            rt.add_agent("h", Holds, concurrency=2)  # the new Scheduler takes it
            assert rt._ctx.scheduler is old  # (all of it while the old one was current)
        finally:
            release.set()
            crashing.join(3 * WAIT)
        rt.cancel(other.id)
        with pytest.raises(WorkflowFailed):
            other.result(timeout=WAIT)
        assert rt.handle("held").result(timeout=WAIT) == {"s": "held"}  # served on
        assert rt.stats()["restarts"]["scheduler"] == 1
