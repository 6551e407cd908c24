"""The exact simulation: the real engine on one thread, so one seed gives one history.

:func:`simulate_exact` runs the same workload and :class:`FaultSchedule` as the threaded
:func:`simulate`, but drives the real actor code itself instead of letting threads run
it. The Scheduler and the watchdog are constructed and never started: this module takes
each message from their inboxes and hands it to the actor, as pykka's loop would. The
agents run on an :class:`InlineHost`, which runs an attempt only when this module says
so. The store is the real LMDB store with an inline writer (each submission commits on
this thread before the submit returns), in the directory given (best on tmpfs). Whenever
more than one of these has something to do (a Scheduler message, a watchdog message, an
attempt to run), a random generator seeded from the seed picks which goes next. Time is
a :class:`FakeClock` moved a round at a time.

Faults, all decided by the seed: an attempt's error, lost answer, hang past its timeout
(its late answer is stale), instance crash or permanent failure; failed store commits; a
Scheduler crash (the supervision tree's one_for_all restart: a new Scheduler, watchdog
and host, recovering from the store); a crash of the whole process at a seeded round or
at a seeded message (every object in memory is dropped and a new "process" opens the
store and recovers through the real recovery path); none of these after the rounds, in
the last settle, which lets everything finish; an operator's cancel or abandon,
another queued through the commands channel while the process is down, and one sent
through it while the process runs (at a seeded message, a sweep handing it over right
then); a wall-clock step.

Besides the end state (``verify``), the rules of write-ahead are checked as they happen
(``_exact_checks``).

The store and not a dict: the check, the recovery and the writer's guard all read LMDB
through ``Store``, so a fake would have to copy a large interface and would test the
copy. Opened on tmpfs with an inline writer it costs well under a millisecond a commit.

:attr:`SimReport.trace` lists every delivery (and ends with a digest of the store), so a
test compares two runs of a seed byte for byte.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pykka import ActorDeadError
from pykka.messages import ProxyCall

from herder.actors import (
    Admit,
    Crash,
    Define,
    EngineConfig,
    EngineContext,
    FakeClock,
    QuietListener,
    Scheduler,
    SteadyClock,
    WorkflowSupervisor,
    registered_agents,
)
from herder.runtime._starts import NewStart, creation
from herder.runtime.testing._exact_checks import (
    check_announced,
    check_write_ahead,
    describe,
    digest,
)
from herder.runtime.testing._exact_operator import Ask, ExactOperator
from herder.runtime.testing._faults import CONCURRENCY, MAX_ROUNDS, ROUND, FaultSchedule
from herder.runtime.testing._faults import definition as _definition
from herder.runtime.testing._inline_host import InlineHost, Sent
from herder.runtime.testing._world import SimReport, SimService, StoreFaults, World, fresh, verify
from herder.store import (
    Put,
    StepRecord,
    Store,
    Transition,
    WorkflowRecord,
    WorkflowState,
    definition_key,
    encode,
)

MAX_STEPS = 20_000
"""Deliveries a round may take before the seed fails as never settling."""


def simulate_exact(
    seed: int,
    directory: str | Path,
    schedule: FaultSchedule | None = None,
    *,
    prefetch: int = 0,
) -> SimReport:
    """Run one seed exactly on a new store in ``directory``; see the module docstring.
    ``prefetch`` is the runtime's setting (attempts reserved ahead per instance)."""
    simulation = _Simulation(seed, *fresh(seed, directory, schedule, prefetch))
    simulation.prefetch = prefetch
    return simulation.run()


class _Announcements(QuietListener):
    """The simulated runner checks each final was durable before it was announced, and
    notes the engine's time at each sweep."""

    def __init__(self, simulation: _Simulation, note_clock: Callable[[], None]) -> None:
        self._simulation = simulation
        self._note_clock = note_clock

    def on_final(self, record: WorkflowRecord, steps: list[StepRecord] | None) -> None:
        self._simulation._announced(record, steps)

    def on_sweep(self) -> None:  # as the runtime's LeaseKeeper does
        self._note_clock()


