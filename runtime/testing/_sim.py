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
  schedule's faults.
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
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from herder.actors import (
    Agent,
    FakeClock,
    InstanceCrash,
    Permanent,
    StepContext,
    call,
)
from herder.runtime._check import check_store
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
from herder.store import ScheduleRecord, StepState, WorkflowState, schedule_key

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
class _World:
    schedule: FaultSchedule
    agent_host: str = "thread"
    gate: _Gate = field(default_factory=_Gate)
    lock: threading.Lock = field(default_factory=threading.Lock)
    applied: dict[str, int] = field(default_factory=dict)  # key -> application order
    undone: list[str] = field(default_factory=list)
    faults: Counter[str] = field(default_factory=Counter)

    def apply(self, key: str) -> str:
        with self.lock:
            self.applied.setdefault(key, len(self.applied))
            return f"done:{key}"

    def undo(self, key: str) -> None:
        with self.lock:
            if key in self.applied and key not in self.undone:
                self.undone.append(key)


class SimService(Agent):
    """The simulated remote service: ``do`` applies an effect once per key, ``undo``
    reverts it; each attempt first meets the fault the schedule gives it."""

    def __init__(self, world: _World) -> None:
        self._world = world

    def do(self, ctx: StepContext) -> str:
        """Apply this step's effect (idempotent on ``ctx.idempotency_key``)."""
        self._fault(ctx, lambda: self._world.apply(ctx.idempotency_key))
        return self._world.apply(ctx.idempotency_key)

    def undo(self, ctx: StepContext) -> None:
        """Revert this step's effect (idempotent)."""
        key = ctx.idempotency_key.removesuffix("/compensate")
        self._fault(ctx, lambda: self._world.undo(key))
        self._world.undo(key)

    def _fault(self, ctx: StepContext, effect: Any) -> None:
        world = self._world
        kind = world.schedule.attempt_fault(
            ctx.workflow_id, ctx.step, ctx.attempt, ctx.compensating
        )
        if kind is None:
            return
        with world.lock:
            world.faults[kind] += 1
        if kind == "permanent":
            raise Permanent(f"{ctx.step} can never succeed (seed {world.schedule.seed})")
        if kind == "raise":
            raise ConnectionError(f"{ctx.step}: service unreachable")
        if kind == "crash":
            raise InstanceCrash(f"{ctx.step}: client crashed")
        if kind == "lost":
            effect()
            raise TimeoutError(f"{ctx.step}: answer lost")
        world.gate.hang()  # "hang": until the harness has let the timeout fire
        if ctx.superseded:  # as a well-behaved agent: a replaced attempt does nothing more
            raise TimeoutError(f"{ctx.step}: gave up after the hang")
        effect()


@dataclass
class SimReport:
    """What one seed did and every expectation it broke (empty ``problems``: passed)."""

    seed: int
    workflows: dict[str, str] = field(default_factory=dict)  # id -> final state
    faults: Counter[str] = field(default_factory=Counter)
    store_faults: int = 0
    rounds: int = 0
    stale: int = 0  # late answers of superseded attempts the Scheduler dropped
    restarts: int = 0
    scheduler_crashes: int = 0
    fired: int = 0  # workflows the run's schedule started
    operator: list[str] = field(default_factory=list)  # "round action id" done, in order
    problems: list[str] = field(default_factory=list)


class _StoreFaults:
    """The writer's fault hook: fail the commits the schedule picks while armed."""

    def __init__(self, schedule: FaultSchedule) -> None:
        self.schedule = schedule
        self.armed = False
        self.commits = 0
        self.failed = 0

    def __call__(self) -> None:
        if not self.armed:
            return
        self.commits += 1
        if self.failed < self.schedule.max_store_faults and self.schedule.store_fault(self.commits):
            self.failed += 1
            raise OSError(28, f"simulated write error (commit {self.commits})")


def simulate(
    seed: int,
    directory: str | Path,
    schedule: FaultSchedule | None = None,
    *,
    agent_host: str = "thread",
) -> SimReport:
    """Run one seed on a new store in ``directory``; return what broke (see module doc).
    ``agent_host`` is the runtime's (``"thread"`` or ``"pool"``)."""
    schedule = schedule or FaultSchedule(seed)
    world = _World(schedule, agent_host=agent_host)
    report = SimReport(seed)
    clock = FakeClock()
    rt = _open(Path(directory), clock, world)
    faults = _StoreFaults(schedule)
    try:
        ids = [f"s{seed}-{i}" for i in range(schedule.workflows())]
        for wid in ids:
            rt.start("sim", {"seed": seed}, workflow_id=wid)
        pause_at = schedule.pause_schedule_at()
        if pause_at is not None:  # every slot fires a workflow like the others
            rt.schedule("tick", "sim", every=ROUND, input={"seed": seed}, catch_up="all")
        rt._store.writer.fault = faults
        faults.armed = True
        operator = SimOperator(schedule, ids, faults)
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
            if pause_at is None and all(rt.status(w).state.is_final for w in ids):
                break
            rt._settle()
            clock.advance(ROUND)
            rt._sweep_now()
            rt._fire_now()
            world.gate.release()  # hung attempts answer now, after their timeout
        faults.armed = False
        _quiet(rt, world)
        report.faults = world.faults
        report.store_faults = faults.failed
        report.stale += call(rt._scheduler, "stats", timeout=QUIET_WAIT)["stale"]
        report.operator = operator.done
        _verify(rt, world, ids, operator.wants, report)
    finally:
        faults.armed = False
        world.gate.release()
        rt.stop(timeout=5)
    return report


