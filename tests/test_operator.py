"""The operator's inbox and actions (retry, skip, compensate, abandon), each in history."""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from herder.runtime import (
    Agent,
    CompletionRefused,
    InvalidInput,
    InvalidState,
    RetryPolicy,
    Runtime,
    State,
    StepContext,
    StepState,
    UnknownWorkflow,
    Workflow,
    WorkflowFailed,
)
from herder.runtime._check import check_store
from herder.runtime.testing import EffectLedger, FakeClock, advance, settle, wait_until

WAIT = 10.0
ONCE = RetryPolicy(max_attempts=1)


@pytest.fixture
def rt(tmp_path: Path) -> Iterator[Runtime]:
    with Runtime(tmp_path / "store", clock=FakeClock(), default_retry=ONCE) as runtime:
        yield runtime
        settle(runtime)
        report = check_store(runtime._store)  # the store's invariants hold afterwards
        assert report.ok, report.problems


class Travel(Agent):
    """Books and cancels against a ledger; ``broken`` lists what fails for good."""

    ledger = EffectLedger()
    broken: set[str] = set()
    handed: list[str] = []

    def book(self, ctx: StepContext) -> Any:
        if ctx.step in self.broken:
            raise RuntimeError(f"{ctx.step} is sold out")
        if ctx.step == "later":
            self.handed.append(ctx.task_token)
            return ctx.complete_later()
        return self.ledger.apply(ctx.idempotency_key, {"booked": ctx.step})

    def cancel(self, ctx: StepContext) -> None:
        if f"undo:{ctx.step}" in self.broken:
            raise RuntimeError(f"cannot cancel {ctx.step}")
        self.ledger.undo(ctx.idempotency_key.removesuffix("/compensate"))


def agent(broken: set[str]) -> type[Travel]:
    return type("T", (Travel,), {"ledger": EffectLedger(), "broken": broken, "handed": []})


def trip(*steps: str) -> Workflow:
    wf = Workflow("trip")
    for i, name in enumerate(steps):
        after = [steps[i - 1]] if i else []
        wf = wf.step(name, agent="t", action="book", compensate="cancel", after=after)
    return wf


def parked(rt: Runtime, broken: set[str], *steps: str) -> type[Travel]:
    """A workflow ``w`` parked in NEEDS_ATTENTION because a compensation failed."""
    cls = agent(broken)
    rt.add_agent("t", cls)
    rt.add_workflow(trip(*steps))
    with pytest.raises(WorkflowFailed):
        rt.start("trip", workflow_id="w").result(timeout=WAIT)
    assert rt.status("w").state is State.NEEDS_ATTENTION
    return cls


def operator_events(rt: Runtime, workflow_id: str) -> list[tuple[str, str | None, str | None]]:
    return [
        (e["action"], e["who"], e["why"])
        for e in rt.history(workflow_id)
        if e["kind"] == "operator"
    ]


def test_the_inbox_lists_a_parked_workflow_with_the_step_that_needs_a_decision(
    rt: Runtime,
) -> None:
    parked(rt, {"car", "undo:hotel"}, "flight", "hotel", "car")
    [item] = rt.inbox()
    assert (item.id, item.step, item.step_state) == ("w", "hotel", StepState.COMPENSATING)
    assert item.attempts == 1
    assert "cannot cancel hotel" in (item.step_error or "")
    assert "compensation of step 'hotel' failed" in (item.error or "")
    assert item.to_dict()["step_state"] == "COMPENSATING"


