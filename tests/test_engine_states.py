"""The engine's state tables (``herder.actors.engine._states``), tested as tables.

No runtime, no store, no fixture: each case is a row of what DESIGN.md's "State
machines" says, checked against the one table the code consults.
"""

from __future__ import annotations

import pytest

from herder.actors.engine import (
    ALLOWED_STEPS,
    BUSY,
    OPERATOR_STEP_NEXT,
    OPERATOR_WORKFLOW_NEXT,
    RESTARTABLE,
    SKIPPABLE,
    STEP_NEXT,
    STUCK,
    UNDOING,
    WAITS_TO_RUN,
    WORKFLOW_NEXT,
    ended_for_good,
    holds_timer,
    reachable,
    to_undo,
)
from herder.store import StepRecord, StepState, WorkflowState

S = StepState
W = WorkflowState


def _step(state: StepState, **changes: object) -> StepRecord:
    return StepRecord("w", "a", state=state).evolve(**changes)


def test_every_state_has_a_row_in_every_table() -> None:
    assert set(STEP_NEXT) == set(StepState)
    assert set(OPERATOR_STEP_NEXT) == set(StepState)
    assert set(WORKFLOW_NEXT) == set(WorkflowState)
    assert set(ALLOWED_STEPS) == set(WorkflowState)


@pytest.mark.parametrize(
    ("state", "later"),
    [
        (S.PENDING, set(S)),
        (S.DISPATCHED, set(S) - {S.PENDING}),
        (S.RETRY_WAIT, set(S) - {S.PENDING}),
        (S.WAITING, set(S) - {S.PENDING}),
        (S.UNKNOWN, set(S) - {S.PENDING}),
        (S.FAILED, {S.FAILED, S.COMPENSATING, S.COMPENSATED}),  # undone: it may have applied
        (S.SUCCEEDED, {S.SUCCEEDED, S.COMPENSATING, S.COMPENSATED}),
        (S.COMPENSATING, {S.COMPENSATING, S.COMPENSATED}),
        (S.COMPENSATED, {S.COMPENSATED}),
    ],
)
def test_a_step_reaches_only_what_the_design_allows(state: StepState, later: set[S]) -> None:
    assert reachable(STEP_NEXT, state) == later


@pytest.mark.parametrize(
    ("state", "later"),
    [
        (W.PENDING, set(W) - {W.ABANDONED}),
        (
            W.RUNNING,
            {W.RUNNING, W.SUCCEEDED, W.COMPENSATING, W.COMPENSATED, W.CANCELLED}
            | {W.NEEDS_ATTENTION},
        ),
        (W.COMPENSATING, {W.COMPENSATING, W.COMPENSATED, W.CANCELLED, W.NEEDS_ATTENTION}),
        (W.SUCCEEDED, {W.SUCCEEDED}),
        (W.COMPENSATED, {W.COMPENSATED}),
        (W.CANCELLED, {W.CANCELLED}),
        (W.NEEDS_ATTENTION, {W.NEEDS_ATTENTION}),  # until an operator acts
        (W.ABANDONED, {W.ABANDONED}),
    ],
)
def test_a_workflow_reaches_only_what_the_design_allows(
    state: WorkflowState, later: set[W]
) -> None:
    assert reachable(WORKFLOW_NEXT, state) == later


def test_only_an_operator_moves_a_step_back_to_pending_or_abandons_a_workflow() -> None:
    assert all(S.PENDING not in nxt for s, nxt in STEP_NEXT.items() if s is not S.PENDING)
    assert all(W.ABANDONED not in nxt for nxt in WORKFLOW_NEXT.values())
    assert {s for s, nxt in OPERATOR_STEP_NEXT.items() if S.PENDING in nxt} == (
        RESTARTABLE | {S.PENDING}
    )
    assert {w for w, nxt in OPERATOR_WORKFLOW_NEXT.items() if W.ABANDONED in nxt} == {
        W.RUNNING,
        W.COMPENSATING,
        W.NEEDS_ATTENTION,
    }


def test_an_operator_never_reopens_a_finished_workflow_or_undoes_an_undo() -> None:
    for state in (W.SUCCEEDED, W.COMPENSATED, W.CANCELLED, W.ABANDONED):
        assert state not in OPERATOR_WORKFLOW_NEXT
    assert OPERATOR_STEP_NEXT[S.COMPENSATED] == {S.COMPENSATED}
    assert OPERATOR_STEP_NEXT[S.SUCCEEDED] == {S.SUCCEEDED}


def test_the_named_sets_mean_what_their_names_say() -> None:
    assert {S.COMPENSATING, S.COMPENSATED} == UNDOING
    assert {s for s in S if s.is_compensation} == UNDOING
    assert RESTARTABLE | {S.PENDING} == SKIPPABLE
    assert STUCK <= RESTARTABLE
    assert not BUSY & WAITS_TO_RUN
    assert not RESTARTABLE & UNDOING
    # a busy step is on its way somewhere: nothing busy is a dead end of the machine
    assert all(STEP_NEXT[s] - {s} for s in BUSY)


