"""Operator actions on one workflow: retry, skip, compensate, abandon, cancel, commands.

Each action validates against memory (or the store, for a parked workflow), writes its
transitions and history event into the workflow's transaction, and answers through a
future that settles once they are durable. They drive the Scheduler's state machine, so
they take the Scheduler as their first argument.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from herder.actors._errors import InvalidState, UnknownWorkflow
from herder.actors._messages import Commands, Operate
from herder.actors._recovery import release, take_back
from herder.actors.engine import (
    RESTARTABLE,
    SKIPPABLE,
    UNDOING,
    Announce,
    Refuse,
    Resolve,
    WorkflowRun,
    abandoned_step,
    given_up,
    orphan_given_up,
    restarted,
    settled,
    undo_again,
)
from herder.store import (
    HerderError,
    InvalidInput,
    StepState,
    WorkflowRecord,
    WorkflowState,
    finished_ops,
    history_put,
    normalize,
    plan_steps,
    step_event,
    workflow_event,
)

if TYPE_CHECKING:
    from herder.actors._scheduler import Scheduler

_log = logging.getLogger("herder.scheduler")


def operate(s: Scheduler, op: Operate) -> Future[None]:
    """Apply an operator action through ``s``; it resolves once it and its history are durable.

    Raises (nothing written) when the action does not apply: :class:`UnknownWorkflow`,
    :class:`InvalidState`, :class:`InvalidInput`.
    """
    handler = _OPERATIONS.get(op.action)
    if handler is None:
        raise InvalidInput(
            f"unknown operator action {op.action!r}; use one of {', '.join(_OPERATIONS)}"
        )
    done: Future[None] = Future()
    s._engine.at(s._clock.time(), s._rand.random)
    # Not taken back yet (a restart's backlog, a reload, a start on its way): the action
    # applies now, and what it leaves to run resumes right after it.
    fresh = take_back(s, op.workflow_id)
    try:
        run = handler(s, op)
    except BaseException as exc:
        s._perform(s._engine.take())
        ending = s._commits.pending(op.workflow_id) and fresh is None
        _resume(s, fresh)
        if not isinstance(exc, InvalidState) or not ending:
            s._after_message()
            raise
        # Its last transition (e.g. its end) is not durable yet: refuse once it is,
        # so the caller finds the store in the state the refusal speaks of.
        s._commits.txn(op.workflow_id).effects.append(Refuse(done, exc))
        s._after_message()
        return done
    s._perform(s._engine.take())
    _resume(s, fresh)
    s._commits.txn(op.workflow_id).effects.append(Resolve(done))
    if run is not None and run.record.id in s._engine.runs:
        s._engine.at(s._clock.time(), s._rand.random)
        s._engine.advance(run)
        s._perform(s._engine.take())
    s._after_message()
    return done


def _resume(s: Scheduler, fresh: tuple[WorkflowRun, bool, bool] | None) -> None:
    """Run what :func:`take_back` loaded, once the action it was loaded for is applied."""
    if fresh is not None:
        s._resume(fresh[0], recovered=fresh[1], crashed=fresh[2])


def _operable(
    s: Scheduler, op: Operate, allowed: tuple[WorkflowState, ...]
) -> tuple[WorkflowRun, bool]:
    """The run an operator action applies to, loaded if it is parked; (run, was_parked)."""
    run = s._engine.runs.get(op.workflow_id)
    if run is not None:
        if run.record.state not in allowed:
            raise InvalidState(_not_in(op, run.record.state, allowed))
        return run, False
    record = s._store.get_workflow(op.workflow_id)
    if record is None:
        raise UnknownWorkflow(f"no workflow with id {op.workflow_id!r}")
    if record.state not in allowed or record.state is not WorkflowState.NEEDS_ATTENTION:
        if not record.state.is_final and record.state in allowed:
            raise _not_loaded(s, op, record)
        raise InvalidState(_not_in(op, record.state, allowed))
    plan = s._ctx.plans.get((record.name, record.version))
    if plan is None:
        raise InvalidState(
            f"workflow {op.workflow_id!r} needs definition {record.name!r} version "
            f"{record.version}; register it with add_workflow before {op.action}"
        )
    steps = {s.name: s for s in plan_steps(record, s._store.steps_of(op.workflow_id), plan)}
    run = WorkflowRun(record, plan, steps, s._engine.specs_of(plan, record))
    return run, True


def _adopt(s: Scheduler, run: WorkflowRun, parked: bool) -> None:
    """Make a parked run active again (after the action was validated)."""
    if parked:
        s._engine.runs[run.record.id] = run
        if s._ctx.on_resumed is not None:
            s._ctx.on_resumed()


def _note_operator(s: Scheduler, op: Operate) -> None:
    """The history event of an operator action, and its command's outcome, if any."""
    now = s._clock.time()
    txn = s._commits.txn(op.workflow_id)
    event = {
        "kind": "operator",
        "t": now,
        "action": op.action,
        "who": op.who,
        "why": op.why,
        "step": op.step,
        "result": op.result,
    }
    txn.put(history_put(op.workflow_id, s._ctx.next_token(), event))
    if op.command is not None:
        txn.put(*finished_ops(op.command, None, now))


