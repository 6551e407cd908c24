"""Compensation edge cases a user meets: what a compensation returns, and what
``h.result()`` says of a workflow that ended after undoing part of its work."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from herder.runtime import (
    Agent,
    Permanent,
    ProbeResult,
    RetryPolicy,
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
    hang_until,
    settle,
    store_of,
    wait_until,
)

WAIT = 10.0
ONCE = RetryPolicy(max_attempts=1)


@pytest.fixture
def rt(tmp_path: Path) -> Iterator[Runtime]:
    with Runtime(tmp_path / "store", clock=FakeClock(), default_retry=ONCE) as runtime:
        yield runtime
        report = check_store(store_of(runtime))
        assert report.ok, report.problems


class Response:
    """What a client library's cancel call returns: not plain data."""


class Booking(Agent):
    def book(self, ctx: StepContext) -> str:
        if ctx.step == "pay":
            raise Permanent("card declined")
        return ctx.step

    def cancel(self, ctx: StepContext) -> Any:
        return Response() if ctx.step == "hotel" else "x" * 2_000_000  # over the limit


class AsyncBooking(Agent):
    async def book(self, ctx: StepContext) -> str:
        return Booking.book(self, ctx)

    async def cancel(self, ctx: StepContext) -> Any:
        return Booking.cancel(self, ctx)


TRIP = (
    Workflow("trip")
    .step("flight", agent="b", action="book", compensate="cancel")
    .step("hotel", agent="b", action="book", compensate="cancel", after=["flight"])
    .step("pay", agent="b", action="book", compensate="cancel", after=["hotel"])
)


@pytest.mark.parametrize("agent", [Booking, AsyncBooking], ids=["thread", "asyncio"])
def test_a_compensation_that_returns_what_cannot_be_stored_has_still_undone_its_step(
    rt: Runtime, agent: type[Agent]
) -> None:
    # Nothing keeps a compensation's value; refusing it as unstorable parked the workflow
    # in NEEDS_ATTENTION ("compensation of step 'hotel' failed: EncodeError: result of
    # action 'cancel' cannot be stored") although the undo had run, and again at each retry.
    rt.add_agent("b", agent)
    rt.add_workflow(TRIP)
    with pytest.raises(WorkflowFailed, match="ended COMPENSATED: step 'pay' failed"):
        rt.start("trip", workflow_id="w").result(timeout=WAIT)
    steps = rt.status("w").steps
    assert [steps[s].state for s in ("flight", "hotel")] == [StepState.COMPENSATED] * 2
    assert rt.status("w").state is State.COMPENSATED


class Sticky(Agent):
    def book(self, ctx: StepContext) -> str:
        if ctx.step == "pay":
            raise Permanent("card declined")
        return ctx.step

    def cancel(self, ctx: StepContext) -> None:
        if ctx.step == "flight":
            raise RuntimeError("the airline's API is down")


def test_an_abandoned_workflow_that_had_undone_steps_does_not_say_nothing_was_undone(
    rt: Runtime,
) -> None:
    # Parked on a failed compensation after the hotel was undone, then abandoned: its
    # WorkflowFailed said "nothing was undone".
    rt.add_agent("b", Sticky)
    rt.add_workflow(TRIP)
    h = rt.start("trip", workflow_id="w")
    with pytest.raises(WorkflowFailed, match="NEEDS_ATTENTION"):
        h.result(timeout=WAIT)
    assert rt.status("w").steps["hotel"].state is StepState.COMPENSATED
    rt.abandon("w", who="ada", why="refunded by phone")
    with pytest.raises(WorkflowFailed) as failed:
        h.result(timeout=WAIT)
    assert str(failed.value).endswith(
        "ended ABANDONED: abandoned by ada: refunded by phone; "
        "nothing more was undone (1 undone before: 'hotel')"
    ), failed.value


class Branches(Agent):
    """``a`` fails (its answer lost, say) and waits for its retry; ``b``, a parallel
    branch, succeeds after that; ``c`` after ``b`` fails for good."""

    undone: list[str] = []

    def do(self, ctx: StepContext) -> str:
        if ctx.step == "a":
            raise RuntimeError("the answer was lost")
        if ctx.step == "c":
            raise Permanent("refused")
        return ctx.step

    def undo(self, ctx: StepContext) -> None:
        self.undone.append(ctx.step)


