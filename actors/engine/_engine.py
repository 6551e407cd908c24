"""The engine: the workflows in memory, and what each event does to them.

:class:`Engine` is single-threaded and deterministic: ``handle(event, now=, rand=)``
applies one event (``_events``) to the runs in memory and returns a
:class:`~._decision.Decision`: the records to write, in order; what to do at once; what
to do once the writes are durable. It reads no clock, does no I/O and issues fencing
tokens from the source it was given, so the same events at the same times give the
same decisions. The actor shell (``actors/_scheduler.py``) feeds it messages as events,
commits its decisions and performs their effects.

This module says what each event means; :class:`~._machine.Machine`, which it builds
on, holds the runs and carries out the transitions. The state is mutable on purpose (a
run's steps change in place), which is what the hot path needs.

Imports: herder.store and this package only.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from herder.actors.engine._answer import (
    CRASH_ERROR,
    after_lapse,
    after_loss,
    probe_name,
    read_answer,
)
from herder.actors.engine._deadline import (
    DEADLINE_TIMER,
    OnDeadline,
    deadline_reason,
    fenced,
    when_due,
)
from herder.actors.engine._decision import Decision, Dispatch, TimedOut, TimerDelete
from herder.actors.engine._events import (
    Answered,
    AttemptLost,
    Beat,
    Completed,
    Event,
    Reserved,
    Resumed,
    Started,
    StartFailed,
    TimerDue,
)
from herder.actors.engine._logs import log_failure, log_step
from herder.actors.engine._machine import Defaults, Machine
from herder.actors.engine._members import agent_for, with_member
from herder.actors.engine._recovery import Leased
from herder.actors.engine._resume import carried_ended, count_crash, resume_steps
from herder.actors.engine._retry import UNBUILT_ERROR
from herder.actors.engine._runs import Attempt, Dispatched, WorkflowRun
from herder.actors.engine._shapes import Shapes
from herder.actors.engine._step import attempt_timeout, beats, dispatch, heartbeat, lapse
from herder.store import Plan, StepRecord, StepState, WorkflowRecord, plan_steps


class Engine(Machine):
    """The workflows in memory and the events that move them; see the module docstring."""

    def __init__(
        self,
        defaults: Defaults,
        plans: Mapping[tuple[str, int], Plan],
        tokens: Callable[[], int],
        has_probe: Callable[[str, str], bool],
        lease: Leased,
        *,
        healthy: Callable[[str], bool] = lambda agent: True,
    ) -> None:
        super().__init__(defaults, tokens, lease)
        self.healthy = healthy
        self._plans = plans
        self._has_probe = has_probe  # (agent, action): the agent defines its probe
        self.shapes = Shapes()  # (per plan: its steps by name, their dependents)
        self._handlers: dict[type, Callable[[Any], None]] = {
            Answered: self._answered_event,
            Completed: self._completed,
            Beat: self._beat,
            TimerDue: self._timer_due,
            AttemptLost: self._attempt_lost,
            StartFailed: self._start_failed,
            Resumed: self._resumed,
            Started: self._started,
        }

    # -- the interface -----------------------------------------------------------------

    def handle(self, event: Event, *, now: float, rand: Callable[[], float]) -> Decision:
        """Apply ``event`` at ``now`` (``rand``: uniform in [0, 1)); what was decided."""
        self.now, self._rand = now, rand  # (as at() does: this runs for every event)
        self._handlers[type(event)](event)
        out, self._out = self._out, Decision()
        return out

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
        if spec.members:  # (checked here: a group step is rare, this runs every step)
            new = with_member(spec, new, event.agent, compensating=job.compensating)
        out, workflow_id = self._out, run.record.id
        out.put_step(run, st, new, now)
        attempt = Attempt(workflow_id, job.step, event.agent, event.instance, token)
        attempt.deadline = new.deadline
        # restamp()'s rule, read ahead: it changes nothing while less than 1% of the
        # shorter of its deadline and heartbeat deadline has passed.
        span = new.deadline - now if new.deadline is not None else 0.0
        if new.heartbeat_deadline is not None:
            span = min(span, new.heartbeat_deadline - now)
        attempt.fresh_until = now + span / 100
        self.inflight[token] = attempt
        run.attempts.add(token)
        out.after(workflow_id, Dispatch(workflow_id, job.step, token))
        self.counters["dispatched"] += 1
        return Dispatched(attempt, action, number, window)

    def restamp(self, attempt: Attempt, now: float) -> None:
        """``attempt`` (in flight) was recorded ahead of a free instance (or of a free
        worker: the pool host's line) and starts only now: its deadline, and its
        heartbeat deadline, count from now, in memory (actors/_ahead.py). The stored
        ones and their timer stay: a crash re-runs the attempt anyway, and the timer,
        still due, comes back until the deadline in memory has passed too. Nothing
        changes until ``attempt.fresh_until`` (the shell need not call before then)."""
        if now <= attempt.fresh_until:
            return
        run = self.runs.get(attempt.workflow_id)
        if run is None:
            return
        st = run.steps.get(attempt.step)
        if st is None or st.token != attempt.token or st.deadline is None:
            return
        spec, d = run.specs[st.name], self.defaults
        timeout = attempt_timeout(st, spec, d.default_timeout, d.probe_timeout)
        beat = None if st.state is StepState.UNKNOWN else spec.heartbeat_timeout  # (a probe)
        later: dict[str, float] = {}
        if now + timeout > st.deadline + timeout / 100:  # it waited 1% of it or more
            later["deadline"] = now + timeout
        hb = st.heartbeat_deadline
        if beat is not None and hb is not None and now + beat > hb + beat / 100:
            later["heartbeat_deadline"] = now + beat
        if later:
            run.steps[st.name] = st.evolve(**later)
            attempt.deadline = later.get("deadline", attempt.deadline)

    def load(
        self, record: WorkflowRecord, steps: list[StepRecord], *, new: bool = False
    ) -> WorkflowRun | None:
        """Put a workflow into memory without running anything of it; None if it is there
        already or its definition is not registered. ``new``: ``steps`` are a just created
        workflow's, one per step of its plan in plan order (``runtime/_timing.py``)."""
        if record.id in self.runs:
            return None
        plan = self._plans.get((record.name, record.version))
        if plan is None:
            return None
        if not new:
            steps = plan_steps(record, steps, plan)  # missing: PENDING
        run = self.shapes.run(record, plan, steps)
        if new:
            run.origin = record
        self.runs[record.id] = run
        return run

    def forget(self, workflow_id: str) -> WorkflowRun | None:
        """Drop a workflow from memory (the store keeps the truth), with its attempts."""
        run = self.runs.pop(workflow_id, None)
        for token in () if run is None else run.attempts:
            self.inflight.pop(token, None)
        return run

    def agent_of(self, workflow_id: str, step: str) -> str | None:
        """The agent that runs ``step`` of an unfinished workflow in memory."""
        run = self.runs.get(workflow_id)
        spec = None if run is None else run.specs.get(step)
        st = None if run is None else run.steps.get(step)
        return None if spec is None or st is None else agent_for(spec, st)

    def _settled(self, token: int) -> tuple[WorkflowRun, StepRecord] | None:
        """Stop counting the attempt ``token``; its run and step if it is still the
        step's current attempt, else None (an answer or loss that came too late)."""
        attempt = self.inflight.pop(token, None)
        if attempt is None:
            return None
        if not attempt.instance and not attempt.sent:  # lost while it waited in its lane
            self.fence(attempt, abandon=False)  # (which frees its place there)
        run = self.runs.get(attempt.workflow_id)
        if run is None:
            return None
        run.attempts.discard(token)
        st = run.steps.get(attempt.step)
        return None if st is None or st.token != token else (run, st)

    def _answered_event(self, msg: Answered) -> None:
        current = self._settled(msg.token)
        if current is None:
            self.counters["stale"] += 1
            if self.carried:  # (stale answers only: a step held back may run now)
                self._carried_ended(msg.token)
            return
        run, st = current
        if msg.kind or st.state is StepState.UNKNOWN:
            if st.state is StepState.UNKNOWN:
                self.counters["probes"] += 1
            probe = probe_name(run.specs[st.name].action)
            reading = read_answer(
                st, ok=msg.ok, kind=msg.kind, result=msg.result, error=msg.error, probe=probe
            )
            self.follow(run, st, reading)
            return
        self._answered(run, st, msg)

    def _completed(self, msg: Completed) -> None:
        run = self.runs[msg.workflow_id]
        st = run.steps[msg.step]
        attempt = self.untrack(run, st)  # completed before its action returned
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
        log_failure(run.record.id, st, error, answer.traceback)
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
        if st.token != msg.token or not beats(st, spec):
            return
        self.put_step(run, st, heartbeat(st, spec, msg.details, self.now))

    def _deadline_due(self, msg: TimerDue) -> None:
        """A workflow's deadline timer came up (the rules: ``_deadline``)."""
        run = self.runs.get(msg.workflow_id)
        if run is None or msg.due_ms is None:
            return
        # The timer's key is in whole ms: at its due time the deadline has been reached.
        at = max(self.now, msg.due_ms / 1000)
        verdict = when_due(run.record.state, run.record.deadline, at)
        if verdict is OnDeadline.WAIT:
            return
        self._out.writes.append(TimerDelete(run.record.id, msg.due_ms, DEADLINE_TIMER))
        deadline = run.record.deadline
        self.set_record(run, deadline=None)  # spent: an operator's later retry runs without
        if verdict is OnDeadline.DROP or deadline is None:
            return
        for st in list(run.steps.values()):
            new = fenced(st, token=self.token(), now=self.now)
            if new is not None:
                self.supersede(run, st, replace=True)
                self.put_step(run, st, new)
        self.begin_compensation(run, deadline_reason(deadline))
        self.advance(run)

    def _timer_due(self, msg: TimerDue) -> None:
        if msg.step == DEADLINE_TIMER:
            self._deadline_due(msg)
            return
        run = self.runs.get(msg.workflow_id)
        st = None if run is None else run.steps.get(msg.step)
        if run is None or st is None or st.timer_ms != msg.due_ms or st.token != msg.token:
            return
        if st.retry_at is not None:
            if st.name not in run.queued:
                self.enqueue(run, st.name, compensating=st.state is StepState.COMPENSATING)
            return
        d = self.defaults
        lapsed = lapse(st, run.specs[st.name], self.now, d.default_timeout, d.probe_timeout)
        if lapsed is None:
            return
        waiting = self.inflight.get(st.token)
        if waiting is not None and not self.started(st.token):
            self.restamp(waiting, self.now)  # it waits for an instance: its time counts from then
            return
        agent = agent_for(run.specs[st.name], st)
        hung = False
        if waiting is None and st.name in run.queued:
            if not msg.busy:
                return  # orphaned by a restart and already queued to run again
            # A reload left it queued while an instance still runs (hangs in) the old
            # attempt: time it out, which frees that instance.
            hung = True
        elif self.carried.pop(st.token, None) is not None:
            hung = True  # held back for an attempt a crashed Scheduler left: it hangs
        self.counters["timed_out"] += 1
        self._out.now.append(TimedOut(agent, st.token, hung=hung))
        log_step("timed out", run.record.id, st)
        attempt = self.untrack(run, st)
        if attempt is not None:
            self.fence(attempt, replace=True, abandon=False)
        # Also reached for an attempt no Scheduler of this process runs (orphaned by
        # a restart) and nothing will run again: it counts as failed all the same.
        # The agent the attempt ran on (a group's member), which has its effect to ask.
        probe = self._has_probe(agent, run.specs[st.name].action)
        self.follow(run, st, after_lapse(st, lapsed, has_probe=probe))

    def _attempt_lost(self, msg: AttemptLost) -> None:
        current = self._settled(msg.token)
        if current is None and self.carried:  # (a carried attempt's task ended)
            self._carried_ended(msg.token)
        if current is not None:
            run, st = current
            if not msg.given_up:  # (given up: not charged, so no failure: see Machine.failed)
                log_failure(run.record.id, st, msg.error, None)  # (a broken factory, say)
            reading = after_loss(st, msg.error, given_up=msg.given_up, unbuilt=msg.unbuilt)
            self.follow(run, st, reading)

    def _start_failed(self, msg: StartFailed) -> None:
        job = msg.job
        st = (run := self.runs[job.workflow_id]).steps[job.step]
        if st.state is StepState.UNKNOWN and not job.compensating:  # its probe: not run blind
            self.follow(run, st, after_loss(st, msg.error, given_up=False))
            return
        if job.compensating:
            tried = st.evolve(state=StepState.COMPENSATING, comp_attempt=st.comp_attempt + 1)
        else:
            # Queued to run again from DISPATCHED (after a crash): that attempt may have
            # taken effect, as dispatch() marks it; this one never ran, and marks nothing.
            done = st.token if st.state is StepState.DISPATCHED else st.done_token
            tried = st.evolve(state=StepState.DISPATCHED, attempt=st.attempt + 1, done_token=done)
        tried = with_member(run.specs[st.name], tried, msg.agent, compensating=job.compensating)
        self.put_step(run, st, tried)  # the attempt it spent, in the history too
        log_failure(run.record.id, tried, msg.error, None)
        self.failed(run, tried, msg.error, (UNBUILT_ERROR, CRASH_ERROR), permanent=False)

    def _resumed(self, msg: Resumed) -> None:
        run = self.runs.get(msg.workflow_id)
        if run is None or (msg.crashed and count_crash(self, run)):
            return  # an operator's action ended it meanwhile, or it was parked as poison
        if msg.recovered or msg.crashed:
            resume_steps(self, run)
        self.advance(run)

    def _carried_ended(self, token: int) -> None:
        """A carried attempt ended (its stale answer, or its task's end on the asyncio host):
        the step held back for it resumes."""
        workflow_id = self.carried.pop(token, None)
        run = None if workflow_id is None else self.runs.get(workflow_id)
        if run is not None:
            carried_ended(self, run, token)

    def _started(self, msg: Started) -> None:
        runs = self.runs  # (each was loaded in the same Scheduler turn: nothing ended it)
        for workflow_id in msg.workflow_ids:
            self.advance(runs[workflow_id])
