"""Retention (or a purge) deleting a finished workflow while it is being read: the
record and its steps are read in one snapshot, so a reader sees the workflow whole or
not at all, never a SUCCEEDED record whose steps are gone (shown PENDING, no results).

The deletion is made to land between the record's read and its steps' read, where a
retention batch committing at that moment lands: the store's ``steps_of`` first has
another thread delete the workflow (as the writer's thread would), then reads."""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from herder.runtime import (
    Agent,
    Runtime,
    StepContext,
    UnknownWorkflow,
    Workflow,
    WorkflowConflict,
)
from herder.runtime._inspect import list_workflows
from herder.runtime.testing import FakeClock
from herder.store import purge

WAIT = 10.0
T0 = 1_700_000_000.0
RESULTS = {"pay": "ok", "ship": "ok"}


class Shop(Agent):
    def buy(self, ctx: StepContext) -> str:
        return "ok"


ORDER = (
    Workflow("order")
    .step("pay", agent="shop", action="buy")
    .step("ship", agent="shop", action="buy", after=["pay"])
)


@pytest.fixture
def rt(tmp_path: Path) -> Iterator[Runtime]:
    clock = FakeClock(start=T0)
    with Runtime(tmp_path, clock=clock, retention=None, sweep_interval=0.05) as runtime:
        runtime.add_agent("shop", Shop)
        runtime.add_workflow(ORDER)
        assert runtime.start("order", {}, workflow_id="o1").result(timeout=WAIT) == RESULTS
        yield runtime


def delete_before_reading_steps(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch, read: str = "steps_of"
) -> list[int]:
    """Make the next ``read`` of the store (a workflow's steps) happen just after the
    workflow was deleted."""
    store, original, deleted = rt._store, getattr(rt._store, read), []

    def reading(*args: object, **kwargs: object) -> object:
        if not deleted:  # (once: on another thread, as the writer commits it)
            done = threading.Thread(target=lambda: deleted.append(purge(store, T0 + 1e6)))
            done.start()
            done.join(WAIT)
            assert deleted == [1]
        return original(*args, **kwargs)

    monkeypatch.setattr(store, read, reading)
    return deleted


