"""The engine parking a workflow while steps are under way, and an operator's retry of one
parked on failing probes: nothing left running unseen, nothing that may have taken effect
left undone, a cancelled workflow not run forward; and non_retryable by a built-in's name."""

from __future__ import annotations

import itertools
from types import SimpleNamespace
from typing import Any

import pytest

from herder.actors.engine import (
    ALLOWED_STEPS,
    Answered,
    Defaults,
    Engine,
    Enqueue,
    Reserved,
    Resumed,
    StepWrite,
    TimerDue,
    actions,
)
from herder.store import (
    Plan,
    RetryPolicy,
    StepSpec,
    StepState,
    WorkflowRecord,
    WorkflowState,
)
from herder.store._untrusted import error_types

S = StepState
W = WorkflowState
RETRY = RetryPolicy(max_attempts=2, initial_interval=1.0, jitter=0.0)


def _engine(plan: Plan, *, probe: bool = False) -> Engine:
    tokens = itertools.count(1)
    return Engine(
        Defaults(default_retry=RETRY, default_timeout=30.0),
        {(plan.name, plan.version): plan},
        lambda: next(tokens),
        has_probe=lambda _agent, _action: probe,
        lease=SimpleNamespace(incarnation=0, taken_from=None),
    )


def _enqueued(decision) -> list[Enqueue]:
    return [a for a in decision.now if isinstance(a, Enqueue)]


def _reserve(engine: Engine, enqueue: Enqueue, token: int, now: float):
    run = engine.runs[enqueue.job.workflow_id]
    run.queued.discard(enqueue.job.step)
    engine.reserve(Reserved(enqueue.job, enqueue.agent, "i-1", token), now=now)
    return engine.take()


@pytest.mark.timeout(10)
def test_parking_on_failed_probes_leaves_no_parallel_step_dispatched() -> None:
    """A workflow parked because a's probes kept failing (docs/outcomes.md) while a
    parallel step b still runs: the stored snapshot must be one ALLOWED_STEPS admits
    for NEEDS_ATTENTION (herder check reports anything else as damage)."""
    plan = Plan(
        "p",
        1,
        (
            StepSpec("a", agent="svc", action="book", compensate="cancel", timeout=5.0),
            StepSpec("b", agent="svc", action="book", compensate="cancel", timeout=500.0),
        ),
    )
    engine = _engine(plan, probe=True)
    engine.load(WorkflowRecord("w1", "p", 1, {}, state=W.RUNNING), [])
    started = engine.handle(Resumed("w1"), now=10.0, rand=lambda: 0.5)
    qa, qb = _enqueued(started)
    _reserve(engine, qa, 1000, 10.0)
    _reserve(engine, qb, 1001, 10.0)
    run = engine.runs["w1"]
    # a lapses: UNKNOWN, probed at once
    lapsed = engine.handle(TimerDue("w1", "a", None, 1000), now=16.0, rand=lambda: 0.5)
    assert run.steps["a"].state is S.UNKNOWN
    (probe,) = _enqueued(lapsed)
    _reserve(engine, probe, 1002, 16.0)
    engine.handle(Answered(1002, ok=False, error="probe down"), now=17.0, rand=lambda: 0.5)
    st = run.steps["a"]
    again = engine.handle(TimerDue("w1", "a", st.timer_ms, st.token), now=20.0, rand=lambda: 0.5)
    (probe2,) = _enqueued(again)
    _reserve(engine, probe2, 1003, 20.0)
    parked = engine.handle(Answered(1003, ok=False, error="probe down"), now=21.0, rand=lambda: 0.5)
    assert "w1" not in engine.runs  # parked
    final = {}
    for w in parked.writes:
        if isinstance(w, StepWrite):
            final[w.new.name] = w.new.state
    states = {**{n: s.state for n, s in run.steps.items()}, **final}
    assert run.record.state is W.NEEDS_ATTENTION
    bad = {n: s for n, s in states.items() if s not in ALLOWED_STEPS[W.NEEDS_ATTENTION]}
    assert not bad, f"steps the tables forbid in a NEEDS_ATTENTION workflow: {bad}"


@pytest.mark.timeout(10)
def test_non_retryable_by_plain_name_matches_or_is_refused() -> None:
    """``non_retryable=["ValueError"]``: a name that can never match a stored error type
    (stored as ``builtins.ValueError``) is silently accepted and the error is retried."""
    try:
        policy = RetryPolicy(non_retryable=["ValueError"])
    except Exception:
        return  # refused with a message: fine
    assert not policy.is_retryable(error_types(ValueError("x")))


# -- runtime-level ---------------------------------------------------------------------

import threading  # noqa: E402
from pathlib import Path  # noqa: E402

