"""What both simulations share: the simulated remote service (:class:`World`,
:class:`SimService`), the store's fault hook, the report, and :func:`verify`, the
expectations every seed's end state must meet."""

from __future__ import annotations

import os
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from herder.actors import Agent, InstanceCrash, Permanent, StepContext
from herder.actors.engine import idempotency_key
from herder.runtime._check import check_store
from herder.runtime._config import MAX_PREFETCH
from herder.runtime.testing._faults import FaultSchedule, definition
from herder.store import InvalidInput, StepState, Store, WorkflowState


def fresh(
    seed: object, directory: str | Path, schedule: object, prefetch: object
) -> tuple[Path, FaultSchedule]:
    """A simulation's arguments checked at the door, before a store is made: the
    directory for its new store, refused if it holds one already (an earlier run's
    workflows would count as this run's, and break its expectations), and the schedule
    (``FaultSchedule(seed)`` if None)."""
    checked = FaultSchedule(seed)  # type: ignore[arg-type]  # (it checks the seed)
    if schedule is None:
        schedule = checked
    elif not isinstance(schedule, FaultSchedule):
        raise InvalidInput(f"schedule must be a FaultSchedule or None, got {schedule!r}")
    number = prefetch if isinstance(prefetch, int) and not isinstance(prefetch, bool) else -1
    if not 0 <= number <= MAX_PREFETCH:  # (the runtime's setting, checked as it does)
        raise InvalidInput(f"prefetch must be an int in 0..{MAX_PREFETCH}, got {prefetch!r}")
    if not isinstance(directory, str | os.PathLike):
        raise InvalidInput(f"directory must be a path (a str or a Path), got {directory!r}")
    path = Path(directory)
    if (path / "data.mdb").exists():
        raise InvalidInput(
            f"{path} holds a store (an earlier run's?); a simulation makes its own: pass a "
            "new or empty directory, e.g. tempfile.mkdtemp()"
        )
    return path, schedule


@dataclass
class World:
    """The remote side of a simulation: which effects were applied (and in what order) and
    undone, by idempotency key, and the faults attempts met.

    It fences by token, as ``StepContext.token`` recommends: a request carrying a lower
    token than one it already saw for the key is refused, so a superseded attempt that
    goes on anyway cannot apply its effect after the step's compensation ran."""

    schedule: FaultSchedule
    lock: threading.Lock = field(default_factory=threading.Lock)
    applied: dict[str, int] = field(default_factory=dict)  # key -> application order
    undone: list[str] = field(default_factory=list)
    faults: Counter[str] = field(default_factory=Counter)
    tokens: dict[str, int] = field(default_factory=dict)  # key -> highest token seen
    refused: int = 0  # requests refused for a stale token
    checks: Counter[str] = field(default_factory=Counter)  # health checks per agent

    def apply(self, key: str, token: int) -> str:
        with self.lock:
            self._fence(key, token)
            self.applied.setdefault(key, len(self.applied))
            return f"done:{key}"

    def undo(self, key: str, token: int) -> None:
        with self.lock:
            self._fence(key, token)
            if key in self.applied and key not in self.undone:
                self.undone.append(key)

    def _fence(self, key: str, token: int) -> None:
        if token < self.tokens.get(key, 0):
            self.refused += 1
            raise ConnectionRefusedError(f"{key}: token {token} is stale")
        self.tokens[key] = token

    def hang(self) -> None:
        """Where a hung attempt waits (the threaded simulation blocks here; the exact one
        has held the attempt back already, so it returns at once)."""


class SimService(Agent):
    """The simulated remote service: ``do`` applies an effect once per key, ``undo``
    reverts it; each attempt first meets the fault the schedule gives it."""

    def __init__(self, world: World) -> None:
        self._world = world

    def do(self, ctx: StepContext) -> str:
        """Apply this step's effect (idempotent on ``ctx.idempotency_key``)."""
        self._fault(ctx, lambda: self._world.apply(ctx.idempotency_key, ctx.token))
        return self._world.apply(ctx.idempotency_key, ctx.token)

    def undo(self, ctx: StepContext) -> None:
        """Revert this step's effect (idempotent)."""
        key = ctx.idempotency_key.removesuffix("/compensate")
        self._fault(ctx, lambda: self._world.undo(key, ctx.token))
        self._world.undo(key, ctx.token)

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
        world.hang()  # "hang": until the harness has let the timeout fire
        if ctx.superseded:  # as a well-behaved agent: a replaced attempt does nothing more
            raise TimeoutError(f"{ctx.step}: gave up after the hang")
        effect()