@pytest.mark.timeout(60)
def test_status_of_a_workflow_deleted_while_read_is_whole(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    deleted = delete_before_reading_steps(rt, monkeypatch)
    status = rt.status("o1")  # (read on the snapshot before the deletion)
    assert deleted == [1]
    assert status.results == RESULTS  # (not SUCCEEDED with both steps PENDING)
    with pytest.raises(UnknownWorkflow):
        rt.status("o1")


@pytest.mark.timeout(60)
def test_list_while_a_workflow_is_deleted_shows_it_whole_or_not(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    deleted = delete_before_reading_steps(rt, monkeypatch)
    listed = rt.list()
    assert deleted == [1]
    assert [s.results for s in listed] in ([], [RESULTS])


@pytest.mark.timeout(60)
def test_result_of_a_workflow_deleted_while_read_is_its_results(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``h.result()`` of a workflow that ended before anyone waited reads it from the
    store: it returned {} for a SUCCEEDED workflow deleted between its two reads."""
    handle = rt.handle("o1")
    deleted = delete_before_reading_steps(rt, monkeypatch)
    assert handle.result(timeout=WAIT) == RESULTS
    assert deleted == [1]


@pytest.mark.timeout(60)
def test_result_of_a_workflow_deleted_after_it_was_found_ended_says_so(rt: Runtime) -> None:
    handle = rt.handle("o1")
    ended = rt._store.get_workflow("o1")  # (what h.result() read first: it has ended)
    assert ended is not None
    assert purge(rt._store, T0 + 1e6) == 1
    with pytest.raises(UnknownWorkflow, match=r"ended SUCCEEDED, and was deleted \(retention"):
        handle._outcome((ended, None))


@pytest.mark.timeout(60)
def test_result_of_a_workflow_deleted_before_it_was_read_says_it_may_have_been(
    rt: Runtime,
) -> None:
    # The handle start() returned, read once retention deleted its workflow: a bare "no
    # workflow with id 'o1'" read as a workflow lost, where a deletion between two reads
    # of the same wait said why.
    handle = rt.handle("o1")
    assert purge(rt._store, T0 + 1e6) == 1
    with pytest.raises(UnknownWorkflow, match=r"'o1'.* deleted \(retention or herder purge\)"):
        handle.result(timeout=WAIT)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("read", ["status", "handle", "history"])
def test_a_read_of_a_workflow_retention_deleted_says_it_may_have_been(
    rt: Runtime, read: str
) -> None:
    # h.result() said so, but rt.status(), rt.handle() and rt.history() of the same id
    # said only "no workflow with id 'o1'": an id started a week ago, with retention on by
    # default, read as a workflow lost.
    assert purge(rt._store, T0 + 1e6) == 1
    with pytest.raises(UnknownWorkflow, match=r"'o1'.* deleted \(retention or herder purge\)"):
        getattr(rt, read)("o1")


@pytest.mark.timeout(60)
def test_history_of_a_workflow_deleted_while_read_is_whole(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    whole = rt.history("o1")
    deleted = delete_before_reading_steps(rt, monkeypatch, read="_paged")
    assert rt.history("o1") == whole  # (not [] for a workflow found there)
    assert deleted == [1]


@pytest.mark.timeout(60)
def test_ls_while_a_workflow_is_deleted_shows_it_whole_or_not(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``herder ls`` read a workflow's record, then its steps in another read: a
    deletion between them listed it SUCCEEDED with every step PENDING."""
    deleted = delete_before_reading_steps(rt, monkeypatch)
    out = io.StringIO()
    list_workflows(out, rt._store, state=None, limit=None, as_json=True)
    assert deleted == [1]
    listed = json.loads(out.getvalue())
    shown = [{st["name"]: st["result"] for st in w["steps"]} for w in listed]
    assert shown in ([], [RESULTS])  # (not {"pay": None, "ship": None}: PENDING)


@pytest.mark.timeout(60)
def test_a_start_whose_id_was_taken_by_a_workflow_deleted_since_says_so(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A start whose creation found its id taken (ConditionFailed) read the workflow that
    took it, asserting it was there: a deletion in that instant (retention, a purge) gave
    an AssertionError, or under ``python -O`` an AttributeError."""
    store, original, reads = rt._store, rt._store.get_workflow, []

    caller = threading.current_thread()

    def get_workflow(workflow_id: str) -> object:
        if threading.current_thread() is not caller:  # (the engine's, reloading it)
            return original(workflow_id)
        reads.append(workflow_id)
        if len(reads) == 1:  # the start's look: the racing start had not landed yet
            return None
        if len(reads) == 2:  # its commit found the id taken; that workflow is deleted now
            assert purge(store, T0 + 1e6) == 1
        return original(workflow_id)

    monkeypatch.setattr(store, "get_workflow", get_workflow)
    with pytest.raises(WorkflowConflict, match=r"'o1' was taken .* deleted \(retention"):
        rt.start("order", {}, workflow_id="o1")
    assert len(reads) == 2
    monkeypatch.undo()
    assert rt.start("order", {}, workflow_id="o1").result(timeout=WAIT) == RESULTS  # anew


@pytest.mark.timeout(60)
def test_ls_of_a_state_leaves_out_a_workflow_that_moved_on_since_the_index_was_read(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``herder ls --state RUNNING`` reads the ``recent`` index, then each record: one
    that ended in between was listed SUCCEEDED under --state RUNNING (it is at the top
    of the index now, under its new state)."""
    read_earlier = [(T0, "o1", "RUNNING")]  # (the index page, read before o1 ended)
    monkeypatch.setattr(rt._store, "recent", lambda **_: iter(read_earlier))
    out = io.StringIO()
    list_workflows(out, rt._store, state="RUNNING", limit=None, as_json=True)
    assert json.loads(out.getvalue()) == []
