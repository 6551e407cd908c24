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
effects once durable. It owns the parts it wires together, each on this actor's thread
and reaching it only through the Shell methods (``handle``, ``perform``, ``settle``):

- ``herder.actors.engine``: :class:`Engine`, the unfinished workflows in memory and
  what each event does to them (the rules as tables and pure functions), answering
  with a :class:`Decision`;
- ``_commits``: a decision's writes as per-flush transactions (one commit in flight per
  workflow) and the promises a durable batch keeps;
- ``_dispatch``: the agents' queues, admission gates and the pump, before the agent host;
- ``_recovery``: bringing workflows in (new, recovered after a restart, awaiting their
  definition), with its parts ``_absent`` (the workflows out of memory, and why) and
  ``_reload`` (after a failed commit, forget a workflow and read it back);
- ``_operator``, ``_channel``: operator actions, complete_step, other processes' commands.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from herder.actors._answers import Drain
from herder.actors._carried import carry_over, count_left, left_running
from herder.actors._channel import Channel
from herder.actors._clock import MessageClock
from herder.actors._commit_backoff import Reload
from herder.actors._commits import (
    CommitPipeline,
    commit_sink,
    drain_commits,
    log_resource_errors,
    refuse_callers,
    settle_future,
)
from herder.actors._dispatch import Dispatcher
from herder.actors._due import DueTimers
from herder.actors._engine import EngineContext
from herder.actors._facts import FactsPublisher
from herder.actors._guards import send_conditional
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
    Tick,
    Unadmit,
    Wake,
)
from herder.actors._operator import Operator
from herder.actors._outcomes import has_probe
from herder.actors._placed_host import build_host
from herder.actors._recovery import Recovery
from herder.actors._supervised import SupervisedActor
from herder.actors._wiring import AgentEntry, registered_agents
from herder.actors.engine import (
    Announce,
    Answered,
    AttemptLost,
    Beat,
    Decision,
    Dispatch,
    Effect,
    Engine,
    Event,
)
from herder.store import BATCH_TIMER, LeaseLost, Plan, crash_point, get_logger

_log = get_logger("herder.scheduler")

FLUSH_AT = 8
"""Workflows with open writes at which the Scheduler flushes before its inbox drains: an early
flush costs a submit and lets the next commit start sooner (8 beat 32 and 512 at 256 in flight)."""