def test_skip_marks_a_failed_compensation_done_and_the_rest_is_undone(rt: Runtime) -> None:
    cls = parked(rt, {"car", "undo:hotel"}, "flight", "hotel", "car")
    rt.skip("w", who="ada", why="refunded the hotel by phone")
    wait_until(rt, lambda: rt.status("w").state.is_final)
    status = rt.status("w")
    assert status.state is State.COMPENSATED
    assert status.steps["hotel"].state is StepState.COMPENSATED
    assert cls.ledger.undone == ["w/flight"]  # the hotel was handled by hand
    assert operator_events(rt, "w") == [("skip", "ada", "refunded the hotel by phone")]
    assert rt.inbox() == []
    # The whole story, in order: the hotel's failed undo, the skip, the flight's undo.
    story = [(e["kind"], e.get("step"), e.get("to") or e.get("action")) for e in rt.history("w")]
    skipped = story.index(("operator", "hotel", "skip"))  # (the step it took, named)
    assert story.index(("step", "hotel", "COMPENSATING")) < skipped
    assert skipped < story.index(("step", "flight", "COMPENSATED"))
    assert story[-1] == ("workflow", None, "COMPENSATED")
    # It compensated because the car failed: the hotel's failed undo is in its history.
    assert status.error == "step 'car' failed: RuntimeError: car is sold out"
    with pytest.raises(
        WorkflowFailed, match=r"COMPENSATED: step .car. failed: RuntimeError: car is"
    ):
        rt.handle("w").result(timeout=WAIT)


def test_skip_of_a_failed_compensation_refuses_a_result_it_would_not_keep(rt: Runtime) -> None:
    # The result was accepted and kept in the history ("result": {...}) as if recorded,
    # but a skipped compensation keeps the step's own result: it was silently dropped.
    parked(rt, {"car", "undo:hotel"}, "flight", "hotel", "car")
    for step in ("hotel", None):
        with pytest.raises(InvalidState, match=r"skip it with no result") as refused:
            rt.skip("w", step, {"id": "refund-7"}, who="ada", why="refunded by phone")
        assert "step 'hotel' of workflow 'w' is a compensation that failed" in str(refused.value)
    assert operator_events(rt, "w") == []  # nothing of it was recorded
    assert rt.status("w").state is State.NEEDS_ATTENTION
    rt.skip("w", who="ada", why="refunded by phone")
    wait_until(rt, lambda: rt.status("w").state.is_final)
    assert rt.status("w").steps["hotel"].result == {"booked": "hotel"}


def test_skip_refuses_a_compensation_that_is_still_running(rt: Runtime) -> None:
    # Skipped while its undo still ran, the hotel counted as undone and the flight was
    # undone beside it, out of order; the workflow ended COMPENSATED with the hotel's
    # undo still running (the workflow review, session 14).
    started, release = threading.Event(), threading.Event()
    order: list[str] = []

    class Slow(Travel):
        def cancel(self, ctx: StepContext) -> None:
            if ctx.step == "hotel":
                started.set()
                release.wait(WAIT)
            order.append(ctx.step)

    rt.add_agent("t", type("S", (Slow,), {"ledger": EffectLedger(), "broken": {"car"}}))
    rt.add_workflow(trip("flight", "hotel", "car"))
    handle = rt.start("trip", workflow_id="w")
    assert started.wait(WAIT)
    for step in ("hotel", None):
        with pytest.raises(InvalidState, match=r"compensation of step 'hotel' .* is running"):
            rt.skip("w", step, who="ada", why="did it by hand")
    release.set()
    with pytest.raises(WorkflowFailed):
        handle.result(timeout=WAIT)
    assert order == ["car", "hotel", "flight"]  # (the car failed otherwise than Permanent)
    assert operator_events(rt, "w") == []


def test_abandon_while_a_compensation_runs_says_the_step_may_have_been_undone(
    rt: Runtime,
) -> None:
    # The step stayed COMPENSATING with no error in the ABANDONED workflow, as if its undo
    # were still under way, and its answer (fenced out) never changed that: herder show
    # could not tell whether the hotel had been refunded.
    started, release = threading.Event(), threading.Event()

    class Slow(Travel):
        def cancel(self, ctx: StepContext) -> None:
            if ctx.step == "hotel":
                started.set()
                release.wait(WAIT)

    rt.add_agent("t", type("S", (Slow,), {"ledger": EffectLedger(), "broken": {"car"}}))
    rt.add_workflow(trip("flight", "hotel", "car"))
    handle = rt.start("trip", workflow_id="w")
    assert started.wait(WAIT)
    rt.abandon("w", who="bob", why="refunds done by support")
    release.set()
    with pytest.raises(WorkflowFailed, match="ABANDONED: abandoned by bob"):
        handle.result(timeout=WAIT)
    settle(rt)
    hotel = rt.status("w").steps["hotel"]
    assert hotel.state is StepState.COMPENSATING  # (not FAILED: its action succeeded)
    assert hotel.error == "abandoned while its compensation ran: it may have been undone"


