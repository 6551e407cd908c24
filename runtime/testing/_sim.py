"""Deterministic simulation: a fake clock plus a seeded fault schedule, one seed at a time.

As FoundationDB tests its database, :func:`simulate` runs a small workload against a real
runtime (real store, real actors) where time moves only when the harness says so and
every fault is decided by the seed:

- :class:`FaultSchedule` — the fault an attempt meets is a pure function of
  ``(seed, workflow id, step, attempt, compensating)``: an error before the effect, an
  effect whose answer is lost, a hang past the step timeout (released later, so its late
  answer is stale), a crash of the agent instance, or (per step) a permanent failure.
  Store commits fail by the same seed through the writer's ``fault`` hook; the Scheduler
  actor crashes, and the runtime is stopped and reopened, at seeded rounds. A quarter
  of the seeds also run a periodic schedule (a slot per round) through all of that.
- :class:`SimService` — the agent the workload runs on: it applies effects to an
  :class:`~herder.runtime.testing.EffectLedger` by idempotency key, meeting the
  schedule's faults; here a :class:`CheckedService`, whose health check (run by the
  Supervisor every round) fails at seeded checks, holding the agent's work until one
  passes.
- :func:`simulate` — starts a few workflows (one maybe cancelled, one maybe abandoned,
  a command maybe queued while the runtime is down, the wall clock maybe stepped an hour
  either way (``_sim_operator``), the runtime maybe stopped and reopened on its store),
  advances the fake clock in rounds until every workflow is final, and returns a
  :class:`SimReport`
  listing every broken expectation: a final state other than the schedule implies, an
  effect that contradicts the recorded step states, compensations out of reverse
  completion order, a schedule slot fired twice or dropped, or a ``herder check``
  problem.

What is exact for a seed: every fault decision and every timestamp. What is not: the
interleaving of actor threads, and so which commit batch a store fault lands in; a
failing seed therefore reproduces its faults exactly and its failure very likely.
"""

from __future__ import annotations

import functools
import threading
from dataclasses import dataclass, field
from pathlib import Path

from herder.actors import (
    FakeClock,
    call,
)
from herder.runtime._runtime import Runtime
from herder.runtime._schedules import slot_id
from herder.runtime._seams import crash_scheduler
from herder.runtime.testing._faults import (
    CONCURRENCY,
    MAX_ROUNDS,
    ROUND,
    FaultSchedule,
    definition,
)
from herder.runtime.testing._sim_operator import SimOperator
from herder.runtime.testing._world import (
    CheckedService,
    SimReport,
    StoreFaults,
    World,
    fresh,
    verify,
)
from herder.store import ScheduleRecord, TimedOut, schedule_key

QUIET_WAIT = 10.0  # real seconds a round may take to settle before the seed fails


