"""Subprocess side of ``test_ha_frozen.py``: an active runtime that stops itself inside
an LMDB write transaction.

    frozen_child.py STORE LEASE

opens ``Runtime(STORE, lease=LEASE)`` with agent ``t`` and workflow ``slow`` (one step
that waits for ever), starts workflow ``w-1`` and waits for its step to run, then begins a
write transaction on the store (what its writer holds most of its busy time), prints
``holding`` and SIGSTOPs itself. It dies with its parent (PR_SET_PDEATHSIG), stopped too.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading

from _child_kit import say

from herder.runtime import Agent, Runtime, StepContext, Workflow

SLOW = Workflow("slow").step("wait", agent="t", action="wait")
running = threading.Event()


class Waiter(Agent):
    def wait(self, ctx: StepContext) -> None:
        running.set()
        threading.Event().wait()  # (never set: the step runs until the process ends)


def main(store: str, lease: float) -> None:
    ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: die with the test
    rt = Runtime(store, lease=lease)
    rt.add_agent("t", Waiter)
    rt.add_workflow(SLOW)
    rt.start("slow", workflow_id="w-1")
    running.wait()
    txn = rt._store._env.begin(write=True)  # noqa: F841 (held until the process dies)
    say("holding")
    os.kill(os.getpid(), signal.SIGSTOP)


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]))