def test_retry_runs_the_failed_compensation_again_and_records_who_and_why(
    rt: Runtime,
) -> None:
    broken = {"car", "undo:hotel"}
    cls = parked(rt, broken, "flight", "hotel", "car")
    assert "compensation of step 'hotel' failed" in (rt.status("w").error or "")
    broken.discard("undo:hotel")  # the hotel's API is back
    rt.retry("w", who="bob", why="hotel API fixed")
    with pytest.raises(WorkflowFailed, match=r"ended COMPENSATED: step 'car' failed"):
        rt.handle("w").result(timeout=WAIT)
    assert rt.status("w").state is State.COMPENSATED
    assert cls.ledger.undone == ["w/hotel", "w/flight"]
    assert operator_events(rt, "w") == [("retry", "bob", "hotel API fixed")]


PARKED_CANCEL = "cancel does not apply to a parked workflow: compensate undoes its completed"


def test_cancel_of_a_parked_workflow_is_refused_saying_what_applies_instead(
    rt: Runtime,
) -> None:
    parked(rt, {"car", "undo:hotel"}, "flight", "hotel", "car")
    before = rt.history("w")
    with pytest.raises(InvalidState, match=PARKED_CANCEL):  # "applies to an unfinished" before
        rt.cancel("w", who="ada", why="x")
    assert rt.history("w") == before