def _restart(
    rt: Runtime,
    directory: Path,
    clock: FakeClock,
    world: _World,
    *,
    faults: _StoreFaults,
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
    queued = operator.queue_while_down(directory)
    rt = _open(directory, clock, world)
    rt._store.writer.fault = faults
    if queued is not None:
        problem = operator.answered(rt, directory, queued, rnd)
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


def _open(directory: Path, clock: FakeClock, world: _World) -> Runtime:
    rt = Runtime(
        directory,
        clock=clock,
        sweep_interval=ROUND,
        seed=world.schedule.seed,
        agent_host=world.agent_host,
    )
    rt._ctx.commit_listeners.append(world.gate.changed)
    factory = functools.partial(SimService, world)
    rt.add_agent("alpha", factory, concurrency=CONCURRENCY)
    rt.add_agent("beta", factory, concurrency=CONCURRENCY)
    rt.add_workflow(definition())
    return rt


def _pause_schedule(rt: Runtime, faults: _StoreFaults, report: SimReport) -> list[str]:
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


def _quiet(rt: Runtime, world: _World) -> None:
    """Wait until nothing runs but hung attempts and nothing waits for an instance."""
    gate = world.gate

    def quiet() -> bool:
        call(rt._scheduler, "sync", timeout=QUIET_WAIT)
        rt._store.writer.flush(timeout=QUIET_WAIT)
        stats = call(rt._scheduler, "stats", timeout=QUIET_WAIT)
        # Work may queue only behind instances that are all busy (hung).
        waiting = any(a["queued"] and a["busy"] < CONCURRENCY for a in stats["agents"].values())
        with gate.cond:
            return stats["in_flight_attempts"] <= gate.hung and not waiting

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
        raise TimeoutError(
            f"seed {world.schedule.seed}: the engine did not settle within {QUIET_WAIT}s: "
            f"{running} attempts running, {gate.hung} hung, agents {rt.stats()['agents']}"
        )
    finally:
        timer.cancel()


def _verify(
    rt: Runtime,
    world: _World,
    ids: list[str],
    wants: dict[str, WorkflowState],
    report: SimReport,
) -> None:
    schedule = world.schedule
    steps = [spec.name for spec in definition().compile().steps]
    compensated = {"a", "b", "d"}
    problems = report.problems
    for wid in ids:
        status = rt.status(wid)
        report.workflows[wid] = str(status.state)
        doomed = any(schedule.permanent(wid, s) for s in steps)
        want = wants.get(wid) or (WorkflowState.COMPENSATED if doomed else WorkflowState.SUCCEEDED)
        kept = want in (WorkflowState.SUCCEEDED, WorkflowState.ABANDONED)  # nothing undone
        if status.state is not want:
            problems.append(f"{wid}: {status.state}, expected {want} ({status.error})")
            continue
        records = {st.name: st for st in rt._store.steps_of(wid)}
        for name, st in records.items():
            key = f"{wid}/{name}"
            applied, undone = key in world.applied, key in world.undone
            if st.state is StepState.SUCCEEDED and (not applied or undone):
                problems.append(f"{key}: SUCCEEDED but applied={applied} undone={undone}")
            if st.state is StepState.SUCCEEDED and name in compensated and not kept:
                problems.append(f"{key}: left SUCCEEDED in a {want} workflow")
            # A step undone after a failure may never have applied: then undo is a no-op.
            if st.state is StepState.COMPENSATED and applied and not undone:
                problems.append(f"{key}: COMPENSATED but its effect was never undone")
            if st.state is StepState.PENDING and applied:
                problems.append(f"{key}: never dispatched, yet applied")
            if (
                st.state is StepState.FAILED
                and name in compensated
                and applied
                and not undone
                and not kept
            ):
                problems.append(f"{key}: FAILED but its effect stands, never undone")
        by_completion = sorted(
            (
                st
                for st in records.values()
                if st.state is StepState.COMPENSATED and f"{wid}/{st.name}" in world.applied
            ),
            key=lambda st: st.done_token or 0,
        )
        expected_undo = [f"{wid}/{st.name}" for st in reversed(by_completion)]
        actual_undo = [k for k in world.undone if k.startswith(f"{wid}/")]
        if actual_undo != expected_undo:
            problems.append(f"{wid}: undone in order {actual_undo}, expected {expected_undo}")
    problems += [f"herder check: {p}" for p in check_store(rt._store).problems]
    stale_check = [w for w in ids if not rt.status(w).state.is_final]
    problems += [f"{w}: not final after {report.rounds} rounds" for w in stale_check]
