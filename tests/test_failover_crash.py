"""AnyOf across a real SIGKILL: compensation after recovery goes to the member that did
the work, read from the store (the child's memory of it died with the child)."""

from __future__ import annotations

import os
import pathlib
import signal
import threading
import time
from pathlib import Path

import pytest
from _child_kit import Child
from failover_child import FLIGHT, MEMBERS, TRIP

from herder.runtime import (
    Agent,
    Permanent,
    Runtime,
    StepContext,
    WorkflowFailed,
    WorkflowState,
)
from herder.runtime._check import check_store
from herder.store import Store

CHILD = pathlib.Path(__file__).with_name("failover_child.py")
WAIT = 30.0


def run_child(store: Path, *mode: str) -> list[str]:
    """Run the child (in ``mode``) until it says ``ready``, then SIGKILL it; its lines."""
    child = Child([str(CHILD), str(store), *mode])
    seen: list[str] = []
    try:
        while True:
            line = child.next_line(time.monotonic() + WAIT)
            if line is None:
                raise AssertionError(f"child ended early: {seen}\n{child.stderr()}")
            seen.append(line)
            if line == "ready":
                return seen
    finally:
        os.kill(child.proc.pid, signal.SIGKILL)
        assert child.kill(WAIT) == -signal.SIGKILL


@pytest.mark.timeout(120)
def test_compensation_after_sigkill_goes_to_the_member_that_did_the_work(
    tmp_path: Path,
) -> None:
    store = tmp_path / "store"
    seen = run_child(store)
    assert "flight SUCCEEDED airline-us 2" in seen, seen
    with Store(store, readonly=True) as s:
        assert check_store(s).problems == []

    lock = threading.Lock()
    calls: list[tuple[str, str]] = []

    class Airline(Agent):
        def __init__(self, member: str) -> None:
            self.member = member

        def book(self, ctx: StepContext) -> str:
            with lock:
                calls.append((self.member, "book"))
            return "again?"

        def cancel(self, ctx: StepContext) -> None:
            with lock:
                calls.append((self.member, "cancel"))
            assert ctx.results["flight"] == "booked on airline-us"

    class FullHotel(Agent):
        def book(self, ctx: StepContext) -> None:
            raise Permanent("no room")

    with Runtime(store, sweep_interval=0.05) as rt:
        for member in MEMBERS:
            rt.add_agent(member, lambda member=member: Airline(member))
        rt.add_agent("hotel", FullHotel)
        rt.add_workflow(TRIP)
        with pytest.raises(WorkflowFailed):
            rt.handle("w1").result(timeout=WAIT)
        assert calls == [("airline-us", "cancel")]
        assert rt.status("w1").steps["flight"].agent == "airline-us"
    with Store(store, readonly=True) as s:
        assert check_store(s).problems == []


@pytest.mark.timeout(120)
def test_an_undo_cut_by_sigkill_runs_again_on_the_member_whose_attempt_may_have_taken_effect(
    tmp_path: Path,
) -> None:
    # The flight failed on eu (it may have taken effect), then on us, which never ran (its
    # factory failed): the undo goes to eu, and after a SIGKILL in the middle of it, runs
    # again on eu, as the store says (before the fix it went to us, and parked).
    store = tmp_path / "store"
    seen = run_child(store, "unbuilt")
    assert seen[-2:] == ["cancel on airline-eu", "ready"], seen
    with Store(store, readonly=True) as s:
        assert check_store(s).problems == []
    calls: list[str] = []

    class Airline(Agent):
        def __init__(self, member: str) -> None:
            self.member = member

        def book(self, ctx: StepContext) -> str:
            calls.append(f"book on {self.member}")  # (never: the flight failed)
            return "booked"

        def cancel(self, ctx: StepContext) -> None:
            calls.append(self.member)  # (one instance a member, one call: no lock)

    with Runtime(store, sweep_interval=0.05) as rt:
        for member in MEMBERS:
            rt.add_agent(member, lambda member=member: Airline(member))
        rt.add_workflow(FLIGHT)
        with pytest.raises(WorkflowFailed):
            rt.handle("w1").result(timeout=WAIT)
        assert rt.status("w1").state is WorkflowState.COMPENSATED
        assert calls == ["airline-eu"]
    with Store(store, readonly=True) as s:
        assert check_store(s).problems == []