def test_the_cli_refuses_to_queue_a_cancel_of_a_parked_workflow(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from herder.runtime._cli import main as cli
    from herder.store import Store
    from herder.store._commands import pending_commands

    path = tmp_path / "parked"
    with Runtime(path, clock=FakeClock(), default_retry=ONCE) as runtime:
        parked(runtime, {"car", "undo:hotel"}, "flight", "hotel", "car")
    # With no runtime it was queued (exit 3), though it could only ever be refused.
    assert cli(["cancel", "w", "--store", str(path), "--why", "x"]) == 1
    assert PARKED_CANCEL in capsys.readouterr().err
    with Store(path, readonly=True) as store:
        assert pending_commands(store) == []


def test_abandon_ends_a_parked_workflow_without_running_or_undoing_anything(
    rt: Runtime,
) -> None:
    cls = parked(rt, {"car", "undo:hotel"}, "flight", "hotel", "car")
    undone = list(cls.ledger.undone)
    rt.abandon("w", who="ada", why="customer refunded in full")
    settle(rt)
    status = rt.status("w")
    assert status.state is State.ABANDONED
    assert status.error == "abandoned by ada: customer refunded in full"
    assert cls.ledger.undone == undone
    assert operator_events(rt, "w") == [("abandon", "ada", "customer refunded in full")]
    assert rt.history("w")[-1]["to"] == "ABANDONED"
    # (car failed, not Permanent: it was undone before the hotel's undo failed)
    with pytest.raises(WorkflowFailed, match=r"ABANDONED.*nothing more was undone .*'car'\)$"):
        rt.handle("w").result(timeout=WAIT)
    with pytest.raises(InvalidState, match="ABANDONED"):
        rt.retry("w")


def test_skip_completes_a_waiting_step_of_a_running_workflow_by_hand(rt: Runtime) -> None:
    cls = agent(set())
    rt.add_agent("t", cls)
    rt.add_workflow(trip("flight", "later", "car"))
    h = rt.start("trip", workflow_id="w")
    wait_until(rt, lambda: rt.status("w").steps["later"].state is StepState.WAITING)
    rt.skip("w", "later", {"booked": "by hand"}, who="ada", why="the partner emailed")
    assert h.result(timeout=WAIT)["later"] == {"booked": "by hand"}
    with pytest.raises(CompletionRefused):
        rt.complete_step(cls.handed[0], {"booked": "webhook"})


def test_compensate_undoes_a_running_workflow_and_gives_up_its_waiting_step(
    rt: Runtime,
) -> None:
    cls = agent(set())
    rt.add_agent("t", cls)
    rt.add_workflow(trip("flight", "later", "car"))
    h = rt.start("trip", workflow_id="w")
    wait_until(rt, lambda: rt.status("w").steps["later"].state is StepState.WAITING)
    rt.compensate("w", who="ada", why="customer changed plans")
    with pytest.raises(WorkflowFailed):
        h.result(timeout=WAIT)
    status = rt.status("w")
    assert status.state is State.COMPENSATED
    assert [status.steps[s].state for s in ("flight", "later", "car")] == [
        StepState.COMPENSATED,
        StepState.FAILED,
        StepState.PENDING,
    ]
    assert cls.ledger.undone == ["w/flight"]
    assert "customer changed plans" in (status.error or "")
    with pytest.raises(CompletionRefused):
        rt.complete_step(cls.handed[0], "too late")


def test_compensate_of_a_cancelled_workflow_parked_on_a_failed_undo_ends_cancelled(
    rt: Runtime,
) -> None:
    # The docs said compensate ends a workflow COMPENSATED: one a cancel had turned back
    # ends CANCELLED, as its caller asked (docs/operator.md now says so).
    cls = agent({"undo:flight"})
    rt.add_agent("t", cls)
    rt.add_workflow(trip("flight", "later"))
    h = rt.start("trip", workflow_id="w")
    wait_until(rt, lambda: rt.status("w").steps["later"].state is StepState.WAITING)
    rt.cancel("w", who="bob", why="customer called")
    rt.complete_step(cls.handed[0], {"booked": "later"})  # (its answer, then undone)
    wait_until(rt, lambda: rt.status("w").state is State.NEEDS_ATTENTION)
    cls.broken.clear()
    rt.compensate("w", who="ada", why="undo the rest")
    with pytest.raises(WorkflowFailed, match="CANCELLED: compensation requested by ada"):
        h.result(timeout=WAIT)
    assert cls.ledger.undone == ["w/flight"]  # (the later one never booked by the ledger)


def test_operator_actions_that_do_not_apply_are_refused_and_change_nothing(
    rt: Runtime,
) -> None:
    cls = agent(set())
    rt.add_agent("t", cls)
    rt.add_workflow(trip("flight"))
    rt.start("trip", workflow_id="done").result(timeout=WAIT)
    before = rt.history("done")
    with pytest.raises(InvalidState, match="SUCCEEDED"):
        rt.skip("done")
    with pytest.raises(InvalidState, match="NEEDS_ATTENTION"):
        rt.retry("done")
    with pytest.raises(InvalidState):
        rt.abandon("done")
    with pytest.raises(UnknownWorkflow):
        rt.compensate("nope")
    for step in (["flight"], {"flight": 1}, 5):  # a TypeError in the Scheduler before
        with pytest.raises(InvalidInput, match="step must be a step name"):
            rt.skip("done", step=step)  # type: ignore[arg-type]
    assert rt.history("done") == before


def test_abandon_of_a_running_workflow_stops_every_unfinished_step_and_check_stays_clean(
    rt: Runtime,
) -> None:
    # "flight" waits to retry, "later" waits on a complete_later hand-off (DISPATCHED or
    # WAITING), "car" is still PENDING: abandon must leave none of them waiting for a
    # timer that is gone (issue 14, defect 4).
    cls = agent({"flight"})
    rt.add_agent("t", cls)
    slow = RetryPolicy(max_attempts=5, initial_interval=60.0)
    rt.add_workflow(
        Workflow("pair")
        .step("flight", agent="t", action="book", retry=slow)
        .step("later", agent="t", action="book")
        .step("car", agent="t", action="book", after=["flight"])
    )
    rt.start("pair", workflow_id="w")
    wait_until(
        rt,
        lambda: (
            [rt.status("w").steps[s].state for s in ("flight", "later")]
            == [StepState.RETRY_WAIT, StepState.WAITING]
        ),
    )
    rt.abandon("w", who="ada", why="customer gave up")
    settle(rt)
    status = rt.status("w")
    assert status.state is State.ABANDONED
    assert {n: s.state for n, s in status.steps.items()} == {
        "flight": StepState.FAILED,
        "later": StepState.FAILED,
        "car": StepState.PENDING,
    }
    assert "abandoned" in (status.steps["later"].error or "")
    report = check_store(rt._store)
    assert report.ok, report.problems
    with pytest.raises(CompletionRefused):
        rt.complete_step(cls.handed[0], "too late")


class Stuck(Agent):
    """w1's action hangs until the test ends (it ignores ``ctx.superseded``)."""

    hung = threading.Event()
    release = threading.Event()

    def work(self, ctx: StepContext) -> int:
        if ctx.workflow_id == "w1":
            Stuck.hung.set()
            Stuck.release.wait(WAIT * 30)
        return ctx.attempt


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("host", "prefetch"), [("pool", 0), ("pool", 7), ("thread", 0)])
def test_an_abandoned_attempt_that_hangs_frees_its_instance_at_its_deadline(
    tmp_path: Path, host: str, prefetch: int
) -> None:
    """Abandoning w1 stops counting its attempt, which hangs on the agent's one instance.
    No timer of the engine watches it any more; once its deadline has passed the instance
    is replaced all the same (actors/_loose.py), and w2, which waited for it, runs."""
    Stuck.hung, Stuck.release = threading.Event(), threading.Event()
    clock = FakeClock()
    try:
        with Runtime(tmp_path / "s", clock=clock, agent_host=host, prefetch=prefetch) as rt:
            rt.add_agent("svc", Stuck, concurrency=1)
            rt.add_workflow(Workflow("one").step("a", agent="svc", action="work", timeout=10))
            assert rt.start("one", workflow_id="w0").result(timeout=WAIT) == {"a": 1}  # timed
            rt.start("one", workflow_id="w1")
            assert Stuck.hung.wait(WAIT)
            rt.abandon("w1", why="stuck")
            wait_until(rt, lambda: rt.status("w1").state is State.ABANDONED)
            w2 = rt.start("one", workflow_id="w2")  # waits for the one instance
            advance(rt, clock, 5.0)  # within w1's attempt's timeout: still held
            assert rt.status("w2").steps["a"].state is not StepState.SUCCEEDED
            advance(rt, clock, 6.0)  # past it: the next tick replaces the instance
            assert w2.result(timeout=WAIT)["a"] >= 1
    finally:
        Stuck.release.set()


