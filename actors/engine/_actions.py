"""What an operator's action does to a workflow in memory, once it has been validated.

Each function applies one action (cancel, retry, skip, compensate, abandon) to a run
through the :class:`~._machine.Machine`'s transitions, so its writes, fences and queued
jobs land in the open decision like any event's. The actor shell validates the action
(it may need the store for a parked workflow), writes the operator's history event and
answers the caller once the decision is durable. The records each step moves to are
``_operator``'s.

Imports: herder.store records and this package.
"""

from __future__ import annotations

from collections.abc import Container
from typing import TYPE_CHECKING, Any

from herder.actors.engine._operator import abandoned_step, given_up, orphan_given_up, undo_again
from herder.actors.engine._states import (
    RESTARTABLE,
    SKIPPABLE,
    STUCK,
    UNDOING,
    UNSETTLED,
    stuck_step,
)
from herder.actors.engine._step import probe_again, restarted, settled
from herder.actors.engine._workflow import waits_for
from herder.store import StepRecord, StepState, WorkflowState

if TYPE_CHECKING:
    from herder.actors.engine._machine import Machine
    from herder.actors.engine._runs import WorkflowRun


def cancel(m: Machine, run: WorkflowRun, reason: str = "cancelled by request") -> None:
    """Stop dispatching and compensate (or keep compensating, now as a cancel)."""
    give_up_orphans(m, run, "cancelled")
    if run.record.state is WorkflowState.COMPENSATING:
        m.set_record(run, cancelled=True)
        m.cancel_attempts(run)
    else:
        m.begin_compensation(run, reason, cancelled=True)


def retry(m: Machine, run: WorkflowRun) -> None:
    """Resume a parked workflow where it stopped: if its compensation had begun (a failed
    one, or it was cancelled or turned back and parked on a step's failing probes), it
    compensates on: failed compensations and the probes of steps still unknown run again;
    else its failed forward steps run again from attempt 1."""
    stuck = [s for s in run.steps.values() if s.state is StepState.COMPENSATING]
    unparked = _unparked(run)
    if stuck or run.record.reason is not None or run.record.cancelled:
        m.set_record(
            run, state=WorkflowState.COMPENSATING, error=_why(run), recoveries=0, **unparked
        )
        for st in stuck:
            m.put_step(run, st, undo_again(st, m.now))
            m.enqueue(run, st.name, compensating=True)
        for st in [s for s in run.steps.values() if s.state is StepState.UNKNOWN]:
            m.put_step(run, st, probe_again(st, m.token(), m.now))
            m.enqueue(run, st.name, compensating=False)  # (a probe: what it found decides)
        return
    m.set_record(run, state=WorkflowState.RUNNING, error=None, recoveries=0, **unparked)
    for st in list(run.steps.values()):
        if st.state in RESTARTABLE:
            m.put_step(run, st, restarted(st, m.token()))


def to_skip(run: WorkflowRun, inflight: Container[int]) -> tuple[StepRecord | None, str]:
    """The step a skip that names none takes, or None and why there is none to take: a
    failed compensation (one not running; else a running one, which :func:`skip_refusal`
    refuses), else the step the workflow is stuck on (:func:`stuck_step`, as the inbox
    shows it). A running workflow has no inbox entry: its step is taken only when one
    alone is under way (or waits for a retry); with several or none, the operator names one."""
    wid = run.record.id
    steps = [run.steps[spec.name] for spec in run.plan.steps]
    undoing = [st for st in steps if st.state is StepState.COMPENSATING]
    if undoing:
        return next((st for st in undoing if st.token not in inflight), undoing[0]), ""
    if run.record.state is WorkflowState.RUNNING:
        under_way = [st for st in steps if st.state in STUCK]
        if len(under_way) > 1:
            names = ", ".join(repr(st.name) for st in under_way)
            return None, (
                f"workflow {wid!r} is RUNNING with {len(under_way)} steps under way ({names}): "
                "name the step to skip"
            )
        if not under_way:  # (only steps that have not started: none is the one meant)
            ready = [st for st in steps if skip_refusal(run, st, inflight) is None]
            names = ", ".join(repr(st.name) for st in ready) or "none"
            return None, (
                f"workflow {wid!r} is RUNNING with no step under way ({names} wait to "
                "start): name the step to skip"
            )
    stuck = stuck_step(steps)
    if stuck is not None:
        return stuck, ""
    found = next((st for st in steps if skip_refusal(run, st, inflight) is None), None)
    return found, "" if found is not None else f"workflow {wid!r} has no step to skip"


def skip_refusal(
    run: WorkflowRun, st: StepRecord, inflight: Container[int], result: Any = None
) -> str | None:
    """Why ``st`` may not be skipped now (None: it may): a compensation still running
    (marked undone, the steps before it would be undone beside it) or given a ``result``
    (it keeps the step's own), a step that succeeded, a PENDING step whose dependencies
    have not all succeeded (:func:`waits_for`), or any forward step while the workflow
    undoes its steps."""
    wid = run.record.id
    if st.state is StepState.COMPENSATING:
        if st.token not in inflight:
            if result is None:
                return None
            return (
                f"step {st.name!r} of workflow {wid!r} is a compensation that failed: "
                "skipping it marks it undone and keeps the step's own result, so skip it "
                "with no result"
            )
        return (
            f"the compensation of step {st.name!r} of workflow {wid!r} is running (attempt "
            f"{st.comp_attempt}): skip applies to a compensation that failed; wait until it "
            "ends (its step's timeout bounds it)"
        )
    undoing = run.record.state is WorkflowState.COMPENSATING or any(
        s.state in UNDOING for s in run.steps.values()
    )
    if st.state in SKIPPABLE and not undoing:
        waiting = waits_for(run.specs[st.name], run.steps) if st.state is StepState.PENDING else []
        if not waiting:
            return None
        # Done before what it runs after, it would be undone after it too (reverse
        # completion order), and ``herder check`` would rightly call the store damaged.
        which = "which has" if len(waiting) == 1 else "which have"
        return (
            f"step {st.name!r} of workflow {wid!r} runs after {', '.join(map(repr, waiting))}, "
            f"{which} not succeeded: wait until it does, or skip it first (or retry it, "
            "if the workflow is parked)"
        )
    return (
        f"step {st.name!r} of workflow {wid!r} is {st.state}"
        + (" while the workflow undoes its steps" if undoing else "")
        + ": skip applies to a step that has not succeeded in a running or parked "
        "workflow, or to a step whose compensation failed"
        + (_AWAITED if undoing and st.state in UNSETTLED else "")
    )


