"""Operator actions on one workflow: retry, skip, compensate, abandon, cancel, commands.

:class:`Operator` validates each action against memory (or the store, for a parked
workflow), has the engine write its transitions, writes its history event into the
workflow's transaction, and answers through a future that settles once they are
durable. It runs on the Scheduler's thread and reaches the Scheduler only through the
:class:`~herder.actors._recovery.Shell` it was given.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from concurrent.futures import Future

import pykka

from herder.actors._ask import call_future
from herder.actors._clock import MessageClock
from herder.actors._commits import CommitPipeline
from herder.actors._completion import Completions
from herder.actors._engine import EngineContext
from herder.actors._errors import InvalidState, UnknownWorkflow
from herder.actors._messages import Complete, Operate
from herder.actors._recovery import Recovery, Shell
from herder.actors.engine import (
    DEADLINE_TIMER,
    OPERATOR_ACTIONS,
    Announce,
    Engine,
    Refuse,
    Resolve,
    WorkflowRun,
    abandoned_step,
    actions,
    operator_refusal,
    parked_refusal,
    parking_refusal,
    stale_refusal,
)
from herder.store import (
    HerderError,
    InvalidInput,
    Plan,
    WorkflowRecord,
    WorkflowState,
    finished_ops,
    get_logger,
    history_put,
    ms,
    normalize,
    plan_steps,
    recall_reason,
    step_event,
    timer_key,
    workflow_event,
)

_log = get_logger("herder.scheduler")


class Operator:
    """Operator actions and complete_step; see the module docstring."""

    def __init__(
        self,
        ctx: EngineContext,
        *,
        engine: Engine,
        commits: CommitPipeline,
        recovery: Recovery,
        shell: Shell,
        rand: Callable[[], float],
        plans: Mapping[tuple[str, int], Plan],
        clock: MessageClock,
    ) -> None:
        self._ctx = ctx
        self._plans = plans  # the Scheduler's (changed only by its Define messages)
        self._store = ctx.store
        # The Scheduler's per-message clock, read again as an action starts (its message
        # may have waited behind slow work): the action and what the Dispatcher does for
        # it then share one time, so nothing it releases is recorded before it.
        self._clock = clock
        self._config = ctx.config
        self._engine = engine
        self._commits = commits
        self._recovery = recovery
        self._shell = shell
        self._rand = rand
        self._read: WorkflowRecord | None = None  # what the action in hand read of the store
        self._completing = Completions(
            ctx,
            engine=engine,
            commits=commits,
            recovery=recovery,
            shell=shell,
            plans=plans,
            clock=clock,
        )

    def operate(self, op: Operate) -> Future[None]:
        """Apply an operator action through ``s``; it resolves once it and its history are durable.

        Raises (nothing written) when the action does not apply: :class:`UnknownWorkflow`,
        :class:`InvalidState`, :class:`InvalidInput`.
        """
        if op.action not in _OPERATIONS:
            raise InvalidInput(
                f"unknown operator action {op.action!r}; use one of {', '.join(_OPERATIONS)}"
            )
        op.check()  # (again, for a command read from the store)
        handler: Callable[[Operate], WorkflowRun | None] = getattr(self, f"_op_{op.action}")
        done: Future[None] = Future()
        self._read = None
        self._engine.at(self._clock.tick(), self._rand)
        # Not taken back yet (a restart's backlog, a reload, a start on its way): the action
        # applies now, and what it leaves to run resumes right after it.
        fresh = self._recovery.take_back(op.workflow_id)
        try:
            self._check_current(op)
            run = handler(op)
        except BaseException as exc:
            self._shell.perform(self._engine.take())
            ending = self._commits.pending(op.workflow_id) and fresh is None
            self._recovery.taken_back(fresh)
            if not isinstance(exc, InvalidState) or not ending:
                self._shell.settle()
                raise
            # Its last transition (e.g. its end) is not durable yet: refuse once it is,
            # so the caller finds the store in the state the refusal speaks of. A command
            # (the CLI's channel) records its refusal in that same later commit. One that
            # parks it: the action is asked again then, and applies to it parked.
            txn = self._commits.txn(op.workflow_id)
            if op.command is None and op.workflow_id in self._commits.parking:
                parked: Future[None] = Future()
                parked.add_done_callback(functools.partial(self._again, op, done, refusal=exc))
                txn.effects.append(Resolve(parked))
            else:
                if op.command is not None:  # (told where an operator looks, as in Channel)
                    now, token = self._clock.time(), self._ctx.next_token()
                    txn.put(*finished_ops(op.command, str(exc), now))
                    txn.put(history_put(op.workflow_id, token, op.refused(exc, now)))
                txn.effects.append(Refuse(done, exc))
            self._shell.settle()
            return done
        self._shell.perform(self._engine.take())
        self._recovery.taken_back(fresh)
        if self._read is not None:  # not held in memory: a purge may delete it meanwhile
            self._commits.guard(op.workflow_id, self._read.state)
        self._commits.txn(op.workflow_id).effects.append(Resolve(done))
        if run is not None and run.record.id in self._engine.runs:
            self._engine.at(self._clock.time(), self._rand)
            self._engine.advance(run)
            self._shell.perform(self._engine.take())
        self._shell.settle()
        return done

    def _again(
        self, op: Operate, done: Future[None], parked: Future[None], *, refusal: BaseException
    ) -> None:
        """``op`` came while its workflow was being parked, which is durable now (or
        failed: ``parked`` says): ask the Scheduler for it again, in a message of its own
        (this runs where the commit's news is taken, mid-message or on the writer's thread);
        ``done`` hears how that went."""
        error, ref = parked.exception(), self._ctx.scheduler
        if error is not None or ref is None:
            done.set_exception(error or refusal)
            return

        def answered(answer: Future[Future[None]]) -> None:
            try:
                answer.result().add_done_callback(lambda f: _pass_on(f, done))
            except pykka.ActorDeadError:  # (the Scheduler went: nothing of it was recorded)
                done.set_exception(refusal)
            except BaseException as exc:  # (it does not apply to the parked workflow)
                done.set_exception(exc)

        call_future(ref, "operate", op).add_done_callback(answered)

    def changing(self, wid: str, record: WorkflowRecord | None) -> bool:
        """Whether workflow ``wid`` (``record``: the store's) is parked with another
        action's change on its way (a skip that left it parked), or is being parked: the
        store shows it as it was."""
        if wid in self._commits.parking:
            return True
        parked = record is not None and record.state is WorkflowState.NEEDS_ATTENTION
        return parked and wid not in self._engine.runs and self._commits.pending(wid)

    def _check_current(self, op: Operate) -> None:
        """Refuse a queued command decided on its workflow in another state than it is in
        now (checked here, under the lease: two were queued while no runtime ran, say)."""
        decided_on = (op.command or {}).get("decided_on")
        if decided_on is not None:
            run = self._engine.runs.get(op.workflow_id)
            record = self._store.get_workflow(op.workflow_id) if run is None else run.record
            refusal = record and stale_refusal(op.workflow_id, record.state, decided_on, op.action)
            if refusal:
                raise InvalidState(refusal)

    def _check_settled(self, op: Operate, record: WorkflowRecord) -> None:
        if self.changing(op.workflow_id, record):
            raise InvalidState(
                f"workflow {op.workflow_id!r} changed while this {op.action} was on its way "
                f"(another action on it is being written): nothing of it was recorded; look again"
            )

    def complete(self, msg: Complete) -> Future[None]:
        """Record the outcome of a step handed off with ``ctx.complete_later()``
        (:mod:`~herder.actors._completion`)."""
        return self._completing.complete(msg)

    def _operable(self, op: Operate) -> tuple[WorkflowRun, bool]:
        """The run an operator action applies to (``OPERATOR_ACTIONS``), loaded if it is
        parked; (run, was_parked)."""
        allowed = OPERATOR_ACTIONS[op.action]
        run = self._engine.runs.get(op.workflow_id)
        if run is not None:
            if run.record.state not in allowed:
                raise InvalidState(_not_in(op, run.record.state))
            return run, False
        record = self._store.get_workflow(op.workflow_id)
        if record is None:
            raise UnknownWorkflow(f"no workflow with id {op.workflow_id!r}")
        if record.state not in allowed or record.state is not WorkflowState.NEEDS_ATTENTION:
            if not record.state.is_final and (
                record.state in allowed or self._commits.pending(op.workflow_id)
            ):
                raise self._not_loaded(op, record)  # (its end or parking is being written)
            raise InvalidState(_not_in(op, record.state))
        self._check_settled(op, record)
        plan = self._plans.get((record.name, record.version))
        if plan is None:
            raise InvalidState(
                f"workflow {op.workflow_id!r} needs definition {record.name!r} version "
                f"{record.version}; register it with add_workflow before {op.action}"
            )
        self._read = record = recall_reason(self._store, record)  # (one stored before reasons)
        steps = plan_steps(record, self._store.steps_of(op.workflow_id), plan)
        return self._engine.shapes.run(record, plan, steps), True

    def _adopt(self, run: WorkflowRun, parked: bool) -> None:
        """Make a parked run active again (after the action was validated)."""
        if parked:
            self._engine.runs[run.record.id] = run
            self._ctx.listener.on_resumed()

    def _note_operator(self, op: Operate, step: str | None = None) -> None:
        """The history event of an operator action (on ``step``, default the one named),
        and its command's outcome, if any."""
        now = self._clock.time()
        txn = self._commits.txn(op.workflow_id)
        event = {
            "kind": "operator",
            "t": now,
            "action": op.action,
            "who": op.who,
            "why": op.why,
            "step": step or op.step,
            "result": op.result,
        }
        txn.put(history_put(op.workflow_id, self._ctx.next_token(), event))
        if op.command is not None:  # (with the step it took: the CLI names it)
            txn.put(*finished_ops({**op.command, "step": step or op.step}, None, now))

    def _not_loaded(self, op: Operate, record: WorkflowRecord | None = None) -> HerderError:
        """The true reason an action cannot apply to a workflow that is not in memory (one
        :func:`take_back` could not load)."""
        record = record or self._store.get_workflow(op.workflow_id)
        wid = op.workflow_id
        if record is None:
            return UnknownWorkflow(f"no workflow with id {wid!r}")
        refusal = parked_refusal(wid, record.state, op.action)
        if refusal is not None:
            return InvalidState(refusal)
        if record.state.is_final:
            return InvalidState(
                f"workflow {wid!r} is {record.state}; {op.action} applies to an unfinished workflow"
            )
        if (record.name, record.version) not in self._plans:
            return InvalidState(
                f"workflow {wid!r} awaits its definition {record.name!r} version "
                f"{record.version} (it was recovered after a restart); register it with "
                f"add_workflow, then {op.action}"
            )
        if wid in self._commits.parking:
            return InvalidState(parking_refusal(wid, op.action))
        return InvalidState(
            f"workflow {wid!r} has just finished (its end is being written); {op.action} "
            "applies to an unfinished workflow"
        )

    def _op_cancel(self, op: Operate) -> WorkflowRun:
        run = self._engine.runs.get(op.workflow_id)
        if run is None:
            raise self._not_loaded(op)
        self._note_operator(op)
        reason = f"cancelled by {op.who or 'request'}" + (f": {op.why}" if op.why else "")
        actions.cancel(self._engine, run, reason)
        return run

    def _op_retry(self, op: Operate) -> WorkflowRun:
        run, parked = self._operable(op)
        if not parked:  # (NEEDS_ATTENTION in memory: its parking is being written)
            raise InvalidState(f"workflow {op.workflow_id!r} is being parked; retry it then")
        self._adopt(run, parked)
        self._note_operator(op)
        actions.retry(self._engine, run)
        return run

    def _op_skip(self, op: Operate) -> WorkflowRun:
        run, parked = self._operable(op)
        steps, inflight = run.steps, self._engine.inflight
        if op.step is None:
            st, why = actions.to_skip(run, inflight)
            if st is None:
                raise InvalidState(why)
        elif op.step not in steps:
            raise InvalidInput(
                f"workflow {op.workflow_id!r} has no step {op.step!r} (it has: {', '.join(steps)})"
            )
        else:
            st = steps[op.step]
        result = normalize(
            op.result, limit=self._config.max_result_bytes, what=f"result given for {st.name!r}"
        )
        refusal = actions.skip_refusal(run, st, inflight, result)
        if refusal is not None:
            raise InvalidState(refusal)
        self._adopt(run, parked and not actions.stays_parked(run, st))
        self._note_operator(op, st.name)  # (the step it took, when none was named)
        actions.skip(self._engine, run, st, result)
        return run

    def _op_compensate(self, op: Operate) -> WorkflowRun:
        run, parked = self._operable(op)
        self._adopt(run, parked)
        self._note_operator(op)
        reason = f"compensation requested by {op.who or 'an operator'}: {op.why or ''}".rstrip(": ")
        actions.compensate(self._engine, run, reason, parked=parked)
        return run

    def _op_abandon(self, op: Operate) -> WorkflowRun | None:
        run = self._engine.runs.get(op.workflow_id)
        error = f"abandoned by {op.who or 'an operator'}" + (f": {op.why}" if op.why else "")
        now = self._clock.time()
        if run is not None:
            self._note_operator(op)
            actions.abandon(self._engine, run, error)
            return None
        record = self._store.get_workflow(op.workflow_id)
        if record is None:
            raise UnknownWorkflow(f"no workflow with id {op.workflow_id!r}")
        if record.state.is_final and record.state not in OPERATOR_ACTIONS["abandon"]:
            raise InvalidState(_not_in(op, record.state))
        if not record.state.is_final and self._commits.pending(op.workflow_id):
            raise self._not_loaded(op, record)  # its end is being written
        self._check_settled(op, record)
        # Parked, or awaiting its definition: nothing of it runs, so this needs no
        # definition: the records change in the store.
        self._read = record
        self._recovery.absent.release(record)
        self._note_operator(op)
        txn = self._commits.txn(op.workflow_id)
        for st in self._store.steps_of(op.workflow_id):
            new = abandoned_step(st, self._ctx.next_token, now)
            if new is not None:
                txn.put_step(st, new)
                event = step_event(st, new, now)
                if event is not None:
                    txn.put(history_put(record.id, self._ctx.next_token(), event))
        abandoned = record.evolve(state=WorkflowState.ABANDONED, error=error, updated=now)
        if record.deadline is not None:
            txn.delete_timer(timer_key(ms(record.deadline), record.id, DEADLINE_TIMER))
        txn.put_workflow(abandoned)
        event = workflow_event(record.state, abandoned)
        txn.put(history_put(record.id, self._ctx.next_token(), event))
        if not record.state.is_final:
            txn.effects.append(Announce(abandoned))  # it ends here: waiters hear of it
        return None


_OPERATIONS = tuple(OPERATOR_ACTIONS)


def _pass_on(outcome: Future[None], done: Future[None]) -> None:
    error = outcome.exception()
    if error is None:
        done.set_result(None)
    else:
        done.set_exception(error)


def _not_in(op: Operate, state: WorkflowState) -> str:
    return operator_refusal(op.workflow_id, state, op.action) or f"{op.action} applies"
