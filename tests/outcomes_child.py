"""Subprocess side of the durable-outcome tests: a daemon with one step handed off, or
one whose outcome is unknown.

    outcomes_child.py STORE
    outcomes_child.py STORE unknown

opens ``Runtime(STORE)`` with agent ``hook`` and workflow ``handoff`` (one step ``pay``
whose action returns ``ctx.complete_later()``), starts workflow ``w-1``, and prints
``waiting TOKEN`` once the step is durably WAITING; then it serves until killed.
With ``unknown`` it runs workflow ``lapse`` instead: its action hangs past its timeout,
so the step is UNKNOWN and probed, and the child prints ``probing`` from the probe,
which hangs too (the step is durably UNKNOWN by then); then it serves until killed.
"""

from __future__ import annotations

import sys
import threading

from _child_kit import say

from herder.runtime import Agent, Runtime, StepContext, StepState, Workflow
from herder.runtime.testing import wait_until

HANDOFF = Workflow("handoff").step("pay", agent="hook", action="pay", timeout=3600.0)
LAPSE = Workflow("lapse").step("pay", agent="bank", action="pay", timeout=0.3)


class Hook(Agent):
    """Hands the request to a (pretend) partner who answers through a webhook."""

    calls = 0

    def pay(self, ctx: StepContext) -> object:
        type(self).calls += 1
        return ctx.complete_later()


class Hung(Agent):
    """An action whose reply never comes, and a probe that hangs as well."""

    def pay(self, ctx: StepContext) -> None:
        threading.Event().wait(60)

    def probe_pay(self, ctx: StepContext) -> None:
        say("probing")
        threading.Event().wait(60)


def unknown(store: str) -> None:
    rt = Runtime(store, sweep_interval=0.05, probe_timeout=60.0)
    rt.add_agent("bank", Hung)
    rt.add_workflow(LAPSE)
    rt.start("lapse", workflow_id="w-1")
    threading.Event().wait(60)  # until the parent kills this process


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
    if sys.argv[2:] == ["unknown"]:
        unknown(sys.argv[1])
    else:
        main(sys.argv[1])
