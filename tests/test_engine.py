"""The Scheduler Agent Supervisor engine, end to end through the public API."""

from __future__ import annotations

import functools
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from herder.runtime import (
    Agent,
    InvalidDefinition,
    InvalidInput,
    InvalidState,
    RetryPolicy,
    Runtime,
    State,
    StepContext,
    StepState,
    UnknownName,
    UnknownWorkflow,
    Workflow,
    WorkflowConflict,
    WorkflowFailed,
)
from herder.runtime.testing import (
    EffectLedger,
    FakeClock,
    advance,
    crash_instance,
    fail_first,
    fail_permanently,
    settle,
    wait_until,
)

FAST = RetryPolicy(max_attempts=3, initial_interval=0.0, jitter=0.0)
WAIT = 10.0  # seconds a test waits for something that should happen at once


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def rt(tmp_path: Path, clock: FakeClock) -> Iterator[Runtime]:
    with Runtime(
        tmp_path / "store", clock=clock, sweep_interval=1.0, default_retry=FAST
    ) as runtime:
        yield runtime


class Service(Agent):
    """A well-behaved agent over an idempotent fake service, with scriptable faults."""

    def __init__(self, ledger: EffectLedger, script: dict[str, Any] | None = None) -> None:
        self.ledger = ledger
        self.script = script or {}

    def book(self, ctx: StepContext) -> dict[str, Any]:
        fault = self.script.get(ctx.step)
        if fault is not None:
            fault(ctx)
        value = {"step": ctx.step, "seen": sorted(ctx.results)}
        return self.ledger.apply(ctx.idempotency_key, value)  # type: ignore[no-any-return]

    def cancel(self, ctx: StepContext) -> None:
        fault = self.script.get(f"undo:{ctx.step}")
        if fault is not None:
            fault(ctx)
        self.ledger.undo(ctx.idempotency_key.removesuffix("/compensate"))


def trip(version: int = 1, **step_options: Any) -> Workflow:
    return (
        Workflow("trip", version=version)
        .step("flight", agent="svc", action="book", compensate="cancel", **step_options)
        .step("hotel", agent="svc", action="book", compensate="cancel", after=["flight"])
        .step("car", agent="svc", action="book", compensate="cancel", after=["hotel"])
    )


def serve(
    rt: Runtime, ledger: EffectLedger, script: dict[str, Any] | None = None, **kw: Any
) -> None:
    rt.add_agent("svc", functools.partial(Service, ledger, script), **kw)


def test_a_linear_workflow_runs_every_step_in_order_and_returns_their_results(
    rt: Runtime,
) -> None:
    ledger = EffectLedger()
    serve(rt, ledger)
    rt.add_workflow(trip())
    results = rt.start("trip", {"who": "ada"}, workflow_id="w1").result(timeout=WAIT)
    assert results == {
        "flight": {"step": "flight", "seen": []},
        "hotel": {"step": "hotel", "seen": ["flight"]},
        "car": {"step": "car", "seen": ["flight", "hotel"]},
    }
    assert ledger.order == ["w1/flight", "w1/hotel", "w1/car"]
    status = rt.status("w1")
    assert status.state is State.SUCCEEDED
    assert [s.state for s in status.steps.values()] == [StepState.SUCCEEDED] * 3
    assert [s.attempt for s in status.steps.values()] == [1, 1, 1]


def test_independent_steps_run_in_parallel_and_a_join_sees_both_results(rt: Runtime) -> None:
    both_running = threading.Barrier(2, timeout=WAIT)

    class Branch(Agent):
        def work(self, ctx: StepContext) -> str:
            if ctx.step in ("left", "right"):
                both_running.wait()  # breaks (and fails the step) unless both run at once
            return ctx.step

        def join(self, ctx: StepContext) -> list[str]:
            return sorted(ctx.results)

    rt.add_agent("a", Branch, concurrency=1)
    rt.add_agent("b", Branch, concurrency=1)
    rt.add_workflow(
        Workflow("dag")
        .step("left", agent="a", action="work", retry=RetryPolicy(max_attempts=1))
        .step("right", agent="b", action="work", retry=RetryPolicy(max_attempts=1))
        .step("join", agent="a", action="join", after=["left", "right"])
    )
    results = rt.start("dag").result(timeout=WAIT)
    assert results == {"left": "left", "right": "right", "join": ["left", "right"]}


