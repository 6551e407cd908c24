"""Child process for test_schedules_crash.py: a runtime firing a schedule every second.

Usage: ``schedule_child.py STORE [final]``. Prints ``ready`` once the schedule is defined
(the same settings every run, so its cursor is kept) and ``ran <workflow id>`` for each
action run. ``final`` fires whatever is due, prints ``caught-up`` and stops cleanly.
"""

from __future__ import annotations

import sys

from herder.runtime import Agent, Runtime, StepContext, Workflow


class Job(Agent):
    def run(self, ctx: StepContext) -> str:
        print("ran", ctx.workflow_id, flush=True)
        return ctx.workflow_id


def main() -> None:
    store, final = sys.argv[1], sys.argv[2:] == ["final"]
    rt = Runtime(store, sweep_interval=0.05)
    rt.add_agent("job", Job, concurrency=4)
    rt.add_workflow(Workflow("job").step("run", agent="job", action="run"))
    rt.schedule("tick", "job", every=1, catch_up="all", overlap="allow")
    print("ready", flush=True)
    if final:
        rt._fire_now()
        print("caught-up", flush=True)
        rt.stop()
        return
    rt._wake.wait()  # until SIGKILL


if __name__ == "__main__":
    main()
