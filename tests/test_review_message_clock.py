"""Adversarial review of the Scheduler's per-message clock (MessageClock, e2d6e0b and
b19012c): the time is read once as a message arrives and held until the next one. The
Operator used to read the clock itself, so inside one long operator message the engine's
time stepped back when the Dispatcher took over; it now reads the message clock again as an
action starts, and the Dispatcher shares that time."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from test_review_selffeed import WAIT, Hold

from herder.actors import Agent, StepContext
from herder.runtime import Runtime, StepState, Workflow
from herder.runtime.testing import FakeClock, settle, wait_until


class Steps(Agent):
    """Step ``a`` notes it started; both steps wait for ``go``."""

    started = threading.Event()
    go = threading.Event()

    def a(self, ctx: StepContext) -> str:
        Steps.started.set()
        Steps.go.wait(WAIT)
        return "a"

    def b(self, ctx: StepContext) -> str:
        Steps.go.wait(WAIT)
        return "b"


def test_a_step_released_by_an_operator_action_is_not_recorded_before_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeClock()
    Steps.started, Steps.go = threading.Event(), threading.Event()
    hold = Hold(monkeypatch, "operate", lambda op: op.workflow_id == "w")
    flow = Workflow("two", version=1).step("a", agent="s", action="a")
    flow = flow.step("b", agent="s", action="b", after=["a"])
    with Runtime(tmp_path / "s", clock=clock) as rt:
        rt.add_agent("s", Steps, concurrency=2)
        rt.add_workflow(flow)
        rt.start("two", {}, workflow_id="w")
        assert Steps.started.wait(WAIT)
        settle(rt)
        hold.arm()
        skip = threading.Thread(target=rt.skip, args=("w", "a", "skipped"))
        skip.start()
        assert hold.held.wait(WAIT)  # the skip's message arrived (its time read) ...
        clock.advance(5.0)  # ... and takes 5 s to handle
        hold.release.set()
        skip.join(WAIT)
        wait_until(rt, lambda: rt.status("w").steps["b"].state is StepState.DISPATCHED)
        steps = rt.status("w").steps
        Steps.go.set()
    assert steps["a"].result == "skipped"
    # b was dispatched by the skip, after it: its records cannot be older than a's.
    assert steps["b"].updated >= steps["a"].updated, (steps["a"].updated, steps["b"].updated)
