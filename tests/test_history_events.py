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
    (BASE.evolve(error="boom"), BASE.evolve(state=S.RETRY_WAIT, token=9, error="boom"), "n"),
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


def test_every_failed_attempt_says_its_error_though_the_last_one_said_the_same() -> None:
    # A DISPATCHED record keeps the previous attempt's error; an attempt failing with the
    # same words again stored no error and no traceback, the final one included, and
    # `herder show` had nothing to say about attempts 2 and 3 (the workflow review).
    seq = itertools.count(1)
    again = BASE.evolve(attempt=2, error="connection refused")  # (retried, running)
    for to in (S.RETRY_WAIT, S.FAILED):
        failed = again.evolve(state=to, token=10, error="connection refused")
        event = step_event(again, failed, 5.0)
        assert event is not None
        assert event["error"] == "connection refused"
        entry = step_history(
            key_prefix("wf-1"), again, failed, 5.0, note="Traceback ...", seq=lambda: next(seq)
        )
        assert entry is not None
        assert as_event(decode(entry[1], db="history", key=entry[0][1]))["traceback"]
    # Sent again, the step does not repeat the error it keeps.
    dispatched = step_event(again.evolve(state=S.RETRY_WAIT), again.evolve(attempt=3), 6.0)
    assert dispatched is not None
    assert dispatched["error"] is None


def test_a_change_that_is_no_transition_has_no_event_and_draws_no_sequence() -> None:
    beat = BASE.evolve(heartbeat={"pct": 50}, updated=3.0)
    drawn = itertools.count(1)
    prefix = key_prefix("wf-1")
    assert step_history(prefix, BASE, beat, 3.0, note=None, seq=lambda: next(drawn)) is None
    assert next(drawn) == 1  # no sequence number was drawn


LOST = "herder.InstanceGivenUp: its agent was given up on"
COMPENSATING = BASE.evolve(state=S.COMPENSATING, comp_attempt=2, token=9)


@pytest.mark.parametrize(
    ("old", "new", "named"),
    [
        # lost through no fault of its own: its number given back, the event names it
        (BASE, BASE.evolve(state=S.RETRY_WAIT, attempt=0, token=9, error=LOST), 1),
        (COMPENSATING, COMPENSATING.evolve(comp_attempt=1, token=10, error=LOST), 2),
        # reset by an operator (no error): the new number
        (BASE.evolve(state=S.FAILED, attempt=3), BASE.evolve(state=S.PENDING, attempt=0), 0),
        (COMPENSATING, COMPENSATING.evolve(comp_attempt=0, token=10), 0),
        # a new attempt: its own number
        (BASE.evolve(state=S.RETRY_WAIT), BASE.evolve(attempt=2, token=9), 2),
    ],
)
def test_an_event_names_the_attempt_that_ended_also_when_its_number_was_given_back(
    old: StepRecord, new: StepRecord, named: int
) -> None:
    # An uncharged loss stored "attempt 0" while its log line said attempt 1 failed.
    event = step_event(old, new, 1.0)
    assert event is not None
    assert event["attempt"] == named
    entry = step_history(key_prefix("wf-1"), old, new, 1.0, note=None, seq=lambda: 5)
    assert entry is not None
    assert as_event(decode(entry[1], db="history", key=entry[0][1]))["attempt"] == named


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
