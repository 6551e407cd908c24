"""The testing kit while the Scheduler is being replaced: between a crash and the new
Scheduler's start (the tree stops the agents first, each within instance_shutdown),
settle() and crash_scheduler() let pykka's ActorDeadError escape to the user's test."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from herder.actors import Crash
from herder.runtime import Agent, NotActive, Runtime, StepContext, Workflow
from herder.runtime.testing import FakeClock, crash_scheduler, settle

WAIT = 10.0


class Hold(Agent):
    """Its action holds the agents' stop (and so the new Scheduler) until ``gate``."""

    entered = threading.Event()
    gate = threading.Event()

    def go(self, ctx: StepContext) -> str:
        Hold.entered.set()
        Hold.gate.wait(WAIT)
        return "done"


class _Stopped:
    """The old Scheduler's ``actor_stopped``, letting the held action go when waited on
    (so that the new Scheduler starts only after crash_scheduler() looked at the old)."""

    def __init__(self, event: threading.Event) -> None:
        self._event = event

    def wait(self, timeout: float | None = None) -> bool:
        Hold.gate.set()
        return self._event.wait(timeout)

    def is_set(self) -> bool:
        return self._event.is_set()


@pytest.fixture
def crashed(tmp_path: Path) -> Iterator[Runtime]:
    """A runtime whose Scheduler crashed and is not replaced yet (its agent is held)."""
    Hold.entered.clear()
    Hold.gate.clear()
    with Runtime(tmp_path, clock=FakeClock(), instance_shutdown=WAIT) as rt:
        rt.add_agent("hold", Hold)
        rt.add_workflow(Workflow("held").step("go", agent="hold", action="go"))
        rt.start("held", None, workflow_id="w")
        assert Hold.entered.wait(WAIT)
        old = rt._ctx.scheduler
        assert old is not None
        old.tell(Crash())
        assert old.actor_stopped.wait(WAIT)
        assert rt._ctx.scheduler is old  # (the tree waits for the held agent)
        try:
            yield rt
        finally:
            Hold.gate.set()


@pytest.mark.timeout(60)
def test_settle_while_the_scheduler_is_replaced_says_so(crashed: Runtime) -> None:
    with pytest.raises(NotActive, match="Scheduler crashed"):
        settle(crashed)


@pytest.mark.timeout(60)
def test_crash_scheduler_while_it_is_replaced_waits_for_the_new_one(
    crashed: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = crashed._ctx.scheduler
    assert old is not None
    monkeypatch.setattr(old, "actor_stopped", _Stopped(old.actor_stopped))
    crash_scheduler(crashed, timeout=WAIT)  # (it crashed already: the new one runs)
    new = crashed._ctx.scheduler
    assert new is not None
    assert new is not old
    assert new.is_alive()
    assert crashed.handle("w").result(timeout=WAIT) == {"go": "done"}


@pytest.mark.timeout(60)
def test_the_simulations_settle_while_the_scheduler_is_replaced_says_so(
    crashed: Runtime,
) -> None:
    """``Runtime._settle`` (what ``simulate`` and the operator simulation call each
    round) let pykka's ActorDeadError out, neither a HerderError nor saying why."""
    with pytest.raises(NotActive, match="Scheduler crashed"):
        crashed._settle()
