"""A standby's poll of the workflows its callers wait on (``Waiting._resolve_ended``):
those unfinished are told apart by their stored state alone, without decoding their
records (20 polls a second decoded every waited record: 13 ms of CPU per poll for
1,000 waited workflows with inputs of 50 keys), and its answers stay the same."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from herder.runtime import Agent, Runtime, StepContext, UnknownWorkflow, Workflow
from herder.runtime._waits import OneShot
from herder.store import Delete, Put, Store, Transition, WorkflowState, workflow_key

WAIT = 30.0
pytestmark = pytest.mark.timeout(60)


class Dev(Agent):
    def act(self, ctx: StepContext) -> int:
        return 1


def _waiting(rt: Runtime, workflow_id: str) -> OneShot[Any]:
    """A waiter on ``workflow_id`` as a standby's caller has one: nothing here will
    announce its end (it runs in the active process), only the poll."""
    waiter: OneShot[Any] = OneShot()
    with rt._lock:
        rt._waiters.setdefault(workflow_id, []).append(waiter)
        rt._running.discard(workflow_id)
    return waiter


def _write(rt: Runtime, *ops: Any) -> None:
    rt._store.writer.submit(Transition(ops=ops)).result(timeout=WAIT)


def test_the_poll_reads_no_waited_record_whole_while_its_workflow_is_unfinished(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Runtime(tmp_path / "s") as rt:
        rt.add_agent("dev", Dev)
        rt.add_workflow(Workflow("w").step("a", agent="dev", action="act"))
        big = {f"k{i}": "x" * 20 for i in range(50)}
        later = [rt.start("w", big, delay=3600).id for _ in range(3)]
        waiters = [_waiting(rt, wid) for wid in later]
        reads: list[str] = []
        real = Store.get_workflow

        def counted(store: Store, workflow_id: str) -> Any:
            reads.append(workflow_id)
            return real(store, workflow_id)

        monkeypatch.setattr(Store, "get_workflow", counted)
        rt._resolve_ended()
        assert reads == []  # (each was decoded whole, at every poll)
        assert not any(waiter._ready for waiter in waiters)
        assert set(rt._waiters) == set(later)
        with rt._lock:
            rt._waiters.clear()


def test_the_poll_resolves_an_ended_one_fails_a_deleted_one_and_waits_on_a_damaged_one(
    tmp_path: Path,
) -> None:
    with Runtime(tmp_path / "s") as rt:
        rt.add_agent("dev", Dev)
        rt.add_workflow(Workflow("w").step("a", agent="dev", action="act"))
        ended, gone, damaged = (rt.start("w", {"n": i}) for i in range(3))
        for handle in (ended, gone, damaged):
            handle.result(timeout=WAIT)
        _write(rt, Delete("workflows", workflow_key(gone.id)))
        _write(rt, Put("workflows", workflow_key(damaged.id), b"\x93\x03not a record"))
        waiters = {wid: _waiting(rt, wid) for wid in (ended.id, gone.id, damaged.id)}
        rt._resolve_ended()
        record, steps = waiters[ended.id].wait(0)
        assert (record.state, steps) == (WorkflowState.SUCCEEDED, None)
        with pytest.raises(UnknownWorkflow, match="was deleted"):
            waiters[gone.id].wait(0)
        assert not waiters[damaged.id]._ready  # (waits, as a damaged record did before)
        assert list(rt._waiters) == [damaged.id]
        with rt._lock:
            rt._waiters.clear()