class Unsure(Agent):
    """Steps named in ``lost`` hand their first attempt off and never complete it, and no
    probe can tell: they go UNKNOWN and the workflow parks. The rest answer at once."""

    def __init__(self, lost: set[str], calls: list[str]) -> None:
        self.lost, self.calls = lost, calls

    def book(self, ctx: StepContext) -> Any:
        self.calls.append(ctx.step)
        if ctx.step in self.lost and self.calls.count(ctx.step) == 1:
            return ctx.complete_later()
        return ctx.step

    def probe_book(self, ctx: StepContext) -> Any:
        raise ConnectionError("the probe cannot reach the service")


def parked_on(tmp_path: Path, clock: FakeClock, flow: Workflow, lost: set[str]) -> Runtime:
    """A runtime whose workflow w1 of ``flow`` parked with the steps ``lost`` UNKNOWN."""
    calls: list[str] = []
    rt = Runtime(tmp_path / "s", clock=clock, probe_timeout=5.0)
    rt.add_agent("x", functools.partial(Unsure, lost, calls), concurrency=2)
    rt.add_workflow(flow)
    rt.start(flow.name, workflow_id="w1")
    for name in lost:
        wait_until(rt, lambda name=name: rt.status("w1").steps[name].state is StepState.WAITING)
    advance(rt, clock, 30.0)  # they lapse, their probes fail: parked
    wait_until(rt, lambda: rt.status("w1").state is State.NEEDS_ATTENTION)
    return rt


