"""The steps of a whole store counted by state, for ``herder stats`` and the console's
counters: one paged pass over the ``steps`` database beside the one over ``workflows``.

Both databases are in workflow id order (a step's key is its workflow's id, a NUL and
its name, and an id holds no NUL), so each workflow's steps are the run of step keys
that follows the keys of the workflows before it: merged as two sorted streams, not
read with a transaction per workflow. Each step record is decoded (its checksum
checked) and read for the fields counted (state, attempts, whose record it is); the
full check of every field, which took as long as the rest, is ``herder check``'s job.
Counted as :func:`~herder.runtime._status.in_plan_order` shows a workflow's steps: a
step of its plan without a record is PENDING, a record its plan lacks counts too (and
without a readable plan, the records alone).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

from herder.store import (
    SCHEMA_VERSION,
    Plan,
    StepRecord,
    StepState,
    Store,
    StoreCorrupt,
    WorkflowRecord,
    WorkflowState,
    decode,
    fields_getter,
    step_key,
    stored_field,
)


@dataclass
class Tally:
    """Workflows by state, steps by state, and the retries their attempts add up to."""

    workflows: Counter[str] = field(
        default_factory=lambda: Counter(dict.fromkeys(map(str, WorkflowState), 0))
    )
    steps: Counter[str] = field(
        default_factory=lambda: Counter(dict.fromkeys(map(str, StepState), 0))
    )
    retries: int = 0
    compensation_retries: int = 0


def tally(
    store: Store, plan_of: Callable[[WorkflowRecord], Plan | None], corrupt: list[StoreCorrupt]
) -> Tally:
    """Count every readable workflow and its steps (``plan_of``: its definition, None
    if it cannot be read). A workflow record that cannot be read is left out, and so
    are its steps; a step record that cannot be read leaves its workflow's steps out:
    each goes to ``corrupt``."""
    out = Tally()
    pending = _Steps(store.raw_scan("steps"))
    names: dict[tuple[str, int], frozenset[str]] = {}  # (a definition's step names)
    for record in store.workflows(corrupt=corrupt):
        out.workflows[str(record.state)] += 1
        rows = pending.take(step_key(record.id, ""))
        try:
            stored = [_read(record.id, key, raw) for key, raw in rows]
        except StoreCorrupt as exc:
            corrupt.append(exc)
            continue
        plan = plan_of(record)
        if plan is not None:
            planned = names.get((record.name, record.version))
            if planned is None:
                planned = frozenset(spec.name for spec in plan.steps)
                names[record.name, record.version] = planned
            out.steps[str(StepState.PENDING)] += len(planned - {st.name for st in stored})
        for st in stored:
            out.steps[st.state] += 1
            out.retries += max(0, st.attempt - 1)
            out.compensation_retries += max(0, st.comp_attempt - 1)
    return out


class _Steps:
    """The ``steps`` database as a stream in key order, taken a workflow at a time."""

    def __init__(self, rows: Iterator[tuple[bytes, bytes]]) -> None:
        self._rows = rows
        self._next = next(rows, None)

    def take(self, prefix: bytes) -> list[tuple[bytes, bytes]]:
        """The rows under ``prefix``; those before it (steps of a workflow with no
        readable record) are passed over."""
        row, rows = self._next, self._rows
        while row is not None and row[0] < prefix:
            row = next(rows, None)
        found = []
        while row is not None and row[0].startswith(prefix):
            found.append(row)
            row = next(rows, None)
        self._next = row
        return found


_STATES = {str(state): str(state) for state in StepState}


def _read(workflow_id: str, key: bytes, raw: bytes) -> _Counted:
    """What counts of the step record stored at ``key``: its name, state and attempts,
    read out of the decoded value without building the record (StoreCorrupt if it
    cannot be read, holds another step, or a field counted is of the wrong kind)."""
    data = decode(raw, db="steps", key=key)
    try:
        if type(data) is not list:  # (a schema 2 map)
            wid, name, state, attempt, comp_attempt = (
                stored_field(data, StepRecord, f) for f in _FIELDS
            )
        elif data[0] != SCHEMA_VERSION:
            raise ValueError(f"a schema 3 record is [3, ...], not [{data[0]!r:.20}, ...]")
        else:
            wid, name, state, attempt, comp_attempt = _counted_items(data)
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise StoreCorrupt("steps", key, f"bad record: {type(exc).__name__}: {exc}") from exc
    if type(state) is not str or state not in _STATES:
        raise StoreCorrupt("steps", key, f"bad record: no step state {state!r:.40}")
    if type(attempt) is not int or type(comp_attempt) is not int:
        raise StoreCorrupt("steps", key, "bad record: its attempts are not ints")
    if wid != workflow_id or type(name) is not str or step_key(wid, name) != key:
        raise StoreCorrupt("steps", key, f"record holds {wid!r:.80}/{name!r:.80}")
    return _Counted(name, _STATES[state], attempt, comp_attempt)


_FIELDS = ("workflow_id", "name", "state", "attempt", "comp_attempt")
"""The fields of a step record that are counted."""
_counted_items = fields_getter(StepRecord, _FIELDS)


class _Counted(NamedTuple):
    """The fields of a step record that are counted."""

    name: str
    state: str
    attempt: int
    comp_attempt: int
