"""Unknown outcomes and probes, asynchronous completion, and fencing seen by the agent."""

from __future__ import annotations

import pathlib
import random
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _child_kit import Child

from herder.runtime import (
    Agent,
    CompletionRefused,
    InstanceCrash,
    InvalidInput,
    Permanent,
    ProbeResult,
    RetryPolicy,
    Runtime,
    State,
    StepContext,
    StepState,
    Workflow,
)
from herder.runtime._check import check_store
from herder.runtime.testing import EffectLedger, FakeClock, advance, settle, wait_until
from herder.store import purge

CHILD = pathlib.Path(__file__).with_name("outcomes_child.py")
WAIT = 10.0
TIMEOUT = 5.0
FAST = RetryPolicy(max_attempts=3, initial_interval=0.0, jitter=0.0)
PACED = RetryPolicy(max_attempts=3, initial_interval=1.0, backoff_coefficient=1.0, jitter=0.0)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def rt(tmp_path: Path, clock: FakeClock) -> Iterator[Runtime]:
    with Runtime(
        tmp_path / "store",
        clock=clock,
        sweep_interval=1.0,
        default_retry=FAST,
        instance_shutdown=0.1,
        probe_timeout=3.0,
    ) as runtime:
        yield runtime
        settle(runtime)
        report = check_store(runtime._store)  # the store's invariants hold afterwards
        assert report.ok, report.problems


def one_step(retry: RetryPolicy = FAST, name: str = "one") -> Workflow:
    return Workflow(name).step("pay", agent="bank", action="pay", timeout=TIMEOUT, retry=retry)


def transitions(rt: Runtime, workflow_id: str, step: str) -> list[tuple[str, str]]:
    return [
        (e["from"], e["to"])
        for e in rt.history(workflow_id)
        if e["kind"] == "step" and e["step"] == step
    ]


def probe_events(rt: Runtime, workflow_id: str) -> int:
    """Probes that did not settle the outcome (running, or the probe failed)."""
    return sum(1 for e in rt.history(workflow_id) if e["kind"] == "probe")


class Bank:
    """A fake remote service that may apply a request and then drop its reply.

    ``plan[attempt]`` says what happens to that attempt: ``"ok"`` (applied, answered),
    ``"apply-drop"`` (applied, the reply never comes back before the deadline) or
    ``"drop"`` (lost before reaching the service). Hung attempts wait on ``release``.
    """

    def __init__(self, plan: dict[int, str]) -> None:
        self.plan = plan
        self.ledger = EffectLedger()
        self.entered = threading.Event()
        self.release = threading.Event()
        self.probes: list[str] = []
        self.verdicts: list[ProbeResult | None] = []  # scripted answers, None: look it up

    def pay(self, ctx: StepContext) -> Any:
        mode = self.plan.get(ctx.attempt, "ok")
        if mode == "ok":
            return self.ledger.apply(ctx.idempotency_key, {"paid": ctx.attempt})
        if mode == "apply-drop":
            self.ledger.apply(ctx.idempotency_key, {"paid": ctx.attempt})
        self.entered.set()
        self.release.wait(WAIT)
        raise RuntimeError("the reply was lost")

    def probe(self, ctx: StepContext) -> ProbeResult:
        self.probes.append(ctx.idempotency_key)
        scripted = self.verdicts.pop(0) if self.verdicts else None
        if scripted is not None:
            return scripted
        if ctx.idempotency_key in self.ledger.effects:
            return ProbeResult.done(self.ledger.effects[ctx.idempotency_key])
        return ProbeResult.not_done()


def with_probe(bank: Bank) -> type[Agent]:
    class Probed(Agent):
        def pay(self, ctx: StepContext) -> Any:
            return bank.pay(ctx)

        def probe_pay(self, ctx: StepContext) -> ProbeResult:
            return bank.probe(ctx)

    return Probed


def without_probe(bank: Bank) -> type[Agent]:
    class Plain(Agent):
        def pay(self, ctx: StepContext) -> Any:
            return bank.pay(ctx)

    return Plain


def lapse(rt: Runtime, clock: FakeClock, bank: Bank) -> None:
    """Let attempt 1 hang, then move time past its deadline."""
    assert bank.entered.wait(WAIT)
    advance(rt, clock, TIMEOUT + 0.5)


# -- unknown outcome, then reconcile -----------------------------------------------------


