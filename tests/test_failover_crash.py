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
from failover_child import MEMBERS, TRIP

from herder.runtime import Agent, Permanent, Runtime, StepContext, WorkflowFailed
from herder.runtime._check import check_store
from herder.store import Store

CHILD = pathlib.Path(__file__).with_name("failover_child.py")
WAIT = 30.0


def run_child(store: Path) -> list[str]:
    """Run the child until it says ``ready``, then SIGKILL it; its lines."""
    child = Child([str(CHILD), str(store)])
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