def _not_loaded(s: Scheduler, op: Operate, record: WorkflowRecord | None = None) -> HerderError:
    """The true reason an action cannot apply to a workflow that is not in memory (one
    :func:`take_back` could not load)."""
    record = record or s._store.get_workflow(op.workflow_id)
    wid = op.workflow_id
    if record is None:
        return UnknownWorkflow(f"no workflow with id {wid!r}")
    if record.state.is_final:
        return InvalidState(
            f"workflow {wid!r} is {record.state}; {op.action} applies to an unfinished workflow"
        )
    if (record.name, record.version) not in s._ctx.plans:
        return InvalidState(
            f"workflow {wid!r} awaits its definition {record.name!r} version "
            f"{record.version} (it was recovered after a restart); register it with "
            f"add_workflow, then {op.action}"
        )
    return InvalidState(
        f"workflow {wid!r} has just finished (its end is being written); {op.action} "
        "applies to an unfinished workflow"
    )


def _give_up_orphans(s: Scheduler, run: WorkflowRun, why: str) -> None:
    """Steps left DISPATCHED by a crash that no attempt runs now end FAILED instead of
    running again; marked done, since they may have taken effect, so they are undone."""
    now = s._clock.time()
    for st in list(run.steps.values()):
        if st.state is StepState.DISPATCHED and st.token not in s._engine.inflight:
            s._engine.supersede(run, st, replace=False)
            failed = orphan_given_up(st, why, token=s._ctx.next_token(), now=now)
            s._engine.put_step(run, st, failed)


def _op_cancel(s: Scheduler, op: Operate) -> WorkflowRun:
    run = s._engine.runs.get(op.workflow_id)
    if run is None:
        raise _not_loaded(s, op)
    _note_operator(s, op)
    _give_up_orphans(s, run, "cancelled")
    if run.record.state is WorkflowState.COMPENSATING:
        s._engine.set_record(run, cancelled=True)
    else:
        s._engine.begin_compensation(run, "cancelled by request", cancelled=True)
    s._engine.cancel_attempts(run)
    return run


def _op_retry(s: Scheduler, op: Operate) -> WorkflowRun:
    run, parked = _operable(s, op, (WorkflowState.NEEDS_ATTENTION,))
    if not parked:
        raise InvalidState(_not_in(op, run.record.state, (WorkflowState.NEEDS_ATTENTION,)))
    _adopt(s, run, parked)
    _note_operator(s, op)
    stuck = [s for s in run.steps.values() if s.state is StepState.COMPENSATING]
    if stuck:
        s._engine.set_record(run, state=WorkflowState.COMPENSATING, error=None, recoveries=0)
        now = s._clock.time()
        for st in stuck:
            s._engine.put_step(run, st, undo_again(st, now))
            s._engine.enqueue(run, st.name, compensating=True)
    else:
        s._engine.set_record(run, state=WorkflowState.RUNNING, error=None, recoveries=0)
        for st in list(run.steps.values()):
            if st.state in RESTARTABLE:
                s._engine.put_step(run, st, restarted(st, s._ctx.next_token()))
    return run