def test_a_lapsed_attempt_that_was_applied_is_recorded_from_the_probe_without_a_retry(
    rt: Runtime, clock: FakeClock
) -> None:
    bank = Bank({1: "apply-drop"})
    rt.add_agent("bank", with_probe(bank))
    rt.add_workflow(one_step())
    h = rt.start("one", workflow_id="w")
    try:
        lapse(rt, clock, bank)
        assert h.result(timeout=WAIT) == {"pay": {"paid": 1}}
    finally:
        bank.release.set()
    step = rt.status("w").steps["pay"]
    assert step.attempt == 1  # never run again
    assert bank.ledger.requests["w/pay"] == 1
    assert bank.probes == ["w/pay"]
    steps = rt.stats()["steps"]
    assert (steps["unknown"], steps["probes"], steps["timed_out"]) == (1, 1, 1)
    assert transitions(rt, "w", "pay") == [
        ("PENDING", "DISPATCHED"),
        ("DISPATCHED", "UNKNOWN"),
        ("UNKNOWN", "SUCCEEDED"),
    ]


def test_a_lapsed_attempt_that_never_arrived_is_retried_after_the_probe_says_so(
    rt: Runtime, clock: FakeClock
) -> None:
    bank = Bank({1: "drop"})
    rt.add_agent("bank", with_probe(bank))
    rt.add_workflow(one_step())
    h = rt.start("one", workflow_id="w")
    try:
        lapse(rt, clock, bank)
        assert h.result(timeout=WAIT) == {"pay": {"paid": 2}}
    finally:
        bank.release.set()
    assert rt.status("w").steps["pay"].attempt == 2
    assert bank.ledger.requests["w/pay"] == 1  # only attempt 2 reached the service
    assert transitions(rt, "w", "pay") == [
        ("PENDING", "DISPATCHED"),
        ("DISPATCHED", "UNKNOWN"),
        ("UNKNOWN", "RETRY_WAIT"),
        ("RETRY_WAIT", "DISPATCHED"),
        ("DISPATCHED", "SUCCEEDED"),
    ]


def test_a_probe_saying_still_running_keeps_the_step_waiting_and_probes_again(
    rt: Runtime, clock: FakeClock
) -> None:
    bank = Bank({1: "apply-drop"})
    bank.verdicts = [ProbeResult.running()]
    rt.add_agent("bank", with_probe(bank))
    rt.add_workflow(one_step(PACED))
    rt.start("one", workflow_id="w")
    try:
        lapse(rt, clock, bank)
        wait_until(rt, lambda: probe_events(rt, "w") == 1)
        assert rt.status("w").steps["pay"].state is StepState.UNKNOWN
        advance(rt, clock, 1.5)  # PACED: the next probe 1 s later
        wait_until(rt, lambda: rt.status("w").state is State.SUCCEEDED)
    finally:
        bank.release.set()
    assert bank.probes == ["w/pay", "w/pay"]
    assert rt.status("w").steps["pay"].attempt == 1


def test_the_history_tells_a_probe_that_said_running_from_one_that_failed(
    rt: Runtime, clock: FakeClock
) -> None:
    # A "running" verdict was written to the history with the step's last error: after
    # a failed probe it read "probe failed: ..." too, a second failure that never was.
    bank = Bank({1: "apply-drop"})
    bank.verdicts = [ProbeResult.running()]  # the second probe's answer
    broke: list[bool] = []

    class Flaky(Agent):
        def pay(self, ctx: StepContext) -> Any:
            return bank.pay(ctx)

        def probe_pay(self, ctx: StepContext) -> ProbeResult:
            if not broke:
                broke.append(True)
                raise ConnectionError("lookup down")
            return bank.probe(ctx)

    rt.add_agent("bank", Flaky)
    rt.add_workflow(one_step(PACED))
    h = rt.start("one", workflow_id="w")
    try:
        lapse(rt, clock, bank)
        for n in (1, 2):
            wait_until(rt, lambda n=n: probe_events(rt, "w") == n)
            advance(rt, clock, 1.5)
        assert h.result(timeout=WAIT) == {"pay": {"paid": 1}}
    finally:
        bank.release.set()
    notes = [e["error"] for e in rt.history("w") if e["kind"] == "probe"]
    assert notes == ["probe failed: ConnectionError: lookup down", "probe: still running"]


