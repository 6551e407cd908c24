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

This module is the actor shell: message -> event -> ``Engine.handle`` -> commit ->
effects once durable. What it drives lives beside it:

- ``herder.actors.engine``: :class:`Engine`, the unfinished workflows in memory and
  what each event does to them (the rules as tables and pure functions), answering
  with a :class:`Decision`;
- ``_engine``: EngineConfig, EngineContext (what outlives one Scheduler), AttemptPort;
- ``_commits``: CommitPipeline (a decision's writes as per-flush transactions, one
  commit in flight per workflow) and the promises a durable batch keeps;
- ``_recovery``: recovery after a restart, resume on definition, reload after a failed
  commit;
- ``_operator``: operator actions and the commands channel.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import pykka

from herder.actors._admission import Admission
from herder.actors._agent import Agent, StepContext
from herder.actors._async_host import AsyncHost
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
from herder.actors._mixed_host import MixedHost
from herder.actors._operator import apply_commands, apply_held, operate
from herder.actors._outcomes import has_probe
from herder.actors._pool_host import PoolHost
from herder.actors._recovery import (
    await_definition,
    is_awaiting,
    on_define,
    on_reload,
    recover_all,
    reload_later,
    take_back,
)
from herder.actors._supervised import SupervisedActor
from herder.actors._supervision_specs import ChildEventKind
from herder.actors._thread_host import ThreadHost
from herder.actors.engine import (
    Announce,
    Answered,
    AttemptLost,
    Beat,
    Cancel,
    Completed,
    Decision,
    Defaults,
    Dispatch,
    Effect,
    Engine,
    Enqueue,
    Fence,
    Job,
    Lost,
    Refuse,
    Reserved,
    Resolve,
    Resumed,
    StartFailed,
    TimedOut,
    TimerDelete,
    TimerDue,
    WorkflowRun,
    unqueue,
)
from herder.store import (
    BatchSink,
    LeaseLost,
    StepRecord,
    StepState,
    Transition,
    WorkflowRecord,
    crash_point,
    normalize,
    timer_token,
)

