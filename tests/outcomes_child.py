"""Subprocess side of the durable-completion tests: a daemon with one step handed off.

    outcomes_child.py STORE

opens ``Runtime(STORE)`` with agent ``hook`` and workflow ``handoff`` (one step ``pay``
whose action returns ``ctx.complete_later()``), starts workflow ``w-1``, and prints
``waiting TOKEN`` once the step is durably WAITING; then it serves until killed.
"""

from __future__ import annotations

import sys
import threading

from herder.runtime import Agent, Runtime, StepContext, StepState, Workflow
from herder.runtime.testing import wait_until

HANDOFF = Workflow("handoff").step("pay", agent="hook", action="pay", timeout=3600.0)


class Hook(Agent):
    """Hands the request to a (pretend) partner who answers through a webhook."""

    calls = 0

    def pay(self, ctx: StepContext) -> object:
        type(self).calls += 1
        return ctx.complete_later()


def main(store: str) -> None:
    rt = Runtime(store, sweep_interval=0.05)
    rt.add_agent("hook", Hook)
    rt.add_workflow(HANDOFF)
    rt.start("handoff", {"amount": 5}, workflow_id="w-1")
    wait_until(rt, lambda: rt.status("w-1").steps["pay"].state is StepState.WAITING, 30.0)
    token = rt._store.get_step("w-1", "pay")
    assert token is not None
    from herder.actors._outcomes import task_token

    print(f"waiting {task_token('w-1', 'pay', token.token)}", flush=True)
    threading.Event().wait(60)  # until the parent kills this process


if __name__ == "__main__":
    main(sys.argv[1])