def test_a_probe_that_beats_is_held_to_the_probe_timeout_not_the_steps_heartbeat(
    rt: Runtime, clock: FakeClock
) -> None:
    # A probe's ctx.heartbeat() put it under the step's heartbeat timeout (1 s here),
    # which probes are not subject to: it lapsed as a failed probe long before its
    # probe_timeout (3 s).
    bank = Bank({1: "apply-drop"})
    beaten, answer = threading.Event(), threading.Event()

    class Beating(Agent):
        def pay(self, ctx: StepContext) -> Any:
            return bank.pay(ctx)

        def probe_pay(self, ctx: StepContext) -> ProbeResult:
            ctx.heartbeat({"looking": True})
            beaten.set()
            assert answer.wait(WAIT)
            return bank.probe(ctx)

    rt.add_agent("bank", Beating)
    rt.add_workflow(
        Workflow("hb").step(
            "pay", agent="bank", action="pay", timeout=TIMEOUT, heartbeat_timeout=1.0, retry=PACED
        )
    )
    rt.start("hb", workflow_id="w")
    try:
        assert bank.entered.wait(WAIT)
        advance(rt, clock, 1.5)  # no beat from the attempt: it lapses, the probe runs
        assert beaten.wait(WAIT)
        settle(rt)
        token = rt.status("w").steps["pay"]
        advance(rt, clock, 1.5)  # past the heartbeat timeout, within the probe's 3 s
        assert probe_events(rt, "w") == 0
        assert rt.status("w").steps["pay"] == token  # the same probe, still UNKNOWN
        answer.set()
        wait_until(rt, lambda: rt.status("w").state is State.SUCCEEDED)
    finally:
        answer.set()
        bank.release.set()
    assert bank.probes == ["w/pay"]


def test_without_a_probe_a_lapsed_attempt_is_retried_and_the_key_absorbs_the_repeat(
    rt: Runtime, clock: FakeClock
) -> None:
    bank = Bank({1: "apply-drop"})
    rt.add_agent("bank", without_probe(bank))
    rt.add_workflow(one_step())
    h = rt.start("one", workflow_id="w")
    try:
        lapse(rt, clock, bank)
        assert h.result(timeout=WAIT) == {"pay": {"paid": 1}}  # the first effect's value
    finally:
        bank.release.set()
    assert rt.status("w").steps["pay"].attempt == 2
    assert bank.ledger.requests["w/pay"] == 2
    assert len(bank.ledger.effects) == 1
    assert "UNKNOWN" not in {to for _, to in transitions(rt, "w", "pay")}


def test_a_probe_that_keeps_failing_parks_the_workflow_for_an_operator(
    rt: Runtime, clock: FakeClock
) -> None:
    bank = Bank({1: "apply-drop"})
    bank.verdicts = [ProbeResult("nonsense")] * 5  # not a verdict the runtime knows
    rt.add_agent("bank", with_probe(bank))
    rt.add_workflow(one_step(PACED))
    rt.start("one", workflow_id="w")
    try:
        lapse(rt, clock, bank)
        for n in (1, 2):
            wait_until(rt, lambda n=n: probe_events(rt, "w") == n)
            advance(rt, clock, 1.5)
        wait_until(rt, lambda: rt.status("w").state is State.NEEDS_ATTENTION)
    finally:
        bank.release.set()
    assert len(bank.probes) == 3  # PACED.max_attempts probes failed
    [item] = rt.inbox()
    assert (item.id, item.step, item.step_state) == ("w", "pay", StepState.UNKNOWN)
    assert "must return a ProbeResult" in (item.step_error or "")
    assert "outcome unknown" in (item.error or "")


@pytest.mark.parametrize("host", ["pool", "thread"])
def test_a_probe_whose_instance_crashes_is_probed_again_never_run_blind(
    tmp_path: Path, clock: FakeClock, host: str
) -> None:
    """The outcome of attempt 1 is unknown; its probe's instance crashes. Re-running the
    action then could apply it twice: the crash counts as a failed probe and the step
    is probed again (it went back to RETRY_WAIT and ran the action as attempt 2)."""
    bank, crashes = Bank({1: "apply-drop"}), []

    class CrashingProbe(Agent):
        def pay(self, ctx: StepContext) -> Any:
            return bank.pay(ctx)

        def probe_pay(self, ctx: StepContext) -> ProbeResult:
            if not crashes:
                crashes.append(ctx.token)
                raise InstanceCrash("the probe's host went away")
            return bank.probe(ctx)

    with Runtime(
        tmp_path / "store", clock=clock, sweep_interval=1.0, default_retry=FAST,
        instance_shutdown=0.1, probe_timeout=3.0, agent_host=host,
    ) as rt:  # fmt: skip
        rt.add_agent("bank", CrashingProbe)
        rt.add_workflow(one_step())
        h = rt.start("one", workflow_id="w")
        try:
            lapse(rt, clock, bank)
            wait_until(rt, lambda: probe_events(rt, "w") == 1)  # the lost probe
            advance(rt, clock, 1.5)  # its backoff (FAST: none) and the sweep
            assert h.result(timeout=WAIT) == {"pay": {"paid": 1}}
        finally:
            bank.release.set()
        assert len(crashes) == 1
        assert bank.ledger.requests["w/pay"] == 1  # the action ran once
        assert rt.status("w").steps["pay"].attempt == 1
        assert transitions(rt, "w", "pay") == [
            ("PENDING", "DISPATCHED"),
            ("DISPATCHED", "UNKNOWN"),
            ("UNKNOWN", "SUCCEEDED"),
        ]
        [lost] = [e for e in rt.history("w") if e["kind"] == "probe"]
        assert "probe lost" in lost["error"]
        assert "went away" in lost["error"]