class Scheduler(SupervisedActor):
    """Runs workflows: decides, records, then dispatches. See the module docstring."""

    use_daemon_thread = True

    def __init__(self, ctx: EngineContext) -> None:
        super().__init__()
        self._ctx = ctx
        self._store = ctx.store
        self._writer = ctx.store.writer
        self._facts = FactsPublisher(ctx.store)
        self._clock = MessageClock(ctx.clock)  # read once per message (_handle_receive)
        self._rand = random.Random(ctx.config.seed)
        # The definitions this Scheduler runs: its own copy, filled at start and changed
        # only by Define messages (never written by another thread).
        self._plans: dict[tuple[str, int], Plan] = {}
        self._engine = Engine(
            ctx.config.defaults(), self._plans, ctx.next_token, self._probes, ctx.store
        )
        self._commits = CommitPipeline(ctx.next_token, ctx.listener.on_ending)
        self._dispatch = Dispatcher(ctx, self._engine, self._clock)
        self._recovery = Recovery(
            ctx, self._engine, self._commits, self._dispatch, self, plans=self._plans
        )
        self._operator = Operator(
            ctx,
            engine=self._engine,
            commits=self._commits,
            recovery=self._recovery,
            shell=self,
            rand=self._rand.random,
            plans=self._plans,
            clock=self._clock,
        )
        self._due = DueTimers(
            self._engine,
            self._commits,
            self._dispatch,
            wanted=self._recovery.absent.wanted,
            wake=self._recovery.dormancy.wake,
            handle=self.handle,
            perform=self.perform,
        )
        self._channel = Channel(ctx, self._commits, self._recovery, self._operator, self._plans)
        # What each engine message does (by its exact type: one lookup, no isinstance chain).
        self._handlers: dict[type, Callable[[Any], None]] = {
            Drain: self._on_drain,
            Outcome: self._on_outcome,
            Committed: self._on_committed,
            Heartbeat: lambda m: self.handle(Beat(m.token, m.details)),
            Due: self._on_due,
            Admit: lambda m: self._recovery.admit_new(m.starts, early=m.early),
            Unadmit: lambda m: self._recovery.unadmit(m.record),
            InstanceEvent: self._on_instance_event,
            Define: self._on_define,
            Tick: lambda _m: self._on_tick(),
            Wake: lambda m: self._dispatch.woke(m.agent),
            Recover: lambda _m: self._recovery.recover_all(),
            Crash: self._crash,
            Reload: self._recovery.reloads.on_reload,
            Commands: self._channel.apply_commands,
        }

    # -- lifecycle ---------------------------------------------------------------------

    def on_start(self) -> None:
        """Attach to the agents subtree and recover unfinished workflows from the store."""
        super().on_start()
        # Everything this Scheduler holds is read from the store: nothing builds on a
        # batch a predecessor had fail, so the writer may take its batches.
        self._writer.resync()
        ctx = self._ctx
        self._sink = commit_sink(self.actor_ref, ctx)  # where the writer reports durable batches
        host = build_host(ctx) if ctx.make_host is None else ctx.make_host()
        ctx.scheduler = self.actor_ref
        ctx.answers.restart(keep=lambda m: type(m) not in (Admit, Define))  # (_answers)
        # After the line above: what is registered from here on reaches this actor as a
        # message (Define, add_agent), what was registered before is in these copies
        # (both is harmless: each message says what to hold, not what to change).
        self._plans.update(ctx.plans)
        self._dispatch.attach(host, registered_agents(ctx.agents, ctx.limits))
        self._engine.carried = carry_over(ctx, self._dispatch)  # (actors/_carried.py)
        self.actor_ref.tell(Recover())

    def on_failure(self, *_exc_info: object) -> None:
        """Keep the promises of commits that reached the inbox but were never handled, and
        tell the attempts still running that they are superseded: the next Scheduler runs
        their steps again under new tokens, and only this one could tell them."""
        self._end(running=True)

    def on_stop(self) -> None:
        """As on_failure: commits still in the inbox resolve their waiters; attempts
        waiting for an instance (reserved ahead) are superseded: none will take them."""
        self._end(running=False)

    def _end(self, *, running: bool) -> None:
        left_running(self._ctx, self._engine, self._dispatch)  # (actors/_carried.py)
        for attempt in self._engine.inflight.values():
            if attempt.port is not None and (running or not attempt.sent):
                attempt.port.superseded = True
        drain_commits(self.actor_inbox)

    def _crash(self, _message: Crash) -> None:
        raise RuntimeError("the Scheduler was crashed on purpose (testing.crash_scheduler)")

    def _on_define(self, message: Define) -> None:
        self._plans[(message.plan.name, message.plan.version)] = message.plan
        self._recovery.on_define(message.plan)

    # -- control plane (called through proxies/asks) ----------------------------------

    def add_agent(self, name: str, entry: AgentEntry) -> None:
        """Start serving agent ``name`` as ``entry`` says (again: as it now says)."""
        for event in self._dispatch.add(name, entry):  # (moved to another host: given up)
            self.handle(event)
        self.settle()

    def remove_agent(self, name: str) -> None:
        """Stop serving agent ``name``; its queued work waits until it is added again."""
        for event in self._dispatch.remove(name):
            self.handle(event)
        self.settle()

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
        return self._operator.operate(op)

    def complete(self, msg: Complete) -> Future[None]:
        """Record the outcome of a step handed off with ``ctx.complete_later()``.

        Refused with :class:`CompletionRefused` when the task token's attempt is no longer
        the step's current one (it failed or timed out and was retried, or the step finished).
        """
        return self._operator.complete(msg)

    def sync(self) -> None:
        """Return once every message sent before this call was handled (tests, drain)."""
        self._flush()

    def in_flight(self) -> int:
        """Attempts currently running on agent instances."""
        return len(self._engine.inflight)

    def stats(self) -> dict[str, Any]:
        """Counters and gauges of the engine."""
        engine, dispatch = self._engine, self._dispatch.stats()
        count_left(self._ctx, dispatch["host"])
        return {
            **engine.counters,
            "active_workflows": len(engine.runs) + len(self._recovery.absent.dormant),
            "in_flight_attempts": len(engine.inflight),
            **self._recovery.absent.stats(),
            **dispatch,
        }

    # -- the engine --------------------------------------------------------------------

    def _probes(self, agent: str, action: str) -> bool:
        """Whether ``agent`` defines a probe for ``action`` (the engine asks on a lapse)."""
        entry = self._dispatch.agents.get(agent)
        return entry is not None and has_probe(entry.factory, action)

    def handle(self, event: Event) -> None:
        """Hand ``event`` to the engine, then commit and perform what it decided."""
        self.perform(self._engine.handle(event, now=self._clock.now, rand=self._rand.random))

    def perform(self, decision: Decision) -> None:
        """Add a decision's writes to the open commit; do at once what it does at once."""
        self._commits.apply(decision)
        if decision.now:
            self._dispatch.perform(decision.now)

    # -- message handlers --------------------------------------------------------------

    def settle(self, *, flush: bool = False) -> None:
        """Dispatch what became runnable, then flush the open writes when due (or now)."""
        if self._dispatch.dirty:
            self._dispatch.pump_dirty()
            if self._engine.decided():  # the attempts the pump recorded, if any
                self.perform(self._engine.take())
        if not (self._commits.open or self._commits.loose or self._dispatch.admission.dirty):
            return  # (loose: a due batch entry replaced goes out now, in an idle runtime too)
        # Flush once the inbox is drained (one group commit for the whole backlog), or
        # when the open writes grow large; _handle_receive covers asks that leave the
        # inbox empty without coming through here.
        if flush or len(self._commits.open) >= FLUSH_AT or self.actor_inbox.empty():
            self._flush()

    def _handle_receive(self, message: Any) -> Any:
        """Handle one engine message, then dispatch what became runnable and flush; any
        other (a proxy call, an ask of pykka's) goes the way pykka takes it."""
        self._clock.tick()
        try:
            handler = self._handlers.get(type(message))
            if handler is not None:  # an engine message: pykka's proxy checks are skipped
                handler(message)
                self.settle()
                return None
            return super()._handle_receive(message)
        finally:
            if (self._commits.open or self._commits.loose) and self.actor_inbox.empty():
                self._flush()

    def _flush(self) -> None:
        if self._commits.resync_due:
            return  # fail-stop: hold new writes until the writer took the resync marker
        resources = self._dispatch.resource_writes()
        if resources is not None:
            # Submitted first, so they land in the same or an earlier commit than the
            # step transitions that follow (the writer keeps submission order).
            self._writer.submit_many([resources], log_resource_errors)
        ops, effects, watch = self._commits.take()
        send_conditional(self._commits.conditional, self._writer, self._sink)  # (_guards)
        if not effects:
            return
        crash_point("scheduler.flush")
        self._writer.submit_batch(ops, effects, len(effects), self._sink, watch)

    def _on_committed(self, msg: Committed) -> None:
        self._commits.returned(msg.effects, msg.errors)
        failed: list[str] = []
        for (workflow_id, effects), error in zip(msg.effects, msg.errors, strict=True):
            if error is None:
                for effect in effects:
                    self._apply(effect)
                continue
            refuse_callers(effects, error)
            if isinstance(error, LeaseLost):
                # Deposed: the store belongs to another runtime now. Reloading would
                # only retry writes that must not happen; stop dispatching instead.
                self._ctx.lease_lost(error)
                continue
            if workflow_id != BATCH_TIMER:  # replaced batch entries: read again when due
                failed.append(workflow_id)
        if len(failed) < len(msg.errors):
            self._recovery.reloads.committed()
        if failed:
            self._recovery.reloads.reload_later(failed, msg.errors)
        if self._commits.resync_now():
            self._recovery.drop_failed_starts()  # (and each failed workflow, above)
            self._writer.resync()
        self._ctx.listener.on_commit()

    def _apply(self, effect: Effect) -> None:
        if isinstance(effect, Dispatch):
            attempt = self._engine.inflight.get(effect.token)
            if attempt is None or attempt.sent:
                return  # superseded before it was durable (crash, timeout)
            if not self._dispatch.send(attempt):
                self.handle(AttemptLost(effect.token, "agent instance went away"))
        elif isinstance(effect, Announce):  # (the writer announces it: commit_sink)
            self._recovery.absent.recovered.discard(effect.record.id)  # its id may come anew
        else:
            settle_future(effect)

    def _on_drain(self, _message: Drain) -> None:
        """Take the outcomes the hosts queued (``_answers``), each as its own message would
        be, at the time the burst arrived (one clock read, not one per outcome); pump and
        flush every :data:`FLUSH_AT` workflows with open writes."""
        queue, n = self._ctx.answers.taking()
        for _ in range(n):
            message = queue.popleft()
            self._handlers[type(message)](message)
            if len(self._commits.open) >= FLUSH_AT:
                self.settle()

    def _on_outcome(self, m: Outcome) -> None:
        crash_point("scheduler.outcome")
        self._dispatch.answered(m)
        self.handle(
            Answered(
                m.token, m.ok, m.result, m.error, m.error_types, m.permanent, m.traceback, m.kind
            )
        )

    def _on_due(self, msg: Due) -> None:
        self._due.on_due(msg)

    def _on_instance_event(self, msg: InstanceEvent) -> None:
        for event in self._dispatch.instance_event(msg):
            self.handle(event)

    def _on_tick(self) -> None:
        self._engine.counters["passivated"] += self._dispatch.passivate()
        self._recovery.dormancy.on_tick(self._clock.time())
        self._facts.publish(self._dispatch.facts(), self._clock.time())
