"""The Scheduler's history events, built straight from the records (``step_history``,
``workflow_history``), are exactly what the event map path (``step_event`` or
``workflow_event``, then ``history_put``) stores."""

from __future__ import annotations

import itertools

import pytest

from herder.store import (
    StepRecord,
    StepState,
    WorkflowRecord,
    WorkflowState,
    as_event,
    decode,
    history_put,
    key_prefix,
    step_event,
    step_history,
    workflow_event,
    workflow_history,
)

S = StepState
BASE = StepRecord("wf-1", "charge", S.DISPATCHED, attempt=1, token=7)
CASES = [
    (BASE, BASE.evolve(state=S.SUCCEEDED, token=8, result={"id": 3}), None),
    (BASE, BASE.evolve(state=S.RETRY_WAIT, token=9, error="boom"), "Traceback: boom"),
    (BASE.evolve(error="boom"), BASE.evolve(state=S.FAILED, error="boom"), "a note"),
    (BASE.evolve(state=S.SUCCEEDED), BASE.evolve(state=S.COMPENSATING, comp_attempt=1), None),
    (BASE, BASE.evolve(state=S.FAILED, error="x", extra={"agent": "b"}), "trace"),
]


@pytest.mark.parametrize(("old", "new", "note"), CASES)
def test_a_step_event_is_stored_as_the_event_map_would_be(
    old: StepRecord, new: StepRecord, note: str | None
) -> None:
    seq = itertools.count(41)
    entry = step_history(key_prefix("wf-1"), old, new, 12.5, note=note, seq=lambda: next(seq))
    assert entry is not None
    event = step_event(old, new, 12.5)
    assert event is not None
    if note is not None and event["error"]:
        event["traceback"] = note
    put = history_put("wf-1", 41, event)
    assert entry == (("history", put.key), put.value)
    assert as_event(decode(entry[1], db="history", key=put.key)) == event


def test_a_change_that_is_no_transition_has_no_event_and_draws_no_sequence() -> None:
    beat = BASE.evolve(heartbeat={"pct": 50}, updated=3.0)
    drawn = itertools.count(1)
    prefix = key_prefix("wf-1")
    assert step_history(prefix, BASE, beat, 3.0, note=None, seq=lambda: next(drawn)) is None
    assert next(drawn) == 1  # no sequence number was drawn


W = WorkflowState
RECORD = WorkflowRecord("wf-1", "order", 1, {"n": 1}, W.RUNNING, created=1.0, updated=2.0)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (None, RECORD),
        (W.RUNNING, RECORD.evolve(state=W.SUCCEEDED, updated=9.5)),
        (W.RUNNING, RECORD.evolve(state=W.COMPENSATING, error="step 'a' failed: boom")),
    ],
)
def test_a_workflow_event_is_stored_as_the_event_map_would_be(
    old: WorkflowState | None, new: WorkflowRecord
) -> None:
    entry = workflow_history(key_prefix("wf-1"), 41, old, new)
    event = workflow_event(old, new)
    put = history_put("wf-1", 41, event)
    assert entry == (("history", put.key), put.value)
    assert as_event(decode(entry[1], db="history", key=put.key)) == event
