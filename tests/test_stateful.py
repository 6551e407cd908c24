"""A hypothesis state machine drives the public API and checks DESIGN.md's invariants.

Rules start workflows (new ids, repeats with the same input, conflicts with different
input), inject faults into the next attempt of a step (transient error, permanent error,
a hang, an instance crash), advance the fake clock or step its wall clock either way,
cancel, retry, abandon and compensate (running workflows too), reopen the runtime, and
reopen it with a cancel or abandon queued as the CLI queues it while no runtime runs.
After every rule, on one consistent snapshot of the store:

- every started workflow exists and is in a legal state (``herder check``: step states
  agree with the workflow state, nothing of a final workflow dispatched or on a timer,
  compensation in reverse completion order, timer index and steps agree both ways);
- transitions only follow the state machines: a workflow or step moves only to a state
  reachable from the one last seen through the engine's tables (``STEP_NEXT``,
  ``WORKFLOW_NEXT`` in ``herder.actors.engine``): a final workflow never changes again,
  a compensated step never changes, a succeeded one can only be compensated, attempts
  never go down unless an operator acted.

Examples are bounded for the default run (12 examples of 15 steps);
HERDER_STATEFUL_EXAMPLES and HERDER_STATEFUL_STEPS raise both.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import re
import shutil
import tempfile
import threading
from collections import defaultdict, deque

import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from herder.actors.engine import OPERATOR_ACTIONS, STEP_NEXT, WORKFLOW_NEXT, reachable
from herder.runtime import (
    Agent,
    InvalidState,
    Permanent,
    RetryPolicy,
    Runtime,
    StepContext,
    Workflow,
    WorkflowConflict,
    WorkflowFailed,
)
from herder.runtime.testing import FakeClock, advance, check_store, crash_instance, settle
from herder.store import Store, append_command, new_command, wait_outcome
from herder.store._records import StepState, WorkflowState

W = WorkflowState
IDS = ["w0", "w1", "w2", "w3"]
STEPS = ["a", "b", "c"]
FAULTS = ["raise", "permanent", "hang", "crash"]
TIMEOUT = 30.0

FLOW = (
    Workflow("flow", version=1)
    .step("a", agent="svc", action="do", compensate="undo", timeout=TIMEOUT)
    .step("b", agent="svc", action="do", compensate="undo", after=["a"], timeout=TIMEOUT)
    .step("c", agent="svc", action="do", after=["a"], timeout=TIMEOUT)
)
RETRY = RetryPolicy(max_attempts=3, initial_interval=1.0, backoff_coefficient=1.0, jitter=0.0)


class _Faults:
    """Faults queued for the next attempts of a step, and the gate hung attempts wait on."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.queued: dict[tuple[str, str], deque[str]] = defaultdict(deque)
        self.gate = threading.Event()

    def next(self, workflow_id: str, step: str) -> str | None:
        with self.lock:
            queue = self.queued.get((workflow_id, step))
            return queue.popleft() if queue else None

    def release(self) -> None:
        gate, self.gate = self.gate, threading.Event()
        gate.set()


class Svc(Agent):
    """Meets the fault queued for its step, if any; else succeeds."""

    def __init__(self, faults: _Faults) -> None:
        self.faults = faults

    def do(self, ctx: StepContext) -> str:
        self._meet(ctx)
        return f"{ctx.step}@{ctx.attempt}"

    def undo(self, ctx: StepContext) -> None:
        self._meet(ctx)

    def _meet(self, ctx: StepContext) -> None:
        kind = self.faults.next(ctx.workflow_id, ctx.step)
        if kind == "raise":
            raise ConnectionError("injected")
        if kind == "permanent":
            raise Permanent("injected")
        if kind == "crash":
            crash_instance()
        if kind == "hang":
            self.faults.gate.wait(30)


