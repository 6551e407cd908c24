"""The ``history`` database: an append-only log of every workflow's transitions.

Keys are ``workflow id + b"\\x00" + 8-byte big-endian sequence``, so one workflow's
history is a prefix scan in the order it happened. The sequence comes from the
Scheduler's fencing-token counter, which only grows, across restarts too. Each value is a
small msgpack map (an *event*):

- ``kind``: ``"step"`` (a step changed state or attempt), ``"workflow"`` (the workflow
  changed state), ``"probe"`` (a probe left the outcome unknown: still running, or the
  probe failed; ``error`` says which) or ``"operator"`` (someone acted on it: retry,
  skip, compensate, abandon, cancel);
- ``t``: the time (seconds since the epoch, the runtime's clock);
- for steps: ``step``, ``from``, ``to``, ``attempt``, ``token``, ``error``;
- for workflows: ``from``, ``to``, ``error``;
- for operator actions: ``action``, ``who``, ``why``, ``step`` and ``result`` when given.

An event is written in the same write transaction as the transition it describes: one
extra put, never a separate commit.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Any

from herder.store._codec import encode
from herder.store._keys import KEY_SEP, history_key, workflow_key
from herder.store._ops import Put
from herder.store._records import StepRecord, WorkflowRecord, WorkflowState

if TYPE_CHECKING:
    from herder.store._env import Store

HISTORY_DB = "history"

_SEQ = struct.Struct(">Q")  # the sequence at the end of a history_key


def history_put(workflow_id: str, seq: int, event: dict[str, Any]) -> Put:
    """The put that appends ``event`` to a workflow's history."""
    return Put(HISTORY_DB, history_key(workflow_id, seq), encode(event))


def step_event(old: StepRecord, new: StepRecord, now: float) -> dict[str, Any] | None:
    """The event of a step change, or None when it is not a transition (a heartbeat)."""
    if (
        old.state is new.state
        and old.attempt == new.attempt
        and old.comp_attempt == new.comp_attempt
    ):
        return None
    compensating = new.state.is_compensation
    return {
        "kind": "step",
        "t": now,
        "step": new.name,
        "from": old.state.value,
        "to": new.state.value,
        "attempt": new.comp_attempt if compensating else new.attempt,
        "token": new.token,
        "error": new.error if new.error != old.error else None,
    }


def workflow_event(old: WorkflowState | None, new: WorkflowRecord) -> dict[str, Any]:
    """The event of a workflow entering ``new.state`` (from ``old``; None when created)."""
    return {
        "kind": "workflow",
        "t": new.updated,
        "from": None if old is None else old.value,
        "to": new.state.value,
        "error": new.error,
    }


def read_history(store: Store, workflow_id: str) -> list[dict[str, Any]]:
    """Every event of a workflow, oldest first (with its ``seq``)."""
    prefix = workflow_key(workflow_id) + KEY_SEP
    events = []
    for key, value in store.scan(HISTORY_DB, prefix):
        if isinstance(value, dict) and len(key) == len(prefix) + _SEQ.size:
            events.append({"seq": _SEQ.unpack_from(key, len(prefix))[0], **value})
    return events
