"""The state machine over the workflows in memory: what each transition does to a run.

:class:`Machine` holds the unfinished workflows (:class:`~._runs.WorkflowRun`), the
attempts in flight and the counters, and changes them in place: a step succeeded or
failed, a workflow advances, turns to compensation or finishes, a probe is due again, a
workflow resumed after a crash. Each change is written into the open
:class:`~._decision.Decision` (records in order, effects once durable, what happens at
once); :class:`~._engine.Engine` builds on it and says which event calls what.

The rules it applies are the tables and pure functions beside it (``_states``,
``_retry``, ``_step``, ``_answer``, ``_workflow``, ``_recovery``). Time is
``self.now``, set by the engine for each event; tokens come from the injected source.

Imports: herder.store and this package only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from herder.actors.engine._answer import Fail, HandOff, ProbeAgain, Reading, Succeed
from herder.actors.engine._deadline import DEADLINE_TIMER, expired
from herder.actors.engine._decision import (
    Announce,
    Cancel,
    Decision,
    Enqueue,
    Fence,
    Immediate,
    TimerDelete,
)
from herder.actors.engine._logs import log_step
from herder.actors.engine._members import next_member
from herder.actors.engine._operator import cut_short, ended_error, orphan_given_up
from herder.actors.engine._recovery import Leased, orphaned
from herder.actors.engine._retry import (
    GIVEN_UP_ERROR,
    Escalate,
    GiveUp,
    RetryIn,
    after_failure,
    after_probe_failure,
)
from herder.actors.engine._runs import Attempt, Job, WorkflowRun
from herder.actors.engine._states import ALLOWED_STEPS, WAITS_TO_RUN, to_undo
from herder.actors.engine._step import (
    failed,
    handed_off,
    probed,
    settled,
    succeeded_with,
    unknown,
    with_timer,
)
from herder.actors.engine._undo import UndoOrder
from herder.actors.engine._workflow import advance, when_compensating
from herder.store import (
    RetryPolicy,
    StepRecord,
    StepSpec,
    StepState,
    WorkflowRecord,
    WorkflowState,
    bounded_text,
    crash_point,
    get_logger,
    ms,
)

_log = get_logger("herder.scheduler")


@dataclass(frozen=True, slots=True)
class Defaults:
    """The engine's settings (see ``Runtime`` for their meaning)."""

    default_retry: RetryPolicy = dataclasses.field(default_factory=RetryPolicy)
    default_timeout: float = 300.0
    probe_timeout: float = 30.0
    max_recoveries: int = 3  # crashes in a row an attempt may be running at
    recovery_stagger: float = 0.5  # seconds between suspects re-run after a crash