def test_a_step_waiting_for_its_retry_is_undone_in_the_order_its_attempt_completed(
    tmp_path: Path,
) -> None:
    # Given up when compensation began, the waiting step was marked done *then*, so it was
    # undone first although its attempt had ended before the parallel branch succeeded.
    later = RetryPolicy(initial_interval=100.0, max_interval=100.0, jitter=0.0)
    wf = (
        Workflow("branches")
        .step("a", agent="x", action="do", compensate="undo", retry=later)
        .step("b", agent="x", action="do", compensate="undo", delay=10.0)
        .step("c", agent="x", action="do", compensate="undo", after=["b"], retry=ONCE)
    )
    clock = FakeClock()
    with Runtime(tmp_path / "store", clock=clock) as rt:
        agent = type("B", (Branches,), {"undone": []})
        rt.add_agent("x", agent)
        rt.add_workflow(wf)
        h = rt.start("branches", workflow_id="w")
        wait_until(rt, lambda: rt.status("w").steps["a"].state is StepState.RETRY_WAIT)
        advance(rt, clock, 11.0)  # b's delay: it runs (after a's attempt ended), c fails
        with pytest.raises(WorkflowFailed, match="ended COMPENSATED: step 'c' failed"):
            h.result(timeout=WAIT)
        assert agent.undone == ["b", "a"]
        assert check_store(store_of(rt)).ok


class Parked(Branches):
    """As :class:`Branches`, with ``u``, whose call hangs and whose probe fails."""

    release = threading.Event()

    def do(self, ctx: StepContext) -> str:
        if ctx.step == "u":
            hang_until(self.release, WAIT)
            return "late"
        return super().do(ctx)

    def probe_do(self, ctx: StepContext) -> ProbeResult:
        raise RuntimeError("the partner's status API is down")


def test_a_step_cut_short_in_its_retry_wait_is_undone_in_the_order_its_attempt_completed(
    tmp_path: Path,
) -> None:
    # Parked (u's probes failed) with a waiting for its retry: a was marked done at the
    # parking, so an operator's compensate undid it before b, which succeeded after it.
    later = RetryPolicy(initial_interval=100.0, max_interval=100.0, jitter=0.0)
    wf = (
        Workflow("parked")
        .step("a", agent="x", action="do", compensate="undo", retry=later)
        .step("b", agent="x", action="do", compensate="undo", delay=2.0)
        .step("u", agent="x", action="do", timeout=5.0, retry=ONCE)
    )
    clock = FakeClock()
    agent = type("P", (Parked,), {"undone": [], "release": threading.Event()})
    try:
        with Runtime(tmp_path / "store", clock=clock) as rt:
            rt.add_agent("x", agent)
            rt.add_workflow(wf)
            h = rt.start("parked", workflow_id="w")
            wait_until(rt, lambda: rt.status("w").steps["a"].state is StepState.RETRY_WAIT)
            advance(rt, clock, 6.0)  # b runs; u lapses, its probe fails: parked
            assert rt.status("w").state is State.NEEDS_ATTENTION
            rt.compensate("w", who="ada", why="undo it all")
            with pytest.raises(WorkflowFailed, match="ended COMPENSATED"):
                h.result(timeout=WAIT)
            assert agent.undone == ["b", "a"]
            assert check_store(store_of(rt)).ok
    finally:
        agent.release.set()


class Slow(Agent):
    release = threading.Event()

    def do(self, ctx: StepContext) -> str:
        if ctx.step == "b":
            hang_until(self.release, WAIT)
        return ctx.step

    def undo(self, ctx: StepContext) -> None:
        return None


