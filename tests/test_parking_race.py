"""Operator actions that arrive while a workflow's parking (NEEDS_ATTENTION) is decided but
not yet durable: each waits for the parking to be durable and applies to the parked
workflow then (a queued command, at the next sweep); one that does not apply to a parked
workflow is refused as such, never with the state it left."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path

import pytest
from _ending import WAIT, HeldCommit

from herder.actors import call
from herder.actors._messages import Commands, Operate
from herder.runtime import (
    Agent,
    CompletionRefused,
    InvalidState,
    Permanent,
    RetryPolicy,
    Runtime,
    State,
    StepContext,
    Workflow,
)
from herder.runtime.testing import FakeClock, advance, wait_until
from herder.store import append_command, new_command, pending_commands, wait_outcome

TRIP = (
    Workflow("trip")
    .step("a", agent="svc", action="book", compensate="unbook")
    .step("b", agent="svc", action="boom", after=["a"])
)


class Svc(Agent):
    entered = threading.Event()
    gate = threading.Event()

    def book(self, ctx: StepContext) -> int:
        return 1

    def boom(self, ctx: StepContext) -> int:
        raise Permanent("sold out")

    def unbook(self, ctx: StepContext) -> None:
        Svc.entered.set()
        assert Svc.gate.wait(WAIT)
        raise Permanent("cannot unbook")


@contextlib.contextmanager
def held_parking(path: Path, *, queued: bool = False) -> Iterator[tuple[Runtime, HeldCommit]]:
    """Workflow ``w`` whose compensation failed for good: its parking is held before its
    commit (the hook disarmed) until the test sets ``release``. ``queued``: a ``retry``
    command is queued first (while the commit is held, the CLI could not write it: LMDB
    has one writer at a time)."""
    Svc.entered, Svc.gate = threading.Event(), threading.Event()
    with Runtime(path, clock=FakeClock()) as rt:
        rt.add_agent("svc", Svc)
        rt.add_workflow(TRIP)
        rt.start("trip", workflow_id="w")
        assert Svc.entered.wait(WAIT)  # its compensation runs (its DISPATCHED is durable)
        if queued:
            append_command(rt.path, new_command("retry", "w", who="t", why="x"))
        held = HeldCommit()
        rt._store.writer.fault = held
        held.armed = True
        Svc.gate.set()  # it fails for good: the workflow is parked
        assert held.entered.wait(WAIT)  # NEEDS_ATTENTION decided, its commit held open
        held.armed = False
        try:
            yield rt, held
        finally:
            held.release.set()


@pytest.fixture
def parking(tmp_path: Path) -> Iterator[tuple[Runtime, HeldCommit]]:
    with held_parking(tmp_path / "s") as parked:
        yield parked


@pytest.mark.parametrize("action", ["retry", "skip", "compensate", "abandon"])
def test_an_action_racing_a_parking_applies_once_it_is_parked(
    parking: tuple[Runtime, HeldCommit], action: str
) -> None:
    # It was refused with the state the workflow left ("is COMPENSATING; retry applies
    # to a workflow in NEEDS_ATTENTION") or an end it never reached ("has just finished"),
    # while the caller saw it parked a moment later. It waits for the parking to be
    # durable and applies to the parked workflow then.
    rt, held = parking
    op = Operate(action, "w", who="op", why="at once")
    answer: Future[None] = call(rt._scheduler, "operate", op, timeout=WAIT)
    assert not answer.done()  # (not while the parking is on its way)
    held.release.set()
    assert answer.exception(WAIT) is None
    events = [(e.get("kind"), e.get("to"), e.get("action")) for e in rt.history("w")]
    parked = events.index(("workflow", "NEEDS_ATTENTION", None))
    assert ("operator", None, action) in events[parked:], events


def test_a_cancel_racing_a_parking_says_what_applies_to_a_parked_workflow(
    parking: tuple[Runtime, HeldCommit],
) -> None:
    rt, held = parking
    answer: Future[None] = call(rt._scheduler, "operate", Operate("cancel", "w"), timeout=WAIT)
    held.release.set()
    error = answer.exception(WAIT)
    assert isinstance(error, InvalidState), error
    assert "is NEEDS_ATTENTION" in str(error), error
    assert "compensate undoes" in str(error), error


def test_a_command_racing_a_parking_applies_once_it_is_parked(tmp_path: Path) -> None:
    # The CLI's retry was refused on its record ("is COMPENSATING", then "was being
    # parked"): a queued command waits for the next sweep instead, as it does while
    # another action's change is on its way, and applies then.
    with held_parking(tmp_path / "s", queued=True) as (rt, held):
        clock = rt._clock
        assert isinstance(clock, FakeClock)
        [pending] = pending_commands(rt._store)
        command = pending["id"]
        # Handed over as the Supervisor's sweep does, while the parking is on its way.
        rt._ctx.tell_scheduler(Commands([pending]))
        call(rt._scheduler, "sync", timeout=WAIT)
        held.release.set()
        wait_until(rt, lambda: rt.status("w").state is State.NEEDS_ATTENTION, WAIT)
        clock.advance(5.0)  # (a command still pending is handed over again after 5 s)
        rt._sweep_now()
        outcome = wait_outcome(rt.path, command, timeout=WAIT)
        assert outcome is not None
        assert outcome["state"] == "DONE", outcome.get("error")


class Probed(Agent):
    """``b`` hands its attempt off and never completes it, its probe waits for ``gate``
    and then fails (the workflow parks); ``c`` hands its attempt off and waits."""

    entered = threading.Event()
    gate = threading.Event()
    tokens: dict[str, str] = {}

    def book(self, ctx: StepContext) -> object:
        Probed.tokens[ctx.step] = ctx.task_token
        return ctx.complete_later()

    def probe_book(self, ctx: StepContext) -> object:
        Probed.entered.set()
        assert Probed.gate.wait(WAIT)
        raise ConnectionError("the probe cannot reach the service")


def test_a_completion_racing_a_parking_is_refused_as_being_parked(tmp_path: Path) -> None:
    # Refused with "has just finished", an end the workflow never reached: it was parked
    # (NEEDS_ATTENTION), as the caller finds when the refusal comes.
    Probed.entered, Probed.gate, Probed.tokens = threading.Event(), threading.Event(), {}
    flow = (
        Workflow("probed")
        .step("b", agent="svc", action="book", timeout=10.0, retry=RetryPolicy(max_attempts=1))
        .step("c", agent="svc", action="book", timeout=1000.0)
    )
    clock = FakeClock()
    with Runtime(tmp_path / "s", clock=clock, probe_timeout=5.0) as rt:
        rt.add_agent("svc", Probed, concurrency=2)
        rt.add_workflow(flow)
        rt.start("probed", workflow_id="w")
        wait_until(rt, lambda: len(Probed.tokens) == 2, WAIT)
        advance(rt, clock, 12.0)  # b lapses: its probe runs (for 5 s at most), and waits
        assert Probed.entered.wait(WAIT)
        held = HeldCommit()
        rt._store.writer.fault = held
        held.armed = True
        Probed.gate.set()  # the probe fails: the workflow is parked, c cut short
        try:
            assert held.entered.wait(WAIT)
            held.armed = False
            completion = rt._completion(Probed.tokens["c"], "done")
            answer: Future[None] = call(rt._scheduler, "complete", completion, timeout=WAIT)
        finally:
            held.release.set()
        error = answer.exception(WAIT)
        assert isinstance(error, CompletionRefused), error
        assert rt.status("w").state is State.NEEDS_ATTENTION
        assert "was parked meanwhile" in str(error), error