def test_a_transient_failure_is_retried_until_it_succeeds(rt: Runtime) -> None:
    ledger = EffectLedger()
    serve(rt, ledger, {"hotel": lambda ctx: fail_first(ctx, 2)})
    rt.add_workflow(trip())
    rt.start("trip", workflow_id="w").result(timeout=WAIT)
    hotel = rt.status("w").steps["hotel"]
    assert hotel.attempt == 3
    assert hotel.state is StepState.SUCCEEDED
    assert rt.stats()["steps"]["retried"] == 2


def test_retry_backoff_waits_for_the_clock(rt: Runtime, clock: FakeClock) -> None:
    ledger = EffectLedger()
    serve(rt, ledger, {"flight": lambda ctx: fail_first(ctx, 1)})
    slow = RetryPolicy(max_attempts=2, initial_interval=30.0, jitter=0.0)
    rt.add_workflow(trip(retry=slow))
    handle = rt.start("trip", workflow_id="w")
    wait_until(rt, lambda: rt.status("w").steps["flight"].state is StepState.RETRY_WAIT)
    advance(rt, clock, 29.0)
    assert rt.status("w").steps["flight"].state is StepState.RETRY_WAIT
    advance(rt, clock, 2.0)
    assert handle.result(timeout=WAIT)["flight"]["step"] == "flight"
    assert rt.status("w").steps["flight"].attempt == 2


def test_a_permanent_failure_compensates_completed_steps_in_reverse_order(rt: Runtime) -> None:
    ledger = EffectLedger()
    serve(rt, ledger, {"car": lambda ctx: fail_permanently("no cars left")})
    rt.add_workflow(trip())
    with pytest.raises(WorkflowFailed) as failed:
        rt.start("trip", workflow_id="w").result(timeout=WAIT)
    status = failed.value.status
    assert status.state is State.COMPENSATED
    assert "no cars left" in (status.error or "")
    assert ledger.undone == ["w/hotel", "w/flight"]
    assert status.steps["car"].state is StepState.FAILED
    assert status.steps["car"].attempt == 1  # Permanent is never retried
    assert status.steps["hotel"].state is StepState.COMPENSATED


def test_a_non_retryable_error_type_is_not_retried(rt: Runtime) -> None:
    def bad_value(ctx: StepContext) -> None:
        raise ValueError("bad date")

    serve(rt, EffectLedger(), {"flight": bad_value})
    rt.add_workflow(
        trip(retry=RetryPolicy(max_attempts=5, initial_interval=0, non_retryable=[ValueError]))
    )
    with pytest.raises(WorkflowFailed):
        rt.start("trip", workflow_id="w").result(timeout=WAIT)
    assert rt.status("w").steps["flight"].attempt == 1


def test_exhausted_attempts_compensate_the_workflow(rt: Runtime) -> None:
    ledger = EffectLedger()
    serve(rt, ledger, {"hotel": lambda ctx: fail_first(ctx, 99)})
    rt.add_workflow(trip())
    with pytest.raises(WorkflowFailed):
        rt.start("trip", workflow_id="w").result(timeout=WAIT)
    status = rt.status("w")
    assert status.steps["hotel"].attempt == FAST.max_attempts
    # Its failures may have taken effect, so its compensation is asked too (a no-op here).
    assert status.steps["hotel"].state is StepState.COMPENSATED
    assert ledger.undo_requests["w/hotel"] == 1
    assert ledger.undone == ["w/flight"]


def test_a_step_whose_last_answer_was_lost_is_undone_with_the_rest(rt: Runtime) -> None:
    ledger = EffectLedger()

    def applied_then_lost(ctx: StepContext) -> None:
        ledger.apply(ctx.idempotency_key, {"step": ctx.step})
        raise TimeoutError("hotel answer lost")

    serve(rt, ledger, {"hotel": applied_then_lost})
    rt.add_workflow(trip())
    with pytest.raises(WorkflowFailed):
        rt.start("trip", workflow_id="w").result(timeout=WAIT)
    status = rt.status("w")
    # The hotel was booked although no attempt said so: undoing only the flight would
    # leave the trip half-done.
    assert status.steps["hotel"].state is StepState.COMPENSATED
    assert ledger.undone == ["w/hotel", "w/flight"]


