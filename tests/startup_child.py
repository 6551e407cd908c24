"""Subprocess side of ``tests/test_operator_startup.py``: a daemon killed while a step
runs, then the next daemon, started while an operator command waits for it.

    startup_child.py STORE EFFECTS run       start workflow ``w``; print ``running`` once
                                             its first step's action runs (it then hangs
                                             until the test SIGKILLs the process)
    startup_child.py STORE EFFECTS sweep     open the store and let the watchdog sweep it
                                             (handing the queued command over) before the
                                             definition is registered, then register
    startup_child.py STORE EFFECTS register  open and register at once, as the docs say

Every action appends ``<action> <workflow>/<step> <attempt>`` to EFFECTS. ``sweep`` and
``register`` wait until ``w`` is final, print ``final <STATE>`` and exit.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading

from herder.runtime import Agent, Runtime, StepContext, Workflow, WorkflowFailed

TRIP = (
    Workflow("trip")
    .step("flight", agent="t", action="book", compensate="cancel", timeout=60.0)
    .step("hotel", agent="t", action="book", compensate="cancel", after=["flight"])
)


class Travel(Agent):
    def __init__(self, effects: str, hang: bool) -> None:
        self.effects = effects
        self.hang = hang

    def _log(self, ctx: StepContext) -> None:
        line = f"{ctx.action} {ctx.workflow_id}/{ctx.step} {ctx.attempt}\n".encode()
        fd = os.open(self.effects, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)

    def book(self, ctx: StepContext) -> dict[str, str]:
        self._log(ctx)
        if self.hang:
            print("running", flush=True)
            threading.Event().wait()  # until SIGKILL
        return {"booked": ctx.step}

    def cancel(self, ctx: StepContext) -> None:
        self._log(ctx)


def main(store: str, effects: str, mode: str) -> None:
    rt = Runtime(store, sweep_interval=0.05)
    if mode == "sweep":
        rt._sweep_now()  # the queued command reaches the Scheduler before the definition
        rt._settle()
    rt.add_agent("t", lambda: Travel(effects, hang=mode == "run"))
    rt.add_workflow(TRIP)
    if mode == "run":
        rt.start("trip", workflow_id="w")
        threading.Event().wait()  # until SIGKILL
    with contextlib.suppress(WorkflowFailed):
        rt.handle("w").result(timeout=30)
    print(f"final {rt.status('w').state}", flush=True)
    rt.stop()


if __name__ == "__main__":
    main(*sys.argv[1:4])
