"""The operator's inbox: workflows parked in NEEDS_ATTENTION, with what needs a decision.

Read from the store alone (``rt.inbox()`` and ``herder inbox`` share it), so it works
read-only while a runtime runs. Each item names the step that needs attention, its
state, attempts, last error and last heartbeat details; the operator then retries,
skips, compensates or abandons it (``Runtime`` methods or the CLI).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from herder.actors.engine import stuck_step
from herder.runtime._status import in_plan_order
from herder.store import (
    Plan,
    StepState,
    Store,
    StoreCorrupt,
    WorkflowState,
)

_log = logging.getLogger("herder.runtime")


@dataclass(frozen=True, slots=True)
class InboxItem:
    """One workflow waiting for an operator, and the step that needs a decision."""

    id: str
    name: str
    version: int
    error: str | None
    since: float
    step: str | None
    step_state: StepState | None
    attempts: int
    step_error: str | None
    heartbeat: Any

    def to_dict(self) -> dict[str, Any]:
        """The item as plain data, e.g. for JSON."""
        return {
            "id": self.id,
            "name": self.name,
            "version": self.version,
            "error": self.error,
            "since": self.since,
            "step": self.step,
            "step_state": None if self.step_state is None else str(self.step_state),
            "attempts": self.attempts,
            "step_error": self.step_error,
            "heartbeat": self.heartbeat,
        }


def inbox_items(
    store: Store,
    plans: dict[tuple[str, int], Plan] | None = None,
    *,
    corrupt: list[StoreCorrupt] | None = None,
) -> list[InboxItem]:
    """Every NEEDS_ATTENTION workflow of ``store`` as an :class:`InboxItem`, oldest first.

    Only the parked workflows' records are read, found by the store's ``recent`` index
    (a store without it is read whole). A record that does not decode (a parked one, or
    one the index lists as unreadable) is left out and added to ``corrupt``, or logged
    without one: one damaged record must not hide every parked workflow from the
    operator."""
    known: dict[tuple[str, int], Plan | None] = dict(plans or {})
    bad: list[StoreCorrupt] = [] if corrupt is None else corrupt
    items = []
    for record in store.workflows(WorkflowState.NEEDS_ATTENTION, corrupt=bad):
        key = (record.name, record.version)
        if key not in known:
            try:
                known[key] = store.get_plan(*key)
            except StoreCorrupt as exc:  # its steps are shown in stored order
                bad.append(exc)
                known[key] = None
        try:
            steps = store.steps_of(record.id)
        except StoreCorrupt as exc:
            bad.append(exc)
            continue
        st = stuck_step(in_plan_order(record, steps, known[key]))
        compensating = st is not None and st.state is StepState.COMPENSATING
        items.append(
            InboxItem(
                id=record.id,
                name=record.name,
                version=record.version,
                error=record.error,
                since=record.updated,
                step=None if st is None else st.name,
                step_state=None if st is None else st.state,
                attempts=0 if st is None else (st.comp_attempt if compensating else st.attempt),
                step_error=None if st is None else st.error,
                heartbeat=None if st is None else st.heartbeat,
            )
        )
    items.sort(key=lambda item: item.since)
    if corrupt is None:
        for problem in bad:
            _log.error("the inbox left out a workflow: %s", problem)
    return items