class CheckedService(SimService):
    """A :class:`SimService` with a health check that fails when the schedule says
    (the Supervisor runs it; the threaded simulation registers its agents with it)."""

    def __init__(self, world: World, agent: str) -> None:
        super().__init__(world)
        self._agent = agent

    def health(self) -> None:
        """Fail the health checks the schedule picks."""
        world = self._world
        with world.lock:
            world.checks[self._agent] += 1
            check = world.checks[self._agent]
        if world.schedule.health_fault(self._agent, check):
            with world.lock:
                world.faults["unhealthy"] += 1
            raise ConnectionError(f"{self._agent}: health check {check} failed")


@dataclass
class SimReport:
    """What one seed did and every expectation it broke (empty ``problems``: passed)."""

    seed: int
    workflows: dict[str, str] = field(default_factory=dict)  # id -> final state
    faults: Counter[str] = field(default_factory=Counter)
    store_faults: int = 0
    rounds: int = 0
    stale: int = 0  # late answers of superseded attempts the Scheduler dropped
    refused: int = 0  # requests the service refused for a stale token
    restarts: int = 0
    scheduler_crashes: int = 0
    fired: int = 0  # workflows the run's schedule started
    operator: list[str] = field(default_factory=list)  # "round action id" done, in order
    problems: list[str] = field(default_factory=list)
    trace: list[str] = field(default_factory=list)  # the exact simulation's: every delivery


class StoreFaults:
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


def verify(
    store: Store,
    world: World,
    ids: list[str],
    wants: dict[str, WorkflowState],
    report: SimReport,
) -> None:
    schedule = world.schedule
    steps = [spec.name for spec in definition().compile().steps]
    compensated = {"a", "b", "d"}
    problems = report.problems
    report.refused = world.refused
    for wid in ids:
        status = store.get_workflow(wid)
        assert status is not None, f"{wid} was started, so it is stored"
        report.workflows[wid] = str(status.state)
        doomed = any(schedule.permanent(wid, s) for s in steps)
        want = wants.get(wid) or (WorkflowState.COMPENSATED if doomed else WorkflowState.SUCCEEDED)
        kept = want in (WorkflowState.SUCCEEDED, WorkflowState.ABANDONED)  # nothing undone
        if status.state is not want:
            stuck = "" if status.state.is_final else f"; {stored_steps(store, wid)}"
            problems.append(f"{wid}: {status.state}, expected {want} ({status.error}){stuck}")
            continue
        records = {st.name: st for st in store.steps_of(wid)}
        for name, st in records.items():
            key = idempotency_key(wid, name)
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
                if st.state is StepState.COMPENSATED
                and idempotency_key(wid, st.name) in world.applied
            ),
            key=lambda st: st.done_token or 0,
        )
        expected_undo = [idempotency_key(wid, st.name) for st in reversed(by_completion)]
        # Abandoning leaves a compensation under way COMPENSATING; its attempt may still
        # have run (it was dispatched before), so its undo is neither expected nor wrong.
        in_flight = {
            idempotency_key(wid, st.name)
            for st in records.values()
            if want is WorkflowState.ABANDONED and st.state is StepState.COMPENSATING
        }
        actual_undo = [k for k in world.undone if k.startswith(f"{wid}/") and k not in in_flight]
        if actual_undo != expected_undo:
            problems.append(f"{wid}: undone in order {actual_undo}, expected {expected_undo}")
    problems += [f"herder check: {p}" for p in check_store(store).problems]
    unfinished = [w for w, state in report.workflows.items() if not WorkflowState(state).is_final]
    problems += [
        f"{w}: not final after {report.rounds} rounds; {stored_steps(store, w)}" for w in unfinished
    ]


def stored_steps(store: Store, workflow_id: str) -> str:
    """What the store holds of an unfinished workflow's steps (state, attempts, token, timer,
    retry time, deadline): the first thing to read when a seed leaves one stuck."""
    return "steps: " + ", ".join(
        f"{st.name} {st.state} #{st.attempt}/{st.comp_attempt} token {st.token} timer "
        f"{st.timer_ms} retry_at {st.retry_at} deadline {st.deadline}"
        for st in store.steps_of(workflow_id)
    )
