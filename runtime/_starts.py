"""Creating workflows: a validated :class:`NewStart` and the one store transition that
creates it (``Runtime.start``), or many of them in one group commit
(``Runtime.start_many``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from herder.runtime._timing import new_workflow
from herder.store import (
    Expect,
    Plan,
    Put,
    StepRecord,
    Transition,
    WorkflowRecord,
    encode,
    history_put,
    started_key,
    workflow_event,
    workflow_key,
)


@dataclass(frozen=True, slots=True)
class NewStart:
    """One workflow to create, checked: its plan, id, normalized input and timing."""

    plan: Plan
    workflow_id: str
    input: Any
    priority: int
    begin: float | None
    agents: dict[str, str]  # step -> agent resolved from a template (runtime/_routing.py)


def creation(
    new: NewStart, now: float, token: int, *, mark_started: bool, also: tuple[Put, ...] = ()
) -> tuple[WorkflowRecord, list[StepRecord], Transition]:
    """The new workflow's records and the transition that creates them if its id is free.

    ``mark_started`` adds the definition's started mark (after which the definition may
    not change under its version); ``also`` is written in the same transaction, and only
    if it applies (a schedule's cursor).
    """
    record, steps, ops = new_workflow(
        new.plan,
        new.workflow_id,
        new.input,
        now,
        priority=new.priority,
        begin=new.begin,
        agents=new.agents,
    )
    ops.append(history_put(new.workflow_id, token, workflow_event(None, record)))
    ops += also
    if mark_started:
        ops.append(Put("meta", started_key(new.plan.name, new.plan.version), encode(1)))
    free = Expect("workflows", workflow_key(new.workflow_id), exists=False)
    return record, steps, Transition(ops=tuple(ops), expect=(free,))
