"""Child process of test_disk_full.py: a real write failure in the middle of a run.

Usage: ``python disk_full_child.py STORE``. Starts workflows whose results grow the
store, caps this process's file size (RLIMIT_FSIZE; writes past it fail with EFBIG,
as on a full disk) while they run, tries more starts, lifts the cap, and prints one
JSON line: what was acknowledged, refused and finished, and how long resuming took.

``python disk_full_child.py STORE open``: opens a runtime on STORE with the file size
capped at 4 KiB and prints the error it meets as one JSON line (its type and message).
"""

from __future__ import annotations

import json
import os
import resource
import signal
import sys
import threading
import time

from herder.runtime import Agent, Runtime, StepContext, StoreError, Workflow

PAYLOAD = "x" * 20_000  # per result: a few of these need new pages in data.mdb


class Grower(Agent):
    """Returns a large result once ``gate`` opens."""

    def __init__(self, gate: threading.Event) -> None:
        self.gate = gate

    def grow(self, ctx: StepContext) -> str:
        self.gate.wait(30)
        return PAYLOAD


def main(path: str) -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG instead of being killed
    gate = threading.Event()
    flow = (
        Workflow("grow")
        .step("a", agent="svc", action="grow")
        .step("b", agent="svc", action="grow", after=["a"])
    )
    with Runtime(path, sweep_interval=0.05) as rt:
        rt.add_agent("svc", lambda: Grower(gate), concurrency=4)
        rt.add_workflow(flow)
        acked = [rt.start("grow", i, workflow_id=f"w{i}") for i in range(12)]
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (os.path.getsize(f"{path}/data.mdb"), hard))
        gate.set()
        refused, error = 0, ""
        for i in range(20):
            try:  # one may still fit in pages the store freed; then it must finish too
                acked.append(rt.start("grow", PAYLOAD, workflow_id=f"late{i}"))
            except StoreError as exc:
                refused, error = refused + 1, str(exc)
        deadline = time.monotonic() + 10
        while rt.stats()["store"]["io_errors"] < 5 and time.monotonic() < deadline:
            threading.Event().wait(0.05)  # let the running steps hit the full disk
        io_errors = rt.stats()["store"]["io_errors"]
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        lifted = time.monotonic()
        finished = sum(1 for h in acked if h.result(timeout=30))
        resumed_after = time.monotonic() - lifted
    print(
        json.dumps(
            {
                "acknowledged": len(acked),
                "finished": finished,
                "refused_starts": refused,
                "io_errors": io_errors,
                "error": error,
                "resumed_after_s": resumed_after,
            }
        )
    )


def open_full(path: str) -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
    try:
        Runtime(path).stop()
    except Exception as exc:
        print(json.dumps({"error": type(exc).__name__, "message": str(exc)}))
    else:
        print(json.dumps({"error": None}))


if __name__ == "__main__":
    if sys.argv[2:] == ["open"]:
        open_full(sys.argv[1])
    else:
        main(sys.argv[1])
