"""A cancel (or an operator's compensate) that returned while a step's attempt ran, then
SIGKILL: the next runtime does not run that step's action again. The workflow had turned
back; the attempt may have taken effect, so its step ends FAILED and is undone with the
others (``actors/engine/_recovery.orphaned``), as docs/operator.md promises. Before,
recovery re-ran the forward action of the cancelled workflow, then undid it."""

from __future__ import annotations

import pathlib

import pytest
from _child_kit import Child

from herder.runtime import Agent, Runtime, State, StepContext, StepState, Workflow, WorkflowFailed
from herder.runtime.testing import check_store, store_of

pytestmark = pytest.mark.timeout(60)

CHILD = """
import sys, threading
from herder.runtime import Agent, Runtime, Workflow
from herder.runtime.testing import wait_until
store, log, action = sys.argv[1:4]
class Shop(Agent):
    def book(self, ctx):
        with open(log, "a") as f:
            f.write(f"book {ctx.step} {ctx.attempt}\\n")
        if ctx.step == "pay":
            threading.Event().wait()  # still running when the process is killed
        return "ok"
    def undo(self, ctx):
        raise AssertionError("no undo may run in this process")
order = (Workflow("order").step("reserve", agent="shop", action="book", compensate="undo")
         .step("pay", agent="shop", action="book", compensate="undo", after=["reserve"]))
rt = Runtime(store)
rt.add_agent("shop", Shop)
rt.add_workflow(order)
rt.start("order", workflow_id="o")
wait_until(rt, lambda: rt.status("o").steps["pay"].state == "DISPATCHED", 30)
getattr(rt, action)("o", who="ada", why="changed their mind")
print("acted", flush=True)
threading.Event().wait()
"""


class Shop(Agent):
    def __init__(self, log: pathlib.Path) -> None:
        self.log = log

    def book(self, ctx: StepContext) -> str:
        self._note(f"book {ctx.step} {ctx.attempt}")
        return "ok"

    def undo(self, ctx: StepContext) -> None:
        self._note(f"undo {ctx.step}")

    def _note(self, line: str) -> None:
        with self.log.open("a") as f:
            f.write(line + "\n")


ORDER = (
    Workflow("order")
    .step("reserve", agent="shop", action="book", compensate="undo")
    .step("pay", agent="shop", action="book", compensate="undo", after=["reserve"])
)


@pytest.mark.parametrize(
    ("action", "ends"), [("cancel", State.CANCELLED), ("compensate", State.COMPENSATED)]
)
def test_the_step_running_when_a_turned_back_workflow_was_killed_is_undone_not_run_again(
    tmp_path: pathlib.Path, action: str, ends: State
) -> None:
    store, log = tmp_path / "store", tmp_path / "calls.log"
    child = Child(["-c", CHILD, str(store), str(log), action], label=action)
    child.wait_for("acted", timeout=30)
    child.kill(timeout=10)
    assert log.read_text().splitlines() == ["book reserve 1", "book pay 1"]

    with Runtime(store) as rt:
        rt.add_agent("shop", lambda: Shop(log))
        rt.add_workflow(ORDER)
        with pytest.raises(WorkflowFailed) as failed:
            rt.handle("o").result(timeout=30)
        status = failed.value.status
        assert check_store(store_of(rt)).problems == []
    assert status.state is ends
    pay = status.steps["pay"]
    assert (pay.state, pay.attempt) == (StepState.COMPENSATED, 1)  # given up, then undone
    # Nothing ran forward again; both steps were undone, the later one first.
    assert log.read_text().splitlines()[2:] == ["undo pay", "undo reserve"]
