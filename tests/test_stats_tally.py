"""``herder stats`` counts every step of a store: in one paged pass over the ``steps``
database beside the workflows, reading the fields it counts, and still counting as a
workflow's steps are shown (``in_plan_order``): PENDING for a planned step without a
record, a record its plan lacks, no plan readable, a record that cannot be read."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from herder.runtime import Workflow
from herder.runtime._inspect import _Reader, store_stats
from herder.store import (
    Put,
    StepRecord,
    StepState,
    Store,
    StoreCorrupt,
    Transition,
    WorkflowRecord,
    WorkflowState,
    definition_key,
    encode,
    step_key,
    workflow_key,
)

PLAN = Workflow("job").step("a", agent="x", action="go").step("b", agent="x", action="go")


def _workflow(wid: str, state: WorkflowState, version: int = 1) -> Put:
    record = WorkflowRecord(wid, "job", version, {"n": wid}, state, 1e9, 1e9)
    return Put("workflows", workflow_key(wid), encode(record.to_stored()))


def _step(wid: str, name: str, state: StepState, attempt: int = 1, comp: int = 0) -> Put:
    st = StepRecord(wid, name, state, attempt, comp_attempt=comp, result={"r": "x" * 50})
    return Put("steps", step_key(wid, name), encode(st.to_stored()))


def _varied(store: Store, n: int) -> None:
    """``n`` workflows of every kind the count meets, and records it cannot read."""
    plan = PLAN.compile()
    ops: list[Put] = [Put("definitions", definition_key("job", 1), encode(plan.to_dict()))]
    for i in range(n):
        wid = f"w{i:05d}"
        kind = i % 7
        if kind == 0:  # finished, a retry on the way
            ops += [_workflow(wid, WorkflowState.SUCCEEDED)]
            ops += [_step(wid, "a", StepState.SUCCEEDED, 2), _step(wid, "b", StepState.SUCCEEDED)]
        elif kind == 1:  # running: b has no record yet (PENDING)
            ops += [_workflow(wid, WorkflowState.RUNNING), _step(wid, "a", StepState.DISPATCHED)]
        elif kind == 2:  # compensated, undone in two attempts
            ops += [_workflow(wid, WorkflowState.COMPENSATED)]
            ops += [
                _step(wid, "a", StepState.COMPENSATED, 1, 2),
                _step(wid, "b", StepState.FAILED, 3),
            ]
        elif kind == 3:  # a record its plan lacks
            ops += [_workflow(wid, WorkflowState.RUNNING), _step(wid, "zz", StepState.WAITING)]
        elif kind == 4:  # its definition is not stored: its records alone
            ops += [_workflow(wid, WorkflowState.RUNNING, version=9)]
            ops += [_step(wid, "a", StepState.RETRY_WAIT, 4)]
        elif kind == 5:  # steps of no workflow (an orphan), and of a workflow id before it
            ops += [_step(wid, "a", StepState.SUCCEEDED), _step(wid + "x", "a", StepState.FAILED)]
        else:  # a step record damaged on disk: the workflow's steps are left out
            ops += [_workflow(wid, WorkflowState.RUNNING), _step(wid, "a", StepState.DISPATCHED)]
            ops += [Put("steps", step_key(wid, "b"), b"\x93\x01\x02\x03\x00\x00\x00\x00")]
    ops += [Put("workflows", workflow_key("w99999"), b"\xc1damaged")]  # (its steps: orphans)
    ops += [_step("w99999", "a", StepState.SUCCEEDED)]
    ops += [_workflow("w99999a", WorkflowState.RUNNING)]  # (a plan, no step record at all)
    for start in range(0, len(ops), 500):
        store.writer.submit(Transition(ops=tuple(ops[start : start + 500]))).result(timeout=30)


def _shown(store: Store) -> tuple[Any, ...]:
    """The counts as ``herder stats`` counted them before: each workflow's steps read
    as ``herder show`` shows them (in plan order, PENDING without a record)."""
    steps: Counter[str] = Counter(dict.fromkeys(map(str, StepState), 0))
    retries = undos = 0
    corrupt: list[StoreCorrupt] = []
    view = _Reader(store)
    for record in store.workflows(corrupt=corrupt):
        try:
            shown = view.steps(record)
        except StoreCorrupt as exc:
            corrupt.append(exc)
            continue
        for st in shown:
            steps[str(st.state)] += 1
            retries += max(0, st.attempt - 1)
            undos += max(0, st.comp_attempt - 1)
    keys = sorted((c.db, c.key) for c in corrupt + view.corrupt)
    return dict(steps), retries, undos, keys


@pytest.mark.timeout(60)
def test_stats_counts_each_workflows_steps_as_they_are_shown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("herder.store._access.PAGE", 7)  # (pages end inside workflows)
    with Store(tmp_path / "s") as store:
        _varied(store, 140)
        corrupt: list[StoreCorrupt] = []
        stats = store_stats(store, corrupt=corrupt)
        counted = (
            stats["steps"],
            stats["retries"],
            stats["compensation_retries"],
            sorted((c.db, c.key) for c in corrupt),
        )
        assert counted == _shown(store)
    assert stats["steps"]["PENDING"] == 20 + 2 * 20 + 2  # (b of 1s; a, b of 3s; w99999a's)
    assert stats["retries"] == 20 + 20 * 2 + 20 * 3
    assert stats["compensation_retries"] == 20
    assert stats["corrupt"] == 21  # each damaged step record and the damaged workflow


@pytest.mark.timeout(60)
def test_stats_reads_the_steps_a_page_at_a_time_not_once_per_workflow(tmp_path: Path) -> None:
    # `herder stats` read each workflow's steps in a read transaction of its own and
    # checked every field of each: 4-9 s per 100,000 steps on a big store. One pass over
    # the steps database, a page per read, reading what it counts.
    with Store(tmp_path / "s") as store:
        _varied(store, 2100)
        reads = 0
        real = store._read

        def counted(fn: Any) -> Any:
            nonlocal reads
            reads += 1
            return real(fn)

        store._read = counted  # type: ignore[method-assign]
        stats = store_stats(store, corrupt=[])
    assert stats["workflows"]["SUCCEEDED"] == 300
    assert reads < 30, reads  # (pages of 1,000 records and a few single reads; not 2,000)