def _op_skip(s: Scheduler, op: Operate) -> WorkflowRun:
    allowed = (
        WorkflowState.NEEDS_ATTENTION,
        WorkflowState.RUNNING,
        WorkflowState.COMPENSATING,
    )
    run, parked = _operable(s, op, allowed)
    steps = run.steps
    if op.step is None:
        stuck = [s for s in steps.values() if s.state is StepState.COMPENSATING] or [
            steps[spec.name] for spec in run.plan.steps if steps[spec.name].state in SKIPPABLE
        ]
        if not stuck:
            raise InvalidState(f"workflow {op.workflow_id!r} has no step to skip")
        st = stuck[0]
    elif op.step not in steps:
        raise InvalidInput(
            f"workflow {op.workflow_id!r} has no step {op.step!r} (it has: {', '.join(steps)})"
        )
    else:
        st = steps[op.step]
    undoing = run.record.state is WorkflowState.COMPENSATING or any(
        s.state in UNDOING for s in steps.values()
    )
    result = normalize(
        op.result, limit=s._config.max_result_bytes, what=f"result given for {st.name!r}"
    )
    now = s._clock.time()
    token = s._ctx.next_token()
    if st.state is StepState.COMPENSATING:
        _adopt(s, run, parked)
        _note_operator(s, op)
        s._engine.supersede(run, st, replace=True)
        s._engine.put_step(run, st, settled(st, StepState.COMPENSATED, token, now))
        if run.record.state is not WorkflowState.COMPENSATING:
            s._engine.set_record(run, state=WorkflowState.COMPENSATING)
        return run
    if st.state not in SKIPPABLE or undoing:
        raise InvalidState(
            f"step {st.name!r} of workflow {op.workflow_id!r} is {st.state}"
            + (" while the workflow undoes its steps" if undoing else "")
            + ": skip applies to a step that has not succeeded in a running or parked "
            "workflow, or to a step whose compensation failed"
        )
    _adopt(s, run, parked)
    _note_operator(s, op)
    s._engine.supersede(run, st, replace=True)
    skipped = settled(
        st, StepState.SUCCEEDED, token, now, result=result, done_token=token, succeeded=True
    )
    s._engine.put_step(run, st, skipped)
    if run.record.state is not WorkflowState.RUNNING:
        s._engine.set_record(run, state=WorkflowState.RUNNING, error=None)
    return run


def _op_compensate(s: Scheduler, op: Operate) -> WorkflowRun:
    allowed = (WorkflowState.NEEDS_ATTENTION, WorkflowState.RUNNING)
    run, parked = _operable(s, op, allowed)
    _adopt(s, run, parked)
    _note_operator(s, op)
    now = s._clock.time()
    reason = f"compensation requested by {op.who or 'an operator'}: {op.why or ''}".rstrip(": ")
    for st in list(run.steps.values()):
        if st.state is StepState.COMPENSATING:  # a failed compensation: run it again
            s._engine.put_step(run, st, undo_again(st, now))
            s._engine.enqueue(run, st.name, compensating=True)
        elif st.state in (StepState.UNKNOWN, StepState.WAITING) or (
            parked and st.state is StepState.DISPATCHED
        ):
            # Nothing will settle these any more; what runs of them is fenced out.
            s._engine.supersede(run, st, replace=False)
            s._engine.put_step(run, st, given_up(st, token=s._ctx.next_token(), now=now))
    if run.record.state is WorkflowState.COMPENSATING:
        s._engine.set_record(run, error=reason)
    else:
        s._engine.begin_compensation(run, reason)
    s._engine.cancel_attempts(run)
    return run


def _op_abandon(s: Scheduler, op: Operate) -> WorkflowRun | None:
    run = s._engine.runs.get(op.workflow_id)
    error = f"abandoned by {op.who or 'an operator'}" + (f": {op.why}" if op.why else "")
    now = s._clock.time()
    if run is not None:
        _note_operator(s, op)
        for st in list(run.steps.values()):
            new = abandoned_step(st, s._ctx.next_token, now)
            if new is not None:
                s._engine.put_step(run, st, new)
        s._engine.finish(run, WorkflowState.ABANDONED, error=error)
        return None
    record = s._store.get_workflow(op.workflow_id)
    if record is None:
        raise UnknownWorkflow(f"no workflow with id {op.workflow_id!r}")
    if record.state.is_final and record.state is not WorkflowState.NEEDS_ATTENTION:
        raise InvalidState(
            _not_in(op, record.state, (WorkflowState.NEEDS_ATTENTION, WorkflowState.RUNNING))
        )
    if not record.state.is_final and s._commits.pending(op.workflow_id):
        raise _not_loaded(s, op, record)  # its end is being written
    # Parked, or awaiting its definition: nothing of it runs, so this needs no
    # definition: the records change in the store.
    release(s, record)
    _note_operator(s, op)
    txn = s._commits.txn(op.workflow_id)
    for st in s._store.steps_of(op.workflow_id):
        new = abandoned_step(st, s._ctx.next_token, now)
        if new is not None:
            txn.put_step(st, new)
            event = step_event(st, new, now)
            if event is not None:
                txn.put(history_put(record.id, s._ctx.next_token(), event))
    abandoned = record.evolve(state=WorkflowState.ABANDONED, error=error, updated=now)
    txn.put_workflow(abandoned)
    event = workflow_event(record.state, abandoned)
    txn.put(history_put(record.id, s._ctx.next_token(), event))
    if not record.state.is_final:
        txn.effects.append(Announce(abandoned))  # it ends here: waiters hear of it
    return None


