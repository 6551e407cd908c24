"""Subprocess side of ``test_deadlines_crash.py`` (run as a script), and the workflow both
sides register.

    deadline_child.py STORE

Opens ``Runtime(STORE)`` on the real clock, starts ``w1`` with a one-hour deadline; step
``a`` succeeds, step ``b`` hangs; prints ``ready`` once ``b`` runs and blocks until the
parent SIGKILLs it.
"""

from __future__ import annotations

import sys
import threading

from _child_kit import say

from herder.runtime import Workflow

HOUR = 3600.0
TWO = (
    Workflow("two")
    .step("a", agent="w", action="do", compensate="undo", timeout=2 * HOUR)
    .step("b", agent="w", action="do", compensate="undo", after=["a"], timeout=2 * HOUR)
)


def main(store: str) -> None:
    from herder.runtime import Agent, Runtime, StepContext, StepState
    from herder.runtime.testing import wait_until

    class Worker(Agent):
        def do(self, ctx: StepContext) -> str:
            if ctx.step == "b":
                threading.Event().wait()
            return ctx.step

        def undo(self, ctx: StepContext) -> None:
            say(f"undo {ctx.step}")  # never: the parent checks it runs there

    rt = Runtime(store, sweep_interval=0.05)
    rt.add_agent("w", Worker)
    rt.add_workflow(TWO)
    rt.start("two", workflow_id="w1", deadline=HOUR)
    wait_until(rt, lambda: rt.status("w1").steps["b"].state is StepState.DISPATCHED, 20.0)
    say("ready")
    threading.Event().wait()  # until SIGKILL


if __name__ == "__main__":
    main(sys.argv[1])
