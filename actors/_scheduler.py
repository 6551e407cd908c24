"""The Scheduler: runs workflows, one actor per runtime, the only writer of transitions.

It keeps every unfinished workflow in memory and decides what runs next. Every decision
becomes a transition in the store *before* it takes effect:

- a step is recorded DISPATCHED (attempt, fencing token, deadline) before its agent is told;
- a result is recorded SUCCEEDED before any step that depends on it is dispatched;
- a workflow's final state is recorded before anyone waiting on it hears of it.

Transitions gathered while handling the messages already in the inbox are submitted
together (one group commit); what they cause (tell an agent, resolve a handle) happens
when the writer reports the batch durable. Memory runs ahead of the disk only until then;
if a commit fails, the affected workflow is reloaded from the store, which stays the truth.

Answers carry the fencing token of their attempt; one whose token is no longer current
(the attempt timed out and was retried, or the process restarted) is counted as stale and
ignored. That makes recording an outcome exactly-once while execution is at-least-once.

This module keeps the actor (message handling, dispatch, the step state machine); the
parts it coordinates live beside it:

- ``_engine``: EngineConfig, EngineContext (what outlives one Scheduler), AttemptPort;
- ``_run``: what memory holds of an unfinished workflow, its attempts and queued jobs;
- ``_commits``: CommitPipeline (per-flush transactions, one commit in flight per
  workflow) and the promises a durable batch keeps;
- ``herder.actors.engine``: the rules as data and pure functions: the state tables, the
  retry rule (``after_failure``), one step's record transitions (``dispatch``,
  ``failed``, ``settled``, ...) and the typed effects a durable batch performs;
- ``_recovery``: recovery after a restart, resume on definition, reload after a failed
  commit, crash counting;
- ``_probing``: unknown outcomes and probes, the complete_later hand-off;
- ``_operator``: operator actions and the commands channel.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import random
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import pykka

from herder.actors._admission import Admission
from herder.actors._agent import Agent, StepContext
from herder.actors._commit_backoff import CommitBackoff, Reload
from herder.actors._commits import (
    CommitPipeline,
    announce_final,
    log_resource_errors,
    orphaned_commit,
    settle_future,
)
from herder.actors._engine import AttemptPort, EngineContext
from herder.actors._errors import CompletionRefused, InvalidState, UnknownWorkflow
from herder.actors._facts import FactsPublisher, agent_facts, limit_facts
from herder.actors._host import AgentHost, AgentUnavailable
from herder.actors._messages import (
    Admit,
    Answer,
    Commands,
    Committed,
    Complete,
    Crash,
    Define,
    Due,
    Heartbeat,
    InstanceEvent,
    Operate,
    Outcome,
    Recover,
    Run,
    Tick,
    Wake,
)
from herder.actors._operator import apply_commands, apply_held, operate
from herder.actors._outcomes import probe_name
from herder.actors._pool_host import PoolHost
from herder.actors._probing import on_lapsed, on_special_outcome
from herder.actors._recovery import (
    await_definition,
    count_crash,
    is_awaiting,
    on_define,
    on_reload,
    recover_all,
    reload_later,
    resume_steps,
    take_back,
)
from herder.actors._run import Attempt, Job, WorkflowRun, unqueue
from herder.actors._supervised import SupervisedActor
from herder.actors._supervision_specs import ChildEventKind
from herder.actors._thread_host import ThreadHost
from herder.actors.engine import (
    WAITS_TO_RUN,
    Announce,
    Dispatch,
    Effect,
    GiveUp,
    Refuse,
    Resolve,
    RetryIn,
    advance,
    after_failure,
    dispatch,
    failed,
    heartbeat,
    lapse,
    settled,
    to_undo,
    when_compensating,
    with_timer,
)
from herder.store import (
    BatchSink,
    LeaseLost,
    Plan,
    StepRecord,
    StepSpec,
    StepState,
    Transition,
    WorkflowRecord,
    WorkflowState,
    bounded_text,
    crash_point,
    normalize,
    plan_steps,
    timer_key,
    timer_token,
)

_log = logging.getLogger("herder.scheduler")

CRASH_ERROR = "herder.InstanceCrashed"
FLUSH_AT = 8
"""Workflows with open writes at which the Scheduler flushes without waiting for its
inbox to drain. The writer merges whatever is queued into one commit anyway, so an early
flush costs one submit and lets the next commit start sooner: while an attempt is told
only once its DISPATCHED is durable, the commit cycle bounds throughput (8 beat 32 and
512 at 256 in flight, same runs)."""


class Scheduler(SupervisedActor):
    """Runs workflows: decides, records, then dispatches. See the module docstring."""

    use_daemon_thread = True

    def __init__(self, ctx: EngineContext) -> None:
        super().__init__()
        self._ctx = ctx
        self._store = ctx.store
        self._writer = ctx.store.writer
        self._facts = FactsPublisher(ctx.store)
        self._clock = ctx.clock
        self._config = ctx.config
        self._rand = random.Random(ctx.config.seed)
        self._runs: dict[str, WorkflowRun] = {}
        # Recovered workflows awaiting their definition, by definition (ordered sets).
        self._awaiting: dict[tuple[str, int], dict[str, None]] = {}
        # Operator commands held until their workflow is taken back: id -> command by id.
        self._held: dict[str, dict[int, dict[str, Any]]] = {}
        self._inflight: dict[int, Attempt] = {}
        self._commits = CommitPipeline(ctx.clock, ctx.next_token)
        self._dirty_agents: set[str] = set()
        self._recovered: set[str] = set()  # unfinished ids that recovery took over
        self._corrupt: dict[str, str] = {}  # "db:key" -> why, for records recovery skipped
        self._backoff = CommitBackoff()
        self._parked: set[str] = set()  # forgotten after a failed commit, reloaded later
        self._plan_specs: dict[tuple[str, int], dict[str, StepSpec]] = {}
        self._counters = dict.fromkeys(
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
        self._host: AgentHost | None = None
        self._sink: BatchSink | None = None  # where the writer reports durable batches
        self._commands_seen: set[int] = set()
        self._suspect_slots = itertools.count(1)  # see engine._recovery (poison work)
        # (a lambda: the host is attached in on_start)
        busy = lambda agent: self._hosted.busy_tokens(agent)  # noqa: E731, PLW0108
        self._admission = Admission(ctx.store, ctx.clock, self._wake_later, busy)

    # -- lifecycle ---------------------------------------------------------------------

    def on_start(self) -> None:
        """Attach to the agents subtree and recover unfinished workflows from the store."""
        super().on_start()
        assert self._ctx.agents_supervisor is not None, "agents supervisor starts first"
        host = PoolHost if self._config.agent_host == "pool" else ThreadHost
        self._host = host(
            self._ctx.agents_supervisor,
            reply=self._ctx.tell_scheduler,
            events=self._ctx.tell_scheduler,
            max_result_bytes=self._config.max_result_bytes,
            shutdown=self._config.instance_shutdown,
            max_restarts=self._config.agent_max_restarts,
            restart_period=self._config.agent_restart_period,
            queue_aging=self._config.priority_aging,
        )
        for name, (factory, concurrency) in self._ctx.agents.items():
            self._host.add(name, factory, concurrency)
            self._admission.configure(name, *self._ctx.limits.get(name, (None, None, None)))
        self._ctx.scheduler = self.actor_ref
        self.actor_ref.tell(Recover())

    def on_failure(self, *_exc_info: object) -> None:
        """Keep the promises of commits that reached the inbox but were never handled."""
        self._drain_commits()

    def on_stop(self) -> None:
        """As on_failure: commits still in the inbox resolve their waiters."""
        self._drain_commits()

    def _drain_commits(self) -> None:
        # Only this (dying) actor's thread takes from its inbox, so empty() then get()
        # cannot block. Everything but commits goes back for pykka's teardown, which
        # answers pending asks with ActorDeadError.
        others = []
        while not self.actor_inbox.empty():
            envelope = self.actor_inbox.get()
            message = getattr(envelope, "message", None)
            if isinstance(message, Committed):
                orphaned_commit(self._ctx, message.effects, message.errors)
            else:
                others.append(envelope)
        for envelope in others:
            self.actor_inbox.put(envelope)

    def on_receive(self, message: Any) -> Any:
        """Handle one engine message, then dispatch what became runnable and flush."""
        if isinstance(message, Outcome):
            self._on_outcome(message)
        elif isinstance(message, Committed):
            self._on_committed(message)
        elif isinstance(message, Heartbeat):
            self._on_heartbeat(message)
        elif isinstance(message, Due):
            self._on_due(message)
        elif isinstance(message, Admit):
            self._on_admit(message)
        elif isinstance(message, InstanceEvent):
            self._on_instance_event(message)
        elif isinstance(message, Define):
            on_define(self, message.plan)
        elif isinstance(message, Tick):
            self._on_tick()
        elif isinstance(message, Wake):
            self._admission.woke(message.agent)
            self._dirty_agents.add(message.agent)
        elif isinstance(message, Recover):
            recover_all(self)
        elif isinstance(message, Crash):
            raise RuntimeError("the Scheduler was crashed on purpose (testing.crash_scheduler)")
        elif isinstance(message, Reload):
            on_reload(self, message)
        elif isinstance(message, Commands):
            apply_commands(self, message)
        else:
            return super().on_receive(message)
        self._after_message()
        return None

    # -- control plane (called through proxies/asks) ----------------------------------

    def add_agent(self, name: str) -> None:
        """Start serving agent ``name`` as registered in the engine context."""
        factory, concurrency = self._ctx.agents[name]
        self._hosted.add(name, factory, concurrency)
        self._admission.configure(name, *self._ctx.limits.get(name, (None, None, None)))
        self._dirty_agents.add(name)
        self._after_message()

    def remove_agent(self, name: str) -> None:
        """Stop serving agent ``name``; its queued work waits until it is added again."""
        self._hosted.remove(name)
        self._admission.remove(name)
        self._after_message()

    def cancel(self, workflow_id: str) -> Future[None]:
        """Stop dispatching and compensate; the future resolves once that is durable."""
        return self.operate(Operate("cancel", workflow_id))

    def retry(self, workflow_id: str) -> Future[None]:
        """Resume a NEEDS_ATTENTION workflow where it stopped."""
        return self.operate(Operate("retry", workflow_id))

    def operate(self, op: Operate) -> Future[None]:
        """Apply an operator action; the future resolves once it (and its history) is durable.

        Raises (nothing written) when the action does not apply: :class:`UnknownWorkflow`,
        :class:`InvalidState`, :class:`InvalidInput`.
        """
        return operate(self, op)

    def complete(self, msg: Complete) -> Future[None]:
        """Record the outcome of a step handed off with ``ctx.complete_later()``.

        Refused with :class:`CompletionRefused` when the task token's attempt is no longer
        the step's current one (it timed out and was retried, or the step finished).
        """
        # A workflow recovery has not taken back yet is taken back for it (as for an
        # operator's action), and resumes after it.
        fresh = take_back(self, msg.workflow_id)
        try:
            return self._complete(msg)
        finally:
            if fresh is not None:
                self._resume(fresh[0], recovered=fresh[1], crashed=fresh[2])
                self._after_message()  # what it resumed is dispatched now

    def _complete(self, msg: Complete) -> Future[None]:
        run = self._runs.get(msg.workflow_id)
        st = None if run is None else run.steps.get(msg.step)
        if run is None or st is None:
            record = self._store.get_workflow(msg.workflow_id)
            if record is None:
                raise UnknownWorkflow(f"no workflow with id {msg.workflow_id!r}")
            if not record.state.is_final:
                raise InvalidState(
                    f"workflow {msg.workflow_id!r} awaits its definition "
                    f"{record.name!r} version {record.version}; register it, then complete"
                )
            raise CompletionRefused(
                f"workflow {msg.workflow_id!r} is {record.state}: step {msg.step!r} can no "
                "longer be completed; the completion was not recorded"
            )
        waiting = st.state is StepState.WAITING or (
            st.state is StepState.DISPATCHED and st.name not in run.queued
        )
        if st.token != msg.token or not waiting:
            raise CompletionRefused(
                f"step {msg.step!r} of workflow {msg.workflow_id!r} is {st.state} at attempt "
                f"{st.attempt}; the attempt this task token names is no longer current (it "
                "timed out and was retried, or the step already finished), so the "
                "completion was not recorded"
            )
        attempt = self._inflight.pop(st.token, None)  # completed before its action returned
        run.attempts.discard(st.token)
        if attempt is not None:
            attempt.port.superseded = True
        done: Future[None] = Future()
        self._counters["completed"] += 1
        result = None
        if msg.ok:
            result = normalize(
                msg.result, limit=self._config.max_result_bytes, what=f"result of {msg.step!r}"
            )
        self._answered(run, st, msg, result)
        self._commits.txn(run.record.id).effects.append(Resolve(done))
        self._after_message()
        return done

    def sync(self) -> None:
        """Return once every message sent before this call was handled (tests, drain)."""
        self._flush()

    def in_flight(self) -> int:
        """Attempts currently running on agent instances."""
        return len(self._inflight)

    def stats(self) -> dict[str, Any]:
        """Counters and gauges of the engine."""
        return {
            **self._counters,
            "active_workflows": len(self._runs),
            "in_flight_attempts": len(self._inflight),
            "awaiting_definition": {
                f"{name}@{version}": len(ids) for (name, version), ids in self._awaiting.items()
            },
            "agents": self._hosted.stats(),
            "host": self._hosted.host_stats(),
            "corrupt": dict(self._corrupt),
            "resources": self._admission.stats(),
        }

    # -- message handlers --------------------------------------------------------------

    @property
    def _hosted(self) -> AgentHost:
        assert self._host is not None
        return self._host

    def _after_message(self, *, flush: bool = False) -> None:
        for agent in list(self._dirty_agents):
            self._pump(agent)
        self._dirty_agents.clear()
        if not self._commits.open and not self._admission.dirty:
            return
        # Flush once the inbox is drained (one group commit for the whole backlog), or
        # when the open writes grow large; _handle_receive covers asks that leave the
        # inbox empty without coming through here.
        if flush or len(self._commits.open) >= FLUSH_AT or self.actor_inbox.empty():
            self._flush()

    def _handle_receive(self, message: Any) -> Any:
        try:
            return super()._handle_receive(message)
        finally:
            if self._commits.open and self.actor_inbox.empty():
                self._flush()

    def _flush(self) -> None:
        if self._admission.dirty:
            # Submitted first, so they land in the same or an earlier commit than the
            # step transitions that follow (the writer keeps submission order).
            self._writer.submit_many(
                [Transition(ops=tuple(self._admission.writes()))], log_resource_errors
            )
        ops, effects = self._commits.take()
        if not effects:
            return
        if self._sink is None:
            self._sink = _commit_sink(self.actor_ref, self._ctx)
        self._writer.submit_batch(ops, effects, len(effects), self._sink)

    def _on_committed(self, msg: Committed) -> None:
        failed: list[str] = []
        for (workflow_id, effects), error in zip(msg.effects, msg.errors, strict=True):
            self._commits.landed(workflow_id)
            if error is None:
                for effect in effects:
                    self._apply(effect)
                continue
            for effect in effects:
                if isinstance(effect, Resolve | Refuse):
                    effect.future.set_exception(error)
            if isinstance(error, LeaseLost):
                # Deposed: the store belongs to another runtime now. Reloading would
                # only retry writes that must not happen; stop dispatching instead.
                self._ctx.lease_lost(error)
                continue
            failed.append(workflow_id)
        if len(failed) < len(msg.errors):
            self._backoff.succeeded()
        if failed:
            reload_later(self, failed, msg.errors)
        for listener in list(self._ctx.commit_listeners):
            listener()

    def _apply(self, effect: Effect) -> None:
        if isinstance(effect, Dispatch):
            attempt = self._inflight.get(effect.token)
            if attempt is None or attempt.run is None:
                return  # superseded before it was durable (crash, timeout)
            run, attempt.run = attempt.run, None
            if not self._hosted.send(attempt.agent, attempt.instance, run):
                self._fail_attempt(run.token, "agent instance went away", (CRASH_ERROR,), now=True)
        elif isinstance(effect, Announce):
            announce_final(self._ctx, effect)
        else:
            settle_future(effect)

    def _on_outcome(self, msg: Outcome) -> None:
        crash_point("scheduler.outcome")
        # Even a stale answer is news of the resource's health.
        self._admission.answered(msg.agent, msg.token, msg.ok or msg.permanent)
        if self._hosted.release(msg.agent, msg.instance, msg.token, self._clock.time()):
            self._dirty_agents.add(msg.agent)
        attempt = self._inflight.pop(msg.token, None)
        if attempt is None:
            self._counters["stale"] += 1
            return
        run = self._runs.get(attempt.workflow_id)
        if run is not None:
            run.attempts.discard(msg.token)
        st = None if run is None else run.steps.get(attempt.step)
        if run is None or st is None or st.token != msg.token:
            self._counters["stale"] += 1
            return
        if msg.kind or st.state is StepState.UNKNOWN:
            on_special_outcome(self, run, st, msg)
        else:
            self._answered(run, st, msg, msg.result)

    def _on_heartbeat(self, msg: Heartbeat) -> None:
        attempt = self._inflight.get(msg.token)
        run = None if attempt is None else self._runs.get(attempt.workflow_id)
        if attempt is None or run is None:
            return
        st = run.steps[attempt.step]
        spec = run.specs[st.name]
        if st.token != msg.token or spec.heartbeat_timeout is None:
            return
        self._commits.put_step(run, st, heartbeat(st, spec, msg.details, self._clock.time()))

    def _on_due(self, msg: Due) -> None:
        now = self._clock.time()
        for due_ms, workflow_id, step, value in msg.timers:
            run = self._runs.get(workflow_id)
            st = None if run is None else run.steps.get(step)
            token = timer_token(value)
            if run is None or st is None or st.timer_ms != due_ms or st.token != token:
                if (
                    workflow_id not in self._runs
                    and not is_awaiting(self, workflow_id)
                    and (
                        workflow_id not in self._parked  # its timers are still wanted
                    )
                ):
                    self._delete_stray_timer(workflow_id, due_ms, step)
                continue
            if st.retry_at is not None:
                if st.name not in run.queued:
                    self._enqueue(run, st.name, compensating=st.state is StepState.COMPENSATING)
                continue
            lapsed = lapse(st, run.specs[st.name], now, self._config.default_timeout)
            if lapsed is None:
                continue
            agent = run.specs[st.name].agent
            if st.token not in self._inflight and st.name in run.queued:
                if st.token not in self._hosted.busy_tokens(agent):
                    continue  # orphaned by a restart and already queued to run again
                # A reload left it queued while an instance still runs (hangs in) the old
                # attempt: time it out, which frees that instance.
                self._hosted.replace_token(agent, st.token)
            self._counters["timed_out"] += 1
            self._admission.answered(agent, st.token, ok=False)
            _log_step("timed out", run.record.id, st.name, st.attempt)
            attempt = self._inflight.pop(st.token, None)
            run.attempts.discard(st.token)
            if attempt is not None:
                attempt.port.superseded = True
                self._hosted.replace(attempt.agent, attempt.instance)
            # Also reached for an attempt no Scheduler of this process runs (orphaned by
            # a restart) and nothing will run again: it counts as failed all the same.
            on_lapsed(self, run, st, lapsed)

    def _on_instance_event(self, msg: InstanceEvent) -> None:
        self._dirty_agents.add(msg.agent)
        try:
            lost = self._hosted.on_event(msg, self._clock.time())
        except AgentUnavailable as exc:
            self._admission.crashed(msg.agent, 0)
            self._fail_next_job(msg.agent, str(exc))
            return
        if msg.kind is ChildEventKind.CRASHED and msg.instance is not None:
            self._admission.crashed(msg.agent, len(lost))
        for token in lost:
            self._counters["crashes"] += 1
            self._fail_attempt(
                token, f"agent instance crashed: {msg.reason}", (CRASH_ERROR,), now=True
            )

    def _on_admit(self, msg: Admit) -> None:
        # start() sends Admit once the workflow is durable. If this Scheduler's recovery
        # already read it from the store (a restart raced the start), recovery owns it and
        # the message's records may be stale: running them could repeat finished steps.
        workflow_id = msg.workflow.id
        if workflow_id in self._runs or workflow_id in self._recovered:
            return
        self._admit(msg.workflow, msg.steps)

    def _on_tick(self) -> None:
        idle_before = self._clock.time() - self._config.idle_timeout
        self._counters["passivated"] += self._hosted.passivate(idle_before)
        limits = self._ctx.limits
        configured = {
            name: limit_facts(concurrency, *limits.get(name, (None, None, None)))
            for name, (_, concurrency) in self._ctx.agents.items()
        }
        facts = agent_facts(self._hosted.stats(), self._admission.stats(), configured)
        self._facts.publish(facts, self._clock.time())

    def _admit(
        self,
        record: WorkflowRecord,
        steps: list[StepRecord],
        *,
        recovered: bool = False,
        crashed: bool = False,
    ) -> None:
        """Run a workflow: a new one, one reloaded from the store (``recovered``), or one
        a previous Scheduler or process left unfinished (``crashed``: its crash is counted,
        see engine._recovery).

        Operator commands held for it are applied first, before anything of it runs again.
        """
        run = self._load(record, steps)
        if run is None:
            return
        held = self._held.pop(record.id, None)
        if held:
            apply_held(self, list(held.values()))
        self._resume(run, recovered=recovered, crashed=crashed)

    def _load(self, record: WorkflowRecord, steps: list[StepRecord]) -> WorkflowRun | None:
        """Put a workflow into memory without running anything of it; None if it is there
        already or awaits its definition."""
        if record.id in self._runs:
            return None
        plan = self._ctx.plans.get((record.name, record.version))
        if plan is None:
            await_definition(self, record)
            return None
        by_name = {s.name: s for s in plan_steps(record, steps, plan)}  # missing: PENDING
        run = WorkflowRun(record, plan, by_name, self._specs_of(plan, record))
        self._runs[record.id] = run
        return run

    def _resume(self, run: WorkflowRun, *, recovered: bool, crashed: bool) -> None:
        """Run a workflow just put into memory (see ``_admit``), unless an operator's
        action has ended it meanwhile."""
        if self._runs.get(run.record.id) is not run:
            return
        if crashed and count_crash(self, run):
            return
        if recovered or crashed:
            resume_steps(self, run)
        self._advance(run)

    # -- the state machine -------------------------------------------------------------

    def _advance(self, run: WorkflowRun) -> None:
        """Queue what can run next, or finish the workflow (engine.advance decides)."""
        now = self._clock.time()
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
            waiting = st.evolve(retry_at=now + delay, token=self._ctx.next_token(), updated=now)
            self._commits.put_step(run, st, with_timer(waiting))
        for name in then.run:
            self._enqueue(run, name, compensating=False)
        if then.undo is not None:
            self._enqueue(run, then.undo, compensating=True)
        if then.finish is not None:
            self._finish(run, then.finish)

    def _enqueue(self, run: WorkflowRun, step: str, *, compensating: bool) -> None:
        if step in run.queued:
            return
        agent = run.specs[step].agent
        queue = self._hosted.queue(agent)
        run.queued.add(step)
        if queue is None:
            # The agent is not registered (yet): the job waits in a queue created for it.
            self._hosted.add(agent, _unregistered(agent), 0)
            queue = self._hosted.queue(agent)
            assert queue is not None
        job = run.jobs[step] = Job(run.record.id, step, compensating)
        queue.push(job, run.record.priority, self._clock.monotonic())
        self._dirty_agents.add(agent)

    def _pump(self, agent: str) -> None:
        queue = self._hosted.queue(agent)
        gated = self._admission.gated(agent)
        while queue and not self._ctx.paused:
            job = queue.peek()
            run = self._runs.get(job.workflow_id)
            if run is None or not self._job_valid(run, job):
                queue.pop()
                if run is not None:
                    unqueue(run, job)
                continue
            if gated and not self._admission.ready(agent):
                return  # breaker open or rate limit reached: a wake-up pumps again
            token = self._ctx.next_token()
            instance = self._hosted.acquire(agent, token, backlog=len(queue))
            if instance is None:
                return  # busy, or instances are starting: their "started" pumps again
            queue.pop()
            unqueue(run, job)
            if gated:
                self._admission.admitted(agent, token)
            self._dispatch(run, job, agent, instance, token)

    def _wake_later(self, agent: str, delay: float) -> None:
        """Pump ``agent`` again after ``delay`` seconds (on the injectable clock)."""
        ctx = self._ctx
        self._clock.call_later(delay, lambda: ctx.tell_scheduler(Wake(agent)))

    def _fail_next_job(self, agent: str, error: str) -> None:
        """An instance of ``agent`` failed to start: the first job waiting for it pays an
        attempt, so an agent that can never start cannot hold its queue forever."""
        queue = self._hosted.queue(agent)
        while queue:
            job = queue.pop()
            run = self._runs.get(job.workflow_id)
            if run is not None and self._job_valid(run, job):
                unqueue(run, job)
                self._start_failed(run, job, error)
                return
            if run is not None:
                unqueue(run, job)

    def _start_failed(self, run: WorkflowRun, job: Job, error: str) -> None:
        """No instance could be started for a job: that counts as a failed attempt."""
        st = run.steps[job.step]
        if job.compensating:
            tried = st.evolve(state=StepState.COMPENSATING, comp_attempt=st.comp_attempt + 1)
        else:
            tried = st.evolve(state=StepState.DISPATCHED, attempt=st.attempt + 1)
        run.steps[job.step] = tried
        self._step_failed(run, tried, error, (CRASH_ERROR,), permanent=False)

    def _job_valid(self, run: WorkflowRun, job: Job) -> bool:
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
            return st.token not in self._inflight
        if st.state is StepState.UNKNOWN:
            return st.token not in self._inflight  # a probe, even while compensating
        return run.record.state is WorkflowState.RUNNING and st.state in WAITS_TO_RUN

    def _dispatch(self, run: WorkflowRun, job: Job, agent: str, instance: str, token: int) -> None:
        st = run.steps[job.step]
        spec = run.specs[job.step]
        new, window = dispatch(
            st,
            spec,
            compensating=job.compensating,
            token=token,
            now=self._clock.time(),
            default_timeout=self._config.default_timeout,
            probe_timeout=self._config.probe_timeout,
        )
        if job.compensating:
            assert spec.compensate is not None
            action, attempt = spec.compensate, new.comp_attempt
        elif st.state is StepState.UNKNOWN:
            action, attempt = probe_name(spec.action), new.attempt
        else:
            action, attempt = spec.action, new.attempt
        self._commits.put_step(run, st, new)
        port = AttemptPort(self._ctx, token, window * self._config.heartbeat_interval_fraction)
        key = f"{run.record.id}/{job.step}" + ("/compensate" if job.compensating else "")
        ctx = StepContext(
            workflow_id=run.record.id,
            step=job.step,
            action=action,
            attempt=attempt,
            input=run.record.input,
            results={n: s.result for n, s in run.steps.items() if s.succeeded},
            idempotency_key=key,
            token=token,
            compensating=job.compensating,
            _port=port,
            trace_context=run.record.trace,  # the workflow's; runtime/_tracing.py refines it
        )
        message = Run(agent, instance, action, token, ctx)
        self._inflight[token] = Attempt(run.record.id, job.step, agent, instance, port, message)
        run.attempts.add(token)
        self._commits.txn(run.record.id).effects.append(Dispatch(run.record.id, job.step, token))
        self._counters["dispatched"] += 1

    def _answered(self, run: WorkflowRun, st: StepRecord, answer: Answer, result: Any) -> None:
        """The step's current attempt answered (or was completed): record how it ended."""
        if answer.ok:
            self._step_succeeded(run, st, result)
        else:
            error = answer.error or "failed"
            _log_failure(run.record.id, st, error, answer.traceback)
            self._commits.note = answer.traceback
            try:
                self._step_failed(run, st, error, answer.error_types, permanent=answer.permanent)
            finally:
                self._commits.note = None

    def _step_succeeded(self, run: WorkflowRun, st: StepRecord, result: Any) -> None:
        if run.record.recoveries:  # an attempt of it ended without killing the process
            self._commits.set_record(run, recoveries=0)
        token = self._ctx.next_token()
        now = self._clock.time()
        if st.state is StepState.COMPENSATING:
            crash_point("scheduler.compensated")
            self._commits.put_step(run, st, settled(st, StepState.COMPENSATED, token, now))
            self._counters["compensated"] += 1
        else:
            new = settled(
                st, StepState.SUCCEEDED, token, now, result=result, done_token=token, succeeded=True
            )
            self._commits.put_step(run, st, new)
            self._counters["succeeded"] += 1
        self._advance(run)

    def _fail_attempt(self, token: int, error: str, types: tuple[str, ...], *, now: bool) -> None:
        attempt = self._inflight.pop(token, None)
        if attempt is None:
            return
        run = self._runs.get(attempt.workflow_id)
        if run is not None:
            run.attempts.discard(token)
        st = None if run is None else run.steps.get(attempt.step)
        if run is None or st is None or st.token != token:
            return
        self._step_failed(run, st, error, types, permanent=False, retry_now=now)

    def _step_failed(
        self,
        run: WorkflowRun,
        st: StepRecord,
        error: str,
        types: tuple[str, ...],
        *,
        permanent: bool,
        retry_now: bool = False,
    ) -> None:
        if run.record.recoveries:  # an attempt of it ended without killing the process
            self._commits.set_record(run, recoveries=0)
        verdict = after_failure(
            st,
            run.specs[st.name],
            workflow=run.record.state,
            types=types,
            permanent=permanent,
            default=self._config.default_retry,
            at_once=retry_now,
            rand=self._rand.random,
        )
        # Whatever an agent or crash said must fit in a record, or the commit would fail.
        error = bounded_text(error)
        token = self._ctx.next_token()
        new = failed(st, verdict, error=error, types=types, token=token, now=self._clock.time())
        self._commits.put_step(run, st, new)
        if isinstance(verdict, RetryIn):
            self._counters["retried"] += 1
            attempt = st.comp_attempt if new.state is StepState.COMPENSATING else st.attempt
            _log_step(f"failed, will retry: {error}", run.record.id, st.name, attempt)
            if verdict.delay <= 0:
                self._enqueue(run, st.name, compensating=new.state is StepState.COMPENSATING)
            return
        self._counters["failed"] += 1
        if isinstance(verdict, GiveUp):
            if run.record.state is WorkflowState.RUNNING:
                self._begin_compensation(run, f"step {st.name!r} failed: {error}")
            self._advance(run)
        else:
            self._finish(
                run,
                WorkflowState.NEEDS_ATTENTION,
                error=f"compensation of step {st.name!r} failed: {error}",
            )

    def _begin_compensation(
        self, run: WorkflowRun, reason: str, *, cancelled: bool = False
    ) -> None:
        _log.info(
            "%s compensating: %s", run.record.id, reason, extra={"workflow_id": run.record.id}
        )
        now = self._clock.time()
        self._commits.set_record(
            run,
            state=WorkflowState.COMPENSATING,
            error=reason,
            cancelled=cancelled or run.record.cancelled,
        )
        for st in list(run.steps.values()):
            new = when_compensating(st, tokens=self._ctx.next_token, now=now)
            if new is not None:
                self._commits.put_step(run, st, new)
        # Forward jobs that may no longer run (a pending start, a retry that is now
        # FAILED) give up their place, or the step's compensation could not be queued.
        run.queued = {s for s in run.queued if self._job_valid(run, run.jobs[s])}

    def _finish(self, run: WorkflowRun, state: WorkflowState, error: str | None = None) -> None:
        record = self._commits.set_record(run, state=state, error=error or run.record.error)
        steps = [run.steps[spec.name] for spec in run.plan.steps]
        self._commits.txn(run.record.id).effects.append(Announce(record, steps))
        del self._runs[record.id]
        for token in run.attempts:
            attempt = self._inflight.pop(token, None)
            if attempt is not None:
                attempt.port.superseded = True
                if self._admission.abandoned(attempt.agent, token):
                    self._dirty_agents.add(attempt.agent)
        run.attempts.clear()

    # -- helpers -----------------------------------------------------------------------

    def _specs_of(self, plan: Plan, record: WorkflowRecord) -> dict[str, StepSpec]:
        """The plan's steps by name (shared by its runs), with the agents the workflow
        resolved at its start (``record.agents``, runtime/_routing.py) in place of their
        templates: everything downstream dispatches to ``spec.agent``."""
        key = (plan.name, plan.version)
        specs = self._plan_specs.get(key)
        if specs is None or self._ctx.plans.get(key) is not plan:
            specs = self._plan_specs[key] = {spec.name: spec for spec in plan.steps}
        if record.agents:
            specs = dict(specs)
            for step, agent in record.agents.items():
                if step in specs:
                    specs[step] = dataclasses.replace(specs[step], agent=agent)
        return specs

    def _delete_stray_timer(self, workflow_id: str, due_ms: int, step: str) -> None:
        txn = self._commits.txn(workflow_id)
        txn.delete_timer(timer_key(due_ms, workflow_id, step))


def _commit_sink(ref: pykka.ActorRef, ctx: EngineContext) -> BatchSink:
    """The writer's callback for the Scheduler's batches: one Committed per transaction,
    or, with the Scheduler gone, the promises that need no actor (orphaned_commit)."""

    def committed(effects: list[Any], error: BaseException | None) -> None:
        errors = [error] * len(effects)
        try:
            ref.tell(Committed(effects, errors))
        except pykka.ActorDeadError:
            orphaned_commit(ctx, effects, errors)

    return committed


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


def _unregistered(agent: str) -> Callable[[], Agent]:
    def factory() -> Agent:
        raise RuntimeError(f"agent {agent!r} is not registered")

    return factory