def test_a_compensation_sees_the_results_of_the_steps_that_succeeded_only(rt: Runtime) -> None:
    ledger = EffectLedger()
    seen: dict[str, dict[str, Any]] = {}

    def record(ctx: StepContext) -> None:
        seen[ctx.step] = dict(ctx.results)
        ledger.undo(ctx.idempotency_key.removesuffix("/compensate"))

    serve(rt, ledger, {"hotel": lambda ctx: fail_first(ctx, 99), "undo:hotel": record,
                       "undo:flight": record})  # fmt: skip
    rt.add_workflow(trip())
    with pytest.raises(WorkflowFailed) as failed:
        rt.start("trip", workflow_id="w").result(timeout=WAIT)
    # The hotel failed in a way that may have taken effect, so it is undone too; but it
    # never succeeded, so no compensation finds it (or a None) among the results.
    assert failed.value.status.steps["hotel"].state is StepState.COMPENSATED
    flight = {"step": "flight", "seen": []}
    assert seen == {"hotel": {"flight": flight}, "flight": {"flight": flight}}


def test_a_permanent_failure_is_not_compensated(rt: Runtime) -> None:
    ledger = EffectLedger()
    serve(rt, ledger, {"car": lambda ctx: fail_permanently("no cars left")})
    rt.add_workflow(trip())
    with pytest.raises(WorkflowFailed):
        rt.start("trip", workflow_id="w").result(timeout=WAIT)
    assert rt.status("w").steps["car"].state is StepState.FAILED
    assert ledger.undo_requests["w/car"] == 0


def test_a_permanent_failure_after_an_answer_lost_is_compensated(rt: Runtime) -> None:
    # The car's first attempt booked the car and its answer was lost; the retry was
    # refused with Permanent. Left FAILED and never undone, the booking stood while the
    # workflow said it had undone everything (the workflow review, session 14).
    ledger = EffectLedger()

    def booked_then_refused(ctx: StepContext) -> None:
        if ctx.attempt == 1:
            ledger.apply(ctx.idempotency_key, "booked")
            raise TimeoutError("answer lost")
        fail_permanently("no cars left")

    serve(rt, ledger, {"car": booked_then_refused})
    rt.add_workflow(trip())
    with pytest.raises(WorkflowFailed):
        rt.start("trip", workflow_id="w").result(timeout=WAIT)
    assert rt.status("w").steps["car"].state is StepState.COMPENSATED
    assert ledger.undone == ["w/car", "w/hotel", "w/flight"]  # the booking too, first


def test_a_failing_compensation_parks_the_workflow_until_an_operator_retries_it(
    rt: Runtime,
) -> None:
    ledger = EffectLedger()
    broken = threading.Event()
    broken.set()

    def undo_flight(ctx: StepContext) -> None:
        if broken.is_set():
            raise RuntimeError("airline API down")

    script = {
        "car": lambda ctx: fail_permanently("sold out"),
        "undo:flight": undo_flight,
    }
    serve(rt, ledger, script)
    rt.add_workflow(trip())
    handle = rt.start("trip", workflow_id="w")
    with pytest.raises(WorkflowFailed) as failed:
        handle.result(timeout=WAIT)
    status = failed.value.status
    assert status.state is State.NEEDS_ATTENTION
    assert "airline API down" in (status.error or "")
    assert status.steps["flight"].state is StepState.COMPENSATING
    assert ledger.undone == ["w/hotel"]
    assert [s.id for s in rt.list(state="NEEDS_ATTENTION")] == ["w"]

    broken.clear()
    rt.retry("w")
    with pytest.raises(WorkflowFailed) as again:
        handle.result(timeout=WAIT)
    assert again.value.status.state is State.COMPENSATED
    assert ledger.undone == ["w/hotel", "w/flight"]


