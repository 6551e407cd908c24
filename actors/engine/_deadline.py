"""A workflow's deadline: past it, nothing new starts and the workflow is compensated.

``start(..., deadline=)`` (or the ``Workflow``'s default) stores an absolute time on the
workflow record (``WorkflowRecord.deadline``, the runtime's clock) and a timer entry for
it, under the reserved step name :data:`DEADLINE_TIMER` (no step is named ``""``), in the
transaction that creates the workflow. The rules:

- :func:`expired`: from the deadline on, no forward attempt is dispatched (a job found
  in a queue then is dropped; the deadline's handling follows at the next sweep);
- :func:`when_due`: what the deadline's timer means when the sweep reports it: a
  RUNNING workflow past its deadline is compensated; any other state only drops the
  timer (a compensating workflow finishes undoing: compensations have no deadline);
- :func:`overdue`: a completion of a handed-off step is refused from the deadline on,
  before the sweep came to its timer;
- :func:`fenced`: each attempt running at the deadline (dispatched, handed off with
  ``complete_later`` or being probed) is superseded: the step is FAILED under a new
  fencing token (a late answer is stale) and, since its effect may have happened, undone.

Because the timer is in the store, a deadline that passes while no process runs is
honoured at recovery: the first sweep finds it due.
"""

from __future__ import annotations

import datetime
import enum

from herder.actors.engine._retry import GiveUp
from herder.actors.engine._states import UNSETTLED
from herder.actors.engine._step import failed
from herder.store import StepRecord, WorkflowState

DEADLINE_TIMER = ""
"""The step part of a workflow deadline's timer key (step names are never empty)."""
DEADLINE_ERROR = "herder.DeadlinePassed"
"""The error type recorded on a step whose running attempt the deadline superseded."""


class OnDeadline(enum.Enum):
    """What a workflow's due deadline timer calls for."""

    WAIT = "wait"  # not yet (the clock is behind the timer's rounding): keep the timer
    COMPENSATE = "compensate"  # supersede running attempts, compensate, drop the timer
    DROP = "drop"  # the workflow is no longer running forward: only drop the timer


def expired(deadline: float | None, now: float) -> bool:
    """True once ``now`` has reached ``deadline`` (None: no deadline)."""
    return deadline is not None and now >= deadline


def when_due(state: WorkflowState, deadline: float | None, now: float) -> OnDeadline:
    """What the sweep's report of a workflow's deadline timer calls for."""
    if state is not WorkflowState.RUNNING or deadline is None:
        return OnDeadline.DROP
    return OnDeadline.COMPENSATE if expired(deadline, now) else OnDeadline.WAIT


def overdue(state: WorkflowState, deadline: float | None, now: float) -> str | None:
    """Why a late completion (``complete_step``) of a RUNNING workflow's step is refused
    before the sweep fired its deadline's timer (right after a reopen, say): the deadline
    passed, so that attempt is superseded; None while it has not."""
    if deadline is None or when_due(state, deadline, now) is not OnDeadline.COMPENSATE:
        return None
    return f"{deadline_reason(deadline)}; the next sweep compensates the workflow"


def deadline_reason(deadline: float) -> str:
    """The workflow's error once its deadline passed."""
    try:
        when = datetime.datetime.fromtimestamp(deadline, datetime.UTC)
    except (OverflowError, OSError, ValueError):  # (a clock far off: the seconds, then)
        return f"deadline passed (it was {deadline:.3f} s on the runtime's clock)"
    at = when.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return f"deadline passed (it was {at} on the runtime's clock)"


def fenced(st: StepRecord, *, token: int, now: float) -> StepRecord | None:
    """The step once the deadline superseded its running attempt, or None if it has none
    running (see the module docstring)."""
    if st.state not in UNSETTLED:
        return None
    return failed(
        st,
        GiveUp(undo=True),
        error="superseded: the workflow's deadline passed while this attempt ran",
        types=(DEADLINE_ERROR,),
        token=token,
        now=now,
    )
