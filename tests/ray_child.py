"""A daemon whose agent runs on a Ray cluster it starts itself; driven by test_ray_daemon.

``python ray_child.py STORE LEDGER MODE``: every action appends ``wf/step/token/what`` to
the LEDGER file (from the Ray worker process) so the test can tell which attempts ran and
finished. Modes:

- ``start``: start a process of its own (print SIDECAR and its pid), then 8 two-step
  workflows; print READY once four second steps run on Ray (they wait for
  ``LEDGER.release``); then wait to be SIGKILLed;
- ``resume``: reopen the store, print CONNECTED once its agent is on Ray, finish
  everything, print DONE and stop;
- ``serve``: start 4 one-step workflows of 2 s each, print READY once all four run, then
  ``run_forever()`` (the test sends SIGTERM), which is called at once so that herder's
  handler replaces the one ``ray.init`` installed before READY is printed.
"""

from __future__ import annotations

import functools
import os
import pathlib
import subprocess
import sys
import threading
import time

from herder.runtime import Agent, RayHost, Runtime, StepContext, Workflow
from herder.runtime.testing import wait_until

HERE = pathlib.Path(__file__).parent


class Ledger(Agent):
    def __init__(self, ledger: str) -> None:
        self.ledger = pathlib.Path(ledger)

    def _note(self, ctx: StepContext, what: str) -> None:
        with self.ledger.open("a") as out:
            out.write(f"{ctx.workflow_id}/{ctx.step}/{ctx.token}/{what}\n")

    def quick(self, ctx: StepContext) -> int:
        self._note(ctx, "done")
        return os.getpid()

    def blocked(self, ctx: StepContext) -> int:
        self._note(ctx, "start")
        release = self.ledger.with_suffix(".release")
        while not release.exists():  # the workload: it waits for the test's go-ahead
            ctx.heartbeat("started")  # recorded: the daemon sees it started
            time.sleep(0.05)  # a poll: the go-ahead is a file, seen across Ray's process
        self._note(ctx, "done")
        return os.getpid()

    def two_seconds(self, ctx: StepContext) -> int:
        self._note(ctx, "start")
        for _ in range(20):
            ctx.heartbeat("started")  # recorded: the daemon sees it started
            time.sleep(0.1)  # the action's own 2 s of work, which a SIGTERM drain awaits
        self._note(ctx, "done")
        return os.getpid()


def main() -> None:
    store, ledger, mode = sys.argv[1], sys.argv[2], sys.argv[3]
    host = RayHost(num_cpus=0.25, runtime_env={"env_vars": {"PYTHONPATH": str(HERE)}})
    rt = Runtime(store)
    rt.add_agent("ledger", functools.partial(Ledger, ledger), concurrency=4, host=host)
    rt.add_workflow(
        Workflow("two")
        .step("a", agent="ledger", action="quick")
        .step("b", agent="ledger", action="blocked", after=["a"], heartbeat_timeout=60.0)
    )
    rt.add_workflow(
        Workflow("one").step("s", agent="ledger", action="two_seconds", heartbeat_timeout=60.0)
    )

    def started() -> bool:  # re-checked after each commit: heartbeats commit
        path = pathlib.Path(ledger)
        return path.exists() and path.read_text().count("/start\n") >= 4

    if mode == "start":
        # A process of the program's own, not Ray's: the next daemon leaves it alone.
        # (Its real sleep is its lifetime, nothing waits on it: the test checks it lives.)
        sidecar = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        print("SIDECAR", sidecar.pid, flush=True)
        for i in range(8):
            rt.start("two", i, workflow_id=f"w{i}")
        wait_until(rt, started, timeout=120)
        print("READY", flush=True)
        threading.Event().wait()  # until SIGKILL
    elif mode == "resume":
        print("CONNECTED", flush=True)  # its cluster runs; the last one's leftovers are gone
        wait_until(rt, lambda: rt.stats()["workflows"]["SUCCEEDED"] == 8, timeout=120)
        rt.stop()
        print("DONE", flush=True)
    else:
        for i in range(4):
            rt.start("one", i, workflow_id=f"s{i}")

        def ready() -> None:  # on a thread: SIGTERM may come as soon as it is printed
            wait_until(rt, started, timeout=120)
            print("READY", flush=True)

        threading.Thread(target=ready, daemon=True).start()
        rt.run_forever(drain_timeout=30.0)
        print("STOPPED", flush=True)


if __name__ == "__main__":
    main()