# -- asynchronous completion -----------------------------------------------------------------


class Handoff(Agent):
    """Hands every request to a webhook-style queue and completes later."""

    tokens: list[str]
    handed: threading.Semaphore

    def pay(self, ctx: StepContext) -> Any:
        if ctx.input and ctx.input.get("sync"):
            return {"sync": ctx.workflow_id}
        type(self).tokens.append(ctx.task_token)
        type(self).handed.release()
        return ctx.complete_later()


def handoff_agent() -> type[Handoff]:
    return type("Hook", (Handoff,), {"tokens": [], "handed": threading.Semaphore(0)})


def test_a_step_completed_later_from_another_thread_frees_its_instance_meanwhile(
    rt: Runtime,
) -> None:
    agent = handoff_agent()
    rt.add_agent("bank", agent, concurrency=1)
    rt.add_workflow(one_step())
    h = rt.start("one", workflow_id="w")
    assert agent.handed.acquire(timeout=WAIT)
    settle(rt)
    assert rt.status("w").steps["pay"].state is StepState.WAITING
    # The only instance is free again: another workflow runs while w waits.
    assert rt.start("one", {"sync": True}, workflow_id="v").result(timeout=WAIT)
    token = agent.tokens[0]
    webhook = threading.Thread(target=rt.complete_step, args=(token, {"paid": "later"}))
    webhook.start()
    webhook.join(WAIT)
    assert h.result(timeout=WAIT) == {"pay": {"paid": "later"}}
    steps = rt.stats()["steps"]
    assert (steps["handed_off"], steps["completed"]) == (1, 1)
    assert transitions(rt, "w", "pay")[-2:] == [
        ("DISPATCHED", "WAITING"),
        ("WAITING", "SUCCEEDED"),
    ]
    with pytest.raises(CompletionRefused, match="SUCCEEDED"):
        rt.complete_step(token, {"paid": "twice"})  # after the workflow finished
    assert rt.status("w").steps["pay"].result == {"paid": "later"}


def test_a_completion_of_a_workflow_deleted_since_it_finished_is_refused(
    rt: Runtime, clock: FakeClock
) -> None:
    """A webhook's duplicate that came after retention (or herder purge) had deleted the
    finished workflow raised UnknownWorkflow, where the same duplicate a moment earlier is
    refused with CompletionRefused, which a handler takes for "nothing more to do"."""
    agent = handoff_agent()
    rt.add_agent("bank", agent, concurrency=1)
    rt.add_workflow(one_step())
    h = rt.start("one", workflow_id="w")
    assert agent.handed.acquire(timeout=WAIT)
    token = agent.tokens[0]
    rt.complete_step(token, {"paid": 1})
    assert h.result(timeout=WAIT) == {"pay": {"paid": 1}}
    assert purge(rt._store, clock.time() + 86400.0) == 1
    with pytest.raises(CompletionRefused, match=r"'w' .*deleted \(retention or herder purge\)"):
        rt.complete_step(token, {"paid": "twice"})
    with pytest.raises(CompletionRefused, match="not recorded"):
        rt.fail_step(token, "declined")


def test_fail_step_refuses_an_error_that_is_no_str_or_exception(rt: Runtime) -> None:
    """``fail_step(token, 42)`` (a status code) was recorded as the error text "42", and
    ``fail_step(token, ValueError)`` as "<class 'ValueError'>", its type matching no
    ``non_retryable``: both failed the attempt. Refused, the step still waits."""
    agent = handoff_agent()
    rt.add_agent("bank", agent)
    rt.add_workflow(one_step())
    rt.start("one", workflow_id="w")
    assert agent.handed.acquire(timeout=WAIT)
    settle(rt)
    for error in (42, ValueError, None):
        with pytest.raises(InvalidInput, match="error must be a str or an exception"):
            rt.fail_step(agent.tokens[0], error)  # type: ignore[arg-type]
    settle(rt)
    step = rt.status("w").steps["pay"]
    assert (step.state, step.attempt, step.error) == (StepState.WAITING, 1, None)
    rt.complete_step(agent.tokens[0], {"paid": 1})
    assert rt.handle("w").result(timeout=WAIT) == {"pay": {"paid": 1}}