class Machine:
    """The workflows in memory and their transitions; see the module docstring."""

    def __init__(self, defaults: Defaults, tokens: Callable[[], int], lease: Leased) -> None:
        self.defaults = defaults
        self._tokens = tokens
        self.lease = lease  # the store's: its incarnation, the one it was taken from
        self.healthy: Callable[[str], bool] = lambda agent: True  # (AnyOf picks among them)
        # (token): its attempt reached an agent (one reserved ahead may still be waiting).
        self.started: Callable[[int], bool] = lambda token: True
        self.runs: dict[str, WorkflowRun] = {}
        self.inflight: dict[int, Attempt] = {}
        self.carried: dict[int, str | None] = {}  # (steps held back: _resume.py)
        self.counters = dict.fromkeys(
            (
                "dispatched",
                "succeeded",
                "retried",
                "timed_out",
                "failed",
                "compensated",
                "stale",
                "crashes",
                "passivated",
                "unknown",  # lapsed attempts handed to a probe
                "probes",  # probe answers received
                "handed_off",  # actions that returned ctx.complete_later()
                "completed",  # complete_step/fail_step calls recorded
            ),
            0,
        )
        self.suspects = 0  # suspects re-run after a crash so far (their stagger)
        self._out = Decision()
        self.now = 0.0
        self._rand: Callable[[], float] = lambda: 0.5

    def job_valid(self, run: WorkflowRun, job: Job) -> bool:
        """Whether ``job`` may still run: it is its step's current job, and the step and
        workflow are in a state that runs it."""
        if job.step not in run.queued or run.jobs.get(job.step) is not job:
            return False
        deadline = run.record.deadline  # (tested here first: expired() is a call, every step)
        if deadline is not None and not job.compensating and expired(deadline, self.now):
            return False  # no new attempt past the deadline (its timer compensates)
        st = run.steps[job.step]
        if job.compensating:
            return run.record.state is WorkflowState.COMPENSATING and (
                st.state is StepState.COMPENSATING or to_undo(st)
            )
        if st.state is StepState.DISPATCHED:
            # Orphaned (a crash, a reload): re-dispatched with attempt + 1; one an earlier
            # process left is given up instead once its workflow compensates (orphaned).
            return st.token not in self.inflight
        if st.state is StepState.UNKNOWN:
            return st.token not in self.inflight  # a probe, even while compensating
        return run.record.state is WorkflowState.RUNNING and st.state in WAITS_TO_RUN

    # -- writes ------------------------------------------------------------------------

    def decided(self) -> bool:
        """Whether anything was decided since the last take (else take need not be called)."""
        return bool(self._out)

    def token(self) -> int:
        """A fresh fencing token."""
        return self._tokens()

    def put_step(self, run: WorkflowRun, old: StepRecord, new: StepRecord) -> None:
        """Record a step's new state (in memory and in the decision)."""
        self._out.put_step(run, old, new, self.now)

    def set_record(self, run: WorkflowRun, **changes: Any) -> WorkflowRecord:
        """Change the run's workflow record (in memory and in the decision)."""
        return self._out.set_record(run, self.now, **changes)

    def tell(self, action: Immediate) -> None:
        """Have the shell do ``action`` at once (it needs nothing durable)."""
        self._out.now.append(action)

    def given_up(self, st: StepRecord) -> StepRecord:
        """An orphan of a compensating workflow (:func:`orphaned`), not run again."""
        why = "its workflow is compensating"
        return orphan_given_up(st, why, token=self._tokens(), now=self.now)

    def fence(self, attempt: Attempt, *, replace: bool = False, abandon: bool = True) -> None:
        """Stop counting ``attempt`` (see :class:`Fence`)."""
        self._out.now.append(Fence(attempt, replace=replace, abandon=abandon))

    def untrack(self, run: WorkflowRun, st: StepRecord) -> Attempt | None:
        """Stop counting the attempt (if any) running ``st``; that attempt."""
        run.attempts.discard(st.token)
        return self.inflight.pop(st.token, None)

    def supersede(self, run: WorkflowRun, st: StepRecord, *, replace: bool) -> None:
        """Supersede the attempt (if any) running ``st``; its answer is then ignored."""
        attempt = self.untrack(run, st)
        run.queued.discard(st.name)
        if attempt is not None:
            self.fence(attempt, replace=replace)

    def cancel_attempts(self, run: WorkflowRun) -> None:
        """Tell the run's running forward attempts that it is being cancelled or
        compensated; not a compensation (it is the undoing asked for) nor a probe."""
        for token in run.attempts:
            attempt = self.inflight[token]
            if run.steps[attempt.step].state is StepState.DISPATCHED:
                self._out.now.append(Cancel(attempt))

    # -- the state machine -------------------------------------------------------------

    def advance(self, run: WorkflowRun, freed: tuple[StepSpec, ...] | None = None) -> None:
        """Queue what can run next, or finish the workflow (``advance`` decides);
        ``freed``: only those steps can have become ready (None: any)."""
        now = self.now
        compensating = run.record.state is WorkflowState.COMPENSATING
        if compensating and run.undo is None and run.marks is not None:  # a wide run
            run.undo = UndoOrder(run.steps)  # (else each undo is a pass over every step)
        then = advance(
            run.record.state,
            run.plan,
            run.steps,
            run.specs,
            run.queued,
            cancelled=run.record.cancelled,
            now=now,
            freed=freed,
            marks=run.marks,
            undo=run.undo,
        )
        for name in then.wait:
            # Recorded (retry_at and a timer in the store) so the wait survives restarts;
            # the timer's sweep queues the step when the time comes.
            st = run.steps[name]
            delay = run.specs[name].delay
            assert delay is not None
            waiting = st.evolve(retry_at=now + delay, token=self._tokens(), updated=now)
            self.put_step(run, st, with_timer(waiting))
        for name in then.run:
            self.enqueue(run, name, compensating=False)
        if then.undo is not None:
            self.enqueue(run, then.undo, compensating=True)
        if then.finish is not None:
            self.finish(run, then.finish)

    def enqueue(self, run: WorkflowRun, step: str, *, compensating: bool) -> None:
        """Queue ``step`` on its agent, unless it waits there for the same: a job of the
        other kind (an orphan's re-run, its step now to be undone) gives up its place."""
        if step in run.queued and run.jobs[step].compensating == compensating:
            return
        run.queued.add(step)
        job = run.jobs[step] = Job(run.record.id, step, compensating)
        spec, st = run.specs[step], run.steps[step]
        agent = next_member(spec, st, compensating=compensating, healthy=self.healthy)
        self._out.now.append(Enqueue(agent, job, run.record.priority))

    def succeeded(self, run: WorkflowRun, st: StepRecord, result: Any) -> None:
        """The step's attempt (or compensation) succeeded with ``result``."""
        if run.record.recoveries:  # an attempt of it ended without killing the process
            self.set_record(run, recoveries=0)
        token = self._tokens()
        now = self.now
        if st.state is StepState.COMPENSATING:
            crash_point("scheduler.compensated")
            self.put_step(run, st, settled(st, StepState.COMPENSATED, token, now))
            self.counters["compensated"] += 1
        else:
            self._out.put_step(run, st, succeeded_with(st, result, token, now), now)
            self.counters["succeeded"] += 1
            if run.marks is not None:  # a wide plan: only what it may have freed
                self.advance(run, run.dependents.get(st.name))
                return
        self.advance(run)

    def failed(
        self,
        run: WorkflowRun,
        st: StepRecord,
        error: str,
        types: tuple[str, ...],
        *,
        permanent: bool,
        retry_now: bool = False,
    ) -> None:
        """The step's attempt failed: retry it, give up (and compensate), or escalate."""
        if run.record.recoveries:  # an attempt of it ended without killing the process
            self.set_record(run, recoveries=0)
        verdict = after_failure(
            st,
            run.specs[st.name],
            workflow=run.record.state,
            types=types,
            permanent=permanent,
            default=self.defaults.default_retry,
            at_once=retry_now,
            rand=self._rand,
        )
        # Whatever an agent or crash said must fit in a record, or the commit would fail.
        error = bounded_text(error)
        new = failed(st, verdict, error=error, types=types, token=self._tokens(), now=self.now)
        self.put_step(run, st, new)
        if isinstance(verdict, RetryIn):
            self.counters["retried"] += 1
            given_up = GIVEN_UP_ERROR in types  # (its agent gave it up: not charged)
            what = "given up, not charged: it runs again" if given_up else "failed, will retry"
            log_step(f"{what}: {error}", run.record.id, st)
            if verdict.delay <= 0:
                self.enqueue(run, st.name, compensating=new.state is StepState.COMPENSATING)
            return
        self.counters["failed"] += 1
        if isinstance(verdict, GiveUp):
            if run.record.state is WorkflowState.RUNNING:
                self.begin_compensation(run, f"step {st.name!r} failed: {error}")
            self.advance(run)
        else:
            self.finish(
                run,
                WorkflowState.NEEDS_ATTENTION,
                error=f"compensation of step {st.name!r} failed: {error}",
            )

    def begin_compensation(self, run: WorkflowRun, reason: str, *, cancelled: bool = False) -> None:
        """The workflow turns back: it undoes what may have taken effect."""
        _log.info(
            "%s compensating: %s", run.record.id, reason, extra={"workflow_id": run.record.id}
        )
        cancelled = cancelled or run.record.cancelled
        self.set_record(
            run, state=WorkflowState.COMPENSATING, error=reason, reason=reason, cancelled=cancelled
        )
        incarnation = self.lease.incarnation
        for st in list(run.steps.values()):
            if st.token not in self.inflight and orphaned(st, incarnation):
                # Queued to run again after a crash: it is undone instead.
                self.put_step(run, st, self.given_up(st))
                continue
            new = when_compensating(st, tokens=self._tokens, now=self.now)
            if new is not None:
                self.put_step(run, st, new)
        # Forward jobs that may no longer run (a pending start, a retry that is now
        # FAILED) give up their place, or the step's compensation could not be queued.
        run.queued = {s for s in run.queued if self.job_valid(run, run.jobs[s])}
        self.cancel_attempts(run)  # ctx.cancelled: whatever turned it back, say so

    def finish(self, run: WorkflowRun, state: WorkflowState, error: str | None = None) -> None:
        """The workflow ends in ``state``: announce it once durable, fence its attempts.
        Parked, what its state does not admit (a step running beside a probe that kept
        failing, say) is cut short (``cut_short``)."""
        if state is WorkflowState.NEEDS_ATTENTION:
            for st in list(run.steps.values()):
                if st.state not in ALLOWED_STEPS[state]:
                    self.put_step(run, st, cut_short(st, token=self._tokens(), now=self.now))
        record = self.set_record(run, state=state, error=ended_error(run.record, state, error))
        if record.deadline is not None:  # it ended first: its deadline's timer goes
            self._out.writes.append(TimerDelete(record.id, ms(record.deadline), DEADLINE_TIMER))
        steps = [run.steps[spec.name] for spec in run.plan.steps]
        self._out.after(record.id, Announce(record, steps))
        del self.runs[record.id]
        for token in run.attempts:
            attempt = self.inflight.pop(token, None)
            if attempt is not None:
                self.fence(attempt)
        run.attempts.clear()

    def follow(self, run: WorkflowRun, st: StepRecord, reading: Reading) -> None:
        """Do what the engine read from a marked answer or a lapse."""
        if isinstance(reading, Succeed):
            self.succeeded(run, st, reading.result)
        elif isinstance(reading, Fail):
            self.failed(
                run,
                st,
                reading.error,
                reading.types,
                permanent=reading.permanent,
                retry_now=reading.at_once,
            )
        elif isinstance(reading, ProbeAgain):
            self._probe_later(run, st, reading.note, failed=reading.failed)
        elif isinstance(reading, HandOff):
            # The instance is free again; the step waits for complete_step/fail_step under
            # the deadline it already has (same token: the task token stays valid).
            self.counters["handed_off"] += 1
            self.put_step(run, st, handed_off(st, self.now))
        else:
            # The request may have reached the remote side: ask before retrying.
            self.counters["unknown"] += 1
            new = unknown(st, reading.lapsed, token=self._tokens(), now=self.now)
            self.put_step(run, st, new)
            self.enqueue(run, st.name, compensating=False)

    def _probe_later(self, run: WorkflowRun, st: StepRecord, note: str, *, failed: bool) -> None:
        """Keep the step UNKNOWN and probe again after a backoff; a probe that fails
        (raises, times out) more often than the step's max_attempts parks the workflow."""
        now = self.now
        new = probed(st, note, failed=failed, token=self._tokens(), now=now)
        probe = {"kind": "probe", "t": now, "step": st.name, "token": new.token, "error": note}
        self._out.history(run.record.id, probe)
        failures = new.extra["probe_failures"]
        verdict = after_probe_failure(
            run.specs[st.name],
            probes=new.extra["probes"],
            failures=failures,
            default=self.defaults.default_retry,
            rand=self._rand,
        )
        if isinstance(verdict, Escalate):
            self.put_step(run, st, new)
            self.finish(
                run,
                WorkflowState.NEEDS_ATTENTION,
                error=f"step {st.name!r}: outcome unknown and {failures} probes failed: {note}",
            )
            return
        self.put_step(run, st, with_timer(new.evolve(retry_at=now + verdict.delay)))