class _Gate:
    """Hung actions wait here until the harness opens the gate (after a round's advance);
    it also wakes the harness whenever the engine or an action changed something."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.generation = 0
        self.hung = 0
        self.changes = 0

    def hang(self) -> None:
        with self.cond:
            start = self.generation
            self.hung += 1
            self.changes += 1
            self.cond.notify_all()
            self.cond.wait_for(lambda: self.generation != start, timeout=QUIET_WAIT * 3)
            self.hung -= 1

    def release(self) -> None:
        with self.cond:
            self.generation += 1
            self.cond.notify_all()

    def changed_since(self, seen: int) -> bool:
        return self.changes != seen

    def changed(self) -> None:
        with self.cond:
            self.changes += 1
            self.cond.notify_all()


@dataclass
class _ThreadedWorld(World):
    agent_host: str = "pool"
    prefetch: int = 0
    gate: _Gate = field(default_factory=_Gate)

    def hang(self) -> None:
        self.gate.hang()  # until the harness has let the timeout fire


def simulate(
    seed: int,
    directory: str | Path,
    schedule: FaultSchedule | None = None,
    *,
    agent_host: str = "pool",
    prefetch: int = 0,
) -> SimReport:
    """Run one seed on a new store in ``directory``; return what broke (see module doc).
    ``agent_host`` and ``prefetch`` are the runtime's settings."""
    path, schedule = fresh(seed, directory, schedule, prefetch)
    world = _ThreadedWorld(schedule, agent_host=agent_host, prefetch=prefetch)
    report = SimReport(seed)
    clock = FakeClock()
    rt = _open(path, clock, world)
    faults = StoreFaults(schedule)
    try:
        ids = [f"s{seed}-{i}" for i in range(schedule.workflows())]
        for wid in ids:
            rt.start("sim", {"seed": seed}, workflow_id=wid)
        pause_at = schedule.pause_schedule_at()
        if pause_at is not None:  # every slot fires a workflow like the others
            rt.schedule("tick", "sim", every=ROUND, input={"seed": seed}, catch_up="all")
        rt._store.writer.fault = faults
        faults.armed = True
        operator = SimOperator(schedule, ids, faults, Path(directory))
        for rnd in range(MAX_ROUNDS):
            report.rounds = rnd + 1
            _quiet(rt, world)
            operator.act(rt, clock, rnd)
            if schedule.scheduler_crash_at() == rnd:
                world.gate.release()  # else the tree's restart waits out their shutdown
                report.stale += _crash_scheduler(rt)
                report.scheduler_crashes += 1
                _quiet(rt, world)
            if schedule.restart_at() == rnd:  # the process stops and starts again
                rt = _restart(
                    rt,
                    Path(directory),
                    clock,
                    world,
                    faults=faults,
                    report=report,
                    operator=operator,
                    rnd=rnd,
                )
            if pause_at == rnd:
                ids += _pause_schedule(rt, faults, report)
                pause_at = None
            if pause_at is None and _ended(rt, ids, operator):
                break
            rt._settle()
            clock.advance(ROUND)
            rt._sweep_now()
            rt._ctx.health.settle(QUIET_WAIT)  # the health checks it started have answered
            rt._fire_now()
            world.gate.release()  # hung attempts answer now, after their timeout
        faults.armed = False
        _quiet(rt, world)
        report.problems += operator.live_answered(rt)
        report.faults = world.faults
        report.store_faults = faults.failed
        report.stale += call(rt._scheduler, "stats", timeout=QUIET_WAIT)["stale"]
        report.operator = operator.done
        verify(rt._store, world, ids, operator.wants, report)
    finally:
        faults.armed = False
        world.gate.release()
        rt.stop(timeout=5)
    return report


def _ended(rt: Runtime, ids: list[str], operator: SimOperator) -> bool:
    """Every workflow is final and the command sent while up has its outcome (one whose
    outcome's commit failed is sent again a few rounds later)."""
    return not operator.unanswered(rt) and all(rt.status(w).state.is_final for w in ids)


def _restart(
    rt: Runtime,
    directory: Path,
    clock: FakeClock,
    world: _ThreadedWorld,
    *,
    faults: StoreFaults,
    report: SimReport,
    operator: SimOperator,
    rnd: int,
) -> Runtime:
    """Stop the runtime and open a new one on its store, as a process restart does; an
    operator command may be queued meanwhile (the new runtime applies it at start-up)."""
    faults.armed = False
    world.gate.release()
    report.stale += call(rt._scheduler, "stats", timeout=QUIET_WAIT)["stale"]
    rt.stop(timeout=5)
    queued = operator.queue_while_down()
    rt = _open(directory, clock, world)
    rt._store.writer.fault = faults
    if queued is not None:
        problem = operator.answered(rt, queued, rnd)
        report.problems += [] if problem is None else [problem]
    faults.armed = True
    report.restarts += 1
    _quiet(rt, world)
    return rt


def _crash_scheduler(rt: Runtime) -> int:
    """Crash the Scheduler actor (an exception escapes its handler) and wait until the
    supervision tree has started a new one; return the old one's stale-answer count."""
    old = rt._ctx.scheduler
    assert old is not None
    stale: int = call(old, "stats", timeout=QUIET_WAIT)["stale"]
    crash_scheduler(rt, QUIET_WAIT)
    return stale


