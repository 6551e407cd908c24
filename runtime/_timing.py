"""When a new workflow may run and how urgent it is: ``start(priority=, start_at=, delay=)``.

A delayed start (or a first step's own ``delay``) is recorded with the workflow, not kept
in memory: the steps without dependencies are stored PENDING with their start time
(``retry_at``) and an entry in the store's ``timers`` index, in the same transaction that
creates the workflow. (Other steps get no record until they leave PENDING: a missing step
record means PENDING.) The Supervisor's sweep of that index queues them when the time
comes, in this process or, after a crash, in the next one. All times come from the
runtime's injectable clock.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
from typing import Any

from herder.actors.engine import DEADLINE_TIMER
from herder.store import (
    InvalidInput,
    Plan,
    Put,
    StepRecord,
    WorkflowRecord,
    WorkflowState,
    encode,
    indexed,
    ms,
    real_number,
    step_key,
    step_timer_key,
    timer_entry,
    timer_key,
    workflow_key,
)

MAX_PRIORITY = 1_000_000
"""Largest ``abs(priority)`` accepted."""


def check_priority(priority: object) -> int:
    """Return ``priority`` if it is an int within ``±MAX_PRIORITY``, else raise."""
    if not isinstance(priority, int) or isinstance(priority, bool):
        raise InvalidInput(f"priority must be an int, got {priority!r}")
    if abs(priority) > MAX_PRIORITY:
        raise InvalidInput(
            f"priority must be between -{MAX_PRIORITY} and {MAX_PRIORITY}, got {priority}"
        )
    return priority


MAX_WAIT = 100 * 365.25 * 86400.0
"""Longest delay a start may be given, in seconds (a hostile one would overflow timers)."""


def begin_at(
    now: float, start_at: object, delay: object, *, wall: float | None = None
) -> float | None:
    """The clock time a workflow's first steps may run, or None for "now".

    ``start_at`` is a :class:`datetime.datetime` (naive means the local time of this
    process, as docs/scheduling.md says; a naive ``deadline`` is refused instead, by
    ``_deadlines.deadline_at``) and ``delay`` seconds from ``now``; at most one of them.
    A time already past means now. ``now`` is the engine's (steady) clock and ``wall``
    the wall clock at the same instant (default ``now``): ``start_at`` is a wall-clock
    time, converted by their difference.
    """
    if start_at is not None and delay is not None:
        raise InvalidInput("give start_at or delay, not both")
    if start_at is not None:
        if not isinstance(start_at, datetime.datetime):
            raise InvalidInput(
                f"start_at must be a datetime.datetime, got {type(start_at).__name__}; "
                "for seconds from now, pass delay="
            )
        try:  # (its tzinfo is user code: whatever it raises says the time is unusable)
            when = start_at.timestamp() - ((now if wall is None else wall) - now)
        except Exception as exc:
            raise InvalidInput(f"start_at {start_at!r} is not a usable time: {exc}") from None
    elif delay is not None:
        wait = real_number(delay)
        if wait is None or not math.isfinite(wait) or wait < 0:  # (a huge int: infinity)
            raise InvalidInput(f"delay must be a finite number of seconds >= 0, got {delay!r}")
        when = now + wait
    else:
        return None
    if when - now > MAX_WAIT:  # its timer key (ms) must fit; nobody waits this long
        raise InvalidInput(
            f"the start is {when - now:.3g} s away; the limit is {MAX_WAIT:.0f} s (100 years)"
        )
    return when if when > now else None


_NEW_TIMER = encode(timer_entry(StepRecord("", "").token))
"""The encoded timer entry of a step that has no transition yet (the same for all)."""


def new_workflow(
    plan: Plan,
    workflow_id: str,
    input: Any,
    now: float,
    *,
    priority: int,
    begin: float | None,
    agents: dict[str, str] | None = None,
    trace: str | None = None,
    deadline: float | None = None,
) -> tuple[WorkflowRecord, list[StepRecord], list[Put]]:
    """A new RUNNING workflow's records and the store operations that create them.

    Every step's PENDING record is returned, but only those with a timer are written.
    Each step without dependencies that waits waits until ``begin`` (a delayed start;
    default ``now``) plus its own ``delay``, with a timer entry written with it: so a
    crash right after this commit moves no wait (the Scheduler recording it would count
    from when it got there). The Scheduler applies the delays of the other steps.
    ``agents`` (step -> agent resolved from the input, see ``_routing``) is stored with
    the workflow, and so is ``deadline`` (the clock time it must end by) with its timer
    entry (step ``DEADLINE_TIMER``, actors/engine).

    ``start_many`` builds thousands: each record's stored array (schema 3, what
    ``to_stored`` gives) is filled in from a template, encoded, and the record read from
    that same array (slot stores; a frozen dataclass's keyword ``__init__`` costs
    several times as much).
    """
    stored = _WORKFLOW_ARRAY.copy()
    stored[_W_ID] = workflow_id
    stored[_W_NAME] = plan.name
    stored[_W_VERSION] = plan.version
    stored[_W_INPUT] = input
    stored[_W_CREATED] = stored[_W_UPDATED] = now
    stored[_W_PRIORITY] = priority
    stored[_W_AGENTS] = {} if agents is None else agents  # (the start's own map, even empty)
    stored[_W_TRACE] = trace
    stored[_W_DEADLINE] = deadline
    raw = encode(stored)
    record = WorkflowRecord.from_dict(stored)
    ops = [
        Put("workflows", workflow_key(workflow_id), indexed(raw, now, WorkflowState.RUNNING))
    ]  # first
    if deadline is not None:
        key = timer_key(ms(deadline), workflow_id, DEADLINE_TIMER)
        ops.append(Put("timers", key, encode(timer_entry(0))))
    steps: list[StepRecord] = []
    for spec in plan.steps:
        step = _STEP_ARRAY.copy()
        step[_S_WORKFLOW_ID], step[_S_NAME], step[_S_UPDATED] = workflow_id, spec.name, now
        step[_S_EXTRA] = {}
        if spec.after or (begin is None and not spec.delay):
            steps.append(StepRecord.from_dict(step))
            continue
        at = (now if begin is None else begin) + (spec.delay or 0.0)
        step[_S_RETRY_AT] = at
        step[_S_TIMER_MS] = due_ms = ms(at)
        key = step_key(workflow_id, spec.name)
        ops.append(Put("timers", step_timer_key(due_ms, key), _NEW_TIMER))  # token 0: new
        ops.append(Put("steps", key, encode(step)))
        steps.append(StepRecord.from_dict(step))
    return record, steps, ops


def _at(cls: type, name: str) -> int:
    """Where field ``name`` of ``cls`` is in its stored array (``[3, field, ...]``)."""
    return 1 + [f.name for f in dataclasses.fields(cls)].index(name)


_WORKFLOW_ARRAY = WorkflowRecord("", "", 0, None, WorkflowState.RUNNING).to_stored()
_W_ID, _W_NAME, _W_VERSION, _W_INPUT, _W_CREATED, _W_UPDATED = (
    _at(WorkflowRecord, name) for name in ("id", "name", "version", "input", "created", "updated")
)
_W_PRIORITY, _W_AGENTS, _W_TRACE, _W_DEADLINE = (
    _at(WorkflowRecord, name) for name in ("priority", "agents", "trace", "deadline")
)
_STEP_ARRAY = StepRecord("", "").to_stored()
_S_WORKFLOW_ID, _S_NAME, _S_UPDATED, _S_EXTRA, _S_RETRY_AT, _S_TIMER_MS = (
    _at(StepRecord, name)
    for name in ("workflow_id", "name", "updated", "extra", "retry_at", "timer_ms")
)
