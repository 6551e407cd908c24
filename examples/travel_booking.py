"""The travel-booking workflow of `herder demo`, small enough to read in one sitting.

Three agents, one per remote service, each able to book and to cancel. A trip books a
flight, then a hotel, then a car; when the car cannot be had, herder cancels the hotel
and then the flight (compensation, in reverse order). The services here are in-memory
fakes from the testing kit that deduplicate by idempotency key, as real booking APIs do;
`herder demo` runs the same shape against durable services, kills its worker with
SIGKILL midway and shows that nothing is lost or booked twice.

    python examples/travel_booking.py [STORE_DIR]
"""

from __future__ import annotations

import functools
import logging
import sys
import tempfile

from herder.runtime import (
    Agent,
    Permanent,
    RetryPolicy,
    Runtime,
    StepContext,
    Workflow,
    WorkflowFailed,
)
from herder.runtime.testing import EffectLedger, fail_first


class BookingAgent(Agent):
    """Wraps one booking service. Public methods are actions; each must be idempotent."""

    def __init__(self, service: EffectLedger, sold_out: frozenset[str] = frozenset()) -> None:
        self.service = service
        self.sold_out = sold_out

    def book(self, ctx: StepContext) -> dict[str, str]:
        fail_first(ctx, 1)  # every first attempt fails: herder retries it with backoff
        if ctx.input["to"] in self.sold_out:
            raise Permanent(f"nothing left in {ctx.input['to']}")  # no retry: compensate
        # The idempotency key is the same for every retry, so the service books once.
        ref = self.service.apply(ctx.idempotency_key, f"{ctx.step}-for-{ctx.input['who']}")
        return {"ref": ref}

    def cancel(self, ctx: StepContext) -> None:
        self.service.undo(ctx.idempotency_key.removesuffix("/compensate"))


RETRY = RetryPolicy(max_attempts=5, initial_interval=0.01, max_interval=0.5)

TRIP = (
    Workflow("trip", version=1)
    .step("flight", agent="airline", action="book", compensate="cancel", retry=RETRY)
    .step("hotel", agent="hotels", action="book", compensate="cancel", after=["flight"])
    .step("car", agent="cars", action="book", compensate="cancel", after=["hotel"])
)


def main(store: str) -> dict[str, str]:
    """Book four trips (cars are sold out in Oslo); return each trip's final state."""
    ledgers = {name: EffectLedger() for name in ("airline", "hotels", "cars")}

    def register(rt: Runtime) -> None:  # before recovery begins
        rt.add_agent("airline", functools.partial(BookingAgent, ledgers["airline"]))
        rt.add_agent("hotels", functools.partial(BookingAgent, ledgers["hotels"]))
        cars = functools.partial(BookingAgent, ledgers["cars"], frozenset({"Oslo"}))
        rt.add_agent("cars", cars, concurrency=2)
        rt.add_workflow(TRIP)

    with Runtime(store, default_retry=RETRY, setup=register) as rt:
        trips = {
            who: rt.start("trip", {"who": who, "to": to}, workflow_id=f"trip-{who}")
            for who, to in [
                ("ada", "Lisbon"),
                ("alan", "Oslo"),
                ("grace", "Rome"),
                ("linus", "Oslo"),
            ]
        }
        outcome = {}
        for who, handle in trips.items():
            try:
                print(who, "booked", handle.result(timeout=30))
            except WorkflowFailed as failed:
                print(who, "undone:", failed.status.error)
            outcome[who] = str(handle.status().state)
    return outcome


if __name__ == "__main__":
    # herder logs each failed attempt (with its traceback) at WARNING; the failures this
    # example injects are expected, so only errors are shown.
    logging.basicConfig(level=logging.ERROR)
    if len(sys.argv) > 1:
        main(sys.argv[1])
    else:
        with tempfile.TemporaryDirectory() as tmp:
            main(f"{tmp}/store")
