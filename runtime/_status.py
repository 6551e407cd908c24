"""Read-only views of a workflow, built from the store: what ``status()`` and ``list()`` return."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from herder.actors.engine import WAITS_TO_RUN, member_used
from herder.store import (
    HerderError,
    Plan,
    StepRecord,
    StepState,
    Store,
    StoreCorrupt,
    WorkflowRecord,
    WorkflowState,
    plan_steps,
    printable,
    workflow_key,
)

State = WorkflowState
"""A workflow's state: a str enum whose values are the upper-case names."""


@dataclass(frozen=True, slots=True)
class StepStatus:
    """One step as stored: state, attempts, result or last error.

    ``waits_until`` is the clock time a PENDING or RETRY_WAIT step waits for (a delayed
    start, a step delay, a retry's backoff), else None. ``agent`` is, for a step whose
    agent is an ``AnyOf`` group, the member its last attempt went to, else None.
    """

    name: str
    state: StepState
    attempt: int
    result: Any
    error: str | None
    compensation_attempts: int
    updated: float
    waits_until: float | None = None
    agent: str | None = None  # a step of an AnyOf group: the member its last attempt used

    @classmethod
    def from_record(cls, record: StepRecord) -> StepStatus:
        """The status of a stored step record."""
        return cls(
            name=record.name,
            state=record.state,
            attempt=record.attempt,
            result=record.result,
            error=record.error,
            compensation_attempts=record.comp_attempt,
            updated=record.updated,
            waits_until=record.retry_at if record.state in WAITS_TO_RUN else None,
            agent=member_used(record),
        )

    def to_dict(self) -> dict[str, Any]:
        """The status as plain data (states as strings), e.g. for JSON."""
        return {
            "name": self.name,
            "state": str(self.state),
            "attempt": self.attempt,
            "result": self.result,
            "error": self.error,
            "compensation_attempts": self.compensation_attempts,
            "updated": self.updated,
            "waits_until": self.waits_until,
            "agent": self.agent,
        }


@dataclass(frozen=True, slots=True)
class WorkflowStatus:
    """A workflow as stored, with its steps in definition order.

    ``agents`` maps each step whose agent the definition takes from the input (a
    template such as ``"device:{device}"``) to the agent resolved when it started.
    ``deadline`` is the time (runtime clock) it must end by, until it fired or the
    workflow parked (NEEDS_ATTENTION: it no longer counts, nor after an operator's
    action), else None.
    """

    id: str
    name: str
    version: int
    state: WorkflowState
    steps: Mapping[str, StepStatus]
    error: str | None
    input: Any
    created: float
    updated: float
    priority: int = 0
    agents: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    deadline: float | None = None

    @classmethod
    def from_records(cls, record: WorkflowRecord, steps: list[StepRecord]) -> WorkflowStatus:
        """The status of a stored workflow and its step records."""
        return cls(
            id=record.id,
            name=record.name,
            version=record.version,
            state=record.state,
            steps=MappingProxyType({s.name: StepStatus.from_record(s) for s in steps}),
            error=record.error,
            input=record.input,
            created=record.created,
            updated=record.updated,
            priority=record.priority,
            agents=MappingProxyType(dict(record.agents)),
            deadline=None if record.state is WorkflowState.NEEDS_ATTENTION else record.deadline,
        )

    def __reduce__(self) -> tuple[Any, ...]:
        """Reduced (copied, or serialized by the user's process pool or task queue) with
        its read-only maps as dicts, which cannot be: a :class:`WorkflowFailed` sent to
        another process carries it. (herder itself never deserializes such data.)"""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        fields["steps"], fields["agents"] = dict(self.steps), dict(self.agents)
        return (_rebuilt, (fields,))

    def to_dict(self) -> dict[str, Any]:
        """The status as plain data (states as strings, steps as a list), e.g. for JSON."""
        return {
            "id": self.id,
            "name": self.name,
            "version": self.version,
            "state": str(self.state),
            "error": self.error,
            "input": self.input,
            "created": self.created,
            "updated": self.updated,
            "priority": self.priority,
            "agents": dict(self.agents),
            "deadline": self.deadline,
            "steps": [s.to_dict() for s in self.steps.values()],
        }

    @property
    def results(self) -> dict[str, Any]:
        """Results of the steps that succeeded, by step name."""
        return {n: s.result for n, s in self.steps.items() if s.state is StepState.SUCCEEDED}


