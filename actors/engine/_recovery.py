"""Recovery's rules: what a restart resumes, and poison work, as pure functions.

After a restart, every unfinished workflow resumes where its records stand
(:func:`resumes`): an attempt left DISPATCHED is run again (its outcome is unknown, so
with attempt + 1), unless its workflow is compensating (:func:`orphaned`: then it is
given up and undone), a retry or a probe whose time has come runs, a compensation runs
again if its workflow is compensating, and a WAITING step stays waiting (its
completion or its deadline moves it on).

Poison work is an attempt that kills the whole process every time it runs.
An action that calls ``os._exit``, segfaults in a C extension or exhausts memory takes the
daemon down with it; recovery then runs it again, and the daemon crash-loops. The store
remembers: at each recovery after a crash, a workflow that had an attempt of the dead
process running (recorded DISPATCHED, or a compensation dispatched, with no outcome since;
not one the tree's restart of a crashed Scheduler cut in a process that lives on, nor any
when the previous holder released the lease, :func:`after_a_death`: a ``stop()``, with a
drain or not, or a handoff that cut a long attempt is no death) has its
``WorkflowRecord.recoveries`` counter bumped; any recorded outcome of one of its attempts
resets it to 0. From the second crash in a row its running attempts are not re-run at
once but one suspect at a time, ``recovery_stagger`` seconds apart, so the other
workflows caught in the same crashes finish first instead of dying with it again (an
attempt deferred this way was not running at the next crash and is not counted). Past
``max_recoveries`` the workflow is parked in NEEDS_ATTENTION for an operator, its running
steps marked failed with :data:`POISON_ERROR` (:func:`poisoned`); ``retry`` runs them
again.

Imports: herder.store records and this package; time and tokens are arguments.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Protocol

from herder.actors.engine._operator import marked_failed
from herder.actors.engine._states import POISON_ERROR
from herder.actors.engine._step import stopped
from herder.store import Lease, StepRecord, StepState


class Leased(Protocol):
    """The lease this process holds, as recovery reads it (a Store is one)."""

    incarnation: int  # ours: our fencing tokens' high bits
    # The incarnation of the lease ours replaced (None: none): its holder's tokens ran from
    # it up to ours (past its own when they ran on, ``reserve_incarnations``).
    taken_from: int | None

    @property
    def lease(self) -> Lease | None:
        """Ours as last written (its ``after``: why it could be taken), None if none."""


def after_a_death(lease: Leased) -> bool:
    """Whether the holder before ours died (or was lost) holding the lease: it did not
    release it, as a stop or a handoff does. Only then were attempts cut by a death."""
    ours = lease.lease
    return ours is None or ours.after != "released"


def ran_under_previous(st: StepRecord, lease: Leased) -> bool:
    """Whether ``st``'s token is one of the holder's whose lease ours replaced: if that
    holder died, an attempt of ``st`` left running died with it. An older token's attempt
    ran under an earlier holder and ended with it (a stop cut it, or a crash counted by
    the holder after it); the holder that died never ran it again."""
    before = lease.taken_from
    return before is not None and before <= st.token >> 32 < lease.incarnation


def lost_by_previous(st: StepRecord, lease: Leased) -> bool:
    """Whether ``st`` was left DISPATCHED by the holder of the lease ours replaced, so
    its attempt died with that holder: counted once (a later holder that finds the same
    record again did not lose it)."""
    return st.state is StepState.DISPATCHED and ran_under_previous(st, lease)


def running_at_crash(steps: Iterable[StepRecord]) -> list[StepRecord]:
    """Steps whose attempt was running (dispatched, no outcome recorded) at the crash.

    A step deferred by an earlier recovery keeps its ``retry_at``: it was waiting, not
    running, so it is not a suspect of this crash.
    """
    return [st for st in steps if st.retry_at is None and _attempt_recorded(st)]


def _attempt_recorded(st: StepRecord) -> bool:
    """Whether ``st`` holds an attempt recorded and not answered: its action dispatched,
    or its compensation (a COMPENSATING step with a deadline)."""
    return st.state is StepState.DISPATCHED or (
        st.state is StepState.COMPENSATING and st.deadline is not None
    )


def deferred_due(steps: Iterable[StepRecord], recoveries: int, now: float) -> list[StepRecord]:
    """A suspect's steps an earlier recovery deferred (``retry_at`` kept on a running
    state, as :func:`running_at_crash` reads it) whose time passed while no Scheduler ran
    them: the process ended first. A restart defers them again, one suspect at a time,
    rather than run every such suspect at once with the rest (a poison one among them
    would take them all down with it, counted against each)."""
    if recoveries < 2:  # (an outcome since reset the count: no suspect any more)
        return []
    return [
        st
        for st in steps
        if st.retry_at is not None and st.retry_at <= now and _attempt_recorded(st)
    ]


def poison_message(steps: list[StepRecord], crashes: int) -> str:
    """The error a parked workflow carries: what ran, how often it died, what to do."""
    names = ", ".join(repr(st.name) for st in steps)
    return (
        f"step {names} was running each of the last {crashes} times the process died "
        "(poison work: an action that kills the process?); parked: fix the action, then "
        "retry the workflow"
    )


def poisoned(
    st: StepRecord, error: str, *, tokens: Callable[[], int], now: float
) -> StepRecord | None:
    """The step once its workflow is parked as poison work, or None if it stays: an
    attempt running or due to run again ends FAILED, marked done (the attempt that ran
    at the crash may have taken effect, so a compensation undoes it), a compensation
    stays COMPENSATING (a retry runs it again); neither keeps a timer. A step handed off (WAITING on
    ``complete_later``) beside the poison ends FAILED too, marked done as it may have
    taken effect: a parked workflow waits on nothing (and its completion would be
    refused); a retry runs it again."""
    if st.state is StepState.WAITING:
        why = "waited for its completion when its workflow was parked as poison work"
        return marked_failed(st, why, token=tokens(), now=now)
    if st.state not in (StepState.DISPATCHED, StepState.RETRY_WAIT, StepState.COMPENSATING):
        return None
    token = tokens()
    if st.state is StepState.COMPENSATING:
        state, done = StepState.COMPENSATING, st.done_token
    else:
        state, done = StepState.FAILED, token if st.done_token is None else st.done_token
    return stopped(
        st,
        state=state,
        error=error,
        error_type=POISON_ERROR,
        token=token,
        done_token=done,
        updated=now,
    )


def orphaned(st: StepRecord, incarnation: int) -> bool:
    """Whether ``st`` was left DISPATCHED by an earlier process (its token's high bits
    are that process's ``incarnation``): no attempt of it can be running now.

    In a workflow that is compensating such a step is not run again but given up
    (``orphan_given_up``): the workflow had turned back (a failure, a cancel, an
    operator's compensate) while it ran, and no forward action starts after that. It
    may have taken effect, so it is undone with the others, whatever an attempt run
    again now would answer (one that failed would leave that effect in place)."""
    return st.state is StepState.DISPATCHED and st.token >> 32 < incarnation


def resumes(st: StepRecord, *, compensating: bool, now: float) -> bool | None:
    """Whether a restart queues the step again: None (it stays), else whether as its
    compensation (``compensating``: its workflow is compensating)."""
    if (st.retry_at or 0) > now:
        return None  # deferred: its timer queues it when the time comes
    if st.state in (StepState.DISPATCHED, StepState.RETRY_WAIT, StepState.UNKNOWN):
        return False  # re-run (outcome unknown), retry, or probe (again)
    if st.state is StepState.COMPENSATING and compensating:
        return True
    return None
