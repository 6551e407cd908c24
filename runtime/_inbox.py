"""The operator's inbox: workflows parked in NEEDS_ATTENTION, with what needs a decision.

Read from the store alone (``rt.inbox()`` and ``herder inbox`` share it), so it works
read-only while a runtime runs. Each item names the step that needs attention, its
state, attempts, last error and last heartbeat details; the operator then retries,
skips, compensates or abandons it (``Runtime`` methods or the CLI).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any

from herder.actors.engine import stuck_step
from herder.runtime._status import in_plan_order, steps_if_kept
from herder.store import (
    UNREADABLE,
    Plan,
    StepRecord,
    StepState,
    Store,
    StoreCorrupt,
    WorkflowRecord,
    WorkflowState,
    get_logger,
)

_log = get_logger("herder.runtime")


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
    limit: int | None = None,
) -> list[InboxItem]:
    """Every NEEDS_ATTENTION workflow of ``store`` as an :class:`InboxItem`, oldest first;
    with ``limit``, only the ``limit`` oldest (a page costs the same however many are
    parked: the console's).

    Only the parked workflows' records are read, found by the store's ``recent`` index,
    itself read only up to the last of them (a store without it is read whole, and so
    is one with a damaged key in it when every parked workflow is asked for). A record
    that does not decode (a parked one, or one the index lists as unreadable) is left
    out and added to ``corrupt``, or logged without one: one damaged record must not
    hide every parked workflow from the operator."""
    known: dict[tuple[str, int], Plan | None] = dict(plans or {})
    bad: list[StoreCorrupt] = [] if corrupt is None else corrupt
    items = []
    parked = (
        _every_parked(store, bad)
        if limit is None or not store.indexed
        else _oldest_parked(store, limit, bad)
    )
    for record, steps in parked:
        key = (record.name, record.version)
        if key not in known:
            try:
                known[key] = store.get_plan(*key)
            except StoreCorrupt as exc:  # its steps are shown in stored order
                bad.append(exc)
                known[key] = None
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
    if limit is not None:
        del items[limit:]
    if corrupt is None:
        for problem in bad:
            _log.error("the inbox left out a workflow: %s", problem)
    return items


# A parked workflow's record and its steps are read in one snapshot (``store.together``):
# two reads let a commit land between them, and a purge or an operator's retry there
# listed it with no stuck step and no error of it.

Parked = tuple[WorkflowRecord, list[StepRecord]]


def _every_parked(store: Store, bad: list[StoreCorrupt]) -> Iterator[Parked]:
    """Every parked workflow and its steps: those the ``recent`` index lists (read as for
    :func:`_oldest_parked`), or from a read of every record for a store without the
    index or with a damaged key in it (whose workflow it was is unknown)."""
    damaged: list[StoreCorrupt] = []  # (one instant: one re-parked meanwhile was listed twice)
    listed = store.together(lambda: list(_listed(store, damaged))) if store.indexed else None
    if listed is not None and not damaged:
        yield from _if_still_parked(store, listed, bad)
        return
    for record in store.workflows(WorkflowState.NEEDS_ATTENTION, corrupt=bad):
        try:
            steps = steps_if_kept(store, record.id)
        except StoreCorrupt as exc:
            bad.append(exc)
            continue
        if steps is not None:  # (else purged since it was read)
            yield record, steps


def _oldest_parked(store: Store, limit: int, bad: list[StoreCorrupt]) -> Iterator[Parked]:
    """The ``limit`` parked workflows changed longest ago and their steps, found by the
    ``recent`` index (oldest first); those it lists as unreadable go to ``bad`` on the
    way, and so does a damaged key in it. Not one more is looked for: that read the
    index to its end."""
    return itertools.islice(_if_still_parked(store, _listed(store, bad), bad), limit)


def _listed(store: Store, damaged: list[StoreCorrupt]) -> Iterator[tuple[float, str, str]]:
    """The entries of the ``recent`` index that list a workflow as parked or unreadable,
    oldest first, a damaged key passed over into ``damaged``. It is read up to the last
    of them the writer's kept counts say it holds (none: not at all), not to its end: on
    a million workflows that took a second."""
    listed = frozenset({str(WorkflowState.NEEDS_ATTENTION), UNREADABLE})
    entries = store.recent(newest_first=False, states=listed, damaged=damaged)
    kept = store.kept_workflow_counts()  # (one parked since lies at the newest end)
    if kept is None:
        return entries
    return itertools.islice(entries, sum(kept.get(state, 0) for state in listed))


def _if_still_parked(
    store: Store, entries: Iterable[tuple[float, str, str]], bad: list[StoreCorrupt]
) -> Iterator[Parked]:
    """The workflows of ``entries`` that are parked when read, with their steps; one that
    does not decode goes to ``bad``."""
    for _t, wid, _state in entries:
        try:
            both = store.together(partial(_if_parked, store, wid))
        except StoreCorrupt as exc:
            bad.append(exc)
            continue
        if both is not None:  # (it may have moved on)
            yield both


def _if_parked(store: Store, workflow_id: str) -> Parked | None:
    record = store.get_workflow(workflow_id)
    if record is None or record.state is not WorkflowState.NEEDS_ATTENTION:
        return None
    return record, store.steps_of(workflow_id)
