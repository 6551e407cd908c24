"""Subprocess side of ``test_failover_crash.py`` (run as a script), and the workflow both
sides register.

    failover_child.py STORE [unbuilt]

Opens ``Runtime(STORE)`` on the real clock with two airline members, ``airline-eu``
failing its first booking, and a hotel whose booking hangs; starts ``w1``, waits until
the flight succeeded (on ``airline-us``, after the retry moved it) and the hotel runs,
prints ``ready`` and blocks until the parent SIGKILLs it.

``unbuilt``: ``airline-us`` cannot be built (its factory raises), and ``w1`` runs
:data:`FLIGHT` (two attempts): the flight fails on ``airline-eu`` and then on
``airline-us`` (never run), and its compensation, which blocks, begins; the child
prints ``cancel on MEMBER`` and ``ready`` from inside it.
"""

from __future__ import annotations

import sys
import threading

from _child_kit import say

from herder.runtime import AnyOf, RetryPolicy, Workflow

MEMBERS = ("airline-eu", "airline-us")
TRIP = (
    Workflow("trip")
    .step(
        "flight",
        agent=AnyOf(*MEMBERS),
        action="book",
        compensate="cancel",
        retry=RetryPolicy(max_attempts=3, initial_interval=0.05, jitter=0.0),
    )
    .step(
        "hotel", agent="hotel", action="book", after=["flight"], retry=RetryPolicy(max_attempts=1)
    )
)

FLIGHT = Workflow("flight").step(
    "flight",
    agent=AnyOf(*MEMBERS),
    action="book",
    compensate="cancel",
    retry=RetryPolicy(max_attempts=2, initial_interval=0.05, jitter=0.0),
)


def main(store: str, unbuilt: bool) -> None:
    from herder.runtime import Agent, Runtime, StepContext, StepState
    from herder.runtime.testing import wait_until

    failed = threading.Event()

    class Airline(Agent):
        def __init__(self, member: str) -> None:
            self.member = member

        def book(self, ctx: StepContext) -> str:
            if self.member == "airline-eu" and not failed.is_set():
                failed.set()
                raise ConnectionError("airline-eu refused")
            return f"booked on {self.member}"

        def cancel(self, ctx: StepContext) -> None:
            say(f"cancel on {self.member}")  # (not unbuilt: never, the parent checks)
            say("ready")
            threading.Event().wait()  # until SIGKILL

    def broken() -> Airline:
        raise ValueError("airline-us has no credentials")

    class Hotel(Agent):
        def book(self, ctx: StepContext) -> None:
            say("hotel running")
            threading.Event().wait()

    rt = Runtime(store, sweep_interval=0.05)
    for member in MEMBERS:
        unbuildable = unbuilt and member == "airline-us"
        rt.add_agent(member, broken if unbuildable else lambda member=member: Airline(member))
    rt.add_agent("hotel", Hotel)
    rt.add_workflow(TRIP)
    if unbuilt:
        rt.add_workflow(FLIGHT)
        rt.start("flight", {}, workflow_id="w1")
        threading.Event().wait()  # until SIGKILL (the compensation says ready)
    rt.start("trip", {}, workflow_id="w1")
    wait_until(rt, lambda: rt.status("w1").steps["hotel"].state is StepState.DISPATCHED, 20.0)
    flight = rt.status("w1").steps["flight"]
    say(f"flight {flight.state} {flight.agent} {flight.attempt}")
    say("ready")
    threading.Event().wait()  # until SIGKILL


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:] == ["unbuilt"])
