"""The engine: every unfinished workflow in memory, and what each event does to it.

:class:`Engine` is single-threaded and deterministic: ``handle(event, now=, rand=)``
changes the in-memory runs and returns a :class:`~._decision.Decision` (the records to
write, in order; what to do at once; what to do once the writes are durable). It reads
no clock, does no I/O and issues fencing tokens from the source it was given, so the
same events at the same times give the same decisions. The actor shell
(``actors/_scheduler.py``) feeds it messages as events, commits its decisions and
performs their effects.

The rules themselves live beside it as tables and pure functions (``_states``,
``_retry``, ``_step``, ``_answer``, ``_workflow``, ``_recovery``); this class applies
them to runs. Its state is mutable on purpose (a run's steps change in place), which is
what the hot path needs.

Imports: herder.store and this package only.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from herder.actors.engine._answer import (
    Fail,
    HandOff,
    ProbeAgain,
    Reading,
    Succeed,
    after_lapse,
    probe_name,
    read_answer,
)
from herder.actors.engine._decision import (
    Announce,
    Cancel,
    Decision,
    Dispatch,
    Enqueue,
    Fence,
    Lost,
    TimedOut,
)
from herder.actors.engine._events import (
    Answered,
    AttemptLost,
    Beat,
    Completed,
    Event,
    Reserved,
    Resumed,
    StartFailed,
    TimerDue,
)
from herder.actors.engine._recovery import poison_message, poisoned, resumes, running_at_crash
from herder.actors.engine._retry import (
    Escalate,
    GiveUp,
    RetryIn,
    after_failure,
    after_probe_failure,
)
from herder.actors.engine._runs import Attempt, Job, WorkflowRun
from herder.actors.engine._states import WAITS_TO_RUN, to_undo
from herder.actors.engine._step import (
    dispatch,
    failed,
    handed_off,
    heartbeat,
    lapse,
    probed,
    settled,
    unknown,
    with_timer,
)
from herder.actors.engine._workflow import advance, when_compensating
from herder.store import (
    Plan,
    RetryPolicy,
    StepRecord,
    StepSpec,
    StepState,
    WorkflowRecord,
    WorkflowState,
    bounded_text,
    crash_point,
    plan_steps,
)

_log = logging.getLogger("herder.scheduler")

CRASH_ERROR = "herder.InstanceCrashed"
"""The error type of an attempt whose instance crashed or could not start."""


@dataclass(frozen=True, slots=True)
class Defaults:
    """The engine's settings (see ``Runtime`` for their meaning)."""

    default_retry: RetryPolicy = dataclasses.field(default_factory=RetryPolicy)
    default_timeout: float = 300.0
    probe_timeout: float = 30.0
    max_recoveries: int = 3  # crashes in a row an attempt may be running at
    recovery_stagger: float = 0.5  # seconds between suspects re-run after a crash


@dataclass(frozen=True, slots=True)
class Dispatched:
    """What :meth:`Engine.reserve` recorded: the attempt, its action and number, and the
    seconds it has before it lapses."""

    attempt: Attempt
    action: str
    number: int
    window: float


