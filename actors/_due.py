"""Due timers, as the Supervisor's sweep reports them, turned into the engine's events.

Two kinds of entry come due (``store._keys``):

- a step's own timer (a retry, a delayed start, a heartbeat deadline) or a workflow's
  deadline timer: one :class:`TimerDue` with its due time and token, as stored;
- a batch entry (workflow id ``BATCH_TIMER``): the deadlines of the attempts one commit
  recorded. Each attempt it holds becomes a :class:`TimerDue` with no due time (the
  engine then takes it for a step with no timer of its own). Afterwards the entry is
  replaced by one holding the attempts still watched (token current, deadline not yet
  reached: a re-stamped or longer one), due at the earliest of them; stale items (the
  step moved on) are dropped. An entry nothing changed in (an attempt due now that the
  engine keeps waiting for) stays as it is, and the sweep reports it again later, as it
  does any entry still due.

A workflow not in memory keeps its timers while the Scheduler still wants it (awaiting its
definition, parked after a failed commit); otherwise they are deleted.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from herder.actors._commits import CommitPipeline
from herder.actors._dispatch import Dispatcher
from herder.actors._messages import Due
from herder.actors.engine import (
    DEADLINE_TIMER,
    Decision,
    Engine,
    Event,
    TimerDelete,
    TimerDue,
    attempt_due_ms,
)
from herder.store import BATCH_TIMER, batch_items, crash_point, get_logger, timer_key, timer_token

_log = get_logger("herder.scheduler")


class DueTimers:
    """The Scheduler's handler of :class:`Due` (see the module docstring)."""

    __slots__ = ("_commits", "_dispatch", "_engine", "_handle", "_perform", "_wake", "_wanted")

    def __init__(
        self,
        engine: Engine,
        commits: CommitPipeline,
        dispatch: Dispatcher,
        *,
        wanted: Callable[[str], bool],
        wake: Callable[[str], None],
        handle: Callable[[Event], None],
        perform: Callable[[Decision], None],
    ) -> None:
        self._engine = engine
        self._commits = commits
        self._dispatch = dispatch
        self._wanted = wanted
        self._wake = wake  # reads a workflow waiting out of memory back (_dormancy.py)
        self._handle = handle
        self._perform = perform

    def on_due(self, msg: Due) -> None:
        """Hand every due entry of ``msg`` to the engine."""
        for due_ms, workflow_id, step, value in msg.timers:
            if workflow_id == BATCH_TIMER:
                self._batch(due_ms, step, value)
            else:
                self._one(due_ms, workflow_id, step, timer_token(value))

    def _one(self, due_ms: int, workflow_id: str, step: str, token: int | None) -> None:
        self._wake(workflow_id)
        if step == DEADLINE_TIMER and workflow_id in self._engine.runs:
            self._handle(TimerDue(workflow_id, step, due_ms, token))
            return
        agent = self._engine.agent_of(workflow_id, step)
        if agent is None:
            if not self._wanted(workflow_id):
                self._perform(Decision(writes=[TimerDelete(workflow_id, due_ms, step)]))
            return
        busy = self._dispatch.busy(agent, token)
        self._handle(TimerDue(workflow_id, step, due_ms, token, busy))

    def _batch(self, due_ms: int, first: str, value: Any) -> None:
        key = timer_key(due_ms, BATCH_TIMER, first)
        items = batch_items(value)
        if items is None:
            _log.error(
                "deleting a malformed batch deadline entry due at %d ms: %.200r", due_ms, value
            )
            self._commits.rearm(key, [])
            return
        engine = self._engine
        for workflow_id, step, token in items:
            self._wake(workflow_id)  # (an item of an attempt that ended: it is dropped)
            agent = engine.agent_of(workflow_id, step)
            if agent is not None:
                busy = self._dispatch.busy(agent, token)
                self._handle(TimerDue(workflow_id, step, None, token, busy))
        kept: list[tuple[str, str, int, int]] = []
        for workflow_id, step, token in items:
            run = engine.runs.get(workflow_id)
            if run is None:
                if self._wanted(workflow_id):
                    kept.append((workflow_id, step, token, due_ms))
                continue
            st = run.steps.get(step)
            if st is not None and st.token == token and st.timer_ms is None:
                due = attempt_due_ms(st)
                if due is not None:
                    kept.append((workflow_id, step, token, due))
        # Re-armed when an item went, or when every deadline it holds moved past its due
        # time (an attempt that waited for its instance counts from its start: restamp):
        # left as it is, it would come back only at the sweep's resend, seconds late.
        if len(kept) < len(items) or (kept and min(item[3] for item in kept) > due_ms):
            crash_point("scheduler.rearm")
            self._commits.rearm(key, kept)
