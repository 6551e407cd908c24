"""``start()`` waits for its own commit (the writer's callback releases it), up to
``ask_timeout``; a start that stopped waiting still has its workflow admitted."""

from __future__ import annotations

import asyncio
import re
import threading
from pathlib import Path

import pytest

from herder.runtime import Agent, Runtime, StepContext, Workflow
from herder.runtime.testing import settle

WAIT = 30.0


class Echo(Agent):
    def echo(self, ctx: StepContext) -> object:
        return ctx.input


def test_a_start_whose_commit_is_late_times_out_and_its_workflow_still_runs(
    tmp_path: Path,
) -> None:
    gate, stalled = threading.Event(), threading.Event()

    def stall() -> None:  # inside the write transaction, before its commit
        stalled.set()
        gate.wait(WAIT)

    with Runtime(tmp_path / "s", ask_timeout=0.2) as rt:
        rt.add_agent("echo", Echo)
        rt.add_workflow(Workflow("echo").step("only", agent="echo", action="echo"))
        rt._store.writer.fault = stall
        with pytest.raises(TimeoutError, match=r"'late'.* again with that workflow_id is safe"):
            rt.start("echo", {"v": 1}, workflow_id="late")
        assert stalled.is_set()
        rt._store.writer.fault = None
        gate.set()
        handle = rt.start("echo", {"v": 1}, workflow_id="late")  # the same id: its handle
        assert handle.result(timeout=WAIT) == {"only": {"v": 1}}


@pytest.mark.parametrize("face", ["blocking", "awaited"])
def test_a_start_many_whose_commit_is_late_says_so_and_its_workflows_still_run(
    tmp_path: Path, face: str
) -> None:
    gate, stalled = threading.Event(), threading.Event()

    def stall() -> None:
        stalled.set()
        gate.wait(WAIT)

    items = [{"workflow": "echo", "input": {"v": n}, "workflow_id": f"late-{n}"} for n in (1, 2)]
    with Runtime(tmp_path / "s", ask_timeout=0.2) as rt:
        rt.add_agent("echo", Echo)
        rt.add_workflow(Workflow("echo").step("only", agent="echo", action="echo"))
        rt._store.writer.fault = stall
        try:
            call = (
                (lambda: rt.start_many(items))
                if face == "blocking"
                else (lambda: asyncio.run(rt.start_many_async(items)))
            )
            with pytest.raises(TimeoutError, match=r"ask_timeout.*start_many again with the"):
                call()
            assert stalled.is_set()
        finally:
            rt._store.writer.fault = None
            gate.set()
        handles = rt.start_many(items)  # the same ids: their handles
        assert [h.result(timeout=WAIT) for h in handles] == [{"only": {"v": n}} for n in (1, 2)]


def test_a_start_without_an_id_whose_commit_is_late_names_the_id_it_was_given(
    tmp_path: Path,
) -> None:
    """The caller gave no id: the error is the only place it can learn which workflow
    may still start."""
    gate, stalled = threading.Event(), threading.Event()

    def stall() -> None:
        stalled.set()
        gate.wait(WAIT)

    with Runtime(tmp_path / "s", ask_timeout=0.2) as rt:
        rt.add_agent("echo", Echo)
        rt.add_workflow(Workflow("echo").step("only", agent="echo", action="echo"))
        rt._store.writer.fault = stall
        try:
            with pytest.raises(TimeoutError, match="may still start") as info:
                rt.start("echo", {"v": 3})
            assert stalled.is_set()
        finally:
            rt._store.writer.fault = None
            gate.set()
        found = re.search(r"workflow '([0-9a-f]{32})'", str(info.value))
        assert found is not None, info.value
        settle(rt)  # (its commit lands)
        assert rt.handle(found[1]).result(timeout=WAIT) == {"only": {"v": 3}}
