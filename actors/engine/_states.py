"""The step and workflow state machines, as tables: the one place they are written down.

DESIGN.md ("State machines") draws the two machines; these tables are what the code
consults. A step moves forward ``PENDING -> DISPATCHED -> {SUCCEEDED | RETRY_WAIT |
FAILED}`` (with ``WAITING`` for a hand-off and ``UNKNOWN`` for a probe), and a step
that may have taken effect is later undone ``COMPENSATING -> COMPENSATED``. A workflow
runs, then either succeeds or undoes what it did and ends COMPENSATED, CANCELLED or
parked in NEEDS_ATTENTION for an operator.

- :data:`STEP_NEXT` / :data:`WORKFLOW_NEXT`: the moves the engine makes on its own, one
  transition at a time. A durable snapshot may skip states in between (a step dispatched
  and answered in one batch), so observers compare against :func:`reachable`.
- :data:`OPERATOR_ACTIONS`: the workflow states each operator action applies to;
- :data:`OPERATOR_STEP_NEXT` / :data:`OPERATOR_WORKFLOW_NEXT`: the moves only an
  operator's action makes (retry, skip, compensate, abandon), derived from the sets below.
- :data:`ALLOWED_STEPS`: which step states each workflow state admits in the store.
- Sets with one meaning each: :data:`BUSY`, :data:`WAITS_TO_RUN`, :data:`UNDOING`,
  :data:`RESTARTABLE`, :data:`SKIPPABLE`, :data:`STUCK`, :data:`ENDED_BY_ABANDON`,
  :data:`UNSETTLED`;
  predicates :func:`to_undo`, :func:`holds_timer` and :func:`ended_for_good`.

Imports: herder.store records only; pure data, no clock, no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import TypeVar

from herder.store import StepRecord, StepState, WorkflowState

S = StepState
W = WorkflowState
_T = TypeVar("_T")


# -- the step machine ------------------------------------------------------------------

STEP_NEXT: Mapping[StepState, frozenset[StepState]] = MappingProxyType(
    {
        # dispatched; or its delay (or a cleared one) recorded while it stays PENDING; or,
        # retried by an operator after an attempt that may have taken effect, not run
        # again because the workflow compensates (given up, to be undone)
        S.PENDING: frozenset({S.PENDING, S.DISPATCHED, S.FAILED}),
        # re-dispatched as an orphan or deferred as a poison suspect (attempt + 1 or a
        # retry_at), handed off, lapsed into a probe, answered, or parked as poison
        S.DISPATCHED: frozenset(
            {S.DISPATCHED, S.WAITING, S.UNKNOWN, S.SUCCEEDED, S.RETRY_WAIT, S.FAILED}
        ),
        # completed by complete_step/fail_step, or its deadline lapsed
        S.WAITING: frozenset({S.WAITING, S.UNKNOWN, S.SUCCEEDED, S.RETRY_WAIT, S.FAILED}),
        # probed (again), or the probe found it applied, not applied, or kept failing
        S.UNKNOWN: frozenset({S.UNKNOWN, S.SUCCEEDED, S.RETRY_WAIT, S.FAILED}),
        # its backoff ended; or not retried because the workflow began compensating
        S.RETRY_WAIT: frozenset({S.DISPATCHED, S.FAILED}),
        # undone (a failure that was not Permanent may have taken effect)
        S.SUCCEEDED: frozenset({S.COMPENSATING}),
        S.FAILED: frozenset({S.COMPENSATING}),
        # retried, failed for good (the workflow is parked), or undone
        S.COMPENSATING: frozenset({S.COMPENSATING, S.COMPENSATED}),
        S.COMPENSATED: frozenset(),
    }
)
"""Each step state -> the states the engine may move it to directly."""

BUSY = frozenset({S.DISPATCHED, S.COMPENSATING, S.WAITING, S.UNKNOWN})
"""An attempt, hand-off or probe is under way: a compensating workflow waits for it
before it undoes the next step."""

WAITS_TO_RUN = frozenset({S.PENDING, S.RETRY_WAIT})
"""Forward states before an attempt: ``retry_at`` is the time the step waits for (a
delayed start, its delay, a retry's backoff)."""

UNDOING = frozenset(s for s in StepState if s.is_compensation)
"""The states of undoing a step; their attempts are counted in ``comp_attempt``."""

RESTARTABLE = frozenset({S.FAILED, S.UNKNOWN, S.WAITING, S.DISPATCHED, S.RETRY_WAIT})
"""Forward states an operator's retry of a parked workflow runs again from attempt 1."""

SKIPPABLE = RESTARTABLE | {S.PENDING}
"""Forward states an operator may skip (record as succeeded with a given result)."""

STUCK = RESTARTABLE
"""Forward states a parked workflow can be stuck on (what its retry restarts); a step
whose compensation failed (COMPENSATING) is stuck before any of them."""


POISON_ERROR = "herder.PoisonWork"
"""The error type of a step parked as poison work (``_recovery.poisoned``)."""


def stuck_step(steps: list[StepRecord]) -> StepRecord | None:
    """The step a parked workflow waits on (``steps`` in plan order): a failed
    compensation, else the first step parked as poison work, else the first failed or
    unresolved forward step (:data:`STUCK`); what the inbox shows, and what a skip that
    names no step takes."""
    first = None
    for st in steps:
        if st.state is S.COMPENSATING:
            return st
        if first is None and st.state in STUCK:
            first = st
    poison = (st for st in steps if st.state in STUCK and st.error_type == POISON_ERROR)
    return next(poison, first)


ENDED_BY_ABANDON = frozenset({S.DISPATCHED, S.WAITING, S.UNKNOWN, S.RETRY_WAIT})
"""Forward states an operator's ``abandon`` marks FAILED: nothing runs or wakes them any
more (every other step stays where it is, its timer cleared)."""

UNSETTLED = frozenset({S.DISPATCHED, S.WAITING, S.UNKNOWN})
"""Forward states whose outcome is under way or awaited: a workflow deadline that fires
fences them (``_deadline``); an operator's ``compensate`` gives them up (FAILED, a running
one only when the workflow is parked: nothing will settle them)."""


def to_undo(st: StepRecord) -> bool:
    """Whether compensation must undo this step: it succeeded, or it failed in a way that
    may have taken effect (``done_token`` is set on every failure but a Permanent one)."""
    return st.state is S.SUCCEEDED or (st.state is S.FAILED and st.done_token is not None)


def _operator_steps() -> dict[StepState, frozenset[StepState]]:
    rows: dict[StepState, set[StepState]] = {s: set() for s in StepState}
    for s in RESTARTABLE:
        rows[s].add(S.PENDING)  # retry
    for s in SKIPPABLE:
        rows[s].add(S.SUCCEEDED)  # skip
    for s in UNSETTLED:
        rows[s].add(S.FAILED)  # compensate
    rows[S.COMPENSATING] |= {S.COMPENSATING, S.COMPENSATED}  # retry / skip the undo
    for s in StepState:
        rows[s].add(S.FAILED if s in ENDED_BY_ABANDON else s)  # abandon
    return {s: frozenset(next_states) for s, next_states in rows.items()}


OPERATOR_STEP_NEXT: Mapping[StepState, frozenset[StepState]] = MappingProxyType(_operator_steps())
"""Each step state -> the states an operator's action may move it to directly."""


# -- the workflow machine --------------------------------------------------------------

WORKFLOW_NEXT: Mapping[WorkflowState, frozenset[WorkflowState]] = MappingProxyType(
    {
        W.PENDING: frozenset({W.RUNNING}),  # a record's default; stored RUNNING
        # every step succeeded; a step failed or it was cancelled; its probes kept
        # failing or it crashed the process too often (parked)
        W.RUNNING: frozenset({W.RUNNING, W.SUCCEEDED, W.COMPENSATING, W.NEEDS_ATTENTION}),
        # everything undone (cancelled or not), or a compensation failed for good
        W.COMPENSATING: frozenset({W.COMPENSATING, W.COMPENSATED, W.CANCELLED, W.NEEDS_ATTENTION}),
        W.SUCCEEDED: frozenset(),
        W.COMPENSATED: frozenset(),
        W.CANCELLED: frozenset(),
        W.NEEDS_ATTENTION: frozenset(),  # until an operator acts
        W.ABANDONED: frozenset(),
    }
)
"""Each workflow state -> the states the engine may move it to directly."""

OPERATOR_ACTIONS: Mapping[str, frozenset[WorkflowState]] = MappingProxyType(
    {
        "retry": frozenset({W.NEEDS_ATTENTION}),  # resume where it stopped
        "skip": frozenset({W.NEEDS_ATTENTION, W.RUNNING, W.COMPENSATING}),  # done by hand
        "compensate": frozenset({W.NEEDS_ATTENTION, W.RUNNING}),  # undo what it did
        "cancel": frozenset({W.RUNNING, W.COMPENSATING}),  # stop and undo (or mark it so)
        "abandon": frozenset({W.NEEDS_ATTENTION, W.RUNNING, W.COMPENSATING}),  # end it as is
    }
)
"""Each operator action -> the workflow states it applies to; it is refused in any other
(:func:`operator_refusal`)."""

OPERATOR_WORKFLOW_NEXT: Mapping[WorkflowState, frozenset[WorkflowState]] = MappingProxyType(
    {
        # retry (resumes forward, or the failed compensation), skip (parked still while
        # another step is stuck), compensate, abandon
        W.NEEDS_ATTENTION: frozenset({W.RUNNING, W.COMPENSATING, W.NEEDS_ATTENTION, W.ABANDONED}),
        W.RUNNING: frozenset({W.RUNNING, W.COMPENSATING, W.ABANDONED}),  # skip, cancel
        W.COMPENSATING: frozenset({W.COMPENSATING, W.ABANDONED}),  # cancel marks it
    }
)
"""Workflow states an operator's action may move a workflow out of, and where to."""


def ended_for_good(state: WorkflowState) -> bool:
    """True for a final state no operator action leaves (every one but NEEDS_ATTENTION):
    an action on such a workflow is refused before anything is queued."""
    return state.is_final and not any(state in states for states in OPERATOR_ACTIONS.values())


def operator_refusal(workflow_id: str, state: WorkflowState, action: str) -> str | None:
    """Why operator ``action`` does not apply to a workflow in ``state``
    (:data:`OPERATOR_ACTIONS`), or None: it does."""
    allowed = OPERATOR_ACTIONS.get(action)
    if allowed is None:
        return f"{action!r:.40} is not an operator action; use one of {', '.join(OPERATOR_ACTIONS)}"
    if state in allowed:
        return None
    if state is W.NEEDS_ATTENTION and action == "cancel":
        return (
            f"workflow {workflow_id!r} is NEEDS_ATTENTION (parked for an operator), and cancel "
            "does not apply to a parked workflow: compensate undoes its completed steps, "
            "abandon ends it as it is"
        )
    names = " or ".join(str(s) for s in W if s in allowed)
    return f"workflow {workflow_id!r} is {state}; {action} applies to a workflow in {names}"


def parked_refusal(workflow_id: str, state: WorkflowState, action: str) -> str | None:
    """:func:`operator_refusal` for a parked workflow (NEEDS_ATTENTION), else None: the
    state of one not parked, read before a command is queued, may still change."""
    return operator_refusal(workflow_id, state, action) if state is W.NEEDS_ATTENTION else None


def stale_refusal(
    workflow_id: str,
    state: WorkflowState,
    decided_on: object,
    action: str,
    *,
    seen: str | None = None,
) -> str | None:
    """Why a command decided on a workflow in state ``decided_on`` (its CLI's or
    console's read when it was queued; None: a command that names none) no longer applies
    to it in ``state``, or None: it is in that state still. ``seen``: where that state was
    seen (the console's page, before it queues anything); by default, as it was queued."""
    if decided_on is None or decided_on == str(state):
        return None
    return (
        f"workflow {workflow_id!r} is {state} now, not {decided_on!s:.40} as "
        f"{seen or f'when this {action} was queued'} (another action, or the runtime, "
        "moved it on since): nothing of it was done; look at the workflow again and decide anew"
    )


def parking_refusal(workflow_id: str, action: str) -> str:
    """Why operator ``action`` was refused while the workflow's parking (NEEDS_ATTENTION)
    was decided and not yet durable; told once it is, so it may be done again at once."""
    refusal = operator_refusal(workflow_id, W.NEEDS_ATTENTION, action)
    if refusal is not None:
        return refusal  # (cancel: what applies to a parked workflow instead)
    return (
        f"workflow {workflow_id!r} was being parked (its NEEDS_ATTENTION was being written) "
        f"when this {action} came: nothing of it was recorded; it is parked now: "
        f"{action} it again"
    )


ALLOWED_STEPS: Mapping[WorkflowState, frozenset[StepState]] = MappingProxyType(
    {
        W.PENDING: frozenset({S.PENDING}),
        W.RUNNING: frozenset(StepState) - UNDOING - {S.FAILED},
        W.SUCCEEDED: frozenset({S.SUCCEEDED}),
        W.COMPENSATING: frozenset(StepState) - {S.RETRY_WAIT},
        W.COMPENSATED: frozenset({S.PENDING, S.FAILED, S.SUCCEEDED, S.COMPENSATED}),
        W.CANCELLED: frozenset({S.PENDING, S.FAILED, S.SUCCEEDED, S.COMPENSATED}),
        W.NEEDS_ATTENTION: frozenset(
            # UNKNOWN: its probes kept failing
            {S.PENDING, S.FAILED, S.SUCCEEDED, S.COMPENSATING, S.COMPENSATED, S.UNKNOWN}
        ),
        # an operator stopped it: what ran or waited ended FAILED
        W.ABANDONED: frozenset(StepState) - ENDED_BY_ABANDON,
    }
)
"""Each workflow state -> the step states a durable snapshot may show in it."""


def holds_timer(workflow: WorkflowState, st: StepRecord) -> bool:
    """Whether the step waits on an entry in the timer index: a deadline, a retry, a
    probe's backoff, a compensation's retry, or a delayed start (PENDING with a time)."""
    state = st.state
    if state in (S.DISPATCHED, S.RETRY_WAIT, S.WAITING):
        return True
    if state is S.UNKNOWN:
        return not workflow.is_final
    if state is S.COMPENSATING:
        return workflow is W.COMPENSATING
    return state is S.PENDING and st.retry_at is not None and not workflow.is_final


def reachable(table: Mapping[_T, frozenset[_T]], state: _T) -> frozenset[_T]:
    """``state`` and every state reachable from it through ``table``'s moves."""
    seen = {state}
    todo = [state]
    while todo:
        for nxt in table.get(todo.pop(), frozenset()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return frozenset(seen)