ONCE = RetryPolicy(max_attempts=1)


def test_a_skip_naming_no_step_takes_the_one_the_inbox_shows(tmp_path: Path) -> None:
    # It took the first skippable step in plan order, here notify (PENDING, waiting for
    # b): notify was recorded done with b's result, and b stayed UNKNOWN with nothing to
    # wake it, the workflow RUNNING for good.
    flow = (
        Workflow("w")
        .step("notify", agent="x", action="book", after=["b"])
        .step("a", agent="x", action="book")
        .step("b", agent="x", action="book", after=["a"], timeout=10.0, retry=ONCE)
    )
    clock = FakeClock()
    with parked_on(tmp_path, clock, flow, {"b"}) as rt:
        [item] = rt.inbox()
        assert item.step == "b"
        rt.skip("w1", result="booked by phone", who="op", why="done by hand")
        assert rt.handle("w1").result(timeout=WAIT) == {
            "notify": "notify",
            "a": "a",
            "b": "booked by phone",
        }
        assert check_store(rt._store).ok, check_store(rt._store).problems


def test_a_skip_leaves_a_workflow_stuck_on_another_step_parked_with_that_one(
    tmp_path: Path,
) -> None:
    # The skip set the parked workflow RUNNING, with its other UNKNOWN step left with no
    # timer: nothing would ever wake it.
    flow = (
        Workflow("w")
        .step("b", agent="x", action="book", timeout=10.0, retry=ONCE)
        .step("c", agent="x", action="book", timeout=10.0, retry=ONCE)
    )
    clock = FakeClock()
    with parked_on(tmp_path, clock, flow, {"b", "c"}) as rt:
        parked_by = rt.status("w1").error or ""
        first = "b" if parked_by.startswith("step 'b'") else "c"  # (the one that parked it)
        other = "c" if first == "b" else "b"
        rt.skip("w1", first, result=f"{first} by hand", who="op", why="done by hand")
        settle(rt)
        assert rt.status("w1").state is State.NEEDS_ATTENTION
        [item] = rt.inbox()
        assert (item.step, item.step_state) == (other, StepState.UNKNOWN)
        # Its error named the step just skipped: the inbox item contradicted itself.
        assert (item.error or "").startswith(f"step {other!r} is UNKNOWN: "), item.error
        assert check_store(rt._store).ok, check_store(rt._store).problems
        rt.skip("w1", result=f"{other} by hand", who="op", why="done by hand")
        assert rt.handle("w1").result(timeout=WAIT) == {"b": "b by hand", "c": "c by hand"}


def test_a_skip_that_leaves_a_workflow_parked_leaves_it_out_of_memory(tmp_path: Path) -> None:
    # The skip took the parked workflow back into memory before it knew the workflow
    # stayed parked: a retry was then refused for good ("is being parked; retry it then")
    # and the workflow held a slot under max_active_workflows again, so with one slot a
    # new start waited although the only other workflow was parked.
    flow = (
        Workflow("w")
        .step("b", agent="x", action="book", timeout=10.0, retry=ONCE)
        .step("c", agent="x", action="book", timeout=10.0, retry=ONCE)
    )
    clock = FakeClock()
    with Runtime(tmp_path / "s", clock=clock, probe_timeout=5.0, max_active_workflows=1) as rt:
        rt.add_agent("x", functools.partial(Unsure, {"b", "c"}, []), concurrency=2)
        rt.add_workflow(flow)
        rt.add_workflow(Workflow("one").step("a", agent="x", action="book"))
        rt.start("w", workflow_id="w1")
        waiting = {StepState.WAITING}
        wait_until(rt, lambda: {s.state for s in rt.status("w1").steps.values()} == waiting)
        advance(rt, clock, 30.0)
        wait_until(rt, lambda: rt.status("w1").state is State.NEEDS_ATTENTION)
        rt.skip("w1", "b", result="b by hand", who="op", why="done by hand")
        settle(rt)
        assert rt.status("w1").state is State.NEEDS_ATTENTION  # stuck on c too
        assert rt.start("one", workflow_id="w2", timeout=2).result(timeout=WAIT) == {"a": "a"}
        rt.retry("w1", who="op", why="c again")  # the next action the inbox asks for
        assert rt.handle("w1").result(timeout=WAIT) == {"b": "b by hand", "c": "c"}
        assert check_store(rt._store).ok, check_store(rt._store).problems