def test_a_timed_out_attempt_is_retried_and_its_late_answer_is_ignored(
    rt: Runtime, clock: FakeClock
) -> None:
    ledger = EffectLedger()
    started, release = threading.Event(), threading.Event()

    class Slow(Agent):
        def book(self, ctx: StepContext) -> str:
            if ctx.attempt == 1:
                started.set()
                release.wait(WAIT)
                ledger.apply(ctx.idempotency_key, "late")
                return "late"
            return ledger.apply(ctx.idempotency_key, "fresh")  # type: ignore[no-any-return]

    rt.add_agent("svc", Slow, concurrency=2)
    rt.add_workflow(Workflow("one").step("s", agent="svc", action="book", timeout=10.0))
    handle = rt.start("one", workflow_id="w")
    assert started.wait(WAIT)
    advance(rt, clock, 11.0)
    assert handle.result(timeout=WAIT) == {"s": "fresh"}
    release.set()  # the first attempt answers now, with a token that is no longer current
    settle(rt)
    assert rt.status("w").steps["s"].result == "fresh"
    assert rt.status("w").steps["s"].attempt == 2
    assert ledger.effects == {"w/s": "fresh"}  # the service absorbed the stale retry
    stats = rt.stats()["steps"]
    assert stats["timed_out"] == 1


def test_a_missed_heartbeat_retries_the_step(rt: Runtime, clock: FakeClock) -> None:
    beat, stop = threading.Event(), threading.Event()

    class Beating(Agent):
        def work(self, ctx: StepContext) -> int:
            if ctx.attempt == 1:
                ctx.heartbeat({"progress": 1})
                beat.set()
                stop.wait(WAIT)  # then goes silent
            return ctx.attempt

    rt.add_agent("svc", Beating, concurrency=2)
    rt.add_workflow(
        Workflow("hb").step("s", agent="svc", action="work", timeout=100.0, heartbeat_timeout=5.0)
    )
    handle = rt.start("hb", workflow_id="w")
    assert beat.wait(WAIT)
    advance(rt, clock, 6.0)
    # Only the 5 s heartbeat timeout can have lapsed: the attempt's deadline is 100 s.
    assert handle.result(timeout=WAIT) == {"s": 2}
    assert rt.stats()["steps"]["timed_out"] == 1
    stop.set()


def test_a_steps_heartbeat_timeout_bounds_its_compensation_too(
    rt: Runtime, clock: FakeClock
) -> None:
    # docs/workflows.md: timeout and heartbeat_timeout bound the compensation's attempts
    # as well, so an undo of a step with a heartbeat timeout must beat as often.
    beat, stop = threading.Event(), threading.Event()

    class Beating(Agent):
        def work(self, ctx: StepContext) -> str:
            return "done"

        def fail(self, ctx: StepContext) -> None:
            fail_permanently("refused")

        def undo(self, ctx: StepContext) -> int:
            if ctx.attempt == 1:  # (a compensation's attempt: its own count)
                ctx.heartbeat({"undone": 1})
                beat.set()
                stop.wait(WAIT)  # then goes silent
            return ctx.attempt

    rt.add_agent("svc", Beating, concurrency=2)
    wf = (
        Workflow("hb")
        .step(
            "s", agent="svc", action="work", compensate="undo", timeout=100.0, heartbeat_timeout=5.0
        )
        .step("t", agent="svc", action="fail", after=["s"])
    )
    rt.add_workflow(wf)
    rt.start("hb", workflow_id="w")
    assert beat.wait(WAIT)
    advance(rt, clock, 6.0)  # only the 5 s heartbeat timeout can have lapsed
    wait_until(rt, lambda: rt.status("w").state is State.COMPENSATED)
    step = rt.status("w").steps["s"]
    assert (step.state, step.compensation_attempts) == (StepState.COMPENSATED, 2)
    assert rt.stats()["steps"]["timed_out"] == 1
    stop.set()


