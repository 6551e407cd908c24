"""Subprocess side of ``test_limits_crash.py`` (run as a script).

    limits_child.py STORE MODE

Opens ``Runtime(STORE)`` on the real clock and prints one line per event, flushed; then
blocks until the parent SIGKILLs it.

- ``timers``: starts ``later`` (delay one hour) and ``pair`` (step ``first`` now, step
  ``second`` one hour after it), waits until ``first`` succeeded and ``second`` waits,
  prints ``ready``.
- ``crashloop``: registers agent ``svc`` with a breaker (2 failures, one hour cool-down)
  whose action prints ``running`` and hangs, starts workflow ``w`` (idempotently), waits
  for the Scheduler to settle and prints ``stats <json of rt.stats()['resources']>`` and
  ``attempt <n>`` (the step's attempt count). ``crashloop-plain``: the same, with no
  breaker. ``reserved``: the same, with no breaker, after the store's incarnation
  counter was raised ahead of this holder's (as its lease keeper does once its fencing
  tokens run on, ``reserve_incarnations``).
- ``lone``: start_many creates ``lone``, whose only step waits an hour (its own
  ``delay``), and every write after that commit stalls: prints ``created <its time>``
  once one does.
"""

from __future__ import annotations

import json
import sys
import threading

from _child_kit import say

HOUR = 3600.0


def main(store: str, mode: str) -> None:
    from herder.runtime import Agent, CircuitBreaker, Runtime, StepContext, StepState, Workflow
    from herder.runtime.testing import settle, wait_until

    class Quick(Agent):
        def call(self, ctx: StepContext) -> str:
            return ctx.step

    class Hangs(Agent):
        def call(self, ctx: StepContext) -> None:
            say("running")
            threading.Event().wait()

    rt = Runtime(store, sweep_interval=0.05)
    if mode == "timers":
        rt.add_agent("svc", Quick)
        rt.add_workflow(Workflow("one").step("call", agent="svc", action="call"))
        rt.add_workflow(
            Workflow("pair")
            .step("first", agent="svc", action="call")
            .step("second", agent="svc", action="call", after=["first"], delay=HOUR)
        )
        rt.start("one", workflow_id="later", delay=HOUR)
        rt.start("pair", workflow_id="pair")

        def waiting() -> bool:
            steps = rt.status("pair").steps
            second = steps["second"]
            return steps["first"].state is StepState.SUCCEEDED and second.state is (
                StepState.PENDING
            )

        wait_until(rt, waiting)
        settle(rt)
        say("ready")
    elif mode == "lone":
        rt.add_agent("svc", Quick)
        rt.add_workflow(Workflow("lone").step("call", agent="svc", action="call", delay=HOUR))
        stalled = threading.Event()

        def stall() -> None:  # (in each write transaction, before it commits)
            if rt._store.get_workflow("lone") is not None:
                stalled.set()
                threading.Event().wait()

        rt._store.writer.fault = stall
        rt.start_many([{"workflow": "lone", "workflow_id": "lone"}])
        assert stalled.wait(30)
        record = rt._store.get_workflow("lone")
        assert record is not None
        say(f"created {record.created!r}")
    else:
        breaker = CircuitBreaker(failures=2, cooldown=HOUR) if mode == "crashloop" else None
        rt.add_agent("svc", Hangs, breaker=breaker)
        rt.add_workflow(Workflow("one").step("call", agent="svc", action="call", timeout=HOUR))
        if mode == "reserved":
            rt._store.reserve_incarnations(rt._store.incarnation + 1).result(timeout=30)
        rt.start("one", workflow_id="w")
        settle(rt)
        say("stats " + json.dumps(rt.stats()["resources"]))
        say(f"attempt {rt.status('w').steps['call'].attempt}")
    threading.Event().wait()  # until SIGKILL


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