def test_skip_refuses_a_step_whose_dependency_has_not_succeeded(rt: Runtime) -> None:
    # It was accepted: "car" was recorded SUCCEEDED while "later" still waited, so a
    # compensation would have undone them in the wrong order, and herder check called the
    # store damaged ("SUCCEEDED while its dependencies ['later'] have not succeeded").
    cls = agent(set())
    rt.add_agent("t", cls)
    rt.add_workflow(trip("flight", "later", "car"))
    h = rt.start("trip", workflow_id="w")
    wait_until(rt, lambda: rt.status("w").steps["later"].state is StepState.WAITING)
    with pytest.raises(InvalidState, match="runs after 'later', which has not succeeded"):
        rt.skip("w", "car", {"booked": "by hand"}, who="ada", why="too early")
    assert rt.status("w").steps["car"].state is StepState.PENDING
    rt.skip("w", "later", {"booked": "by hand"}, who="ada", why="the partner emailed")
    assert h.result(timeout=WAIT)["car"] == {"booked": "car"}


class Hand(Agent):
    def go(self, ctx: StepContext) -> Any:
        return ctx.complete_later()


def test_a_skip_naming_no_step_of_a_running_workflow_takes_only_an_unambiguous_one(
    rt: Runtime,
) -> None:
    # It took the first of two steps under way, recorded SUCCEEDED with None, and the
    # history's operator event said step None: the operator never knew which.
    rt.add_agent("h", Hand, concurrency=2)
    flow = Workflow("par").step("x", agent="h", action="go").step("y", agent="h", action="go")
    rt.add_workflow(flow.step("z", agent="h", action="go", after=["x", "y"]))
    h = rt.start("par", workflow_id="w")
    waiting = StepState.WAITING
    wait_until(
        rt, lambda: {s.state for s in rt.status("w").steps.values()} == {waiting, State.PENDING}
    )
    with pytest.raises(InvalidState, match=r"2 steps under way \('x', 'y'\): name the step"):
        rt.skip("w", who="ada", why="which?")
    rt.skip("w", "x", 1, who="ada", why="x by hand")
    rt.skip("w", result=2, who="ada", why="the one left")  # y alone is under way
    wait_until(rt, lambda: rt.status("w").steps["z"].state is waiting)
    rt.skip("w", result=3, who="ada", why="z by hand")
    assert h.result(timeout=WAIT) == {"x": 1, "y": 2, "z": 3}
    skipped = [e["step"] for e in rt.history("w") if e["kind"] == "operator"]
    assert skipped == ["x", "y", "z"]


def test_a_skip_naming_no_step_of_a_running_workflow_with_none_under_way_is_refused(
    rt: Runtime,
) -> None:
    # With no step under way (a delayed start), it took the first step in plan order
    # that had not started and recorded it SUCCEEDED: the operator had named none.
    rt.add_agent("h", Hand, concurrency=2)
    rt.add_workflow(
        Workflow("par").step("x", agent="h", action="go").step("y", agent="h", action="go")
    )
    rt.start("par", workflow_id="w", delay=60.0)
    with pytest.raises(InvalidState, match=r"no step under way \('x', 'y' wait to start\)"):
        rt.skip("w", who="ada", why="which?")
    assert {s.state for s in rt.status("w").steps.values()} == {StepState.PENDING}
    assert operator_events(rt, "w") == []


def two_stuck() -> Workflow:
    return (
        Workflow("w")
        .step("b", agent="x", action="book", timeout=10.0, retry=ONCE)
        .step("c", agent="x", action="book", timeout=10.0, retry=ONCE)
    )