def test_a_crashed_agent_instance_is_restarted_and_its_step_retried_at_once(rt: Runtime) -> None:
    class Crashy(Agent):
        def work(self, ctx: StepContext) -> int:
            if ctx.attempt == 1:
                crash_instance()
            return ctx.attempt

    rt.add_agent("svc", Crashy)
    rt.add_workflow(Workflow("c").step("s", agent="svc", action="work", timeout=1000.0))
    # No clock advance: the retry must not wait for the step's timeout.
    assert rt.start("c", workflow_id="w").result(timeout=WAIT) == {"s": 2}
    stats = rt.stats()
    assert stats["steps"]["crashes"] == 1


def test_a_hung_instance_is_replaced_so_other_work_continues(rt: Runtime, clock: FakeClock) -> None:
    hang = threading.Event()
    first = threading.Event()

    class Hangs(Agent):
        def work(self, ctx: StepContext) -> str:
            if ctx.workflow_id == "stuck" and ctx.attempt == 1:
                first.set()
                hang.wait(60)  # blocked far longer than the test: only a replacement helps
            return ctx.workflow_id

    rt.add_agent("svc", Hangs, concurrency=1)
    rt.add_workflow(Workflow("h").step("s", agent="svc", action="work", timeout=5.0))
    stuck = rt.start("h", workflow_id="stuck")
    assert first.wait(WAIT)
    other = rt.start("h", workflow_id="other")
    advance(rt, clock, 6.0)
    assert stuck.result(timeout=WAIT) == {"s": "stuck"}
    assert other.result(timeout=WAIT) == {"s": "other"}
    hang.set()


def test_cancel_stops_dispatching_and_compensates_completed_steps(rt: Runtime) -> None:
    ledger = EffectLedger()
    in_hotel, saw_cancel = threading.Event(), threading.Event()

    def hotel(ctx: StepContext) -> None:
        in_hotel.set()
        for _ in range(1000):
            if ctx.cancelled:
                saw_cancel.set()
                raise RuntimeError("stopped early: cancelled")
            saw_cancel.wait(0.01)

    serve(rt, ledger, {"hotel": hotel}, concurrency=2)
    rt.add_workflow(trip())
    handle = rt.start("trip", workflow_id="w")
    assert in_hotel.wait(WAIT)
    rt.cancel("w")
    with pytest.raises(WorkflowFailed) as failed:
        handle.result(timeout=WAIT)
    assert failed.value.status.state is State.CANCELLED
    assert saw_cancel.is_set()
    assert ledger.undone == ["w/flight"]
    assert "w/car" not in ledger.requests
    with pytest.raises(InvalidState):
        rt.cancel("w")


def test_starting_the_same_id_twice_is_idempotent_and_different_input_conflicts(
    rt: Runtime,
) -> None:
    ledger = EffectLedger()
    serve(rt, ledger)
    rt.add_workflow(trip())
    first = rt.start("trip", {"who": "ada"}, workflow_id="w")
    second = rt.start("trip", {"who": "ada"}, workflow_id="w")
    assert first.id == second.id == "w"
    assert first.result(timeout=WAIT) == second.result(timeout=WAIT)
    with pytest.raises(WorkflowConflict, match="different input"):
        rt.start("trip", {"who": "bob"}, workflow_id="w")
    rt.add_workflow(Workflow("other").step("s", agent="svc", action="book"))
    with pytest.raises(WorkflowConflict, match="another workflow \\(you asked for 'other'\\)"):
        rt.start("other", {"who": "ada"}, workflow_id="w")  # the same input, but not trip
    assert ledger.requests["w/flight"] == 1


def _store_size(rt: Runtime) -> tuple[int, int, int]:
    store = rt._store
    return store.count("workflows"), store.count("steps"), store.count("timers")