def _open(directory: Path, clock: FakeClock, world: _ThreadedWorld) -> Runtime:
    rt = Runtime(
        directory,
        clock=clock,
        sweep_interval=ROUND,
        seed=world.schedule.seed,
        agent_host=world.agent_host,
        prefetch=world.prefetch,
        passivate_after=0.0 if world.schedule.passivates() else None,
    )
    rt._listener.commit_waiters.append(world.gate.changed)
    for agent in ("alpha", "beta"):
        factory = functools.partial(CheckedService, world, agent)
        rt.add_agent(agent, factory, concurrency=_concurrency(world), health_interval=ROUND)
    rt.add_workflow(definition())
    return rt


def _concurrency(world: _ThreadedWorld) -> int:
    """Instances per agent: one with ``prefetch``, so that attempts do wait for one."""
    return 1 if world.prefetch else CONCURRENCY


def _pause_schedule(rt: Runtime, faults: StoreFaults, report: SimReport) -> list[str]:
    """Pause the run's schedule and return the ids of the workflows it fired: with
    ``catch_up="all"`` each slot from its creation to its cursor fired once (counted in
    ``fired``) or was skipped while the previous firing ran (counted in ``skipped``)."""
    faults.armed = False  # the request itself must not meet a store fault
    try:
        rt.pause_schedule("tick")
    finally:
        faults.armed = True
    data = rt._store.get("schedules", schedule_key("tick"))
    assert data is not None, "a schedule is never deleted in the simulation"
    record = ScheduleRecord.from_dict(data)
    fired = sorted(s.id for s in rt.list() if s.id.startswith("tick@"))
    step = int(ROUND * 1000)
    first = (int(record.created * 1000) // step + 1) * step
    slots = [slot_id("tick", ms) for ms in range(first, record.cursor_ms + 1, step)]
    # Each slot up to the cursor fired once or was skipped (overlap="skip"), none twice.
    if not set(fired) <= set(slots) or (record.fired, record.skipped) != (
        len(fired),
        len(slots) - len(fired),
    ):
        report.problems.append(
            f"schedule fired {fired} (counted {record.fired}, skipped {record.skipped}) "
            f"of the slots {slots}"
        )
    report.fired = len(fired)
    return fired


def _quiet(rt: Runtime, world: _ThreadedWorld) -> None:
    """Wait until nothing runs but hung attempts and nothing waits for an instance."""
    gate = world.gate

    def quiet() -> bool:
        call(rt._scheduler, "sync", timeout=QUIET_WAIT)
        rt._store.writer.flush(timeout=QUIET_WAIT)
        stats = call(rt._scheduler, "stats", timeout=QUIET_WAIT)
        # Work may queue only behind instances that are all busy (hung), or behind an
        # agent whose last health check failed; attempts reserved ahead wait only behind
        # busy instances (a health check holds no attempt: not behind a crashed instance
        # that restarts after a backoff in real time, while the fake clock stands still).
        sick = {n for n, r in stats["resources"].items() if r.get("healthy") is False}
        waiting = any(
            ((a["queued"] and name not in sick) or a["ahead"]) and a["busy"] < _concurrency(world)
            for name, a in stats["agents"].items()
        )
        with gate.cond:
            running = stats["in_flight_attempts"] - stats["ahead"]
            return running <= gate.hung and not waiting

    deadline = threading.Event()
    timer = threading.Timer(QUIET_WAIT, deadline.set)
    timer.start()
    try:
        while not deadline.is_set():
            with gate.cond:
                seen = gate.changes
            if quiet():
                return
            with gate.cond:
                gate.cond.wait_for(functools.partial(gate.changed_since, seen), timeout=0.005)
        running = call(rt._scheduler, "in_flight", timeout=QUIET_WAIT)
        raise TimedOut(
            f"seed {world.schedule.seed}: the engine did not settle within {QUIET_WAIT}s: "
            f"{running} attempts running, {gate.hung} hung, agents {rt.stats()['agents']}"
        )
    finally:
        timer.cancel()
