"""``result()`` of a workflow the handle waited on takes the final announcement's records
from memory: no store read of the workflow or of its steps (hot-path.md §9)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from herder.runtime import Agent, RetryPolicy, Runtime, StepContext, Workflow, WorkflowFailed

registered = threading.Event()
ONCE = RetryPolicy(max_attempts=1)


class Gate(Agent):
    def go(self, ctx: StepContext) -> Any:
        assert registered.wait(30), "the waiter never registered"
        if ctx.input == "fail":
            raise ValueError("no")
        return ctx.input


def test_result_of_a_workflow_it_waited_on_reads_neither_the_record_nor_the_steps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Runtime(tmp_path / "s") as rt:
        rt.add_agent("gate", Gate)
        rt.add_workflow(
            Workflow("two")
            .step("a", agent="gate", action="go", retry=ONCE)
            .step("b", agent="gate", action="go", after=["a"], retry=ONCE)
        )
        real_watch = rt._watch

        def watch(workflow_id: str) -> Any:
            waiter = real_watch(workflow_id)
            registered.set()  # now the workflow may end
            return waiter

        reads: list[str] = []

        def counted(real: Any) -> Any:
            def read(workflow_id: str) -> Any:
                reads.append(workflow_id)
                return real(workflow_id)

            return read

        monkeypatch.setattr(rt, "_watch", watch)
        monkeypatch.setattr(rt._store, "steps_of", counted(rt._store.steps_of))
        monkeypatch.setattr(rt._store, "get_workflow", counted(rt._store.get_workflow))
        for value, ok in (("x", True), ("fail", False)):
            registered.clear()
            handle = rt.start("two", value)
            if ok:
                assert handle.result(timeout=30) == {"a": "x", "b": "x"}
            else:
                with pytest.raises(WorkflowFailed):
                    handle.result(timeout=30)
            assert reads == []
        handle.status()  # a status is read from the store: the counters do count
        assert reads != []