class RuntimeMachine(RuleBasedStateMachine):
    """The public API under random operations, faults, time and restarts."""

    def __init__(self) -> None:
        super().__init__()
        shm = pathlib.Path("/dev/shm")
        base = shm if shm.is_dir() and os.access(shm, os.W_OK) else None
        self.dir = pathlib.Path(tempfile.mkdtemp(dir=base, prefix="herder-stateful-"))
        self.clock = FakeClock()
        self.faults = _Faults()
        self.inputs: dict[str, int] = {}
        self.seen: dict[str, W] = {}
        self.steps_seen: dict[tuple[str, str], tuple[StepState, int]] = {}
        self.retried: set[str] = set()
        self.rt = self._open()

    def _open(self) -> Runtime:
        rt = Runtime(
            self.dir / "store",
            clock=self.clock,
            default_retry=RETRY,
            instance_shutdown=0.05,
            sweep_interval=1.0,
        )
        rt.add_agent("svc", lambda: Svc(self.faults), concurrency=2)
        rt.add_workflow(FLOW)
        return rt

    def teardown(self) -> None:
        self.faults.release()
        self.rt.stop(timeout=2)
        shutil.rmtree(self.dir, ignore_errors=True)

    @rule(wid=st.sampled_from(IDS), value=st.integers(0, 1))
    def start(self, wid: str, value: int) -> None:
        known = self.inputs.get(wid)
        if known is not None and known != value:
            with pytest.raises(WorkflowConflict):
                self.rt.start("flow", {"v": value}, workflow_id=wid)
            return
        handle = self.rt.start("flow", {"v": value}, workflow_id=wid)
        assert handle.id == wid
        self.inputs[wid] = value

    @rule(wid=st.sampled_from(IDS), step=st.sampled_from(STEPS), kind=st.sampled_from(FAULTS))
    def inject(self, wid: str, step: str, kind: str) -> None:
        with self.faults.lock:
            self.faults.queued[(wid, step)].append(kind)

    @rule(seconds=st.sampled_from([0.0, 1.0, 2.0, TIMEOUT + 1]))
    def advance_clock(self, seconds: float) -> None:
        advance(self.rt, self.clock, seconds)
        self.faults.release()  # hung attempts answer now: late (stale) if they timed out

    @precondition(lambda self: bool(self.inputs))
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        wid = data.draw(st.sampled_from(sorted(self.inputs)))
        try:
            self.rt.cancel(wid)
        except InvalidState:
            assert self.rt.status(wid).state.is_final
            return
        # Compensating, or past it already: undone, or parked by an undo that failed
        # permanently (a queued fault) before the status was read.
        assert self.rt.status(wid).state in (W.COMPENSATING, W.CANCELLED, W.NEEDS_ATTENTION)

    @precondition(lambda self: bool(self.inputs))
    @rule(data=st.data())
    def retry(self, data: st.DataObject) -> None:
        wid = data.draw(st.sampled_from(sorted(self.inputs)))
        parked = self.rt.status(wid).state is W.NEEDS_ATTENTION
        try:
            self.rt.retry(wid)
        except InvalidState:
            assert not parked
            return
        assert parked
        event("retried a parked workflow")
        self.retried.add(wid)

    @precondition(lambda self: bool(self.inputs))
    @rule(data=st.data(), action=st.sampled_from(["abandon", "compensate"]))
    def operate(self, data: st.DataObject, action: str) -> None:
        """An operator gives up on, or undoes, a workflow wherever it is (often running)."""
        wid = data.draw(st.sampled_from(sorted(self.inputs)))
        before = self.rt.status(wid).state
        refusal = None
        try:
            getattr(self.rt, action)(wid, who="machine", why=action)
        except InvalidState as exc:
            refusal = str(exc)
        if refusal is not None:
            # The refusal states the workflow's state at that moment (it may have moved on
            # since): one the action does not apply to.
            operable = OPERATOR_ACTIONS[action]
            if "has just finished" in refusal:  # its final state was being committed
                with contextlib.suppress(WorkflowFailed):
                    self.rt.handle(wid).result(timeout=10)
                assert self.rt.status(wid).state.is_final, refusal
                return
            said = re.search(r" is ([A-Z_]+)[;:]", refusal)
            assert said is not None, f"{action} refused without a state: {refusal}"
            assert W(said.group(1)) not in operable, f"{action} refused in {before}: {refusal}"
            return
        event(f"{action} of a {before} workflow")
        if action == "abandon":
            assert self.rt.status(wid).state is W.ABANDONED
        # An operator's move, not the engine's: the invariant starts afresh (herder check
        # still judges every step state the action left).
        self.retried.add(wid)

    @precondition(lambda self: bool(self.inputs))
    @rule(data=st.data(), action=st.sampled_from(["cancel", "abandon"]))
    def reopen_with_a_queued_command(self, data: st.DataObject, action: str) -> None:
        """An operator's CLI command queued while no runtime ran: the next runtime applies
        it before anything of the workflow runs again, whatever the start-up order."""
        wid = data.draw(st.sampled_from(sorted(self.inputs)))
        self.faults.release()
        self.rt.stop(timeout=2)
        path = self.dir / "store"
        with Store(path, readonly=True) as store:
            record = store.get_workflow(wid)
            assert record is not None
            before = record.state
        command_id = append_command(path, new_command(action, wid, who="machine", why="queued"))
        self.rt = self._open()
        self.rt._sweep_now()  # a command for a finished workflow is answered by the sweep
        settle(self.rt)
        outcome = wait_outcome(path, command_id, TIMEOUT)
        assert outcome is not None, "the queued command was not answered"
        after = self.rt.status(wid).state
        applies = before in OPERATOR_ACTIONS[action]
        assert (outcome["state"] == "DONE") is applies, (before, outcome)
        if applies and action == "abandon":
            assert after is W.ABANDONED
        elif applies:
            assert after in (W.COMPENSATING, W.CANCELLED, W.NEEDS_ATTENTION), after
        event(f"queued {action} of a {before} workflow")
        self.retried.add(wid)

    @rule(seconds=st.sampled_from([-3600.0, 3600.0]))
    def step_wall_clock(self, seconds: float) -> None:
        """NTP or a VM resume steps the wall clock; the monotonic clock goes on."""
        self.clock.step_wall(seconds)

    @rule()
    def reopen(self) -> None:
        self.faults.release()
        self.rt.stop(timeout=2)
        self.rt = self._open()

    @invariant()
    def store_is_consistent_and_moves_only_forward(self) -> None:
        store = self.rt._store
        problems = [str(p) for p in check_store(store).problems]
        assert problems == []
        for wid in self.inputs:
            record = store.get_workflow(wid)
            assert record is not None, f"{wid} was started but is not in the store"
            before = self.seen.get(wid)
            retried = wid in self.retried
            if before is not None and not retried:
                later = reachable(WORKFLOW_NEXT, before)
                assert record.state in later, f"{wid}: {before} -> {record.state}"
            self.seen[wid] = record.state
            event(f"workflow seen {record.state}")
            for step in store.steps_of(wid):
                key = (wid, step.name)
                old = self.steps_seen.get(key)
                if old is not None and not retried:
                    later = reachable(STEP_NEXT, old[0])
                    assert step.state in later, f"{key}: {old[0]} -> {step.state}"
                    assert step.attempt >= old[1], f"{key}: attempt {old[1]} -> {step.attempt}"
                self.steps_seen[key] = (step.state, step.attempt)
            self.retried.discard(wid)


EXAMPLES = int(os.environ.get("HERDER_STATEFUL_EXAMPLES", "12"))
STEPS_PER_EXAMPLE = int(os.environ.get("HERDER_STATEFUL_STEPS", "15"))
RuntimeMachine.TestCase.settings = settings(
    max_examples=EXAMPLES,
    stateful_step_count=STEPS_PER_EXAMPLE,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@pytest.mark.timeout(120 * max(1, EXAMPLES * STEPS_PER_EXAMPLE // 180))
class TestRuntimeMachine(RuntimeMachine.TestCase):  # type: ignore[misc, valid-type]
    """pytest entry point of the state machine."""