_AWAITED = (
    "; the undo goes on once this step ends (its answer, complete_step or fail_step with "
    "its task token for a handed-off one, or its timeout); abandon ends the workflow as "
    "it is, nothing undone"
)
"""What an operator can do about a step under way or awaited that a compensating
workflow waits for (a cancel while a step waits on ``complete_later()``)."""


def skip(m: Machine, run: WorkflowRun, st: StepRecord, result: Any) -> None:
    """Mark ``st`` done without running it: a failed compensation COMPENSATED, anything
    else SUCCEEDED with ``result``; what runs of it is fenced out."""
    token = m.token()
    m.supersede(run, st, replace=True)
    if st.state is StepState.COMPENSATING:
        m.put_step(run, st, settled(st, StepState.COMPENSATED, token, m.now))
        if run.record.state is not WorkflowState.COMPENSATING:
            m.set_record(run, state=WorkflowState.COMPENSATING, error=_why(run), **_unparked(run))
        return
    skipped = settled(
        st, StepState.SUCCEEDED, token, m.now, result=result, done_token=token, succeeded=True
    )
    parked = stays_parked(run, st)
    m.put_step(run, st, skipped)
    other = stuck_step([run.steps[spec.name] for spec in run.plan.steps]) if parked else None
    if other is not None:  # its error names the step it stays stuck on, not the one skipped
        error = f"step {other.name!r} is {other.state}"
        m.set_record(run, error=f"{error}: {other.error}" if other.error else error)
    elif run.record.state is not WorkflowState.RUNNING:
        m.set_record(run, state=WorkflowState.RUNNING, error=None, **_unparked(run))


def stays_parked(run: WorkflowRun, st: StepRecord) -> bool:
    """Whether skipping ``st`` leaves its parked workflow parked: it is stuck on another
    step too (nothing would wake that one), which the inbox then shows for the operator's
    next action. Such a workflow is not taken back into memory by the skip."""
    return (
        run.record.state is WorkflowState.NEEDS_ATTENTION
        and st.state is not StepState.COMPENSATING
        and stuck_step([other for other in run.steps.values() if other is not st]) is not None
    )


def _unparked(run: WorkflowRun) -> dict[str, Any]:
    """What an operator's action that resumes a parked workflow changes besides its state:
    its deadline, whose timer went when it parked, counts no more (as one that fired:
    the workflow runs on without one)."""
    parked = run.record.state is WorkflowState.NEEDS_ATTENTION
    return {"deadline": None} if parked and run.record.deadline is not None else {}


def _why(run: WorkflowRun) -> str | None:
    """The error of a workflow that compensates on after a failed compensation stopped
    it: why it compensates, not the failure it stopped at (that one is in its history);
    a record from before ``reason`` was kept says the failure still."""
    return run.record.reason if run.record.reason is not None else run.record.error


def compensate(m: Machine, run: WorkflowRun, reason: str, *, parked: bool) -> None:
    """Undo what the workflow did: failed compensations run again, steps nothing will
    settle any more are given up, and the workflow compensates."""
    for st in list(run.steps.values()):
        if st.state is StepState.COMPENSATING:  # a failed compensation: run it again
            m.put_step(run, st, undo_again(st, m.now))
            m.enqueue(run, st.name, compensating=True)
        elif st.state in UNSETTLED and (parked or st.state is not StepState.DISPATCHED):
            # Nothing will settle these any more; what runs of them is fenced out.
            m.supersede(run, st, replace=False)
            m.put_step(run, st, given_up(st, token=m.token(), now=m.now))
    if parked:  # (a compensating workflow is not among OPERATOR_ACTIONS["compensate"])
        m.set_record(run, **_unparked(run))
    m.begin_compensation(run, reason)


def abandon(m: Machine, run: WorkflowRun, error: str) -> None:
    """End the workflow ABANDONED, where it stands: nothing more of it runs."""
    for st in list(run.steps.values()):
        new = abandoned_step(st, m.token, m.now)
        if new is not None:
            m.put_step(run, st, new)
    m.finish(run, WorkflowState.ABANDONED, error=error)


def give_up_orphans(m: Machine, run: WorkflowRun, why: str) -> None:
    """Steps left DISPATCHED by a crash that no attempt runs now end FAILED instead of
    running again; marked done, since they may have taken effect, so they are undone.
    So do steps whose attempt was recorded ahead and has not started (``m.started``):
    it never will. Not those held back for an attempt still running (``m.carried``):
    given up once it has ended (``_resume.carried_ended``)."""
    for st in list(run.steps.values()):
        if st.state is StepState.DISPATCHED and (
            (st.token not in m.inflight and st.token not in m.carried) or not m.started(st.token)
        ):
            m.supersede(run, st, replace=False)
            m.put_step(run, st, orphan_given_up(st, why, token=m.token(), now=m.now))
