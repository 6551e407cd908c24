"""Subprocess side of the operator CLI tests: a daemon with two workflows in the inbox.

    operator_child.py STORE

opens ``Runtime(STORE)`` with agent ``t`` and workflow ``trip`` (flight, hotel, car): the
car is always sold out and the hotel cannot be cancelled, so workflows ``w-1`` and
``w-2`` end NEEDS_ATTENTION. Prints ``ready`` then, ``compensated w-1`` once ``w-1`` is
COMPENSATED (after an operator skipped the hotel's refund), and serves with
``run_forever()`` until SIGTERM.
"""

from __future__ import annotations

import contextlib
import sys
import threading

from herder.runtime import (
    Agent,
    RetryPolicy,
    Runtime,
    State,
    StepContext,
    Workflow,
    WorkflowFailed,
)
from herder.runtime.testing import wait_until

TRIP = (
    Workflow("trip")
    .step("flight", agent="t", action="book", compensate="cancel")
    .step("hotel", agent="t", action="book", compensate="cancel", after=["flight"])
    .step("car", agent="t", action="book", compensate="cancel", after=["hotel"])
)


class Travel(Agent):
    def book(self, ctx: StepContext) -> dict[str, str]:
        if ctx.step == "car":
            raise RuntimeError("sold out")
        return {"booked": ctx.step}

    def cancel(self, ctx: StepContext) -> None:
        if ctx.step == "hotel":
            raise RuntimeError("the hotel cannot refund online")


def main(store: str) -> None:
    rt = Runtime(store, sweep_interval=0.05, default_retry=RetryPolicy(max_attempts=1))
    rt.add_agent("t", Travel)
    rt.add_workflow(TRIP)
    for wid in ("w-1", "w-2"):
        with contextlib.suppress(WorkflowFailed):
            rt.start("trip", workflow_id=wid).result(timeout=30)
    print("ready", flush=True)

    def watch() -> None:
        wait_until(rt, lambda: rt.status("w-1").state is State.COMPENSATED, 60)
        print("compensated w-1", flush=True)

    threading.Thread(target=watch, daemon=True).start()
    rt.run_forever(drain_timeout=5.0)


if __name__ == "__main__":
    main(sys.argv[1])