def test_fail_step_retries_and_a_completion_of_the_superseded_attempt_is_refused(
    rt: Runtime,
) -> None:
    agent = handoff_agent()
    rt.add_agent("bank", agent)
    rt.add_workflow(one_step())
    rt.start("one", workflow_id="w")
    assert agent.handed.acquire(timeout=WAIT)
    first = agent.tokens[0]
    rt.fail_step(first, RuntimeError("the bank said no"))
    assert agent.handed.acquire(timeout=WAIT)  # attempt 2 handed off in turn
    settle(rt)
    step = rt.status("w").steps["pay"]
    assert (step.state, step.attempt) == (StepState.WAITING, 2)
    with pytest.raises(CompletionRefused, match="no longer current") as refused:
        rt.complete_step(first, {"paid": "late"})
    # It failed (fail_step) and was retried: the refusal claimed it had timed out.
    assert "(it timed out and was retried)" not in str(refused.value)
    assert "a newer attempt replaced it" in str(refused.value)
    rt.complete_step(agent.tokens[1], {"paid": 2})
    assert rt.handle("w").result(timeout=WAIT) == {"pay": {"paid": 2}}


def test_a_waiting_step_times_out_and_then_its_late_completion_is_refused(
    rt: Runtime, clock: FakeClock
) -> None:
    agent = handoff_agent()
    rt.add_agent("bank", agent)
    rt.add_workflow(one_step(RetryPolicy(max_attempts=1)))
    h = rt.start("one", workflow_id="w")
    assert agent.handed.acquire(timeout=WAIT)
    settle(rt)
    advance(rt, clock, TIMEOUT + 0.5)
    wait_until(rt, lambda: rt.status("w").state.is_final)
    assert h.status().steps["pay"].state is StepState.FAILED
    with pytest.raises(CompletionRefused):
        rt.complete_step(agent.tokens[0], {"paid": "too late"})


def test_a_completion_after_the_timeout_passed_unswept_is_refused(
    tmp_path: Path, clock: FakeClock
) -> None:
    # The timeout ran out while no process ran (or no sweep had come yet): a completion
    # right after the reopen was recorded, one a moment later refused, as the sweep had
    # lapsed the attempt meanwhile (the outcomes review, session 14). The docs say the
    # old token is refused once its timeout lapsed.
    with Runtime(tmp_path / "s", clock=clock, sweep_interval=3600.0) as rt:
        agent = handoff_agent()
        rt.add_agent("bank", agent)
        rt.add_workflow(one_step())
        rt.start("one", workflow_id="w")
        assert agent.handed.acquire(timeout=WAIT)
        settle(rt)
        clock.advance(TIMEOUT + 1.0)  # no sweep comes (an hour apart)
        with pytest.raises(CompletionRefused, match=r"it timed out after 5.0s; the next sweep"):
            rt.complete_step(agent.tokens[0], {"paid": "late"})
        assert rt.status("w").steps["pay"].state is StepState.WAITING  # nothing recorded


def test_a_completion_after_the_workflow_deadline_passed_unswept_is_refused(
    tmp_path: Path, clock: FakeClock
) -> None:
    # Past its workflow's deadline a handed-off attempt is superseded (docs/workflows.md),
    # but until the sweep fired the deadline's timer (right after a reopen, say) its
    # completion was recorded: the workflow then SUCCEEDED after its deadline.
    with Runtime(tmp_path / "s", clock=clock, sweep_interval=3600.0) as rt:
        agent = handoff_agent()
        rt.add_agent("bank", agent)
        rt.add_workflow(one_step())
        rt.start("one", workflow_id="w", deadline=3.0)
        assert agent.handed.acquire(timeout=WAIT)
        settle(rt)
        clock.advance(4.0)  # past the deadline, within the step's timeout; no sweep yet
        for late in (
            lambda: rt.complete_step(agent.tokens[0], {"paid": "late"}),
            lambda: rt.fail_step(agent.tokens[0], "declined"),
        ):
            with pytest.raises(CompletionRefused, match=r"deadline passed .*compensates"):
                late()
        assert rt.status("w").steps["pay"].state is StepState.WAITING  # nothing recorded
        clock.advance(3600.0)  # the sweep: the deadline's timer fires
        settle(rt)
        assert rt.status("w").state is State.COMPENSATED


def test_a_malformed_task_token_is_refused_clearly(rt: Runtime) -> None:
    for bad in ("", "nope", "ht1.!!!", "ht1.kQ", 42):
        with pytest.raises(InvalidInput, match="task token"):
            rt.complete_step(bad, None)  # type: ignore[arg-type]