def test_a_cancelled_workflow_says_who_cancelled_it_and_why(rt: Runtime) -> None:
    # Its error said "cancelled by request" whoever gave which reason, where compensate
    # and abandon name both.
    agent = type("S", (Slow,), {"release": threading.Event()})
    rt.add_agent("x", agent)
    rt.add_workflow(
        Workflow("two")
        .step("a", agent="x", action="do", compensate="undo")
        .step("b", agent="x", action="do", compensate="undo", after=["a"])
    )
    h = rt.start("two", workflow_id="w")
    try:
        wait_until(rt, lambda: rt.status("w").steps["b"].state is StepState.DISPATCHED)
        rt.cancel("w", who="ada", why="the customer called")
    finally:
        agent.release.set()
    with pytest.raises(WorkflowFailed) as failed:
        h.result(timeout=WAIT)
    assert "ended CANCELLED: cancelled by ada: the customer called;" in str(failed.value)


@pytest.mark.timeout(60)
def test_workflow_failed_pickles_and_copies_with_its_status(rt: Runtime) -> None:
    """A WorkflowFailed sent to another process (multiprocessing, a task queue) or
    copied: pickle refused its status's read-only maps, and ``copy.copy`` called the
    class with its message where it takes the status (AttributeError)."""
    import copy
    import pickle

    class Booking(Agent):
        def book(self, ctx: StepContext) -> str:
            return "booked"

        def cancel(self, ctx: StepContext) -> None:
            pass

        def refuse(self, ctx: StepContext) -> None:
            raise Permanent("sold out")

    rt.add_agent("booking", Booking)
    rt.add_workflow(
        Workflow("trip")
        .step("hotel", agent="booking", action="book", compensate="cancel")
        .step("car", agent="booking", action="refuse", after=["hotel"])
    )
    with pytest.raises(WorkflowFailed) as caught:
        rt.start("trip", {"who": "ana"}, workflow_id="t-1").result(timeout=WAIT)
    error = caught.value
    for again in (pickle.loads(pickle.dumps(error)), copy.copy(error)):
        assert type(again) is WorkflowFailed
        assert str(again) == str(error)
        assert again.status == error.status
        assert again.status.steps["hotel"].state is StepState.COMPENSATED
        with pytest.raises(TypeError):  # (still read-only)
            again.status.steps["car"] = again.status.steps["hotel"]  # type: ignore[index]


class Refunds(Agent):
    """A payment that fails for good, and a hotel whose cancellation fails until the
    refund service is back (``fixed``)."""

    def __init__(self, fixed: threading.Event, why: str) -> None:
        self.fixed, self.why = fixed, why

    def book(self, ctx: StepContext) -> str:
        if ctx.step == "pay":
            raise Permanent(f"card declined: {self.why}")
        return ctx.step

    def cancel(self, ctx: StepContext) -> str:
        if not self.fixed.is_set():
            raise RuntimeError("refund service down")
        return "refunded"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("why", ["expired", "x" * 9000], ids=["short", "over-the-limit"])
def test_a_workflow_parked_by_a_failed_compensation_says_what_it_compensated_for(
    rt: Runtime, why: str
) -> None:
    # Its error named the compensation that failed and not the failure that turned it
    # back ("card declined"): status(), result(), the inbox, herder show and the console
    # all showed that error alone.
    fixed = threading.Event()
    rt.add_agent("b", lambda: Refunds(fixed, why))
    rt.add_workflow(TRIP)
    h = rt.start("trip", workflow_id="w")
    with pytest.raises(WorkflowFailed) as ended:
        h.result(timeout=WAIT)
    error = rt.status("w").error or ""
    assert error.startswith("compensation of step 'hotel' failed: RuntimeError: refund service")
    assert "(it was compensating because: step 'pay' failed: Permanent: card declined" in error
    assert len(error) < 9000  # (each cause bounded: the second one is still said)
    assert error in str(ended.value)
    assert [item.error for item in rt.inbox()] == [error]
    fixed.set()  # the operator retries: it compensates on, for the failure it had
    rt.retry("w")
    with pytest.raises(WorkflowFailed, match="ended COMPENSATED: step 'pay' failed: Permanent"):
        h.result(timeout=WAIT)
    assert (rt.status("w").error or "").startswith("step 'pay' failed: Permanent: card declined")


