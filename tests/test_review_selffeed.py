"""Adversarial review of reserve-ahead and the pool host's self-feed (hot-path.md §6, §10):
races between a worker that goes on with the next ready attempt and the Scheduler that
lets its instance go."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from herder.actors import Agent, StepContext
from herder.actors._scheduler import Scheduler
from herder.runtime import Runtime, StepState, Workflow
from herder.runtime.testing import FakeClock, advance, settle, wait_until
from herder.store import BATCH_TIMER, batch_items

WAIT = 30.0


class Hold:
    """Holds the Scheduler's thread inside one of its handlers (``method``, patched on the
    class before the runtime starts), the first time ``match(message)`` is true after
    :meth:`arm`, until :attr:`release` is set: what arrives meanwhile queues up behind
    that message, in a known order."""

    def __init__(
        self, monkeypatch: pytest.MonkeyPatch, method: str, match: Callable[[Any], bool]
    ) -> None:
        self.armed = False
        self.held = threading.Event()
        self.release = threading.Event()
        original = getattr(Scheduler, method)

        def holding(scheduler: Scheduler, message: Any) -> Any:
            if self.armed and match(message):
                self.armed = False
                self.held.set()
                self.release.wait(WAIT)
            return original(scheduler, message)

        monkeypatch.setattr(Scheduler, method, holding)

    def arm(self) -> None:
        self.armed = True


def _watches(timer: tuple[int, str, str, Any], wid: str) -> bool:
    """Whether a due timer is workflow ``wid``'s, or a batch entry holding an attempt of it."""
    _, workflow_id, _, value = timer
    items = batch_items(value) if workflow_id == BATCH_TIMER else None
    return workflow_id == wid or any(item[0] == wid for item in items or ())


class Gated(Agent):
    """Each workflow's action starts (``started``), waits for its own ``go``, and counts
    how many run at once."""

    lock = threading.Lock()
    started: dict[str, threading.Event] = {}
    go: dict[str, threading.Event] = {}
    running = 0
    most = 0

    @staticmethod
    def event(table: dict[str, threading.Event], key: str) -> threading.Event:
        with Gated.lock:
            return table.setdefault(key, threading.Event())

    def act(self, ctx: StepContext) -> int:
        with Gated.lock:
            Gated.running += 1
            Gated.most = max(Gated.most, Gated.running)
        try:
            Gated.event(Gated.started, ctx.workflow_id).set()
            Gated.event(Gated.go, ctx.workflow_id).wait(WAIT)
            return ctx.attempt
        finally:
            with Gated.lock:
                Gated.running -= 1


def one_held(rt: Runtime, flow: Workflow) -> None:
    """Serve ``flow`` (workflow "one", step "s") with one instance of agent "gated", time
    one action (w0: nothing is reserved ahead before) and leave w1 holding the instance."""
    Gated.started, Gated.go, Gated.running, Gated.most = {}, {}, 0, 0
    rt.add_agent("gated", Gated, concurrency=1)
    rt.add_workflow(flow)
    Gated.event(Gated.go, "w0").set()
    assert rt.start("one", {}, workflow_id="w0").result(timeout=WAIT) == {"s": 1}
    rt.start("one", {}, workflow_id="w1")
    assert Gated.event(Gated.started, "w1").wait(WAIT)


def test_a_self_fed_attempt_on_an_instance_timed_out_meanwhile_does_not_exceed_concurrency(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeClock()
    hold = Hold(monkeypatch, "_on_due", lambda due: any(_watches(t, "w1") for t in due.timers))
    with Runtime(tmp_path / "s", clock=clock, prefetch=3) as rt:
        # w1 is dispatched at t=0: its deadline is t=10
        one_held(rt, Workflow("one", version=1).step("s", agent="gated", action="act", timeout=10))
        advance(rt, clock, 5.0)
        rt.start("one", {}, workflow_id="w2")  # t=5: reserved ahead, deadline t=15
        rt.start("one", {}, workflow_id="w3")
        wait_until(rt, lambda: rt.stats()["steps"]["reserved_ahead"] == 2)
        settle(rt)  # both durable, waiting in the lane
        # w1's deadline passes; the Scheduler is held as it handles the timer...
        hold.arm()
        clock.advance(6.0)
        sweep = threading.Thread(target=rt._sweep_now)  # it waits for the Scheduler
        sweep.start()
        assert hold.held.wait(WAIT)
        # ...while w1's action ends and its worker goes on with w2 on the same instance.
        Gated.event(Gated.go, "w1").set()
        assert Gated.event(Gated.started, "w2").wait(WAIT)
        hold.release.set()  # the timer first (w1's instance is replaced), then the answer
        sweep.join(WAIT)
        settle(rt)
        Gated.event(Gated.started, "w3").wait(10.0)  # a new instance may start w3 now
        running_together = Gated.most
        for name in ("w2", "w3"):
            Gated.event(Gated.go, name).set()
        for name in ("w2", "w3"):
            wait_until(rt, lambda name=name: rt.status(name).state.name == "SUCCEEDED")
        w2 = rt.status("w2").steps["s"]
        # w2's attempt 1, self-fed on the abandoned worker, counted as live...
        assert (w2.state, w2.attempt) == (StepState.SUCCEEDED, 1)
        # ...while a fresh instance ran w3: two live attempts of a concurrency-1 agent.
        assert running_together <= 1


def test_a_self_fed_attempt_fenced_before_its_hand_over_was_heard_still_frees_its_instance(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hold = Hold(monkeypatch, "operate", lambda op: op.workflow_id == "w2")
    with Runtime(tmp_path / "s", prefetch=3) as rt:
        one_held(rt, Workflow("one", version=1).step("s", agent="gated", action="act"))
        rt.start("one", {}, workflow_id="w2")  # reserved ahead; its action will hang
        rt.start("one", {}, workflow_id="w3")
        wait_until(rt, lambda: rt.stats()["steps"]["reserved_ahead"] == 2)
        settle(rt)  # both durable, waiting in the lane
        # An operator skips w2's step; the Scheduler is held as it handles that...
        hold.arm()
        skip = threading.Thread(target=rt.skip, args=("w2", "s", 0))
        skip.start()
        assert hold.held.wait(WAIT)
        # ...while w1's action ends and its worker goes on with w2, which hangs.
        Gated.event(Gated.go, "w1").set()
        assert Gated.event(Gated.started, "w2").wait(WAIT)
        hold.release.set()  # the skip first (w2 fenced, to be replaced), then the answer
        skip.join(WAIT)
        settle(rt)
        Gated.event(Gated.go, "w3").set()
        started = Gated.event(Gated.started, "w3").wait(10.0)
        Gated.event(Gated.go, "w2").set()  # (let the hung action end)
        assert rt.status("w2").steps["s"].state is StepState.SUCCEEDED  # skipped
        assert started  # w3 ran on a fresh instance while w2's action still hung