def test_a_cancel_does_not_tell_a_running_compensation_to_stop_early(rt: Runtime) -> None:
    # rt.cancel of a workflow already compensating set ctx.cancelled on its running
    # compensations too: one that stops early when cancelled, as the docs advise
    # actions to, returned without undoing and its step was recorded COMPENSATED.
    undoing, release = threading.Event(), threading.Event()
    seen: list[bool] = []

    class Undo(Agent):
        def book(self, ctx: StepContext) -> str:
            return "booked"

        def fail(self, ctx: StepContext) -> None:
            raise Permanent("no seats")

        def unbook(self, ctx: StepContext) -> None:
            undoing.set()
            assert release.wait(WAIT)
            seen.append(ctx.cancelled)

    rt.add_agent("bank", Undo)
    rt.add_workflow(
        Workflow("trip")
        .step("book", agent="bank", action="book", compensate="unbook")
        .step("fail", agent="bank", action="fail", after=["book"])
    )
    h = rt.start("trip", workflow_id="w")
    assert undoing.wait(WAIT)
    rt.cancel("w")  # while the compensation runs
    release.set()
    wait_until(rt, lambda: h.status().state.is_final)
    assert h.status().state is State.CANCELLED
    assert seen == [False]  # the undo the cancel asks for is not told to stop


def test_a_marker_returned_where_it_cannot_apply_says_what_to_return_instead(
    rt: Runtime,
) -> None:
    # The step's error read "a compensation returned 'later'; it cannot here" (and
    # "an action returned 'done'"): neither named ctx.complete_later() or ProbeResult,
    # nor what to return instead.
    class Confused(Agent):
        def pay(self, ctx: StepContext) -> object:
            return ProbeResult.done({"paid": 1})  # meant for probe_pay

        def book(self, ctx: StepContext) -> str:
            return "booked"

        def unbook(self, ctx: StepContext) -> object:
            return ctx.complete_later()  # compensations cannot wait

        def fail(self, ctx: StepContext) -> None:
            raise Permanent("no")

    rt.add_agent("bank", Confused)
    rt.add_workflow(one_step(RetryPolicy(max_attempts=1)))
    rt.add_workflow(
        Workflow("undo")
        .step("book", agent="bank", action="book", compensate="unbook")
        .step("fail", agent="bank", action="fail", after=["book"])
    )
    pay = rt.start("one", workflow_id="p")
    undo = rt.start("undo", workflow_id="u")
    wait_until(rt, lambda: pay.status().state.is_final and undo.status().state.is_final)
    assert pay.status().state is State.COMPENSATED
    error = pay.status().steps["pay"].error or ""
    assert "returned a ProbeResult (done), which only the probe probe_pay may" in error
    assert undo.status().state is State.NEEDS_ATTENTION
    error = undo.status().steps["book"].error or ""
    assert "complete_later(), which only a forward action may" in error


# -- fencing reaches the agent -----------------------------------------------------------------


def test_superseded_turns_true_when_the_supervisor_replaces_the_attempt(
    rt: Runtime, clock: FakeClock
) -> None:
    seen: list[StepContext] = []
    entered, release = threading.Event(), threading.Event()

    class Slow(Agent):
        def pay(self, ctx: StepContext) -> str:
            seen.append(ctx)
            if ctx.attempt == 1:
                entered.set()
                release.wait(WAIT)
            return f"attempt {ctx.attempt}"

    rt.add_agent("bank", Slow)
    rt.add_workflow(one_step())
    h = rt.start("one", workflow_id="w")
    try:
        assert entered.wait(WAIT)
        assert not seen[0].superseded
        advance(rt, clock, TIMEOUT + 0.5)
        assert h.result(timeout=WAIT) == {"pay": "attempt 2"}
        assert seen[0].superseded  # the hung attempt can see it should stop
        assert not seen[1].superseded
        assert seen[1].token > seen[0].token  # what a remote conditional write compares
    finally:
        release.set()


def test_cancelled_turns_true_when_the_workflow_compensates_after_a_step_failed(
    rt: Runtime,
) -> None:
    # ctx.cancelled was set only by rt.cancel/rt.compensate: a step running beside one
    # that failed for good ran on unaware that its workflow was being compensated.
    entered, saw, release = threading.Event(), threading.Event(), threading.Event()

    class Pair(Agent):
        def slow(self, ctx: StepContext) -> str:
            entered.set()
            while not release.wait(0.01):  # a long action checking between its chunks
                if ctx.cancelled:
                    saw.set()
                    break
            return "stopped early"

        def bad(self, ctx: StepContext) -> None:
            assert entered.wait(WAIT)
            raise Permanent("no such account")

        def undo(self, ctx: StepContext) -> None:
            pass

    rt.add_agent("bank", Pair, concurrency=2)
    rt.add_workflow(
        Workflow("pair")
        .step("slow", agent="bank", action="slow", compensate="undo", timeout=TIMEOUT)
        .step("bad", agent="bank", action="bad", timeout=TIMEOUT)
    )
    h = rt.start("pair", workflow_id="w")
    try:
        assert saw.wait(WAIT)  # told, as docs/outcomes.md says, so it could stop early
    finally:
        release.set()
    wait_until(rt, lambda: h.status().state.is_final)
    assert h.status().state is State.COMPENSATED