class Unbuilt(Agent):
    """An agent whose factory fails every time (its credentials are missing, say): none
    of its actions ever runs."""

    undone: list[str] = []

    def __init__(self) -> None:
        raise ValueError("no credentials for the car rental API")

    def book(self, ctx: StepContext) -> str:
        return ctx.step

    def cancel(self, ctx: StepContext) -> None:
        self.undone.append(ctx.step)


class AsyncUnbuilt(Unbuilt):
    async def book(self, ctx: StepContext) -> str:  # type: ignore[override]
        return ctx.step

    async def cancel(self, ctx: StepContext) -> None:  # type: ignore[override]
        self.undone.append(ctx.step)


class Hotel(Agent):
    undone: list[str] = []

    def book(self, ctx: StepContext) -> str:
        return ctx.step

    def cancel(self, ctx: StepContext) -> None:
        self.undone.append(ctx.step)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("host", ["pool", "thread", "asyncio"])
def test_a_step_whose_agent_never_started_is_not_undone(tmp_path: Path, host: str) -> None:
    # Every attempt of 'car' failed because its agent could not be built, so it never
    # ran; yet it was marked as may-have-taken-effect, its compensation was sent to the
    # same broken agent and failed, and the workflow parked in NEEDS_ATTENTION with the
    # hotel still booked ("compensation of step 'car' failed: ... failed to start").
    wf = (
        Workflow("trip")
        .step("hotel", agent="hotel", action="book", compensate="cancel")
        .step("car", agent="car", action="book", compensate="cancel", after=["hotel"])
    )
    clock = FakeClock()
    retry = RetryPolicy(max_attempts=2, initial_interval=1.0, jitter=0.0)
    kind = {"agent_host": "thread"} if host == "thread" else {}
    with Runtime(tmp_path / "store", clock=clock, default_retry=retry, **kind) as rt:
        hotel = type("H", (Hotel,), {"undone": []})
        car = type("C", (AsyncUnbuilt if host == "asyncio" else Unbuilt,), {"undone": []})
        rt.add_agent("hotel", hotel)
        rt.add_agent("car", car, asyncio=host == "asyncio")
        rt.add_workflow(wf)
        h = rt.start("trip", workflow_id="w")
        wait_until(rt, lambda: rt.status("w").steps["car"].attempt == 1)
        advance(rt, clock, 10.0)  # its retry fails to start too (and any undo's retries)
        with pytest.raises(WorkflowFailed, match="ended COMPENSATED: step 'car' failed: "):
            h.result(timeout=WAIT)
        steps = rt.status("w").steps
        assert steps["hotel"].state is StepState.COMPENSATED
        assert steps["car"].state is StepState.FAILED
        assert "failed to start: ValueError: no credentials" in (steps["car"].error or "")
        assert steps["car"].compensation_attempts == 0
        assert (hotel.undone, car.undone) == (["hotel"], [])
        assert check_store(store_of(rt)).ok


class Cut(Agent):
    """``b`` runs until the runtime stops under it (it may have booked meanwhile)."""

    release = threading.Event()

    def book(self, ctx: StepContext) -> str:
        if ctx.step == "b":
            hang_until(self.release, WAIT)
        return ctx.step

    def cancel(self, ctx: StepContext) -> None:
        pass


@pytest.mark.timeout(60)
@pytest.mark.parametrize("host", ["pool", "thread"])
def test_an_attempt_cut_by_a_restart_is_undone_though_its_rerun_never_started(
    tmp_path: Path, host: str
) -> None:
    # The rerun of the attempt a stop cut short fails to start (its agent's factory fails
    # after the restart): that rerun took no effect, but the attempt before it may have,
    # so its step is still to be undone (here by the same broken agent: it parks).
    wf = (
        Workflow("trip")
        .step("a", agent="x", action="book", compensate="cancel")
        .step("b", agent="x", action="book", compensate="cancel", after=["a"])
    )
    kind = {"agent_host": "thread"} if host == "thread" else {}
    once = RetryPolicy(max_attempts=1)
    cut = type("K", (Cut,), {"release": threading.Event()})
    try:
        with Runtime(tmp_path / "store", default_retry=once, instance_shutdown=0.0, **kind) as rt:
            rt.add_agent("x", cut)
            rt.add_workflow(wf)
            rt.start("trip", workflow_id="w")
            wait_until(rt, lambda: rt.status("w").steps["b"].state is StepState.DISPATCHED)
    finally:
        cut.release.set()
    with Runtime(tmp_path / "store", default_retry=once, **kind) as rt:
        rt.add_agent("x", Unbuilt)
        rt.add_workflow(wf)
        with pytest.raises(WorkflowFailed, match="NEEDS_ATTENTION: compensation of step 'b'"):
            rt.handle("w").result(timeout=WAIT)
        assert rt.status("w").steps["b"].state is StepState.COMPENSATING


