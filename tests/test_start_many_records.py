"""The fast path that builds a new workflow's stored values (``new_workflow``, thousands per
``start_many``): the same records and bytes as building each record and encoding its
``to_stored()``, and index facts equal to what the writer would decode (also those the
Scheduler's workflow writes carry)."""

from __future__ import annotations

import pytest

from herder.actors._commits import Txn
from herder.runtime import Workflow
from herder.runtime._starts import _created_event
from herder.runtime._timing import new_workflow
from herder.store import (
    Indexed,
    StepRecord,
    WorkflowRecord,
    WorkflowState,
    as_event,
    decode,
    encode,
    history_put,
    indexed,
    workflow_event,
)
from herder.store._recent import index_entry

PLAN = (
    Workflow("pay", version=3)
    .step("reserve", agent="bank", action="hold", delay=2.5)
    .step("charge", agent="bank", action="charge", after=["reserve"])
    .step("mail", agent="{region}-mail", action="send")
    .compile()
)
NOW = 1_700_000_000.25


@pytest.mark.parametrize("begin", [None, NOW + 60.0])
@pytest.mark.parametrize("deadline", [None, NOW + 3600.0])
def test_new_workflow_gives_the_bytes_and_records_of_to_stored(
    begin: float | None, deadline: float | None
) -> None:
    agents = {"mail": "eu-mail"}
    record, steps, ops = new_workflow(
        PLAN,
        "w-1",
        {"region": "eu", "n": [1, 2.5]},
        NOW,
        priority=-7,
        begin=begin,
        agents=agents,
        trace="00-abc-def-01",
        deadline=deadline,
    )
    expected = WorkflowRecord(
        "w-1",
        "pay",
        3,
        {"region": "eu", "n": [1, 2.5]},
        WorkflowState.RUNNING,
        NOW,
        NOW,
        priority=-7,
        agents=agents,
        trace="00-abc-def-01",
        deadline=deadline,
    )
    assert record == expected
    assert ops[0].db == "workflows"
    assert ops[0].value == encode(expected.to_stored())
    by_key = {(op.db, op.key): op.value for op in ops}
    for spec, step in zip(PLAN.steps, steps, strict=True):
        # (a first step's own delay is stored with the workflow, as a delayed start)
        timed = not spec.after and (begin is not None or bool(spec.delay))
        at = None if not timed else (NOW if begin is None else begin) + (spec.delay or 0.0)
        want = StepRecord(
            "w-1",
            spec.name,
            retry_at=at,
            timer_ms=None if at is None else int(at * 1000),
            updated=NOW,
        )
        assert step == want
        stored = by_key.get(("steps", step.key))
        assert stored == (encode(want.to_stored()) if timed else None)
    # Each step record has a dict of its own: the records are not sharing a template's.
    assert len({id(step.extra) for step in steps}) == len(steps)


def test_index_facts_carried_by_a_new_workflow_equal_the_decoded_ones() -> None:
    record, _, ops = new_workflow(PLAN, "w-2", None, NOW, priority=0, begin=None)
    value = ops[0].value
    assert type(value) is Indexed
    plain = bytes(value)
    assert index_entry(b"w-2", value, None) == index_entry(b"w-2", plain, None)
    assert decode(plain, db="workflows", key=b"w-2")[0] == 3  # a schema 3 array
    for state in WorkflowState:  # every state the facts may be made for
        other = record.evolve(state=state, updated=NOW + 1.5)
        raw = encode(other.to_stored())
        assert index_entry(b"w-2", indexed(raw, other.updated, state), None) == index_entry(
            b"w-2", raw, None
        )


def test_the_schedulers_workflow_writes_carry_the_index_facts_decoding_gives() -> None:
    txn = Txn("w-2")
    record = WorkflowRecord("w-2", "pay", 3, {"n": 1}, WorkflowState.RUNNING, NOW, NOW)
    for state in WorkflowState:
        txn.put_workflow(record.evolve(state=state, updated=NOW + 2.5))
        value = txn.ops[("workflows", b"w-2")]
        assert type(value) is Indexed
        assert index_entry(b"w-2", value, None) == index_entry(b"w-2", bytes(value), None)
        assert bytes(value) == encode(record.evolve(state=state, updated=NOW + 2.5).to_stored())


@pytest.mark.parametrize("now", [0.0, NOW, NOW + 0.001])
def test_the_created_event_of_a_start_is_the_workflow_event_of_its_record(now: float) -> None:
    # start() builds the event's bytes from its fields, not from a throwaway record.
    record = WorkflowRecord("w-3", "pay", 3, None, WorkflowState.RUNNING, now, now)
    want = history_put("w-3", 7, workflow_event(None, record)).value
    assert _created_event(now) == want
    assert as_event(decode(want, db="history", key=b"k"))["to"] == "RUNNING"
