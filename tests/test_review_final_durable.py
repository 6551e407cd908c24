"""Adversarial review of the waiter's path (hot-path.md §10: "a final state is durable
before a waiter hears of it"): ``result()`` of a workflow started here is resolved by the
final announcement, with no store read (077e1ac); a final transition whose commit fails
must not reach the waiter."""

from __future__ import annotations

import threading
from pathlib import Path

from herder.runtime import Agent, Runtime, StepContext, Workflow

WAIT = 30.0


class FailNext:
    """The writer's fault hook: once armed, the next commit fails (nothing of it is
    written)."""

    def __init__(self) -> None:
        self.armed = threading.Event()
        self.failed = 0

    def __call__(self) -> None:
        if self.armed.is_set():
            self.armed.clear()
            self.failed += 1
            raise OSError(28, "simulated write error")


def test_a_waiter_never_hears_of_a_success_whose_commit_failed(tmp_path: Path) -> None:
    fault = FailNext()

    class Once(Agent):
        def act(self, ctx: StepContext) -> int:
            if ctx.attempt == 1:
                fault.armed.set()  # the commit recording this answer fails
            return ctx.attempt

    with Runtime(tmp_path / "s", prefetch=3) as rt:
        rt._store.writer.fault = fault
        rt.add_agent("a", Once, concurrency=1)
        rt.add_workflow(Workflow("one", version=1).step("s", agent="a", action="act"))
        result = rt.start("one", {}, workflow_id="w").result(timeout=WAIT)
        status = rt.status("w")
    assert fault.failed == 1
    # Attempt 1's success was never durable: the waiter hears of the one that is.
    assert result == {"s": status.steps["s"].attempt}
    assert status.steps["s"].attempt >= 2