from herder.runtime import Agent, ProbeResult, Runtime, State, StepContext, Workflow  # noqa: E402
from herder.runtime._check import check_store  # noqa: E402
from herder.runtime.testing import FakeClock, advance, settle, wait_until  # noqa: E402


@pytest.mark.timeout(60)
def test_parked_on_probes_while_a_parallel_step_runs_store_checks_clean_and_its_effect_is_undone(
    tmp_path: Path,
) -> None:
    """a's outcome is unknown and its probes keep failing: the workflow parks
    (docs/outcomes.md). b, in parallel, was running and then succeeds (its effect is
    real). The store must pass ``herder check``, and an operator's compensate must undo
    b (it took effect)."""
    clock = FakeClock()
    hang, b_go = threading.Event(), threading.Event()
    entered_a, entered_b, did_ship = threading.Event(), threading.Event(), threading.Event()
    shipped: list[str] = []
    unshipped: list[str] = []

    class Bank(Agent):
        def pay(self, ctx: StepContext) -> object:
            entered_a.set()
            hang.wait(20)
            raise RuntimeError("lost")

        def probe_pay(self, ctx: StepContext) -> ProbeResult:
            raise RuntimeError("probe down")

    class Shop(Agent):
        def ship(self, ctx: StepContext) -> object:
            entered_b.set()
            b_go.wait(20)
            shipped.append(ctx.idempotency_key)
            did_ship.set()
            return "shipped"

        def unship(self, ctx: StepContext) -> None:
            unshipped.append(ctx.idempotency_key)

    paced = RetryPolicy(max_attempts=2, initial_interval=1.0, backoff_coefficient=1.0, jitter=0.0)
    wf = (
        Workflow("par")
        .step("pay", agent="bank", action="pay", timeout=5.0, retry=paced)
        .step("ship", agent="shop", action="ship", compensate="unship", timeout=1000.0)
    )
    with Runtime(
        tmp_path / "s", clock=clock, sweep_interval=1.0, instance_shutdown=0.1, probe_timeout=3.0
    ) as rt:
        try:
            rt.add_agent("bank", Bank)
            rt.add_agent("shop", Shop)
            rt.add_workflow(wf)
            rt.start("par", workflow_id="w")
            assert entered_a.wait(10)
            assert entered_b.wait(10)
            advance(rt, clock, 5.5)  # pay lapses: UNKNOWN, probed; the probe fails
            for _ in range(4):
                if rt.status("w").state is State.NEEDS_ATTENTION:
                    break
                advance(rt, clock, 1.5)
            wait_until(rt, lambda: rt.status("w").state is State.NEEDS_ATTENTION)
            b_go.set()  # ship's effect happens; its answer arrives after the parking
            assert did_ship.wait(10)  # (no commit need follow: wait_until would wait it out)
            settle(rt)
            report = check_store(rt._store)
            problems = report.problems
            rt.compensate("w")
            wait_until(rt, lambda: rt.status("w").state is State.COMPENSATED, timeout=10)
            settle(rt)
        finally:
            hang.set()
            b_go.set()
    undone = [key.removesuffix("/compensate") for key in unshipped]  # (its own key)
    assert undone == shipped, f"ship took effect {shipped} but was undone {unshipped}"
    assert not problems, problems


@pytest.mark.timeout(10)
def test_retry_of_a_workflow_parked_on_an_unknown_outcome_then_permanent_still_undoes_it() -> None:
    """a's first attempt timed out (UNKNOWN: it may have taken effect), its probes
    failed, the workflow parked; an operator retries it, and the new attempt fails with
    Permanent. docs/workflows.md: a failed step any of whose attempts failed with
    anything but Permanent (a timeout included) is undone; Permanent speaks only for its
    own attempt. So a's compensation must run."""
    engine, run, job = _retried_after_unknown()
    _reserve(engine, job, 1000, 100.0)
    out = engine.handle(
        Answered(1000, ok=False, error="card refused", permanent=True), now=101.0, rand=lambda: 0.5
    )
    undo = [(a.job.step, a.job.compensating) for a in _enqueued(out)]
    assert undo == [("a", True)], (
        f"a (whose first attempt timed out) is not undone: {run.steps['a'].state}, "
        f"done_token={run.steps['a'].done_token}, workflow {run.record.state}"
    )