@pytest.mark.parametrize(
    ("step", "undo"),
    [
        (_step(S.SUCCEEDED, done_token=5), True),
        (_step(S.FAILED, done_token=5), True),  # may have taken effect
        (_step(S.FAILED), False),  # Permanent: it took no effect
        (_step(S.PENDING), False),
        (_step(S.DISPATCHED, done_token=5), False),
        (_step(S.COMPENSATED, done_token=5), False),
    ],
)
def test_compensation_undoes_what_may_have_taken_effect(step: StepRecord, undo: bool) -> None:
    assert to_undo(step) is undo


@pytest.mark.parametrize(
    ("workflow", "step", "timer"),
    [
        (W.RUNNING, _step(S.DISPATCHED), True),
        (W.RUNNING, _step(S.RETRY_WAIT), True),
        (W.RUNNING, _step(S.WAITING), True),
        (W.RUNNING, _step(S.UNKNOWN), True),
        (W.NEEDS_ATTENTION, _step(S.UNKNOWN), False),  # its probes gave up
        (W.COMPENSATING, _step(S.COMPENSATING), True),
        (W.NEEDS_ATTENTION, _step(S.COMPENSATING), False),  # parked
        (W.RUNNING, _step(S.PENDING), False),
        (W.RUNNING, _step(S.PENDING, retry_at=10.0), True),  # a delayed start
        (W.COMPENSATED, _step(S.PENDING, retry_at=10.0), False),
        (W.RUNNING, _step(S.SUCCEEDED), False),
        (W.COMPENSATING, _step(S.FAILED), False),
    ],
)
def test_a_step_holds_a_timer_exactly_while_something_must_wake_it(
    workflow: WorkflowState, step: StepRecord, timer: bool
) -> None:
    assert holds_timer(workflow, step) is timer


@pytest.mark.parametrize("workflow", list(WorkflowState))
def test_a_workflow_allows_no_step_state_its_steps_cannot_reach(workflow: WorkflowState) -> None:
    # Every allowed step state is one a step can be in (reachable from PENDING through
    # the engine's or an operator's moves): the allowance table has no typo'd rows.
    moves = {s: STEP_NEXT[s] | OPERATOR_STEP_NEXT[s] for s in S}
    assert ALLOWED_STEPS[workflow] <= reachable(moves, S.PENDING)


def test_allowed_step_states_follow_the_workflow() -> None:
    assert ALLOWED_STEPS[W.SUCCEEDED] == {S.SUCCEEDED}
    assert not ALLOWED_STEPS[W.RUNNING] & (UNDOING | {S.FAILED})
    for final in (W.SUCCEEDED, W.COMPENSATED, W.CANCELLED):
        assert not ALLOWED_STEPS[final] & BUSY, final
    # Abandon ends what ran or waited (issue 14, defect 4): nothing is left to wake.
    assert ALLOWED_STEPS[W.ABANDONED] == set(S) - {S.DISPATCHED, S.WAITING, S.UNKNOWN, S.RETRY_WAIT}


def test_the_operator_actions_table_is_the_one_every_face_consults() -> None:
    # The applicable states lived as tuples in actors/_operator.py, while this module's
    # table (read by no runtime code) had drifted: a skip that leaves a workflow parked
    # on another stuck step was missing from it.
    from herder.actors.engine import OPERATOR_ACTIONS, operator_refusal
    from herder.runtime._operator_cli import ACTIONS  # (the CLI's and the console's)
    from herder.runtime.ui._pages import action_form

    assert set(ACTIONS) == set(OPERATOR_ACTIONS)
    leaves = set().union(*OPERATOR_ACTIONS.values())
    assert leaves == set(OPERATOR_WORKFLOW_NEXT)
    assert W.NEEDS_ATTENTION in OPERATOR_WORKFLOW_NEXT[W.NEEDS_ATTENTION]
    for state in W:
        assert ended_for_good(state) is (state.is_final and state not in leaves)
        offered = action_form("w", state, "csrf", None)
        for action, states in OPERATOR_ACTIONS.items():
            assert (operator_refusal("w", state, action) is None) is (state in states)
            assert (f'value="{action}"' in offered) is (state in states), (state, action)
    assert "retry applies to a workflow in NEEDS_ATTENTION" in str(
        operator_refusal("w", W.RUNNING, "retry")
    )
    assert "not an operator action" in str(operator_refusal("w", W.RUNNING, "reboot"))


def test_retention_deletes_by_default_what_no_operator_action_leaves() -> None:
    # The store cannot import the engine, so it keeps its own set: the two must agree.
    from herder.store import FINISHED

    assert {str(s) for s in W if ended_for_good(s)} == FINISHED
