"""Effects: what a decision causes once its writes are durable, as typed data.

The write-ahead rule is the reason effects exist: an attempt is handed to its agent
only after the transaction holding its DISPATCHED record (attempt, fencing token,
deadline) has been committed; a waiter hears of a final state only once it is on disk;
an operator's call returns only once its action is. So a decision's effects wait beside
its writes, and the Scheduler performs them when the writer reports the batch durable.
If the commit fails instead, no effect runs: every reply is answered with the error,
and the rest is dropped with the reloaded workflow (the store stays the truth).

- :class:`Dispatch` — hand attempt ``token`` to the agent instance reserved for it.
- :class:`Announce` — the workflow's final state is durable: tell its waiters.
- :class:`Resolve` / :class:`Refuse` — answer a caller waiting on a future: done, or
  refused with an error once the workflow's earlier writes are durable.

Some of what the engine decides takes effect at once, before anything is durable,
because it only moves work between in-memory queues or stops listening to an attempt:

- :class:`Enqueue` — put a job on its agent's queue (it is dispatched, and recorded
  DISPATCHED, later);
- :class:`Fence` — an attempt no longer counts (its answer will be ignored): tell its
  port, free its admission slot, and replace its instance when it may hang;
- :class:`Cancel` — tell a running attempt that its workflow is being cancelled;
- :class:`TimedOut` / :class:`Lost` — news of a resource's health for its admission
  gate (an attempt lapsed; recovery found one the previous process died under).

A :class:`Decision` carries both, with the writes (step and workflow records, history
events) in the order they were made: the actor shell commits the writes
(``actors/_commits.py`` derives timers, keys and history from them), performs the
immediate effects now, and the durable ones once the commit has landed.

Imports: herder.store records only; effects are plain data (a caller's future is the
one live object, carried through untouched).
"""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from herder.actors.engine._runs import Attempt, Job, WorkflowRun
from herder.store import StepRecord, WorkflowRecord


@dataclass(slots=True, unsafe_hash=True)  # made per step: not frozen, 4x cheaper to build
class Dispatch:
    """Hand attempt ``token`` of ``workflow_id``/``step`` to its agent instance."""

    workflow_id: str
    step: str
    token: int


@dataclass(slots=True, unsafe_hash=True)  # made per step: not frozen, 4x cheaper to build
class Enqueue:
    """Queue ``job`` on its ``agent`` (at the workflow's ``priority``) now."""

    agent: str
    job: Job
    priority: int


@dataclass(frozen=True, slots=True)
class Fence:
    """``attempt`` no longer counts: its port learns it is superseded. ``abandon``: its
    answer will not be awaited (free its admission slot); ``replace``: its instance may
    hang, replace it."""

    attempt: Attempt
    replace: bool = False
    abandon: bool = True


@dataclass(frozen=True, slots=True)
class TimedOut:
    """Attempt ``token`` of ``agent`` lapsed (news of the resource's health); ``hung``:
    no attempt of this engine runs it, but an instance still does: replace it."""

    agent: str
    token: int
    hung: bool = False


@dataclass(frozen=True, slots=True)
class Lost:
    """Recovery found an attempt of ``agent`` that the previous process died under."""

    agent: str


@dataclass(frozen=True, slots=True)
class Cancel:
    """Tell the running ``attempt`` that its workflow is being cancelled."""

    attempt: Attempt


@dataclass(slots=True, unsafe_hash=True)  # made per step: not frozen, 4x cheaper to build
class Announce:
    """The workflow reached this final ``record``: tell whoever waits on it (with its
    ``steps`` in plan order when they are in memory, so nobody has to read them back)."""

    record: WorkflowRecord
    steps: list[StepRecord] | None = None


@dataclass(frozen=True, slots=True)
class Resolve:
    """The caller's request is durable: resolve its ``future``."""

    future: Future[None]


@dataclass(frozen=True, slots=True)
class Refuse:
    """Refuse the caller with ``error``, now that the state it speaks of is durable."""

    future: Future[None]
    error: BaseException


Reply = Resolve | Refuse
"""An effect that answers a caller; a failed commit answers it with its error instead."""

Effect = Dispatch | Announce | Resolve | Refuse
"""Anything a decision causes once its writes are durable."""

Immediate = Enqueue | Fence | Cancel | TimedOut | Lost
"""What a decision does at once, before its writes are durable."""


@dataclass(slots=True, unsafe_hash=True)  # made per step: not frozen, 4x cheaper to build
class StepWrite:
    """A step moved from ``old`` to ``new`` at ``now`` (``note``: the traceback that goes
    into its history event, for a failure)."""

    workflow_id: str
    old: StepRecord | None
    new: StepRecord
    now: float
    note: str | None = None


@dataclass(slots=True, unsafe_hash=True)  # made per step: not frozen, 4x cheaper to build
class WorkflowWrite:
    """A workflow record moved from ``old`` to ``new``."""

    old: WorkflowRecord
    new: WorkflowRecord


@dataclass(slots=True, unsafe_hash=True)  # made per step: not frozen, 4x cheaper to build
class HistoryWrite:
    """An event of the workflow's history that is not a record change (a probe)."""

    workflow_id: str
    event: dict[str, Any]


@dataclass(slots=True, unsafe_hash=True)  # made per step: not frozen, 4x cheaper to build
class TimerDelete:
    """A timer entry nothing wants any more."""

    workflow_id: str
    due_ms: int
    step: str


Write = StepWrite | WorkflowWrite | HistoryWrite | TimerDelete


@dataclass(slots=True)
class Decision:
    """What the engine decided while handling events: writes in order, effects after
    they are durable (per workflow), and what happens at once."""

    writes: list[Write] = field(default_factory=list)
    effects: list[tuple[str, Effect]] = field(default_factory=list)
    now: list[Immediate] = field(default_factory=list)
    note: str | None = None  # the traceback of the failure being recorded

    def __bool__(self) -> bool:
        return bool(self.writes or self.effects or self.now)

    def put_step(self, run: WorkflowRun, old: StepRecord, new: StepRecord, now: float) -> None:
        """Record a step's new state in memory and write it."""
        if run.undo is not None:  # (from what memory held: the order counts that)
            run.undo.changed(run.steps.get(new.name), new)
        run.steps[new.name] = new
        if run.results is not None:
            if new.succeeded:
                run.results = run.results.added(new.name, new.result)
            elif old.succeeded:
                run.results = run.results.without(new.name)
        self.writes.append(StepWrite(run.record.id, old, new, now, self.note))

    def set_record(self, run: WorkflowRun, now: float, **changes: Any) -> WorkflowRecord:
        """Change the run's workflow record in memory and write it."""
        old = run.record
        run.record = old.evolve(updated=now, **changes)
        self.writes.append(WorkflowWrite(old, run.record))
        return run.record

    def history(self, workflow_id: str, event: dict[str, Any]) -> None:
        """Append ``event`` to the workflow's history."""
        self.writes.append(HistoryWrite(workflow_id, event))

    def after(self, workflow_id: str, effect: Effect) -> None:
        """Do ``effect`` once the workflow's writes so far are durable."""
        self.effects.append((workflow_id, effect))
