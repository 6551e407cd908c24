"""What the engine holds in memory of an unfinished workflow, its attempts and queued jobs.

The state is mutable on purpose: the engine changes a run in place as events arrive
(one dict entry per step transition, no copies of the run), which is what the hot path
needs. Only the engine's thread touches it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from herder.actors.engine._results import ResultLog
from herder.actors.engine._undo import UndoOrder
from herder.store import Plan, StepRecord, StepSpec, WorkflowRecord


@dataclass(slots=True)
class WorkflowRun:
    """One unfinished workflow in memory."""

    record: WorkflowRecord
    plan: Plan
    steps: dict[str, StepRecord]
    specs: dict[str, StepSpec]  # the plan's steps by name (shared by runs of one plan)
    queued: set[str] = field(default_factory=set)  # steps waiting in an agent queue
    # The job each queued step waits as: a stale job of the step (left in an agent queue
    # by a reload, or a forward job behind a compensation) must not count as it.
    jobs: dict[str, Job] = field(default_factory=dict)
    attempts: set[int] = field(default_factory=set)  # tokens of its attempts in flight
    # The record a start() admitted it with, while that record may not be durable yet
    # (runtime/_starts.py); a failed creation is told with that object (Unadmit).
    origin: WorkflowRecord | None = None
    # Each step's dependents (in plan order; shared by the plan's runs; empty:
    # not known, every step is looked at).
    dependents: dict[str, tuple[StepSpec, ...]] = field(default_factory=dict)
    # Only for a plan of more than WIDE steps (a waiting workflow of a few steps holds
    # neither; both made by Shapes.run): advance's memo (_workflow.advance), and the
    # results of the steps that succeeded, kept as they change (_results.py).
    marks: dict[str, int] | None = None
    results: ResultLog | None = None
    # A wide run's compensation order, from its first advance while compensating on
    # (_undo.py); kept as its steps change.
    undo: UndoOrder | None = None


@dataclass(slots=True)
class Attempt:
    """One attempt running (or about to run) on an agent instance.

    ``port`` and ``message`` belong to the actor shell (the attempt's line back, and what
    the agent is told once its DISPATCHED is durable); the engine carries them untouched.
    """

    workflow_id: str
    step: str
    agent: str
    instance: str
    token: int
    port: Any = None
    message: Any = None  # None once sent
    # Until when handing it over changes nothing of its stamps (Engine.restamp: it waited
    # less than 1% of its timeout or heartbeat timeout); -inf: no such time known.
    fresh_until: float = float("-inf")
    deadline: float | None = None  # when it lapses (in memory: restamped), if ever

    @property
    def sent(self) -> bool:
        """The agent was told (its DISPATCHED is durable)."""
        return self.message is None


@dataclass(slots=True, unsafe_hash=True)  # made per step: not frozen, 4x cheaper to build
class Dispatched:
    """What :meth:`~._engine.Engine.reserve` recorded: the attempt, its action and number,
    and the seconds it has before it lapses."""

    attempt: Attempt
    action: str
    number: int
    window: float


@dataclass(slots=True)
class Job:
    """A step waiting in its agent's queue: to run forward, or to compensate."""

    workflow_id: str
    step: str
    compensating: bool


def unqueue(run: WorkflowRun, job: Job) -> None:
    """``job`` left its agent queue: its step is no longer queued, unless a newer job of
    the step holds that place (then this one was stale and changes nothing)."""
    if run.jobs.get(job.step) is job:
        del run.jobs[job.step]
        run.queued.discard(job.step)
