"""A workflow caught while its end is being written: shared by the tests of what arrives
in that window (an operator's command, a repeated completion)."""

from __future__ import annotations

import threading

from herder.runtime import Agent, Runtime, StepContext, StepState, Workflow
from herder.runtime.testing import wait_until

WAIT = 20.0
ONE = Workflow("one").step("a", agent="svc", action="run")


class HeldCommit:
    """The writer's fault hook: once ``armed``, the next write transaction is held open
    before its commit (``entered`` is set) until ``release`` is."""

    def __init__(self) -> None:
        self.entered, self.release = threading.Event(), threading.Event()
        self.armed = False

    def __call__(self) -> None:
        if self.armed:
            self.entered.set()
            assert self.release.wait(WAIT)


def waiting_workflow(rt: Runtime) -> list[str]:
    """Run workflow ``w`` of ``ONE`` until its step waits for ``complete_step``; the task
    tokens its action handed out."""
    tokens: list[str] = []

    class Later(Agent):
        def run(self, ctx: StepContext) -> object:
            tokens.append(ctx.task_token)
            return ctx.complete_later()

    rt.add_agent("svc", Later)
    rt.add_workflow(ONE)
    rt.start("one", workflow_id="w")
    wait_until(rt, lambda: rt.status("w").steps["a"].state is StepState.WAITING, WAIT)
    return tokens


def completing_while_held(rt: Runtime, token: str) -> tuple[HeldCommit, threading.Thread]:
    """Complete ``token`` on a thread and hold the commit of the workflow's end open;
    returns once it is held (the hook disarmed)."""
    held = HeldCommit()
    rt._store.writer.fault = held
    held.armed = True
    completing = threading.Thread(target=rt.complete_step, args=(token, "done"))
    completing.start()
    assert held.entered.wait(WAIT)  # the workflow's end is being committed, not yet durable
    held.armed = False
    return held, completing
