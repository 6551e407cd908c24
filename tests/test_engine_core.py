"""The Engine on its own: events in, decisions out, with no threads, store or clock.

Each test drives ``herder.actors.engine.Engine`` as the Scheduler does (load a workflow,
hand it events with the time and a random source) and reads the decision it returns:
the records to write, what happens at once, and what happens once they are durable.
"""

from __future__ import annotations

import itertools
from types import SimpleNamespace
from typing import Any

from herder.actors.engine import (
    Announce,
    Answered,
    Cancel,
    Decision,
    Defaults,
    Dispatch,
    Engine,
    Enqueue,
    Fence,
    Reserved,
    Resumed,
    StepWrite,
    TimerDue,
    WorkflowWrite,
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

S = StepState
PLAN = Plan(
    "trip",
    1,
    (
        StepSpec("a", agent="svc", action="book", compensate="cancel"),
        StepSpec("b", agent="svc", action="book", after=("a",)),
    ),
)
RETRY = RetryPolicy(max_attempts=2, initial_interval=1.0, jitter=0.0)


def _engine() -> Engine:
    tokens = itertools.count(1)
    return Engine(
        Defaults(default_retry=RETRY, default_timeout=30.0),
        {("trip", 1): PLAN},
        lambda: next(tokens),
        has_probe=lambda _agent, _action: False,
        lease=SimpleNamespace(incarnation=0, taken_from=None),
    )


def _started(engine: Engine, now: float = 10.0) -> Decision:
    record = WorkflowRecord("w1", "trip", 1, {"who": "ada"}, state=WorkflowState.RUNNING)
    assert engine.load(record, []) is not None
    return engine.handle(Resumed("w1"), now=now, rand=lambda: 0.5)


def _dispatch(engine: Engine, decision: Decision, token: int, now: float) -> Decision:
    """Reserve an instance for the job ``decision`` queued; the decision that records it."""
    (enqueue,) = [a for a in decision.now if isinstance(a, Enqueue)]
    run = engine.runs[enqueue.job.workflow_id]
    run.queued.discard(enqueue.job.step)  # it left its queue (as the pump does)
    engine.reserve(Reserved(enqueue.job, enqueue.agent, "svc-1", token), now=now)
    return engine.take()


def _steps(decision: Decision) -> list[tuple[str, StepState]]:
    return [(w.new.name, w.new.state) for w in decision.writes if isinstance(w, StepWrite)]


def test_a_workflow_runs_step_by_step_and_each_dispatch_waits_for_its_write() -> None:
    engine = _engine()
    started = _started(engine)
    assert [(a.job.step, a.agent) for a in started.now if isinstance(a, Enqueue)] == [("a", "svc")]
    assert not started.writes  # nothing to record until an instance is reserved

    reserved = _dispatch(engine, started, token=1000, now=11.0)
    assert _steps(reserved) == [("a", S.DISPATCHED)]
    (write,) = reserved.writes
    assert isinstance(write, StepWrite)
    assert (write.new.attempt, write.new.token, write.new.deadline) == (1, 1000, 41.0)
    assert reserved.effects == [("w1", Dispatch("w1", "a", 1000))]  # told once durable

    answered = engine.handle(Answered(1000, ok=True, result={"pnr": 1}), now=12.0, rand=lambda: 0)
    assert _steps(answered) == [("a", S.SUCCEEDED)]
    assert [a.job.step for a in answered.now if isinstance(a, Enqueue)] == ["b"]

    second = _dispatch(engine, answered, token=1001, now=13.0)
    done = engine.handle(Answered(1001, ok=True, result=2), now=14.0, rand=lambda: 0)
    assert _steps(second) + _steps(done) == [("b", S.DISPATCHED), ("b", S.SUCCEEDED)]
    (final,) = [w for w in done.writes if isinstance(w, WorkflowWrite)]
    assert final.new.state is WorkflowState.SUCCEEDED
    ((workflow_id, announce),) = done.effects
    assert workflow_id == "w1"
    assert isinstance(announce, Announce)
    assert [s.result for s in announce.steps or []] == [{"pnr": 1}, 2]
    assert engine.runs == {}
    assert engine.inflight == {}


def test_the_same_events_at_the_same_times_give_the_same_decisions() -> None:
    def history() -> list[Any]:
        engine = _engine()
        started = _started(engine)
        reserved = _dispatch(engine, started, token=1000, now=11.0)
        failed = engine.handle(Answered(1000, ok=False, error="boom"), now=12.0, rand=lambda: 0.3)
        return [
            (w.old, w.new) if isinstance(w, StepWrite) else w
            for d in (started, reserved, failed)
            for w in d.writes
        ]

    first, second = history(), history()
    assert first == second
    assert len(first) == 2  # DISPATCHED, then RETRY_WAIT


def test_a_failed_attempt_waits_for_its_retry_and_its_timer_queues_it_again() -> None:
    engine = _engine()
    reserved = _dispatch(engine, _started(engine), token=1000, now=11.0)
    assert reserved
    failed = engine.handle(Answered(1000, ok=False, error="boom"), now=12.0, rand=lambda: 0.5)
    (write,) = [w for w in failed.writes if isinstance(w, StepWrite)]
    assert write.new.state is S.RETRY_WAIT
    assert write.new.retry_at == 13.0  # initial_interval 1.0, no jitter
    assert not failed.now  # nothing runs before its time

    assert write.new.timer_ms is not None
    due = TimerDue("w1", "a", write.new.timer_ms, write.new.token)
    queued = engine.handle(due, now=13.0, rand=lambda: 0.5)
    assert [a.job.step for a in queued.now if isinstance(a, Enqueue)] == ["a"]


def test_an_answer_whose_token_is_not_current_changes_nothing() -> None:
    engine = _engine()
    _dispatch(engine, _started(engine), token=1000, now=11.0)
    stale = engine.handle(Answered(999, ok=True), now=12.0, rand=lambda: 0.5)
    assert not stale
    assert engine.counters["stale"] == 1
    assert engine.runs["w1"].steps["a"].state is S.DISPATCHED


def test_cancel_tells_the_running_attempt_and_undoes_what_succeeded_once_it_answers() -> None:
    engine = _engine()
    _dispatch(engine, _started(engine), token=1000, now=11.0)
    answered = engine.handle(Answered(1000, ok=True), now=12.0, rand=lambda: 0.5)
    assert _steps(_dispatch(engine, answered, token=1001, now=13.0)) == [("b", S.DISPATCHED)]
    run = engine.runs["w1"]

    engine.at(14.0, lambda: 0.5)
    actions.cancel(engine, run)
    cancelled = engine.take()
    # b's attempt is told, not fenced: its answer is awaited before anything is undone.
    assert [(type(a), a.attempt.token) for a in cancelled.now] == [(Cancel, 1001)]
    assert run.record.state is WorkflowState.COMPENSATING
    assert run.record.cancelled

    last = engine.handle(Answered(1001, ok=True), now=15.0, rand=lambda: 0.5)
    undo = [(a.job.step, a.job.compensating) for a in last.now if isinstance(a, Enqueue)]
    assert undo == [("a", True)]  # b has no compensation; a, done last before it, is undone


def test_finishing_a_workflow_fences_its_attempts_in_flight() -> None:
    engine = _engine()
    _dispatch(engine, _started(engine), token=1000, now=11.0)
    run = engine.runs["w1"]
    engine.at(12.0, lambda: 0.5)
    actions.abandon(engine, run, "abandoned by ops")
    abandoned = engine.take()
    assert [(type(a), a.attempt.token) for a in abandoned.now if isinstance(a, Fence)] == [
        (Fence, 1000)
    ]
    assert engine.inflight == {}
    assert "w1" not in engine.runs
    late = engine.handle(Answered(1000, ok=True), now=13.0, rand=lambda: 0.5)
    assert not late
    assert engine.counters["stale"] == 1


def test_a_step_that_times_out_while_its_orphan_waits_to_run_again_is_undone() -> None:
    # Cancelled while a's attempt hangs; then a failed commit reloads the workflow, and the
    # store says a is DISPATCHED: an orphan, queued to run again (its effect may have
    # happened, so even while compensating). a then times out: FAILED, to be undone. Its
    # compensation takes the place of that forward job, which can no longer run. (Found
    # by the threaded simulation, seed 482: the compensation was not queued, a being
    # "queued already", and the workflow stayed COMPENSATING for good.)
    engine = _engine()
    _dispatch(engine, _started(engine), token=1000, now=11.0)
    run = engine.runs["w1"]
    engine.at(12.0, lambda: 0.5)
    actions.cancel(engine, run)
    engine.take()
    record, steps = run.record, list(run.steps.values())
    engine.forget("w1")  # its next commit failed: it is read back from the store
    assert engine.load(record, steps) is not None
    resumed = engine.handle(Resumed("w1", recovered=True), now=13.0, rand=lambda: 0.5)
    assert [(a.job.step, a.job.compensating) for a in resumed.now if isinstance(a, Enqueue)] == [
        ("a", False)
    ]
    a = engine.runs["w1"].steps["a"]
    lapsed = engine.handle(
        TimerDue("w1", "a", a.timer_ms, a.token, busy=True), now=50.0, rand=lambda: 0.5
    )
    assert _steps(lapsed) == [("a", S.FAILED)]
    undo = [(a.job.step, a.job.compensating) for a in lapsed.now if isinstance(a, Enqueue)]
    assert undo == [("a", True)]
    run = engine.runs["w1"]
    assert run.jobs["a"].compensating
    assert "a" in run.queued


def test_an_attempt_answered_unstarted_runs_again_without_spending_an_attempt() -> None:
    # A runtime paused past its lease answers the attempts it held back "unstarted": they
    # never ran. Read as an agent's unknown marker, the step failed for good and its
    # workflow compensated, though the runtime still held the lease.
    engine = _engine()
    decision = _started(engine)
    for token in (1000, 1001, 1002):  # more than RETRY's two attempts
        _dispatch(engine, decision, token=token, now=11.0)
        unstarted = Answered(token, ok=False, error="not started", kind="unstarted")
        decision = engine.handle(unstarted, now=12.0, rand=lambda: 0)
        assert _steps(decision) == [("a", S.RETRY_WAIT)]
        assert [a.job.step for a in decision.now if isinstance(a, Enqueue)] == ["a"]
    again = _dispatch(engine, decision, token=1003, now=13.0)
    (write,) = again.writes
    assert isinstance(write, StepWrite)
    assert write.new.attempt == 1  # none of those was charged
    assert engine.runs["w1"].record.state is WorkflowState.RUNNING