class Declined(Hotel):
    def pay(self, ctx: StepContext) -> str:
        raise Permanent("card declined")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("host", ["pool", "thread", "asyncio"])
def test_a_step_waiting_to_retry_a_start_that_failed_is_not_undone(
    tmp_path: Path, host: str
) -> None:
    # 'car' waits to retry after its agent failed to start (it never ran) when 'pay', a
    # parallel branch, fails for good: given up then, it was undone all the same (its
    # compensation went to the broken agent, and the workflow parked).
    later = RetryPolicy(max_attempts=3, initial_interval=100.0, max_interval=100.0, jitter=0.0)
    wf = (
        Workflow("trip")
        .step("hotel", agent="hotel", action="book", compensate="cancel")
        .step("car", agent="car", action="book", compensate="cancel", after=["hotel"], retry=later)
        .step("pay", agent="hotel", action="pay", after=["hotel"], delay=1.0, retry=ONCE)
    )
    clock = FakeClock()
    kind = {"agent_host": "thread"} if host == "thread" else {}
    with Runtime(tmp_path / "store", clock=clock, **kind) as rt:
        hotel = type("D", (Declined,), {"undone": []})
        car = type("C", (AsyncUnbuilt if host == "asyncio" else Unbuilt,), {"undone": []})
        rt.add_agent("hotel", hotel)
        rt.add_agent("car", car, asyncio=host == "asyncio")
        rt.add_workflow(wf)
        h = rt.start("trip", workflow_id="w")
        wait_until(rt, lambda: rt.status("w").steps["car"].state is StepState.RETRY_WAIT)
        advance(rt, clock, 2.0)  # pay runs and fails for good
        steps = rt.status("w").steps
        assert steps["car"].state is StepState.FAILED
        assert steps["car"].compensation_attempts == 0
        with pytest.raises(WorkflowFailed, match="ended COMPENSATED: step 'pay' failed: "):
            h.result(timeout=WAIT)
        assert hotel.undone == ["hotel"]
        assert check_store(store_of(rt)).ok


class Unsure(Hotel):
    """``u`` hangs and its probe fails: its workflow parks."""

    release = threading.Event()

    def call(self, ctx: StepContext) -> str:
        hang_until(self.release, WAIT)
        return "late"

    def probe_call(self, ctx: StepContext) -> ProbeResult:
        raise RuntimeError("the partner's status API is down")