def apply_commands(s: Scheduler, msg: Commands) -> None:
    """Apply commands from other processes, each as the Runtime method of its name.

    A command never depends on start-up order: one for a workflow recovered without its
    definition is held and applied when the workflow is taken back, before anything of
    it runs again (``Scheduler._admit``).
    """
    for command in msg.commands:
        if command["id"] in s._commands_seen:
            continue
        workflow_id = str(command.get("workflow_id"))
        try:
            record = s._store.get_workflow(workflow_id)
        except HerderError:
            record = None  # operate() below refuses it, and the refusal is recorded
        if record is not None and (record.name, record.version) not in s._ctx.plans:
            if not record.state.is_final:
                s._held.setdefault(workflow_id, {})[command["id"]] = command
                continue
            if command.get("action") not in ("abandon", "cancel"):
                continue  # parked: wait (pending) until the daemon registers the definition
        _apply_command(s, command)


def apply_held(s: Scheduler, commands: list[dict[str, Any]]) -> None:
    """Apply the commands held for a workflow being taken back (it is in memory now)."""
    for command in commands:
        if command["id"] not in s._commands_seen:
            _apply_command(s, command)


def _apply_command(s: Scheduler, command: dict[str, Any]) -> None:
    """Apply one command as the Runtime method of its name; record a refusal on it."""
    command_id = command["id"]
    workflow_id = command.get("workflow_id")
    held = s._held.get(str(workflow_id))
    if held is not None:
        held.pop(command_id, None)
        if not held:
            del s._held[str(workflow_id)]
    args = command.get("args")
    args = args if isinstance(args, dict) else {}
    s._commands_seen.add(command_id)
    op = Operate(
        action=str(command.get("action")),
        workflow_id=str(workflow_id),
        step=args.get("step"),
        result=args.get("result"),
        who=command.get("who"),
        why=command.get("why"),
        command=command,
    )
    try:
        operate(s, op)
    except HerderError as exc:
        error = str(exc)
    except Exception as exc:  # a bug must not leave the CLI waiting forever
        _log.exception("command %s failed", command_id)
        error = f"{type(exc).__name__}: {exc}"
    else:
        _seen_until_lost(s, op.workflow_id, command_id)  # recorded with its change
        return
    key = f"command:{command_id}"
    s._commits.txn(key).put(*finished_ops(command, error, s._clock.time()))
    _seen_until_lost(s, key, command_id)


def _seen_until_lost(s: Scheduler, key: str, command_id: int) -> None:
    """If the commit ``key`` that records the command fails (a full disk), forget that it
    was seen: the store still has it pending, so the next sweep hands it over again."""

    def landed(recorded: Future[None]) -> None:
        if recorded.exception() is not None:
            s._commands_seen.discard(command_id)

    recorded: Future[None] = Future()
    recorded.add_done_callback(landed)
    s._commits.txn(key).effects.append(Resolve(recorded))


_OPERATIONS: dict[str, Callable[[Scheduler, Operate], WorkflowRun | None]] = {
    "retry": _op_retry,
    "skip": _op_skip,
    "compensate": _op_compensate,
    "abandon": _op_abandon,
    "cancel": _op_cancel,
}


def _not_in(op: Operate, state: WorkflowState, allowed: tuple[WorkflowState, ...]) -> str:
    names = " or ".join(str(a) for a in allowed)
    return f"workflow {op.workflow_id!r} is {state}; {op.action} applies to a workflow in {names}"
