"""What a restart does to a workflow it finds unfinished, in memory (``_recovery``'s
rules applied through the :class:`~._machine.Machine`'s transitions).

:func:`count_crash` counts the crash against a workflow that had attempts running at it
(poison work: deferred from the second crash in a row, parked past the limit), and those
attempts as lost to their agent;
:func:`resume_steps` queues what a previous Scheduler left running or about to run, and
gives up what a compensating workflow had left running (``_recovery.orphaned``), and
holds back a step whose attempt a crashed Scheduler of this process left running, until
that attempt ends (:func:`carried_ended`).

Imports: herder.store records and this package.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from herder.actors.engine._decision import Lost
from herder.actors.engine._members import agent_for
from herder.actors.engine._recovery import (
    after_a_death,
    deferred_due,
    lost_by_previous,
    orphaned,
    poison_message,
    poisoned,
    ran_under_previous,
    resumes,
    running_at_crash,
)
from herder.actors.engine._step import with_timer
from herder.store import StepRecord, StepState, WorkflowState, get_logger

if TYPE_CHECKING:
    from herder.actors.engine._machine import Machine
    from herder.actors.engine._runs import WorkflowRun

_log = get_logger("herder.scheduler")


def count_crash(m: Machine, run: WorkflowRun) -> bool:
    """Count a crash against a workflow that had attempts running at it; defer those
    attempts from the second crash in a row, park it past the limit (True).

    Only the attempts of the process that died count (their tokens' high bits are its
    incarnations, ``ran_under_previous``): it died under them. One this process ran was
    cut by the tree's restart of a crashed Scheduler, and the process lives on: no crash
    of it to count. Nor is there one when the previous holder released the lease (a stop
    or a handoff cut it), nor for an attempt of an earlier holder that the one that died
    never ran again (a stop cut it, and the next process died before it re-ran it: it was
    counted against an innocent workflow, a poison suspect from a crash-looping deploy).

    Each attempt the previous process died under is counted lost to its agent here, with
    the crash, and nowhere else: a reload after a failed commit (no crash) or a Scheduler
    restarted after a deferral (the step waits, not running) finds the same record, still
    DISPATCHED with the token of that attempt.

    A suspect deferred by an earlier recovery whose time passed meanwhile is deferred
    again (``deferred_due``), a crash or not: still one at a time."""
    late = deferred_due(run.steps.values(), run.record.recoveries, m.now)
    if late:
        _defer(m, run, late)
    if not after_a_death(m.lease):
        return False
    running = [st for st in running_at_crash(run.steps.values()) if ran_under_previous(st, m.lease)]
    if not running:
        return False
    crashes = run.record.recoveries + 1
    m.set_record(run, recoveries=crashes)
    now = m.now
    if crashes > m.defaults.max_recoveries:
        error = poison_message(running, crashes)
        _log.error("%s: %s", run.record.id, error, extra={"workflow_id": run.record.id})
        for st in list(run.steps.values()):
            parked = poisoned(st, error, tokens=m.token, now=now)
            if parked is not None:
                m.put_step(run, st, parked)
        m.finish(run, WorkflowState.NEEDS_ATTENTION, error=error)
        return True
    for st in running:
        if lost_by_previous(st, m.lease):
            m.tell(Lost(agent_for(run.specs[st.name], st)))
    if crashes >= 2:
        _defer(m, run, running)
    return False


def _defer(m: Machine, run: WorkflowRun, steps: list[StepRecord]) -> None:
    """Re-run a suspect's ``steps`` after the rest, one suspect at a time."""
    m.suspects += 1
    at = m.now + m.defaults.recovery_stagger * m.suspects
    for st in steps:
        m.put_step(run, st, with_timer(st.evolve(retry_at=at)))


def resume_steps(m: Machine, run: WorkflowRun) -> None:
    """Queue the steps a previous Scheduler left running or about to run; in a workflow
    that is compensating, give up (and so undo) those an earlier process left running.
    A step whose attempt a crashed Scheduler of this process left still running
    (its token in ``m.carried``, actors/_carried.py: token -> the id of the workflow
    whose step is held back) is held back until that attempt ends (:func:`carried_ended`)
    or its deadline passes (the step times out as a hung attempt's, ``Engine``)."""
    compensating = run.record.state is WorkflowState.COMPENSATING
    incarnation, carried = m.lease.incarnation, m.carried
    for st in list(run.steps.values()):
        if st.token in m.inflight:
            continue
        if carried and st.token in carried:
            carried[st.token] = run.record.id
            continue
        if compensating and orphaned(st, incarnation):
            m.put_step(run, st, m.given_up(st))
            continue
        undo = resumes(st, compensating=compensating, now=m.now)
        if undo is not None:
            m.enqueue(run, st.name, compensating=undo)


def carried_ended(m: Machine, run: WorkflowRun, token: int) -> None:
    """The attempt ``token`` a crashed Scheduler left running, whose step recovery held
    back, ended: its step resumes as recovery would have had no attempt of it run on (in
    a workflow that turned back meanwhile a forward one is given up, as an earlier
    process's is, and undone with the others), unless it has moved on since."""
    compensating = run.record.state is WorkflowState.COMPENSATING
    for st in list(run.steps.values()):
        if st.token != token:
            continue
        if compensating and st.state is StepState.DISPATCHED:
            m.put_step(run, st, m.given_up(st))
        else:
            undo = resumes(st, compensating=compensating, now=m.now)
            if undo is not None:
                m.enqueue(run, st.name, compensating=undo)
        m.advance(run)