def in_plan_order(
    record: WorkflowRecord, steps: list[StepRecord], plan: Plan | None
) -> list[StepRecord]:
    """``steps`` in the order their plan defines them, a step without a stored record
    shown PENDING (stored steps in stored order without a plan)."""
    return steps if plan is None else plan_steps(record, steps, plan)


_FAILED_HINTS = {
    WorkflowState.NEEDS_ATTENTION: "an operator can inspect it and call retry()",
    WorkflowState.ABANDONED: "nothing was undone",
}


def steps_if_kept(store: Store, workflow_id: str) -> list[StepRecord] | None:
    """A workflow's steps (in step-name order) read with a look that its record is still
    stored, in the same snapshot: None once it was deleted (retention, a purge) since the
    caller read that record. Cheaper than reading the record again with its steps."""

    def read() -> list[StepRecord] | None:
        if store.view(lambda snap: snap.raw("workflows", workflow_key(workflow_id))) is None:
            return None
        return store.steps_of(workflow_id)

    return store.together(read)


def _rebuilt(fields: dict[str, Any]) -> WorkflowStatus:
    """A :class:`WorkflowStatus` from its ``__reduce__``."""
    steps, agents = MappingProxyType(fields.pop("steps")), MappingProxyType(fields.pop("agents"))
    return WorkflowStatus(steps=steps, agents=agents, **fields)


class WorkflowFailed(HerderError):
    """The workflow ended without succeeding: compensated, cancelled, abandoned or needing
    attention.

    ``status`` is the workflow's :class:`WorkflowStatus` at that moment.
    """

    def __init__(self, status: WorkflowStatus) -> None:
        self.status = status
        hint = _FAILED_HINTS.get(status.state, "its completed steps were compensated")
        abandoned = status.state is WorkflowState.ABANDONED
        steps = status.steps.items() if abandoned else ()
        undone = [n for n, s in steps if s.state is StepState.COMPENSATED]
        if abandoned and undone:  # (before it was abandoned: parked on a failed undo, say)
            hint = f"nothing more was undone ({len(undone)} undone before: {_names(undone)})"
        if status.state in (WorkflowState.COMPENSATED, WorkflowState.CANCELLED):
            kept = [n for n, s in status.steps.items() if s.state is StepState.SUCCEEDED]
            if kept:  # (a step without a compensation is never undone)
                hint += f", but for {_names(kept)} (no compensation: still done)"
        error = printable(status.error)  # (user code's words: one line, nothing acts)
        super().__init__(f"workflow {status.id!r} ended {status.state}: {error}; {hint}")

    def __reduce__(self) -> tuple[Any, ...]:
        """Reduced (copied, sent to another process by multiprocessing or a task queue)
        to its status, the one argument it is made from (an exception's default is its
        message)."""
        return (type(self), (self.status,))


def _names(steps: list[str]) -> str:
    """The first three of ``steps``, quoted (and "..." for more)."""
    return ", ".join(map(repr, steps[:3])) + (", ..." if len(steps) > 3 else "")


def workflow_counts(store: Store) -> tuple[dict[str, int], list[StoreCorrupt]]:
    """Workflows by state (``rt.stats()``), and the records found damaged: the counts the
    writer keeps beside the store's ``recent`` index (one read; where none are kept, or
    an older herder took the lease since, the index is counted, ~0.2 s per million
    workflows, not the ~4 s of decoding every record); only those the index lists
    unreadable or in a state that is none of ours are read, to name their damage. A
    store without the index has every record read."""
    by_state: dict[str, int] = dict.fromkeys(WorkflowState, 0)
    corrupt: list[StoreCorrupt] = []
    counts = store.workflow_counts()
    if counts is None:
        for record in store.workflows(corrupt=corrupt):
            by_state[record.state] += 1
        return by_state, corrupt
    odd = set()  # unreadable, or no state of ours (written behind the store's back)
    for state, n in counts.items():
        if state in by_state:
            by_state[WorkflowState(state)] += n
        else:
            odd.add(state)
    for _ms, wid, _state in store.recent(states=frozenset(odd), damaged=corrupt) if odd else ():
        try:
            found = store.get_workflow(wid)
        except StoreCorrupt as exc:
            corrupt.append(exc)
        else:  # (readable again: repaired by hand)
            if found is not None:
                by_state[found.state] += 1
    return by_state, corrupt