class _Register:
    """The daemon registers its agents and definition (``add_agent``, ``add_workflow``)
    after the Scheduler started and recovered."""


@dataclass
class _Process:
    """What one process holds in memory; a crash drops all of it."""

    store: Store
    ctx: EngineContext
    scheduler: Scheduler
    watchdog: WorkflowSupervisor
    host: InlineHost


class _Simulation:
    def __init__(self, seed: int, directory: Path, schedule: FaultSchedule) -> None:
        self.seed = seed
        self.prefetch = 0
        # A negative passivate_after (no setting allows it) sends out of memory also a
        # workflow whose timer is due: every Tick then passivates and the next sweep wakes.
        self.passive = -ROUND if schedule.passivates() else None
        self.directory = directory
        self.schedule = schedule
        self.world = World(schedule)
        self.report = SimReport(seed)
        self.clock = FakeClock()
        self.order = random.Random(f"{seed}/order")
        self.faults = StoreFaults(schedule)
        self.plan = _definition().compile()
        self.ids = [f"s{seed}-{i}" for i in range(schedule.workflows())]
        self.held: list[Sent] = []  # hung attempts, let go after the round's advance
        self.operator = ExactOperator(schedule, self.ids, self.clock, self.report, directory)
        self.steps = 0
        self.crash_step = schedule.process_crash_step()
        self.scheduler_crash_step = schedule.scheduler_crash_step()
        self.proc = self._open(late=False)

    # -- the run -----------------------------------------------------------------------

    def run(self) -> SimReport:
        schedule, report = self.schedule, self.report
        try:
            self._start_workflows()
            self.faults.armed = True
            for rnd in range(MAX_ROUNDS):
                report.rounds = rnd + 1
                self._settle(rnd)
                self.operator.act(rnd, self.proc.ctx.tell_scheduler)
                if schedule.scheduler_crash_at() == rnd:
                    self.proc.ctx.tell_scheduler(Crash())
                    self._settle(rnd)
                if schedule.restart_at() == rnd:
                    self._crash_process(rnd)
                    self._settle(rnd)
                if not self.operator.busy and self._all_final():
                    break
                self.clock.advance(ROUND)
                self.pending_held()
            self.faults.armed = False
            self.pending_held()
            self._settle(report.rounds)
            report.stale += self.proc.scheduler.stats()["stale"]
            report.faults = self.world.faults
            report.store_faults = self.faults.failed
            if self.operator.queued is not None:
                report.problems.append(f"command #{self.operator.queued[0]} was never answered")
            verify(self.proc.store, self.world, self.ids, self.operator.wants, report)
            report.trace.append(digest(self.proc.store))
        finally:
            self.faults.armed = False
            self.proc.store.close()
        return report

    def pending_held(self) -> None:
        """Hung attempts answer now (after their timeout fired): run them again."""
        self.proc.host.pending.extend(self.held)
        self.held.clear()

    def _settle(self, rnd: int) -> None:
        """Deliver messages and run attempts in the seed's order until only hung attempts
        are left; then see which operator requests were answered."""
        for _ in range(MAX_STEPS):
            proc = self.proc
            ready = []
            if not proc.scheduler.actor_inbox.empty():
                ready.append(self._to_scheduler)
            if not proc.watchdog.actor_inbox.empty():
                ready.append(self._to_watchdog)
            if proc.host.pending:
                ready.append(self._run_attempt)
            if not ready:
                self.operator.answers(proc.store)
                return
            pick = ready[self.order.randrange(len(ready))] if len(ready) > 1 else ready[0]
            pick()
            self.steps += 1
            if not self.faults.armed:
                continue  # the last settle, after the rounds, has no faults: no crash either
            if self.steps == self.crash_step:
                self._crash_process(rnd)
            if self.steps == self.scheduler_crash_step:
                self.proc.ctx.tell_scheduler(Crash())
            self.operator.deliver(self.steps, rnd, self.proc.watchdog.sweep)
        raise RuntimeError(f"seed {self.seed}: round {rnd} did not settle in {MAX_STEPS} steps")

    def _to_scheduler(self) -> None:
        proc = self.proc
        envelope = proc.scheduler.actor_inbox.get()
        message = envelope.message
        self.report.trace.append(f"S {describe(message)}")
        if isinstance(message, _Register):  # as Runtime.add_agent and add_workflow do
            self._register(proc.ctx)
            proc.scheduler._handle_receive(Define(self.plan))
            agents = registered_agents(proc.ctx.agents, proc.ctx.limits)
            for name in sorted(agents):
                proc.scheduler._handle_receive(ProxyCall(("add_agent",), (name, agents[name]), {}))
            return
        if isinstance(message, Ask):
            try:  # as pykka runs a proxy call
                future = proc.scheduler._handle_receive(ProxyCall(("operate",), (message.op,), {}))
            except Exception as exc:
                message.answer(None, exc)
            else:
                message.answer(future, None)
            return
        try:
            response = proc.scheduler._handle_receive(message)
        except Exception as exc:
            if envelope.reply_to is not None:
                envelope.reply_to.set_exception()
                return
            if not isinstance(message, Crash):
                self.report.problems.append(f"the Scheduler failed on {message!r:.200}: {exc!r}")
            self._restart_tree(exc)
            return
        if envelope.reply_to is not None:
            envelope.reply_to.set(response)

    def _to_watchdog(self) -> None:
        envelope = self.proc.watchdog.actor_inbox.get()
        self.report.trace.append(f"W {type(envelope.message).__name__}")
        self.proc.watchdog._handle_receive(envelope.message)

    def _run_attempt(self) -> None:
        host = self.proc.host
        sent = host.pending.pop(self.order.randrange(len(host.pending)))
        ctx = sent.run.context
        self.report.trace.append(f"A {ctx.idempotency_key} {ctx.attempt} {sent.run.token}")
        fault = self.schedule.attempt_fault(
            ctx.workflow_id, ctx.step, ctx.attempt, ctx.compensating
        )
        if not sent.held:
            check_write_ahead(self.proc.store, self.plan, sent, self.report.problems)
        if fault == "hang" and not sent.held:
            sent.held = True
            self.held.append(sent)  # runs (late) once the round's advance has passed
            return
        host.run(sent)

    def _announced(self, record: WorkflowRecord, _steps: object) -> None:
        check_announced(self.proc.store, record, self.report.problems)

    # -- the process -------------------------------------------------------------------

    def _open(self, *, late: bool) -> _Process:
        armed, self.faults.armed = self.faults.armed, False
        store = Store(self.directory, inline_writes=True)
        lease = store.lease
        floor = 0.0 if lease is None or lease.clock is None else lease.clock
        clock = SteadyClock(self.clock, floor=floor)
        ctx = EngineContext(
            store,
            clock,
            EngineConfig(seed=self.seed, prefetch=self.prefetch, passivate_after=self.passive),
            _Announcements(self, lambda: store.note_clock(clock.time())),
        )
        if not late:
            self._register(ctx)
        key = definition_key(self.plan.name, self.plan.version)
        store.writer.submit(Transition(ops=(Put("definitions", key, encode(self.plan.to_dict())),)))
        store.writer.fault = self.faults
        # As the runtime's LeaseKeeper: the engine's time, noted at each sweep, goes with
        # the lease (renewed at the crash): the next process's clock starts no earlier.
        store.note_clock(ctx.clock.time())
        proc = self._start_actors(store, ctx)
        if late:
            ctx.tell_scheduler(_Register())
        self.faults.armed = armed
        return proc

    def _register(self, ctx: EngineContext) -> None:
        factory = _factory(self.world)
        ctx.plans[(self.plan.name, self.plan.version)] = self.plan
        # One instance with prefetch, so that attempts do wait for one (reserved ahead).
        concurrency = 1 if self.prefetch else CONCURRENCY
        ctx.agents.update({"alpha": (factory, concurrency), "beta": (factory, concurrency)})

    def _start_actors(self, store: Store, ctx: EngineContext) -> _Process:
        """The tree's children: a Scheduler with its host, and the watchdog, started as
        pykka would start them (``on_start``) but never given a thread."""
        hosts: list[InlineHost] = []

        def make_host() -> InlineHost:
            host = InlineHost(
                ctx.answers.put,  # outcomes and instance events, as the pykka hosts send them
                max_result_bytes=ctx.config.max_result_bytes,
                queue_aging=ctx.config.priority_aging,
            )
            hosts.append(host)
            return host

        ctx.make_host = make_host
        scheduler = Scheduler(ctx)
        scheduler.on_start()
        watchdog = WorkflowSupervisor(ctx, ROUND)
        watchdog.on_start()
        return _Process(store, ctx, scheduler, watchdog, hosts[0])

    def _restart_tree(self, exc: Exception) -> None:
        """The Scheduler failed: one_for_all restarts it, the watchdog and the agents."""
        proc = self.proc
        self.report.scheduler_crashes += 1
        self.report.stale += proc.scheduler.stats()["stale"]
        proc.scheduler.on_failure(type(exc), exc, exc.__traceback__)
        _stop(proc.scheduler)
        while not proc.scheduler.actor_inbox.empty():  # pykka's teardown answers asks
            message = proc.scheduler.actor_inbox.get().message
            if isinstance(message, _Register):  # the daemon's registration (asks) failed,
                self._register(proc.ctx)  # but it set the context the next one reads
            if isinstance(message, Ask):
                message.answer(None, ActorDeadError("the Scheduler stopped before handling it"))
        proc.watchdog.on_stop()
        _stop(proc.watchdog)
        # Attempts not yet started die with their instances; hung ones hang on.
        proc.host.pending.clear()
        self.proc = self._start_actors(proc.store, proc.ctx)

    def _crash_process(self, rnd: int) -> None:
        """The process dies: nothing in memory survives; a new one opens the store."""
        proc = self.proc
        self.report.restarts += 1
        self.report.stale += proc.scheduler.stats()["stale"]
        self.report.trace.append(f"crash {self.steps}")
        _stop(proc.scheduler)
        _stop(proc.watchdog)
        proc.watchdog.on_stop()
        self.held.clear()  # their threads died with the process
        armed, self.faults.armed = self.faults.armed, False
        proc.store.renew_lease().result(timeout=0)  # a death leaves its lease held: no
        proc.store.writer.close()  # release (a stop's, no crash for poison work) on close
        proc.store.close()
        self.operator.process_died(rnd)
        self.faults.armed = armed
        self.proc = self._open(late=self.schedule.registers_late())

    # -- workload and operator -----------------------------------------------------------

    def _start_workflows(self) -> None:
        """As ``Runtime.start``: the creating transition, then the Scheduler is told."""
        ctx = self.proc.ctx
        for wid in self.ids:
            new = NewStart(self.plan, wid, {"seed": self.seed}, 0, None, {})
            now = ctx.clock.time()
            record, steps, transition = creation(new, now, ctx.next_token(), mark_started=True)
            self.proc.store.writer.submit(transition).result(timeout=0)
            ctx.tell_scheduler(Admit([(record, steps)]))

    def _all_final(self) -> bool:
        return all(self._state(w).is_final for w in self.ids)

    def _state(self, workflow_id: str) -> WorkflowState:
        record = self.proc.store.get_workflow(workflow_id)
        assert record is not None, f"{workflow_id} was started, so it is stored"
        return record.state


def _stop(actor: Any) -> None:
    """The actor is dead: a tell to it now fails (and is dropped by ``tell_scheduler``)."""
    actor.actor_stopped.set()


def _factory(world: World) -> Any:
    return lambda: SimService(world)