@pytest.mark.timeout(60)
def test_a_step_waiting_to_retry_a_start_that_failed_when_its_workflow_parks_is_not_undone(
    tmp_path: Path,
) -> None:
    # Cut short by the parking, 'car' (whose agent never started) was marked as may have
    # taken effect: the operator's compensate sent its undo to the broken agent.
    later = RetryPolicy(max_attempts=3, initial_interval=100.0, max_interval=100.0, jitter=0.0)
    wf = (
        Workflow("trip")
        .step("hotel", agent="hotel", action="book", compensate="cancel")
        .step("car", agent="car", action="book", compensate="cancel", after=["hotel"], retry=later)
        .step("u", agent="hotel", action="call", after=["hotel"], timeout=5.0, retry=ONCE)
    )
    clock = FakeClock()
    hotel = type("U", (Unsure,), {"undone": [], "release": threading.Event()})
    try:
        with Runtime(tmp_path / "store", clock=clock, agent_host="thread") as rt:
            rt.add_agent("hotel", hotel, concurrency=2)
            rt.add_agent("car", type("C", (Unbuilt,), {"undone": []}))
            rt.add_workflow(wf)
            h = rt.start("trip", workflow_id="w")
            wait_until(rt, lambda: rt.status("w").steps["car"].state is StepState.RETRY_WAIT)
            advance(rt, clock, 6.0)  # u lapses, its probe fails: parked
            assert rt.status("w").state is State.NEEDS_ATTENTION
            rt.compensate("w", who="ada", why="undo it all")
            settle(rt)
            assert rt.status("w").steps["car"].compensation_attempts == 0
            with pytest.raises(WorkflowFailed, match="ended COMPENSATED"):
                h.result(timeout=WAIT)
            hotel.release.set()
            assert hotel.undone == ["hotel"]
            assert check_store(store_of(rt)).ok
    finally:
        hotel.release.set()


class Blip(Agent):
    """An agent whose factory fails while its config service is ``down``."""

    down = threading.Event()

    def __init__(self) -> None:
        if self.down.is_set():
            raise ConnectionError("the config service is down for a moment")

    def book(self, ctx: StepContext) -> str:
        return "booked"


class AsyncBlip(Blip):
    async def book(self, ctx: StepContext) -> str:  # type: ignore[override]
        return "booked"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("host", ["pool", "thread", "asyncio"])
def test_an_agent_that_fails_to_start_for_a_moment_is_retried_after_the_backoff(
    tmp_path: Path, host: str
) -> None:
    # On the pool host (the default) an attempt whose agent could not be built was
    # retried at once, so a factory failing for a moment spent every attempt of the step
    # within milliseconds, whatever its retry policy said; the other hosts wait it out.
    clock = FakeClock()
    retry = RetryPolicy(max_attempts=3, initial_interval=5.0, jitter=0.0)
    kind = {"agent_host": "thread"} if host == "thread" else {}
    blip = type("B", (AsyncBlip if host == "asyncio" else Blip,), {"down": threading.Event()})
    blip.down.set()
    with Runtime(tmp_path / "store", clock=clock, default_retry=retry, **kind) as rt:
        rt.add_agent("car", blip, asyncio=host == "asyncio")
        rt.add_workflow(Workflow("one").step("car", agent="car", action="book"))
        h = rt.start("one", workflow_id="w")
        wait_until(rt, lambda: rt.status("w").steps["car"].state is StepState.RETRY_WAIT)
        settle(rt)
        car = rt.status("w").steps["car"]
        assert (car.state, car.attempt) == (StepState.RETRY_WAIT, 1)
        assert car.waits_until == pytest.approx(clock.time() + 5.0, abs=0.01)
        blip.down.clear()
        advance(rt, clock, 5.1)
        assert h.result(timeout=WAIT) == {"car": "booked"}


class Mailer(Hotel):
    def mail(self, ctx: StepContext) -> str:
        return "sent"

    def pay(self, ctx: StepContext) -> str:
        raise Permanent("card declined")


def test_a_compensated_workflow_names_the_completed_steps_it_could_not_undo(rt: Runtime) -> None:
    # A step without a compensation stays SUCCEEDED when its workflow compensates; yet
    # result() said "its completed steps were compensated", as if the mail was unsent.
    rt.add_agent("x", type("M", (Mailer,), {"undone": []}))
    rt.add_workflow(
        Workflow("trip")
        .step("mail", agent="x", action="mail")
        .step("hotel", agent="x", action="book", compensate="cancel", after=["mail"])
        .step("pay", agent="x", action="pay", after=["hotel"])
    )
    with pytest.raises(WorkflowFailed) as failed:
        rt.start("trip", workflow_id="w").result(timeout=WAIT)
    assert str(failed.value) == (
        "workflow 'w' ended COMPENSATED: step 'pay' failed: Permanent: card declined; its "
        "completed steps were compensated, but for 'mail' (no compensation: still done)"
    )
    assert failed.value.status.steps["mail"].state is StepState.SUCCEEDED