@pytest.mark.parametrize(
    ("build", "error", "match"),
    [
        (lambda: Workflow("x").compile(), InvalidDefinition, "no steps"),
        (
            lambda: (
                Workflow("x")
                .step("a", agent="svc", action="book", after=["b"])
                .step("b", agent="svc", action="book", after=["a"])
                .compile()
            ),
            InvalidDefinition,
            "cycle: a -> b -> a",
        ),
        (
            lambda: Workflow("x").step("a", agent="svc", action="book", after=["ghost"]).compile(),
            InvalidDefinition,
            "ghost",
        ),
        (
            lambda: (
                Workflow("x")
                .step("a", agent="svc", action="book")
                .step("a", agent="svc", action="book")
            ),
            InvalidDefinition,
            "already has a step",
        ),
        (lambda: Workflow("", 1), InvalidInput, "workflow name"),
        (lambda: Workflow("x", 0), InvalidInput, "version"),
        (lambda: RetryPolicy(max_attempts=0), InvalidInput, "max_attempts"),
    ],
)
def test_bad_definitions_are_refused_with_a_clear_error(
    build: Any, error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        build()


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda rt: rt.start("nope"), UnknownName, "no workflow named 'nope'"),
        (lambda rt: rt.start("orphan"), UnknownName, "needs agent 'ghost'"),
        (  # checked when added, since its agent is registered (tests/test_validation.py)
            lambda rt: rt.add_workflow(Workflow("typo").step("s", agent="svc", action="bokk")),
            UnknownName,
            "has no action 'bokk'",
        ),
        (lambda rt: rt.start("trip", {"x": object()}), InvalidInput, "cannot be stored"),
        (lambda rt: rt.start("trip", {1: "int key"}), InvalidInput, "cannot be stored|str keys"),
        (lambda rt: rt.start("trip", "x" * 5000), InvalidInput, "limit"),
        (lambda rt: rt.start("trip", workflow_id=""), InvalidInput, "empty"),
        (lambda rt: rt.start("trip", workflow_id="a\x00b"), InvalidInput, "NUL"),
        (lambda rt: rt.start("trip", workflow_id="x" * 401), InvalidInput, "limit is 400"),
        (lambda rt: rt.start("trip", workflow_id="\udcff"), InvalidInput, "UTF-8"),
        (lambda rt: rt.status("missing"), UnknownWorkflow, "missing"),
        (lambda rt: rt.retry("missing"), UnknownWorkflow, "missing"),
    ],
)
def test_bad_input_is_refused_at_the_door_and_nothing_is_written(
    tmp_path: Path, call: Any, error: type[Exception], match: str
) -> None:
    with Runtime(tmp_path / "s", clock=FakeClock(), max_input_bytes=4096) as rt:
        serve(rt, EffectLedger())
        rt.add_workflow(trip())
        rt.add_workflow(Workflow("orphan").step("s", agent="ghost", action="book"))
        before = _store_size(rt)
        with pytest.raises(error, match=match):
            call(rt)
        assert _store_size(rt) == before


def test_changing_a_stored_definition_without_a_new_version_is_refused(rt: Runtime) -> None:
    serve(rt, EffectLedger())
    rt.add_workflow(trip())
    rt.add_workflow(trip())  # the same definition again is fine
    rt.start("trip", workflow_id="w")  # from here on it is fixed (tests/test_validation.py)
    changed = Workflow("trip", version=1).step("only", agent="svc", action="book")
    with pytest.raises(InvalidDefinition, match="new version"):
        rt.add_workflow(changed)


def test_an_unfinished_workflow_resumes_when_the_runtime_is_reopened(
    tmp_path: Path,
) -> None:
    ledger = EffectLedger()
    clock = FakeClock()

    def hotel(ctx: StepContext) -> None:
        if ctx.attempt == 1:
            raise RuntimeError("process went away")

    path = tmp_path / "s"
    # The retry is due an hour later on a clock that stands still, so the first runtime
    # closes with hotel in RETRY_WAIT: the workflow cannot finish before it is reopened.
    later = RetryPolicy(max_attempts=3, initial_interval=3600.0, max_interval=3600.0, jitter=0.0)
    with Runtime(path, clock=clock, default_retry=later) as rt:
        serve(rt, ledger, {"hotel": hotel})
        rt.add_workflow(trip())
        rt.start("trip", workflow_id="w")
        wait_until(rt, lambda: rt.status("w").steps["hotel"].state is StepState.RETRY_WAIT)
    with Runtime(path, clock=clock, default_retry=FAST) as rt:
        status = rt.status("w")
        assert status.state is State.RUNNING
        assert status.steps["hotel"].state is StepState.RETRY_WAIT
        assert rt.stats()["awaiting_definition"] == {"trip@1": 1}
        serve(rt, ledger)
        rt.add_workflow(trip())
        advance(rt, clock, 3600.0)
        results = rt.handle("w").result(timeout=WAIT)
        assert set(results) == {"flight", "hotel", "car"}
        assert rt.status("w").steps["hotel"].attempt == 2
        assert ledger.requests["w/flight"] == 1


