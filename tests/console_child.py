"""Subprocess side of the console tests: a daemon whose store holds every workflow state.

    console_child.py STORE

Starts, with agent ``t`` and workflows ``trip`` (flight, hotel, car) and ``approval``
(ask, then an ``approve`` step that waits for ``complete_later``):

- ``ok-1`` SUCCEEDED; ``ok-2`` SUCCEEDED after two failed flight attempts;
- ``comp-1`` COMPENSATED (no car); ``stuck-1``, ``stuck-2`` NEEDS_ATTENTION (no car, and
  the hotel cannot refund); ``abandon-1`` ABANDONED (was stuck, then abandoned);
- ``cancel-1`` CANCELLED (while its start was delayed); ``wait-1`` RUNNING (its
  ``approve`` step WAITING);
- ``<img src=x onerror=alert(1)>`` SUCCEEDED, with markup in its input and results;
- ``tour-1`` NEEDS_ATTENTION like ``stuck-1``, but its actions take a few tenths of a
  second and its flight fails once, so its timeline is worth a screenshot.

Prints ``ready`` once they are all there, then serves with ``run_forever()`` until
SIGTERM.
"""

from __future__ import annotations

import contextlib
import sys
import time
from typing import Any

from herder.runtime import (
    Agent,
    Permanent,
    RetryPolicy,
    Runtime,
    State,
    StepContext,
    Workflow,
    WorkflowFailed,
)
from herder.runtime.testing import wait_until

HOSTILE = "<img src=x onerror=alert(1)>"
FAST = RetryPolicy(max_attempts=4, initial_interval=0.3, backoff_coefficient=1.0, jitter=0.0)
ONCE = RetryPolicy(max_attempts=1)
TRIP = (
    Workflow("trip")
    .step("flight", agent="t", action="book", compensate="cancel", retry=FAST)
    .step(
        "hotel",
        agent="t",
        action="book",
        compensate="cancel",
        after=["flight"],
        compensate_retry=ONCE,
    )
    .step("car", agent="t", action="book", compensate="cancel", after=["hotel"], retry=ONCE)
)
APPROVAL = (
    Workflow("approval")
    .step("ask", agent="t", action="book", compensate="cancel")
    .step("approve", agent="t", action="wait", after=["ask"], timeout=3600.0)
)


class Travel(Agent):
    def book(self, ctx: StepContext) -> dict[str, Any]:
        plan = ctx.input or {}
        if plan.get("slow"):  # the remote side's latency, for a readable timeline
            time.sleep(plan["slow"].get(ctx.step, 0.1))  # (a real sleep: real durations)
        if ctx.step == "flight" and ctx.attempt <= plan.get("flaky", 0):
            raise ConnectionError(f"airline timed out (attempt {ctx.attempt})")
        if ctx.step == "car" and plan.get("no_car"):
            raise Permanent("sold out: no car left")
        return {"booked": ctx.step, "note": plan.get("note")}

    def cancel(self, ctx: StepContext) -> None:
        if (ctx.input or {}).get("slow"):  # the refund's latency: a visible timeline bar
            time.sleep(0.2)  # (a real sleep: the timeline shows real durations)
        if ctx.step == "hotel" and (ctx.input or {}).get("stuck"):
            raise RuntimeError("the hotel cannot refund online: call them")

    def wait(self, ctx: StepContext) -> Any:
        return ctx.complete_later()


def main(store: str) -> None:
    rt = Runtime(store, sweep_interval=0.05)
    rt.add_agent("t", Travel, concurrency=2)
    rt.add_workflow(TRIP)
    rt.add_workflow(APPROVAL)
    trips = {
        "ok-1": {},
        "ok-2": {"flaky": 2},
        "comp-1": {"no_car": True},
        "stuck-1": {"no_car": True, "stuck": True},
        "stuck-2": {"no_car": True, "stuck": True},
        "abandon-1": {"no_car": True, "stuck": True},
        HOSTILE: {"note": "</pre><script>alert(1)</script>"},
        "tour-1": {
            "no_car": True,
            "stuck": True,
            "flaky": 1,
            "slow": {"flight": 0.3, "hotel": 0.5, "car": 0.25},
        },
    }
    for wid, plan in trips.items():
        with contextlib.suppress(WorkflowFailed):
            rt.start("trip", plan, workflow_id=wid).result(timeout=30)
    rt.abandon("abandon-1", who="ops", why="refunded by hand")
    rt.start("approval", {}, workflow_id="wait-1")
    wait_until(rt, lambda: rt.status("wait-1").steps["approve"].state == "WAITING", 30)
    rt.start("trip", {}, workflow_id="cancel-1", delay=3600.0)
    rt.cancel("cancel-1", who="ops", why="customer changed their mind")
    wait_until(rt, lambda: rt.status("cancel-1").state is State.CANCELLED, 30)
    print("ready", flush=True)
    rt.run_forever(drain_timeout=5.0)


if __name__ == "__main__":
    main(sys.argv[1])
