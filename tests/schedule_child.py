"""Child process for test_schedules_crash.py: a runtime firing a schedule every second.

Usage: ``schedule_child.py STORE [final] [N]``: N schedules (default 1: ``tick``; more:
``tick``, ``tick1``, ...), so that each second's firings go out as one batch. Prints
``ready`` once they are defined (the same settings every run, so cursors are kept) and
``ran <workflow id>`` for each action run. ``final`` fires whatever is due, prints
``caught-up`` and stops cleanly.
Lines go out whole (``say``): slots that fell due while no child ran fire at start, and
their ``ran`` lines, printed by agent threads, once merged with ``ready`` (the test then
waited for a ``ready`` line that never came).
"""

from __future__ import annotations

import sys

from _child_kit import say

from herder.runtime import Agent, Runtime, StepContext, Workflow


class Job(Agent):
    def run(self, ctx: StepContext) -> str:
        say(f"ran {ctx.workflow_id}")  # from an agent thread
        return ctx.workflow_id


def main() -> None:
    store, args = sys.argv[1], sys.argv[2:]
    final = "final" in args
    count = int(next((a for a in args if a.isdigit()), "1"))
    rt = Runtime(store, sweep_interval=0.05)
    rt.add_agent("job", Job, concurrency=4)
    rt.add_workflow(Workflow("job").step("run", agent="job", action="run"))
    for i in range(count):
        rt.schedule(f"tick{i or ''}", "job", every=1, catch_up="all", overlap="allow")
    say("ready")
    if final:
        rt._fire_now()
        say("caught-up")
        rt.stop()
        return
    rt._wake.wait()  # until SIGKILL


if __name__ == "__main__":
    main()