def test_two_skips_at_once_of_a_workflow_stuck_on_two_steps_never_strand_it(
    tmp_path: Path,
) -> None:
    # The second skip read the parked workflow from the store while the first one's
    # change was not durable: it saw the first step still stuck, so it left the workflow
    # parked although nothing was stuck any more. Both skips returned, the workflow stayed
    # NEEDS_ATTENTION for good with every step SUCCEEDED, and the inbox named no step.
    with parked_on(tmp_path, FakeClock(), two_stuck(), {"b", "c"}) as rt:
        gate, refused = threading.Barrier(2), {}

        def skip(step: str) -> None:
            gate.wait(WAIT)
            try:
                rt.skip("w1", step, result=f"{step} by hand", who="op", why=step)
            except InvalidState as exc:
                refused[step] = str(exc)

        threads = [threading.Thread(target=skip, args=(step,)) for step in "bc"]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(WAIT)
        settle(rt)
        if refused:  # (refused only while the other's change was on its way to disk)
            [(step, why)] = refused.items()
            assert "changed while this skip was on its way" in why
            assert [(i.step, i.step_state) for i in rt.inbox()] == [(step, StepState.UNKNOWN)]
            rt.skip("w1", step, result=f"{step} by hand", who="op", why="again")
        assert rt.handle("w1").result(timeout=WAIT) == {"b": "b by hand", "c": "c by hand"}
        assert check_store(rt._store).ok, check_store(rt._store).problems


def test_two_queued_skips_of_a_workflow_stuck_on_two_steps_both_apply(tmp_path: Path) -> None:
    # Both commands came in one sweep and the second was decided on the store as it was
    # before the first: the workflow stayed parked for good with both steps SUCCEEDED.
    from herder.store import append_command, new_command, wait_outcome

    parked_on(tmp_path, FakeClock(), two_stuck(), {"b", "c"}).stop()
    path = tmp_path / "s"
    ids = [
        append_command(path, new_command("skip", "w1", args=args, who="op", why="by hand"))
        for args in ({"step": "b", "result": "b"}, {"step": "c", "result": "c"})
    ]
    with Runtime(path, sweep_interval=0.05) as rt:
        rt.add_agent("x", functools.partial(Unsure, set(), []))
        rt.add_workflow(two_stuck())  # (the commands wait for it: both in one sweep)
        outcomes = [wait_outcome(path, i, timeout=WAIT) for i in ids]
        assert [o and o["state"] for o in outcomes] == ["DONE", "DONE"], outcomes
        assert rt.handle("w1").result(timeout=WAIT) == {"b": "b", "c": "c"}
        settle(rt)
        assert check_store(rt._store).ok, check_store(rt._store).problems


def test_a_skip_refused_while_a_cancel_waits_for_a_handed_off_step_says_how_it_ends(
    rt: Runtime,
) -> None:
    # A cancel waits for a step handed off with complete_later() before it undoes the
    # rest; a skip of that step was refused with only "skip applies to a step that has
    # not succeeded in a running or parked workflow": nothing said what ends the wait.
    cls = agent(set())
    rt.add_agent("t", cls)
    rt.add_workflow(trip("flight", "later"))
    rt.start("trip", workflow_id="w")
    wait_until(rt, lambda: rt.status("w").steps["later"].state is StepState.WAITING)
    rt.cancel("w", who="ada", why="customer called")
    assert rt.status("w").state is State.COMPENSATING
    before = rt.history("w")
    with pytest.raises(InvalidState, match="while the workflow undoes its steps") as refused:
        rt.skip("w", "later", who="ada", why="the partner did it")
    assert "the undo goes on once this step ends" in str(refused.value)
    assert "complete_step or fail_step" in str(refused.value)
    assert rt.history("w") == before  # nothing written
    rt.complete_step(cls.handed[0], {"booked": "later"})
    wait_until(rt, lambda: rt.status("w").state is State.CANCELLED)