class Engine:
    """The unfinished workflows and the rules applied to them; see the module docstring."""

    def __init__(
        self,
        defaults: Defaults,
        plans: Mapping[tuple[str, int], Plan],
        tokens: Callable[[], int],
        has_probe: Callable[[str, str], bool],
        incarnation: Callable[[], int],
    ) -> None:
        self.defaults = defaults
        self._plans = plans
        self._tokens = tokens
        self._has_probe = has_probe  # (agent, action): the agent defines its probe
        self._incarnation = incarnation  # the store's (its tokens' high bits)
        self.runs: dict[str, WorkflowRun] = {}
        self.inflight: dict[int, Attempt] = {}
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
        self._plan_specs: dict[tuple[str, int], dict[str, StepSpec]] = {}
        self._suspects = 0  # suspects re-run after a crash so far (their stagger)
        self._out = Decision()
        self.now = 0.0
        self._rand: Callable[[], float] = lambda: 0.5
        self._handlers: dict[type, Callable[[Any], None]] = {
            Answered: self._answered_event,
            Completed: self._completed,
            Beat: self._beat,
            TimerDue: self._timer_due,
            AttemptLost: self._attempt_lost,
            StartFailed: self._start_failed,
            Resumed: self._resumed,
        }

    # -- the interface -----------------------------------------------------------------

    def handle(self, event: Event, *, now: float, rand: Callable[[], float]) -> Decision:
        """Apply ``event`` at time ``now`` (``rand``: uniform in [0, 1), for jitter);
        return what was decided."""
        self.at(now, rand)
        self._handlers[type(event)](event)
        return self.take()

    def at(self, now: float, rand: Callable[[], float]) -> None:
        """Set the time and random source for the calls that follow."""
        self.now = now
        self._rand = rand

    def take(self) -> Decision:
        """What was decided since the last take (and start afresh)."""
        out, self._out = self._out, Decision()
        return out

    def reserve(self, event: Reserved, *, now: float) -> Dispatched:
        """Record the attempt ``event`` reserved an instance for (DISPATCHED with its
        token and deadline, a compensation, or a probe); the shell hands it over once
        that is durable (the :class:`Dispatch` effect)."""
        self.now = now
        job, token = event.job, event.token
        run = self.runs[job.workflow_id]
        st = run.steps[job.step]
        spec = run.specs[job.step]
        d = self.defaults
        new, window = dispatch(
            st,
            spec,
            compensating=job.compensating,
            token=token,
            now=now,
            default_timeout=d.default_timeout,
            probe_timeout=d.probe_timeout,
        )
        if job.compensating:
            assert spec.compensate is not None
            action, number = spec.compensate, new.comp_attempt
        elif st.state is StepState.UNKNOWN:
            action, number = probe_name(spec.action), new.attempt
        else:
            action, number = spec.action, new.attempt
        self.put_step(run, st, new)
        attempt = Attempt(run.record.id, job.step, event.agent, event.instance, token)
        self.inflight[token] = attempt
        run.attempts.add(token)
        self._out.after(run.record.id, Dispatch(run.record.id, job.step, token))
        self.counters["dispatched"] += 1
        return Dispatched(attempt, action, number, window)

    def load(self, record: WorkflowRecord, steps: list[StepRecord]) -> WorkflowRun | None:
        """Put a workflow into memory without running anything of it; None if it is there
        already or its definition is not registered."""
        if record.id in self.runs:
            return None
        plan = self._plans.get((record.name, record.version))
        if plan is None:
            return None
        by_name = {s.name: s for s in plan_steps(record, steps, plan)}  # missing: PENDING
        run = WorkflowRun(record, plan, by_name, self.specs_of(plan, record))
        self.runs[record.id] = run
        return run

    def forget(self, workflow_id: str) -> WorkflowRun | None:
        """Drop a workflow from memory (the store keeps the truth), with its attempts."""
        run = self.runs.pop(workflow_id, None)
        for token in () if run is None else run.attempts:
            self.inflight.pop(token, None)
        return run

    def job_valid(self, run: WorkflowRun, job: Job) -> bool:
        """Whether ``job`` may still run: it is its step's current job, and the step and
        workflow are in a state that runs it."""
        if job.step not in run.queued or run.jobs.get(job.step) is not job:
            return False
        st = run.steps[job.step]
        if job.compensating:
            return run.record.state is WorkflowState.COMPENSATING and (
                st.state is StepState.COMPENSATING or to_undo(st)
            )
        if st.state is StepState.DISPATCHED:
            # Orphaned by a crash: re-dispatched with attempt + 1, even while compensating,
            # because its effect may have happened and must then be undone.
            return st.token not in self.inflight
        if st.state is StepState.UNKNOWN:
            return st.token not in self.inflight  # a probe, even while compensating
        return run.record.state is WorkflowState.RUNNING and st.state in WAITS_TO_RUN

    def agent_of(self, workflow_id: str, step: str) -> str | None:
        """The agent that runs ``step`` of an unfinished workflow in memory."""
        run = self.runs.get(workflow_id)
        spec = None if run is None else run.specs.get(step)
        return None if spec is None else spec.agent

    def specs_of(self, plan: Plan, record: WorkflowRecord) -> dict[str, StepSpec]:
        """The plan's steps by name (shared by its runs), with the agents the workflow
        resolved at its start (``record.agents``, runtime/_routing.py) in place of their
        templates: everything downstream dispatches to ``spec.agent``."""
        key = (plan.name, plan.version)
        specs = self._plan_specs.get(key)
        if specs is None or self._plans.get(key) is not plan:
            specs = self._plan_specs[key] = {spec.name: spec for spec in plan.steps}
        if record.agents:
            specs = dict(specs)
            for step, agent in record.agents.items():
                if step in specs:
                    specs[step] = dataclasses.replace(specs[step], agent=agent)
        return specs

    # -- writes ------------------------------------------------------------------------

    def token(self) -> int:
        """A fresh fencing token."""
        return self._tokens()

    def put_step(self, run: WorkflowRun, old: StepRecord, new: StepRecord) -> None:
        """Record a step's new state (in memory and in the decision)."""
        self._out.put_step(run, old, new, self.now)

    def set_record(self, run: WorkflowRun, **changes: Any) -> WorkflowRecord:
        """Change the run's workflow record (in memory and in the decision)."""
        return self._out.set_record(run, self.now, **changes)

    def after(self, workflow_id: str, effect: Any) -> None:
        """Do ``effect`` once the workflow's writes so far are durable."""
        self._out.after(workflow_id, effect)

    def fence(self, attempt: Attempt, *, replace: bool = False, abandon: bool = True) -> None:
        """Stop counting ``attempt`` (see :class:`Fence`)."""
        self._out.now.append(Fence(attempt, replace=replace, abandon=abandon))

    def supersede(self, run: WorkflowRun, st: StepRecord, *, replace: bool) -> None:
        """Supersede the attempt (if any) running ``st``; its answer is then ignored."""
        attempt = self.inflight.pop(st.token, None)
        run.attempts.discard(st.token)
        run.queued.discard(st.name)
        if attempt is not None:
            self.fence(attempt, replace=replace)

    def cancel_attempts(self, run: WorkflowRun) -> None:
        """Tell the run's running attempts that it is being cancelled."""
        for token in run.attempts:
            self._out.now.append(Cancel(self.inflight[token]))

    # -- events ------------------------------------------------------------------------

    def _answered_event(self, msg: Answered) -> None:
        attempt = self.inflight.pop(msg.token, None)
        if attempt is None:
            self.counters["stale"] += 1
            return
        run = self.runs.get(attempt.workflow_id)
        if run is not None:
            run.attempts.discard(msg.token)
        st = None if run is None else run.steps.get(attempt.step)
        if run is None or st is None or st.token != msg.token:
            self.counters["stale"] += 1
            return
        if msg.kind or st.state is StepState.UNKNOWN:
            if st.state is StepState.UNKNOWN:
                self.counters["probes"] += 1
            probe = probe_name(run.specs[st.name].action)
            reading = read_answer(
                st, ok=msg.ok, kind=msg.kind, result=msg.result, error=msg.error, probe=probe
            )
            self._follow(run, st, reading)
            return
        self._answered(run, st, msg)

    def _completed(self, msg: Completed) -> None:
        run = self.runs[msg.workflow_id]
        st = run.steps[msg.step]
        attempt = self.inflight.pop(st.token, None)  # completed before its action returned
        run.attempts.discard(st.token)
        if attempt is not None:
            self.fence(attempt, abandon=False)
        self.counters["completed"] += 1
        self._answered(run, st, msg)

    def _answered(self, run: WorkflowRun, st: StepRecord, answer: Answered | Completed) -> None:
        """The step's current attempt answered (or was completed): record how it ended."""
        if answer.ok:
            self.succeeded(run, st, answer.result)
            return
        error = answer.error or "failed"
        _log_failure(run.record.id, st, error, answer.traceback)
        self._out.note = answer.traceback
        try:
            self.failed(run, st, error, answer.types, permanent=answer.permanent)
        finally:
            self._out.note = None

    def _beat(self, msg: Beat) -> None:
        attempt = self.inflight.get(msg.token)
        run = None if attempt is None else self.runs.get(attempt.workflow_id)
        if attempt is None or run is None:
            return
        st = run.steps[attempt.step]
        spec = run.specs[st.name]
        if st.token != msg.token or spec.heartbeat_timeout is None:
            return
        self.put_step(run, st, heartbeat(st, spec, msg.details, self.now))

    def _timer_due(self, msg: TimerDue) -> None:
        run = self.runs.get(msg.workflow_id)
        st = None if run is None else run.steps.get(msg.step)
        if run is None or st is None or st.timer_ms != msg.due_ms or st.token != msg.token:
            return
        if st.retry_at is not None:
            if st.name not in run.queued:
                self.enqueue(run, st.name, compensating=st.state is StepState.COMPENSATING)
            return
        lapsed = lapse(st, run.specs[st.name], self.now, self.defaults.default_timeout)
        if lapsed is None:
            return
        agent = run.specs[st.name].agent
        hung = False
        if st.token not in self.inflight and st.name in run.queued:
            if not msg.busy:
                return  # orphaned by a restart and already queued to run again
            # A reload left it queued while an instance still runs (hangs in) the old
            # attempt: time it out, which frees that instance.
            hung = True
        self.counters["timed_out"] += 1
        self._out.now.append(TimedOut(agent, st.token, hung=hung))
        _log_step("timed out", run.record.id, st.name, st.attempt)
        attempt = self.inflight.pop(st.token, None)
        run.attempts.discard(st.token)
        if attempt is not None:
            self.fence(attempt, replace=True, abandon=False)
        # Also reached for an attempt no Scheduler of this process runs (orphaned by
        # a restart) and nothing will run again: it counts as failed all the same.
        spec = run.specs[st.name]
        probe = self._has_probe(spec.agent, spec.action)
        self._follow(run, st, after_lapse(st, lapsed, has_probe=probe))

    def _attempt_lost(self, msg: AttemptLost) -> None:
        attempt = self.inflight.pop(msg.token, None)
        if attempt is None:
            return
        run = self.runs.get(attempt.workflow_id)
        if run is not None:
            run.attempts.discard(msg.token)
        st = None if run is None else run.steps.get(attempt.step)
        if run is None or st is None or st.token != msg.token:
            return
        self.failed(run, st, msg.error, (CRASH_ERROR,), permanent=False, retry_now=True)

    def _start_failed(self, msg: StartFailed) -> None:
        job = msg.job
        run = self.runs[job.workflow_id]
        st = run.steps[job.step]
        if job.compensating:
            tried = st.evolve(state=StepState.COMPENSATING, comp_attempt=st.comp_attempt + 1)
        else:
            tried = st.evolve(state=StepState.DISPATCHED, attempt=st.attempt + 1)
        run.steps[job.step] = tried
        self.failed(run, tried, msg.error, (CRASH_ERROR,), permanent=False)

    def _resumed(self, msg: Resumed) -> None:
        run = self.runs.get(msg.workflow_id)
        if run is None:
            return  # an operator's action ended it meanwhile
        if msg.crashed and self._count_crash(run):
            return
        if msg.recovered or msg.crashed:
            self._resume_steps(run)
        self.advance(run)

    # -- the state machine -------------------------------------------------------------

    def advance(self, run: WorkflowRun) -> None:
        """Queue what can run next, or finish the workflow (``advance`` decides)."""
        now = self.now
        then = advance(
            run.record.state,
            run.plan,
            run.steps,
            run.specs,
            run.queued,
            cancelled=run.record.cancelled,
            now=now,
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
        """Queue ``step`` on its agent (unless it waits there already)."""
        if step in run.queued:
            return
        run.queued.add(step)
        job = run.jobs[step] = Job(run.record.id, step, compensating)
        self._out.now.append(Enqueue(run.specs[step].agent, job, run.record.priority))

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
            new = settled(
                st, StepState.SUCCEEDED, token, now, result=result, done_token=token, succeeded=True
            )
            self.put_step(run, st, new)
            self.counters["succeeded"] += 1
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
            attempt = st.comp_attempt if new.state is StepState.COMPENSATING else st.attempt
            _log_step(f"failed, will retry: {error}", run.record.id, st.name, attempt)
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
        self.set_record(
            run,
            state=WorkflowState.COMPENSATING,
            error=reason,
            cancelled=cancelled or run.record.cancelled,
        )
        for st in list(run.steps.values()):
            new = when_compensating(st, tokens=self._tokens, now=self.now)
            if new is not None:
                self.put_step(run, st, new)
        # Forward jobs that may no longer run (a pending start, a retry that is now
        # FAILED) give up their place, or the step's compensation could not be queued.
        run.queued = {s for s in run.queued if self.job_valid(run, run.jobs[s])}

    def finish(self, run: WorkflowRun, state: WorkflowState, error: str | None = None) -> None:
        """The workflow ends in ``state``: announce it once durable, fence its attempts."""
        record = self.set_record(run, state=state, error=error or run.record.error)
        steps = [run.steps[spec.name] for spec in run.plan.steps]
        self.after(record.id, Announce(record, steps))
        del self.runs[record.id]
        for token in run.attempts:
            attempt = self.inflight.pop(token, None)
            if attempt is not None:
                self.fence(attempt)
        run.attempts.clear()

    def _follow(self, run: WorkflowRun, st: StepRecord, reading: Reading) -> None:
        """Do what the engine read from a marked answer or a lapse."""
        if isinstance(reading, Succeed):
            self.succeeded(run, st, reading.result)
        elif isinstance(reading, Fail):
            self.failed(run, st, reading.error, reading.types, permanent=reading.permanent)
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

    # -- recovery ----------------------------------------------------------------------

    def _count_crash(self, run: WorkflowRun) -> bool:
        """Count a crash against a workflow that had attempts running at it; defer those
        attempts from the second crash in a row, park it past the limit (True)."""
        running = running_at_crash(run.steps.values())
        if not running:
            return False
        crashes = run.record.recoveries + 1
        self.set_record(run, recoveries=crashes)
        now = self.now
        if crashes > self.defaults.max_recoveries:
            error = poison_message(running, crashes)
            _log.error("%s: %s", run.record.id, error, extra={"workflow_id": run.record.id})
            for st in list(run.steps.values()):
                parked = poisoned(st, error, tokens=self._tokens, now=now)
                if parked is not None:
                    self.put_step(run, st, parked)
            self.finish(run, WorkflowState.NEEDS_ATTENTION, error=error)
            return True
        if crashes >= 2:
            self._suspects += 1
            at = now + self.defaults.recovery_stagger * self._suspects
            for st in running:
                self.put_step(run, st, with_timer(st.evolve(retry_at=at)))
        return False

    def _resume_steps(self, run: WorkflowRun) -> None:
        """Queue the steps a previous Scheduler left running or about to run."""
        compensating = run.record.state is WorkflowState.COMPENSATING
        previous = self._incarnation() - 1
        for st in run.steps.values():
            if st.token in self.inflight:
                continue
            if st.state is StepState.DISPATCHED and st.token >> 32 == previous:
                # Lost by the previous run (counted once: a later run that finds the same
                # record again did not lose it).
                self._out.now.append(Lost(run.specs[st.name].agent))
            undo = resumes(st, compensating=compensating, now=self.now)
            if undo is not None:
                self.enqueue(run, st.name, compensating=undo)


def _log_failure(workflow_id: str, st: StepRecord, error: str, trace: str | None) -> None:
    """A failed attempt at WARNING, with its traceback when the agent sent one."""
    attempt = st.comp_attempt if st.state.is_compensation else st.attempt
    extra = {"workflow_id": workflow_id, "step": st.name, "attempt": attempt}
    # Indented: a log reader (or a test) looking for crashes at "Traceback" line starts
    # must not mistake an attempt's expected failure for one.
    detail = "".join(f"\n    {line}" for line in trace.splitlines()) if trace else ""
    _log.warning(
        "%s/%s attempt %d failed: %s%s", workflow_id, st.name, attempt, error, detail, extra=extra
    )


def _log_step(what: str, workflow_id: str, step: str, attempt: int) -> None:
    extra = {"workflow_id": workflow_id, "step": step, "attempt": attempt}
    _log.info("%s/%s attempt %d %s", workflow_id, step, attempt, what, extra=extra)
