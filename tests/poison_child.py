"""Subprocess side of ``test_poison.py``'s crashes (run as a script).

    poison_child.py STORE FLOW MAX_RECOVERIES COMMAND...

Opens ``Runtime(STORE)`` on a :class:`FakeClock` with agent ``svc`` and one workflow
definition (FLOW): ``x`` (step ``s``), ``hand`` (``hand`` waits on ``complete_later``
beside ``crash``), ``charge`` (``hold``, then ``charge``, each undone by ``undo``) or
``none`` (nothing: what it finds waits for its definition, nothing runs).
Workflows ``poison*``'s step, and steps ``crash`` and ``charge``, hang ("kill the process":
they never answer); the others answer at once. Then runs each COMMAND, in order:

- ``start:WID``: starts workflow WID of FLOW;
- ``wait:WID:STEP:STATE[:ATTEMPT[:RECOVERIES]]``: waits until the step is in STATE (with
  that attempt, and its workflow's ``recoveries`` counter at that);
- ``settle``: lets the Scheduler handle what is in flight;
- ``show:WID:STEP``: prints ``show STATE ATTEMPT RECOVERIES``;
- ``run:WID``: starts WID and prints ``result <its result>``;
- ``advance:SECONDS``: moves the clock (its timers run).

prints ``ready`` and blocks until the parent SIGKILLs it: a death of the process, which
leaves the lease unreleased (a ``stop()`` releases it, and is no crash).
"""

from __future__ import annotations

import functools
import sys
import threading

from _child_kit import say


def main(store: str, flow: str, max_recoveries: int, commands: list[str]) -> None:
    from herder.runtime import Agent, Runtime, StepContext, StepState, Workflow
    from herder.runtime.testing import FakeClock, advance, wait_until

    class Svc(Agent):
        def work(self, ctx: StepContext) -> object:
            if ctx.step == "hand":
                return ctx.complete_later()
            if ctx.workflow_id.startswith("poison") or ctx.step in ("crash", "charge"):
                threading.Event().wait()  # until the SIGKILL
            return ctx.workflow_id if ctx.step == "s" else ctx.step

        def undo(self, ctx: StepContext) -> None:
            pass

    clock = FakeClock()
    rt = Runtime(store, clock=clock, max_recoveries=max_recoveries, instance_shutdown=0.01)
    rt.add_agent("svc", Svc, concurrency=2)
    if flow == "x":
        rt.add_workflow(Workflow("x").step("s", agent="svc", action="work"))
    elif flow == "none":
        pass
    elif flow == "hand":
        plan = Workflow("p").step("hand", agent="svc", action="work", timeout=3600)
        rt.add_workflow(plan.step("crash", agent="svc", action="work"))
    else:
        plan = Workflow("p").step("hold", agent="svc", action="work", compensate="undo")
        rt.add_workflow(
            plan.step("charge", agent="svc", action="work", compensate="undo", after=["hold"])
        )
    name = "x" if flow == "x" else "p"

    def step(wid: str, name: str) -> tuple[str, int, int]:
        record = rt._store.get_workflow(wid)
        st = rt.status(wid).steps[name]
        assert record is not None
        return st.state.name, st.attempt, record.recoveries

    def reached(wid: str, name: str, want: tuple[object, ...]) -> bool:
        return step(wid, name)[: len(want)] == want

    for command in commands:
        verb, *args = command.split(":")
        if verb == "start":
            rt.start(name, workflow_id=args[0])
        elif verb == "wait":
            wid, name_, state, *more = args
            want = (StepState[state].name, *map(int, more))
            wait_until(rt, functools.partial(reached, wid, name_, want), timeout=30)
        elif verb == "settle":
            rt._settle()
        elif verb == "show":
            say("show {} {} {}".format(*step(args[0], args[1])))
        elif verb == "run":
            say(f"result {rt.start(name, workflow_id=args[0]).result(timeout=30)}")
        elif verb == "advance":
            advance(rt, clock, float(args[0]))
        else:
            raise SystemExit(f"unknown command {command!r}")
    say("ready")
    threading.Event().wait()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:])
