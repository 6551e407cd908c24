"""Subprocess side of the operations tests: a daemon holding one attempt in flight.

    runtime_child.py STORE

opens ``Runtime(STORE)`` with agent ``gate`` and workflow ``held`` (step ``hold``, then
step ``after``), starts workflow ``w-1`` and serves with ``run_forever()``. The ``hold``
action prints ``holding w-1`` and blocks until a line ``release`` arrives on stdin.
Logs go to stderr at INFO (the parent waits for the ``draining`` line); ``stopped`` is
printed once ``run_forever`` returned.
"""

from __future__ import annotations

import logging
import sys
import threading

from herder.runtime import Agent, Runtime, StepContext, Workflow

release = threading.Event()


class Gate(Agent):
    def hold(self, ctx: StepContext) -> dict[str, str]:
        print(f"holding {ctx.workflow_id}", flush=True)
        release.wait(60)
        return {"released": ctx.workflow_id}

    def after(self, ctx: StepContext) -> None:
        print(f"after {ctx.workflow_id}", flush=True)


def _read_stdin() -> None:
    for line in sys.stdin:
        if line.strip() == "release":
            release.set()


def main(store: str) -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s %(message)s")
    threading.Thread(target=_read_stdin, daemon=True).start()
    held = (
        Workflow("held", version=1)
        .step("hold", agent="gate", action="hold", timeout=60.0)
        .step("after", agent="gate", action="after", after=["hold"])
    )
    rt = Runtime(store, sweep_interval=0.05)
    rt.add_agent("gate", Gate, concurrency=2)
    rt.add_workflow(held)
    rt.start("held", {"n": 1}, workflow_id="w-1")
    rt.run_forever(drain_timeout=30.0)
    print("stopped", flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
