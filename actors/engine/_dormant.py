"""When a workflow may leave memory until its next timer (:func:`dormant`).

A RUNNING workflow with nothing running or queued, whose every open step waits on a
timer in the store (a delayed start, a retry's backoff) due no sooner than a given time,
on a completion (a step handed off with ``complete_later()``, WAITING under a deadline no
sooner than that), or on such a step, needs nothing in memory until then: the timer
index wakes it (actors/_dormancy.py; a WAITING step's deadline is in its batch entry),
and an operator's action or a completion reads it back first (``Recovery.take_back``).
A reminder waiting a day held ~2.4 KB of the Scheduler's heap, a million of them 2.4 GB.

Imports: herder.store and this package.
"""

from __future__ import annotations

from herder.actors.engine._runs import WorkflowRun
from herder.actors.engine._step import attempt_due_ms
from herder.store import StepState, WorkflowState, ms

_TIMED = (StepState.PENDING, StepState.RETRY_WAIT)


def dormant(run: WorkflowRun, until_ms: int) -> bool:
    """Whether nothing of ``run`` runs, or can run, before ``until_ms``: it is RUNNING,
    with no attempt in flight and nothing queued; each step that has not succeeded waits
    on its own timer, due at ``until_ms`` or later, on its completion (WAITING: handed
    off, its attempt no longer in flight) with no deadline sooner, or on a dependency
    that has not succeeded; at least one waits on a timer or a completion; and its
    deadline, if any, is not sooner either. (Whether its records are all durable is the
    shell's to know.)"""
    record = run.record
    if record.state is not WorkflowState.RUNNING or run.attempts or run.queued:
        return False
    if record.deadline is not None and ms(record.deadline) < until_ms:
        return False
    steps, timed = run.steps, False
    for st in steps.values():
        state = st.state
        if state is StepState.SUCCEEDED:
            continue
        if state in _TIMED and st.timer_ms is not None:
            if st.timer_ms < until_ms:
                return False
            timed = True
        elif state is StepState.WAITING:
            due = attempt_due_ms(st)  # (its deadline or heartbeat's, the sooner)
            if due is None:
                if st.heartbeat_deadline is not None:
                    return False  # (no batch entry watches it: it stays, as before)
            elif due < until_ms:
                return False
            timed = True
        elif state is not StepState.PENDING or all(
            steps[dep].state is StepState.SUCCEEDED for dep in run.specs[st.name].after
        ):
            return False  # under way, or free to run now
    return timed