_log = logging.getLogger("herder.scheduler")

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
        config = ctx.config
        defaults = Defaults(
            default_retry=config.default_retry,
            default_timeout=config.default_timeout,
            probe_timeout=config.probe_timeout,
            max_recoveries=config.max_recoveries,
            recovery_stagger=config.recovery_stagger,
        )
        self._engine = Engine(
            defaults, ctx.plans, ctx.next_token, self._probes, lambda: ctx.store.incarnation
        )
        # Recovered workflows awaiting their definition, by definition (ordered sets).
        self._awaiting: dict[tuple[str, int], dict[str, None]] = {}
        # Operator commands held until their workflow is taken back: id -> command by id.
        self._held: dict[str, dict[int, dict[str, Any]]] = {}
        self._commits = CommitPipeline(ctx.next_token)
        self._dirty_agents: set[str] = set()
        self._recovered: set[str] = set()  # unfinished ids that recovery took over
        self._corrupt: dict[str, str] = {}  # "db:key" -> why, for records recovery skipped
        self._backoff = CommitBackoff()
        self._parked: set[str] = set()  # forgotten after a failed commit, reloaded later
        self._host: AgentHost | None = None
        self._sink: BatchSink | None = None  # where the writer reports durable batches
        self._commands_seen: set[int] = set()
        # (a lambda: the host is attached in on_start)
        busy = lambda agent: self._hosted.busy_tokens(agent)  # noqa: E731, PLW0108
        self._admission = Admission(ctx.store, ctx.clock, self._wake_later, busy)

    # -- lifecycle ---------------------------------------------------------------------

    def on_start(self) -> None:
        """Attach to the agents subtree and recover unfinished workflows from the store."""
        super().on_start()
        self._host = self._ctx.make_host() if self._ctx.make_host else self._start_host()
        for name, (factory, concurrency) in self._ctx.agents.items():
            self._host.add(name, factory, concurrency)
            self._admission.configure(name, *self._ctx.limits.get(name, (None, None, None)))
        self._ctx.scheduler = self.actor_ref
        self.actor_ref.tell(Recover())

    def _start_host(self) -> AgentHost:
        ctx, config = self._ctx, self._config
        assert ctx.agents_supervisor is not None, "agents supervisor starts first"
        host = PoolHost if config.agent_host == "pool" else ThreadHost
        threads = host(
            ctx.agents_supervisor,
            reply=ctx.tell_scheduler,
            events=ctx.tell_scheduler,
            max_result_bytes=config.max_result_bytes,
            shutdown=config.instance_shutdown,
            max_restarts=config.agent_max_restarts,
            restart_period=config.agent_restart_period,
            queue_aging=config.priority_aging,
        )
        return MixedHost(
            threads,
            lambda: AsyncHost(
                ctx.event_loop,
                ctx.tell_scheduler,
                ctx.tell_scheduler,
                max_result_bytes=config.max_result_bytes,
                queue_aging=config.priority_aging,
            ),
            ctx.async_agents.__contains__,
        )

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
            self._handle(Beat(message.token, message.details))
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
        run = self._engine.runs.get(msg.workflow_id)
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
        result = None
        if msg.ok:
            result = normalize(
                msg.result, limit=self._config.max_result_bytes, what=f"result of {msg.step!r}"
            )
        done: Future[None] = Future()
        event = Completed(
            msg.workflow_id,
            msg.step,
            msg.ok,
            result,
            msg.error,
            msg.error_types,
            msg.permanent,
            msg.traceback,
        )
        self._handle(event)
        self._commits.txn(run.record.id).effects.append(Resolve(done))
        self._after_message()
        return done

    def sync(self) -> None:
        """Return once every message sent before this call was handled (tests, drain)."""
        self._flush()

    def in_flight(self) -> int:
        """Attempts currently running on agent instances."""
        return len(self._engine.inflight)

    def stats(self) -> dict[str, Any]:
        """Counters and gauges of the engine."""
        engine = self._engine
        return {
            **engine.counters,
            "active_workflows": len(engine.runs),
            "in_flight_attempts": len(engine.inflight),
            "awaiting_definition": {
                f"{name}@{version}": len(ids) for (name, version), ids in self._awaiting.items()
            },
            "agents": self._hosted.stats(),
            "host": self._hosted.host_stats(),
            "corrupt": dict(self._corrupt),
            "resources": self._admission.stats(),
        }

    # -- the engine --------------------------------------------------------------------

    @property
    def _hosted(self) -> AgentHost:
        assert self._host is not None
        return self._host

    def _probes(self, agent: str, action: str) -> bool:
        """Whether ``agent`` defines a probe for ``action`` (the engine asks on a lapse)."""
        registered = self._ctx.agents.get(agent)
        return registered is not None and has_probe(registered[0], action)

    def _handle(self, event: Any) -> None:
        """Hand ``event`` to the engine, then commit and perform what it decided."""
        self._perform(self._engine.handle(event, now=self._clock.time(), rand=self._rand.random))

    def _perform(self, decision: Decision) -> None:
        """Add a decision's writes to the open commit; do at once what it does at once."""
        self._commits.apply(decision)
        for action in decision.now:
            if isinstance(action, Enqueue):
                self._enqueue(action)
            elif isinstance(action, Fence):
                attempt = action.attempt
                attempt.port.superseded = True
                if action.abandon and self._admission.abandoned(attempt.agent, attempt.token):
                    self._dirty_agents.add(attempt.agent)  # it was a breaker's half-open probe
                if action.replace:
                    self._hosted.replace(attempt.agent, attempt.instance)
            elif isinstance(action, Cancel):
                action.attempt.port.cancelled = True
            elif isinstance(action, TimedOut):
                self._admission.answered(action.agent, action.token, ok=False)
                if action.hung:
                    self._hosted.replace_token(action.agent, action.token)
            else:
                assert isinstance(action, Lost)
                self._admission.lost(action.agent)

    def _enqueue(self, action: Enqueue) -> None:
        queue = self._hosted.queue(action.agent)
        if queue is None:
            # The agent is not registered (yet): the job waits in a queue created for it.
            self._hosted.add(action.agent, _unregistered(action.agent), 0)
            queue = self._hosted.queue(action.agent)
            assert queue is not None
        queue.push(action.job, action.priority, self._clock.monotonic())
        self._dirty_agents.add(action.agent)

    # -- message handlers --------------------------------------------------------------

    def _after_message(self, *, flush: bool = False) -> None:
        for agent in sorted(self._dirty_agents):  # sorted: the same order in every process
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
            attempt = self._engine.inflight.get(effect.token)
            if attempt is None or attempt.message is None:
                return  # superseded before it was durable (crash, timeout)
            run, attempt.message = attempt.message, None
            if not self._hosted.send(attempt.agent, attempt.instance, run):
                self._handle(AttemptLost(run.token, "agent instance went away"))
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
        event = Answered(
            msg.token,
            msg.ok,
            msg.result,
            msg.error,
            msg.error_types,
            msg.permanent,
            msg.traceback,
            msg.kind,
        )
        self._handle(event)

    def _on_due(self, msg: Due) -> None:
        engine = self._engine
        for due_ms, workflow_id, step, value in msg.timers:
            token = timer_token(value)
            agent = engine.agent_of(workflow_id, step)
            if agent is None:
                if not (
                    is_awaiting(self, workflow_id)
                    or workflow_id in self._parked  # its timers are still wanted
                    or workflow_id in engine.runs
                ):
                    self._perform(Decision(writes=[TimerDelete(workflow_id, due_ms, step)]))
                continue
            busy = token is not None and token in self._hosted.busy_tokens(agent)
            self._handle(TimerDue(workflow_id, step, due_ms, token, busy))

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
            self._engine.counters["crashes"] += 1
            self._handle(AttemptLost(token, f"agent instance crashed: {msg.reason}"))

    def _on_admit(self, msg: Admit) -> None:
        # start() sends Admit once the workflow is durable. If this Scheduler's recovery
        # already read it from the store (a restart raced the start), recovery owns it and
        # the message's records may be stale: running them could repeat finished steps.
        workflow_id = msg.workflow.id
        if workflow_id in self._engine.runs or workflow_id in self._recovered:
            return
        self._admit(msg.workflow, msg.steps)

    def _on_tick(self) -> None:
        idle_before = self._clock.time() - self._config.idle_timeout
        self._engine.counters["passivated"] += self._hosted.passivate(idle_before)
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
        if record.id in self._engine.runs:
            return None
        run = self._engine.load(record, steps)
        if run is None:
            await_definition(self, record)
        return run

    def _resume(self, run: WorkflowRun, *, recovered: bool, crashed: bool) -> None:
        """Run a workflow just put into memory (see ``_admit``), unless an operator's
        action has ended it meanwhile."""
        if self._engine.runs.get(run.record.id) is not run:
            return
        self._handle(Resumed(run.record.id, recovered=recovered, crashed=crashed))

    # -- dispatch ----------------------------------------------------------------------

    def _pump(self, agent: str) -> None:
        queue = self._hosted.queue(agent)
        gated = self._admission.gated(agent)
        engine = self._engine
        while queue and not self._ctx.paused:
            job = queue.peek()
            run = engine.runs.get(job.workflow_id)
            if run is None or not engine.job_valid(run, job):
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
            run = self._engine.runs.get(job.workflow_id)
            if run is not None and self._engine.job_valid(run, job):
                unqueue(run, job)
                self._handle(StartFailed(job, error))
                return
            if run is not None:
                unqueue(run, job)

    def _dispatch(self, run: WorkflowRun, job: Job, agent: str, instance: str, token: int) -> None:
        """Record the attempt (the engine's part), and build what its agent is told."""
        engine = self._engine
        done = engine.reserve(Reserved(job, agent, instance, token), now=self._clock.time())
        port = AttemptPort(self._ctx, token, done.window * self._config.heartbeat_interval_fraction)
        key = f"{run.record.id}/{job.step}" + ("/compensate" if job.compensating else "")
        ctx = StepContext(
            workflow_id=run.record.id,
            step=job.step,
            action=done.action,
            attempt=done.number,
            input=run.record.input,
            results={n: s.result for n, s in run.steps.items() if s.succeeded},
            idempotency_key=key,
            token=token,
            compensating=job.compensating,
            _port=port,
            trace_context=run.record.trace,  # the workflow's; runtime/_tracing.py refines it
        )
        done.attempt.port = port
        done.attempt.message = Run(agent, instance, done.action, token, ctx)
        self._perform(engine.take())


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


def _unregistered(agent: str) -> Callable[[], Agent]:
    def factory() -> Agent:
        raise RuntimeError(f"agent {agent!r} is not registered")

    return factory