# -- durable waiting ---------------------------------------------------------------------------


def test_a_waiting_step_survives_sigkill_and_completes_after_the_restart(tmp_path: Path) -> None:
    from outcomes_child import HANDOFF, Hook

    store = tmp_path / "store"
    child = subprocess.Popen(
        [sys.executable, str(CHILD), str(store)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        line = child.stdout.readline()  # blocks until the child printed (or died)
        assert line.startswith("waiting "), (line, child.stderr and child.stderr.read())
        token = line.split()[1]
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(WAIT)
    with Runtime(store, sweep_interval=0.05) as rt:
        rt.add_agent("hook", Hook)
        rt.add_workflow(HANDOFF)
        settle(rt)
        assert rt.status("w-1").steps["pay"].state is StepState.WAITING  # still waiting
        rt.complete_step(token, {"paid": 5})
        assert rt.handle("w-1").result(timeout=WAIT) == {"pay": {"paid": 5}}
        assert Hook.calls == 0  # nothing ran the action again after the restart
        assert rt.status("w-1").steps["pay"].attempt == 1


def test_an_unknown_step_survives_sigkill_and_is_probed_again_never_run_blind(
    tmp_path: Path,
) -> None:
    """docs/recovery.md: after a crash an UNKNOWN step is probed again; its action,
    whose outcome is unknown, is not run again."""
    from outcomes_child import LAPSE

    store = tmp_path / "store"
    child = Child([str(CHILD), str(store), "unknown"], label="unknown")
    try:
        child.wait_for("probing", WAIT)  # the step is durably UNKNOWN, its probe hangs
    finally:
        child.kill(WAIT)
    calls: list[str] = []

    class Found(Agent):
        def pay(self, ctx: StepContext) -> str:
            calls.append("pay")
            return "paid again"

        def probe_pay(self, ctx: StepContext) -> ProbeResult:
            calls.append(f"probe {ctx.attempt}")
            return ProbeResult.done({"found": ctx.idempotency_key})

    with Runtime(store, sweep_interval=0.05) as rt:
        assert rt.status("w-1").steps["pay"].state is StepState.UNKNOWN
        rt.add_agent("bank", Found)
        rt.add_workflow(LAPSE)
        assert rt.handle("w-1").result(timeout=WAIT) == {"pay": {"found": "w-1/pay"}}
        assert calls == ["probe 1"]  # probed once more, the action never run again
        assert transitions(rt, "w-1", "pay") == [
            ("PENDING", "DISPATCHED"),
            ("DISPATCHED", "UNKNOWN"),
            ("UNKNOWN", "SUCCEEDED"),
        ]


def test_a_service_that_drops_replies_at_random_applies_each_request_exactly_once(
    rt: Runtime, clock: FakeClock
) -> None:
    rng = random.Random(9)
    fates = {f"w{n}": rng.choice(["ok", "apply-drop", "drop"]) for n in range(12)}
    ledger = EffectLedger()
    hung = threading.Semaphore(0)
    release = threading.Event()

    class Flaky(Agent):
        """Attempt 1 meets its workflow's fate; later attempts are answered."""

        def pay(self, ctx: StepContext) -> Any:
            fate = fates[ctx.workflow_id] if ctx.attempt == 1 else "ok"
            if fate != "drop":
                value = ledger.apply(ctx.idempotency_key, {"paid": ctx.attempt})
            if fate == "ok":
                return value
            hung.release()
            release.wait(WAIT)
            raise RuntimeError("the reply was lost")

        def probe_pay(self, ctx: StepContext) -> ProbeResult:
            if ctx.idempotency_key in ledger.effects:
                return ProbeResult.done(ledger.effects[ctx.idempotency_key])
            return ProbeResult.not_done()

    rt.add_agent("bank", Flaky, concurrency=len(fates))  # every hung attempt at once
    rt.add_workflow(one_step())
    handles = [rt.start("one", workflow_id=wid) for wid in fates]
    try:
        for _ in range(sum(1 for f in fates.values() if f != "ok")):
            assert hung.acquire(timeout=WAIT)
        advance(rt, clock, TIMEOUT + 0.5)
        results = {h.id: h.result(timeout=WAIT)["pay"] for h in handles}
    finally:
        release.set()
    assert len(ledger.effects) == len(fates)  # every payment happened, none twice
    for wid, fate in fates.items():
        attempts = rt.status(wid).steps["pay"].attempt
        assert attempts == (2 if fate == "drop" else 1), (wid, rt.history(wid))
        assert results[wid] == {"paid": attempts}
        assert ledger.requests[f"{wid}/pay"] == 1
    assert set(fates.values()) == {"ok", "apply-drop", "drop"}


def test_a_parked_unknown_step_is_run_again_from_attempt_one_by_an_operator_retry(
    rt: Runtime, clock: FakeClock
) -> None:
    bank = Bank({1: "drop"})
    bank.verdicts = [ProbeResult("nonsense")]  # one failed probe parks it (max_attempts=1)
    rt.add_agent("bank", with_probe(bank))
    rt.add_workflow(one_step(RetryPolicy(max_attempts=1)))
    h = rt.start("one", workflow_id="w")
    try:
        lapse(rt, clock, bank)
        wait_until(rt, lambda: rt.status("w").state is State.NEEDS_ATTENTION)
    finally:
        bank.release.set()
    assert rt.status("w").steps["pay"].state is StepState.UNKNOWN
    bank.plan = {}  # the bank is healthy again
    rt.retry("w", who="ops", why="bank fixed")
    assert h.result(timeout=WAIT) == {"pay": {"paid": 1}}  # attempt 1 again, same key
    assert bank.ledger.requests["w/pay"] == 1


def test_a_handed_off_step_that_lapses_is_probed_like_any_attempt(
    rt: Runtime, clock: FakeClock
) -> None:
    ledger = EffectLedger()

    class Hooked(Agent):
        def pay(self, ctx: StepContext) -> Any:
            ledger.apply(ctx.idempotency_key, {"paid": "by partner"})  # webhook never comes
            return ctx.complete_later()

        def probe_pay(self, ctx: StepContext) -> ProbeResult:
            return ProbeResult.done(ledger.effects.get(ctx.idempotency_key))

    rt.add_agent("bank", Hooked)
    rt.add_workflow(one_step())
    h = rt.start("one", workflow_id="w")
    wait_until(rt, lambda: rt.status("w").steps["pay"].state is StepState.WAITING)
    advance(rt, clock, TIMEOUT + 0.5)
    assert h.result(timeout=WAIT) == {"pay": {"paid": "by partner"}}
    assert transitions(rt, "w", "pay")[1:] == [
        ("DISPATCHED", "WAITING"),
        ("WAITING", "UNKNOWN"),
        ("UNKNOWN", "SUCCEEDED"),
    ]


def test_a_completion_repeated_while_the_workflow_ends_is_refused_once_the_end_is_durable(
    tmp_path: Path,
) -> None:
    # A webhook delivered twice: the first completion finishes the workflow, and the second
    # reaches the Scheduler while that end is still on its way to disk. It was refused with
    # InvalidState "awaits its definition ...; register it" (the store still said RUNNING),
    # which `except CompletionRefused` does not catch (the operator review, D2).
    from _ending import completing_while_held, waiting_workflow

    from herder.actors import call

    with Runtime(tmp_path / "store", clock=FakeClock()) as rt:
        tokens = waiting_workflow(rt)
        held, first = completing_while_held(rt, tokens[0])
        # The Scheduler has taken the repeat once this returns its (unresolved) answer.
        again = call(rt._scheduler, "complete", rt._completion(tokens[0], "done"))
        assert not again.done()  # refused only once the end is durable
        held.release.set()
        first.join(WAIT)
        with pytest.raises(CompletionRefused, match="has just finished"):
            again.result(timeout=WAIT)
        assert rt.handle("w").result(timeout=WAIT) == {"a": "done"}


def test_a_task_token_naming_a_step_the_workflow_lacks_is_refused_as_not_its_own(
    tmp_path: Path,
) -> None:
    from herder.actors._outcomes import parse_task_token, task_token

    tokens: list[str] = []

    class Later(Agent):
        def run(self, ctx: StepContext) -> object:
            tokens.append(ctx.task_token)
            return ctx.complete_later()

    with Runtime(tmp_path / "store") as rt:
        rt.add_agent("svc", Later)
        rt.add_workflow(Workflow("one").step("a", agent="svc", action="run"))
        rt.start("one", workflow_id="w")
        wait_until(rt, lambda: rt.status("w").steps["a"].state is StepState.WAITING, WAIT)
        forged = task_token("w", "zzz", parse_task_token(tokens[0])[2])
        with pytest.raises(InvalidInput, match="has no step 'zzz': the task token was not"):
            rt.complete_step(forged, "done")