@pytest.mark.timeout(10)
def test_retry_of_a_cancelled_workflow_parked_on_failed_probes_does_not_run_forward() -> None:
    """Cancelled while a's outcome is unknown: the workflow is COMPENSATING and waits for
    a's probes; they keep failing and it parks. docs/operator.md: retry runs the failed
    compensation again, and runs failed steps forward only "if compensation had not
    started". Here it had (the workflow was cancelled): a retry must not resume it
    forward (re-running a and dispatching steps after it)."""
    from herder.store import StepRecord  # noqa: F401

    plan = Plan(
        "p",
        1,
        (
            StepSpec("a", agent="svc", action="book", compensate="cancel", timeout=5.0),
            StepSpec("b", agent="svc", action="book", compensate="cancel"),
            StepSpec("c", agent="svc", action="book", after=("a", "b")),
        ),
    )
    engine = _engine(plan, probe=True)
    engine.load(WorkflowRecord("w1", "p", 1, {}, state=W.RUNNING), [])
    qa, qb = _enqueued(engine.handle(Resumed("w1"), now=10.0, rand=lambda: 0.5))
    _reserve(engine, qa, 1000, 10.0)
    _reserve(engine, qb, 1001, 10.0)
    engine.handle(Answered(1001, ok=True, result="b"), now=11.0, rand=lambda: 0.5)
    run = engine.runs["w1"]
    lapsed = engine.handle(TimerDue("w1", "a", None, 1000), now=16.0, rand=lambda: 0.5)
    (probe,) = _enqueued(lapsed)
    engine.at(16.5, lambda: 0.5)
    actions.cancel(engine, run)  # the user cancels: compensation begins (a still unknown)
    engine.take()
    assert run.record.state is W.COMPENSATING
    _reserve(engine, probe, 1002, 17.0)
    engine.handle(Answered(1002, ok=False, error="probe down"), now=17.0, rand=lambda: 0.5)
    st = run.steps["a"]
    again = engine.handle(TimerDue("w1", "a", st.timer_ms, st.token), now=19.0, rand=lambda: 0.5)
    (probe2,) = _enqueued(again)
    _reserve(engine, probe2, 1003, 19.0)
    engine.handle(Answered(1003, ok=False, error="probe down"), now=19.5, rand=lambda: 0.5)
    assert run.record.state is W.NEEDS_ATTENTION
    assert "w1" not in engine.runs

    # The operator retries it (as the Scheduler does: the parked run taken back).
    fresh = _engine(plan, probe=True)
    again_run = fresh.load(run.record, list(run.steps.values()))
    assert again_run is not None
    fresh.at(30.0, lambda: 0.5)
    actions.retry(fresh, again_run)
    fresh.advance(again_run)
    out = fresh.take()
    forward = [a.job.step for a in _enqueued(out) if not a.job.compensating]
    assert again_run.steps["a"].state is S.UNKNOWN  # only a's probe runs: it decides
    assert again_run.record.state is W.COMPENSATING, again_run.record
    assert forward == ["a"], f"a cancelled workflow resumed forward: {forward}"


@pytest.mark.timeout(10)
def test_a_retried_maybe_done_step_is_undone_if_cancelled_before_it_reruns() -> None:
    """a's first attempt timed out (UNKNOWN: it may have taken effect), its probes failed
    and the workflow parked; an operator retries it (a back to PENDING, marked done) and
    the workflow is cancelled before a runs again. docs/operator.md: a retried step whose
    attempt may have taken effect is undone later; its new attempt never ran, so nothing
    but the old one's effect speaks for it: a's compensation must run."""
    engine, run, job = _retried_after_unknown()
    assert (job.job.step, job.job.compensating) == ("a", False)
    engine.at(100.5, lambda: 0.5)
    actions.cancel(engine, run)  # before a's new attempt reached an agent
    engine.advance(run)
    out = engine.take()
    undo = [(a.job.step, a.job.compensating) for a in _enqueued(out)]
    assert undo == [("a", True)], (
        f"a (whose first attempt timed out) is not undone: {run.steps['a'].state}, "
        f"done_token={run.steps['a'].done_token}, workflow {run.record.state}"
    )


def _retried_after_unknown() -> tuple[Engine, Any, Any]:
    """A workflow parked after a's attempt timed out (UNKNOWN: it may have taken effect)
    and its probes failed, retried by an operator: the engine, the run and a's new job."""
    from herder.store import StepRecord

    plan = Plan("p", 1, (StepSpec("a", agent="svc", action="book", compensate="cancel"),))
    engine = _engine(plan, probe=True)
    record = WorkflowRecord("w1", "p", 1, {}, state=W.NEEDS_ATTENTION, error="probes failed")
    st = StepRecord(
        "w1",
        "a",
        state=S.UNKNOWN,
        attempt=1,
        token=500,
        error="outcome unknown: timed out after 30.0s",
        error_type="herder.Timeout",
        extra={"probes": 2, "probe_failures": 2},
    )
    run = engine.load(record, [st])
    assert run is not None
    engine.at(100.0, lambda: 0.5)
    actions.retry(engine, run)
    engine.advance(run)
    (job,) = _enqueued(engine.take())
    return engine, run, job
