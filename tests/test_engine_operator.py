"""The records an operator's action writes (``herder.actors.engine._operator``), as tables."""

from __future__ import annotations

import itertools

import pytest

from herder.actors.engine import (
    ALLOWED_STEPS,
    abandoned_step,
    given_up,
    orphan_given_up,
    undo_again,
)
from herder.store import StepRecord, StepState, WorkflowState

S = StepState


def _step(state: StepState, **changes: object) -> StepRecord:
    base = StepRecord("w", "a", state=state, token=1, deadline=9.0, timer_ms=9000)
    return base.evolve(**changes)


@pytest.mark.parametrize(
    ("state", "after", "undone"),
    [
        (S.DISPATCHED, S.FAILED, True),  # its attempt may have taken effect
        (S.WAITING, S.FAILED, True),
        (S.UNKNOWN, S.FAILED, True),
        (S.RETRY_WAIT, S.FAILED, True),
        (S.PENDING, S.PENDING, False),  # a delayed start: only its timer goes
        (S.COMPENSATING, S.COMPENSATING, False),
        (S.SUCCEEDED, S.SUCCEEDED, False),
    ],
)
def test_abandon_ends_what_runs_or_waits_and_clears_every_timer(
    state: StepState, after: StepState, undone: bool
) -> None:
    new = abandoned_step(_step(state), itertools.count(5).__next__, now=10.0)
    assert new is not None
    assert (new.state, new.timer_ms, new.deadline, new.token) == (after, None, None, 5)
    assert (new.done_token == 5) is undone
    assert new.state in ALLOWED_STEPS[WorkflowState.ABANDONED]


def test_abandon_leaves_a_step_with_nothing_to_wake_as_it_is() -> None:
    settled = StepRecord("w", "a", state=S.SUCCEEDED, token=1)
    assert abandoned_step(settled, itertools.count(5).__next__, now=10.0) is None


def test_compensate_gives_up_a_step_nothing_will_settle_without_marking_it_done() -> None:
    new = given_up(_step(S.UNKNOWN, error="outcome unknown"), token=7, now=10.0)
    assert (new.state, new.token, new.done_token, new.timer_ms) == (S.FAILED, 7, None, None)
    assert new.error == "outcome unknown; given up: compensation requested"
    # A step with no error yet (waiting for its completion) was given up as "None; ...".
    waiting = given_up(_step(S.WAITING), token=8, now=10.0)
    assert waiting.error == "given up while WAITING: compensation requested"


def test_cancel_gives_up_an_orphan_and_marks_it_done_so_it_is_undone() -> None:
    new = orphan_given_up(_step(S.DISPATCHED), "cancelled", token=8, now=10.0)
    assert (new.state, new.token, new.done_token, new.timer_ms) == (S.FAILED, 8, 8, None)
    assert new.error == "the attempt running at a crash was not run again: cancelled"


def test_a_failed_compensation_runs_again_at_once_with_a_fresh_count() -> None:
    st = _step(S.COMPENSATING, comp_attempt=3, error="refund down", timer_ms=None, deadline=None)
    new = undo_again(st, now=10.0)
    assert (new.comp_attempt, new.error, new.retry_at, new.timer_ms) == (0, None, 10.0, 10000)