@pytest.mark.parametrize("signal", [SystemExit(3), KeyboardInterrupt()])
def test_an_action_raising_a_base_exception_fails_only_its_step(
    rt: Runtime, signal: BaseException
) -> None:
    class Exits(Agent):
        def work(self, ctx: StepContext) -> str:
            if ctx.workflow_id == "bad" and ctx.attempt == 1:
                raise signal
            return ctx.workflow_id

    rt.add_agent("svc", Exits)
    rt.add_workflow(Workflow("x").step("s", agent="svc", action="work"))
    assert rt.start("x", workflow_id="bad").result(timeout=WAIT) == {"s": "bad"}
    assert rt.status("bad").steps["s"].attempt == 2
    assert rt.start("x", workflow_id="good").result(timeout=WAIT) == {"s": "good"}


@pytest.mark.parametrize(
    ("result", "match"),
    [(object(), "cannot be stored"), ({1: "int key"}, "str"), ("x" * 5000, "limit")],
)
def test_a_result_that_cannot_be_stored_fails_the_step_for_good_and_undoes_it(
    tmp_path: Path, result: Any, match: str
) -> None:
    undone: list[str] = []

    class Returns(Agent):
        def work(self, ctx: StepContext) -> Any:
            return result  # after the effect: the action ran

        def undo(self, ctx: StepContext) -> None:
            undone.append(ctx.step)

    with Runtime(tmp_path / "s", clock=FakeClock(), max_result_bytes=4096) as rt:
        rt.add_agent("svc", Returns)
        rt.add_workflow(
            Workflow("x").step("s", agent="svc", action="work", compensate="undo", retry=FAST)
        )
        with pytest.raises(WorkflowFailed) as failed:
            rt.start("x", workflow_id="w").result(timeout=WAIT)
    status = failed.value.status
    step = status.steps["s"]
    assert step.attempt == 1  # not retried: it would come back the same
    assert status.error is not None
    assert re.search(match, status.error)
    assert status.state is State.COMPENSATED
    assert step.state is StepState.COMPENSATED
    assert undone == ["s"]  # it ran, so it is undone


def test_heartbeat_details_that_cannot_be_stored_fail_the_step_for_good_and_undo_it(
    tmp_path: Path,
) -> None:
    undone: list[str] = []

    class Beats(Agent):
        def work(self, ctx: StepContext) -> str:
            ctx.heartbeat({"progress": object()})  # refused by herder, after some work
            return "unreachable"

        def undo(self, ctx: StepContext) -> None:
            undone.append(ctx.step)

    with Runtime(tmp_path / "s", clock=FakeClock()) as rt:
        rt.add_agent("svc", Beats)
        rt.add_workflow(
            Workflow("x").step(
                "s", agent="svc", action="work", compensate="undo", heartbeat_timeout=60, retry=FAST
            )
        )
        with pytest.raises(WorkflowFailed) as failed:
            rt.start("x", workflow_id="w").result(timeout=WAIT)
    status = failed.value.status
    assert status.steps["s"].attempt == 1
    assert status.state is State.COMPENSATED
    assert undone == ["s"]


def test_wait_until_may_ask_the_runtime_in_its_predicate(rt: Runtime) -> None:
    serve(rt, EffectLedger())
    rt.add_workflow(trip())
    rt.start("trip", workflow_id="w")
    # stats() asks the Scheduler, which also wakes the waiter: this must not deadlock.
    wait_until(rt, lambda: bool(rt.stats()) and rt.status("w").state is State.SUCCEEDED)
    assert rt.stats()["steps"]["succeeded"] == 3
