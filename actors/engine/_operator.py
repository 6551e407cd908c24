"""What an operator's action does to one step, as pure record functions.

The actions themselves (retry, skip, compensate, abandon, cancel) are validated and
applied by the Scheduler's ``_operator`` module; the records they write are built here,
so the tables (``_states``: RESTARTABLE, SKIPPABLE, ENDED_BY_ABANDON) and the records
they lead to sit in one layer:

- :func:`restarted` (in ``_step``) — retry runs a failed forward step again from attempt 1;
- :func:`undo_again` — retry or compensate runs a failed compensation again, at once;
- :func:`given_up` — compensate stops waiting on a step nothing will settle;
- :func:`orphan_given_up` — cancel does not run again an attempt a crash left
  DISPATCHED; it may have taken effect, so it is undone;
- :func:`abandoned_step` — abandon ends what runs or waits, and clears every timer.

Imports: herder.store records and this package; time and tokens are arguments.
"""

from __future__ import annotations

from collections.abc import Callable

from herder.actors.engine._states import ENDED_BY_ABANDON
from herder.actors.engine._step import retry_mark, stopped, with_timer
from herder.store import (
    StepRecord,
    StepState,
    WorkflowRecord,
    WorkflowState,
    bounded_text,
)


def undo_again(st: StepRecord, now: float) -> StepRecord:
    """A failed compensation, due again now with a fresh attempt count."""
    return with_timer(st.evolve(comp_attempt=0, error=None, retry_at=now))


def given_up(st: StepRecord, *, token: int, now: float) -> StepRecord:
    """A step nothing will settle any more (unknown, waiting, or orphaned while parked),
    FAILED because compensation was requested; what still runs of it is fenced out."""
    return stopped(
        st,
        state=StepState.FAILED,
        token=token,
        error=(
            f"{st.error}; given up: compensation requested"
            if st.error
            else f"given up while {st.state}: compensation requested"
        ),
        updated=now,
    )


def marked_failed(st: StepRecord, error: str, *, token: int, now: float) -> StepRecord:
    """The step FAILED with ``error`` and marked done (``done_token``): its attempt may
    have taken effect, so a compensation undoes it; nothing wakes it any more."""
    return stopped(
        st, state=StepState.FAILED, error=error, token=token, done_token=token, updated=now
    )


def cut_short(st: StepRecord, *, token: int, now: float) -> StepRecord:
    """A step under way (running, handed off, waiting for its retry) when its workflow was
    parked: :func:`marked_failed` (what runs of it is fenced out, its answer not awaited),
    so a retry runs it again and a compensation undoes it. One waiting for its retry keeps
    the mark of its failed attempt (:func:`retry_mark`): it is undone in that attempt's
    completion order, and not at all if that attempt never ran."""
    error = f"{st.state} when its workflow was parked: it may have taken effect"
    cut = marked_failed(st, error, token=token, now=now)
    waited = st.state is StepState.RETRY_WAIT
    return cut.evolve(done_token=retry_mark(st, token)) if waited else cut


def ended_error(record: WorkflowRecord, state: WorkflowState, error: str | None) -> str | None:
    """The error a workflow ends in ``state`` with: ``error``, else the one it has. Parked
    while it compensated (its compensation, a probe of it, or a crash failed), it says
    why it compensated too: the failure it stopped at alone hid the one that turned it
    back (``record.reason``, which its ``error`` said until then)."""
    error = error or record.error
    reason = record.reason
    if state is not WorkflowState.NEEDS_ATTENTION or record.state is not WorkflowState.COMPENSATING:
        return error
    if reason is None or error is None or reason == error:
        return error
    # Each half bounded alone (as a record's error is, together): a long error keeps it.
    error, reason = bounded_text(error, _HALF), bounded_text(reason, _HALF)
    return f"{error} (it was compensating because: {reason})"


_HALF = 4096


def orphan_given_up(st: StepRecord, why: str, *, token: int, now: float) -> StepRecord:
    """An attempt a crash left DISPATCHED, not run again (``why``): :func:`marked_failed`,
    so compensation undoes it."""
    error = f"the attempt running at a crash was not run again: {why}"
    return marked_failed(st, error, token=token, now=now)


def abandoned_step(st: StepRecord, next_token: Callable[[], int], now: float) -> StepRecord | None:
    """What abandoning its workflow makes of a step, or None if the step stays as it is.

    Nothing runs or wakes any more: a step that was running, waiting or about to retry
    ends FAILED (its attempt may have taken effect, so it is marked done as a failure
    that may need undoing by hand); a compensation that was running (dispatched: it has
    a deadline and no retry time) stays COMPENSATING, noted as possibly done, since its
    answer is fenced out; any other step only loses its timer. What remains is what
    ``herder check`` allows in an ABANDONED workflow.
    """
    if st.state in ENDED_BY_ABANDON:
        error = f"{st.error}; abandoned" if st.error else f"abandoned while {st.state}"
        return marked_failed(st, error, token=next_token(), now=now)
    if st.state is StepState.COMPENSATING and st.deadline is not None and st.retry_at is None:
        note = "abandoned while its compensation ran: it may have been undone"
        error = f"{st.error}; {note}" if st.error else note
        return stopped(st, token=next_token(), error=error, updated=now)
    if st.timer_ms is not None or st.retry_at is not None or st.deadline is not None:
        return stopped(st, token=next_token(), updated=now)
    return None
