"""The ``history`` database: an append-only log of every workflow's transitions.

Keys are ``workflow id + b"\\x00" + 8-byte big-endian sequence``, so one workflow's
history is a prefix scan in the order it happened. The sequence comes from the
Scheduler's fencing-token counter, which only grows, across restarts too. Each value is a
small record (an *event*), read back by :func:`read_history` as a map:

- ``kind``: ``"step"`` (a step changed state or attempt), ``"workflow"`` (the workflow
  changed state), ``"probe"`` (a probe left the outcome unknown: still running, or the
  probe failed; ``error`` says which) or ``"operator"`` (someone acted on it: retry,
  skip, compensate, abandon, cancel);
- ``t``: the time (seconds since the epoch, the runtime's clock);
- for steps: ``step``, ``from``, ``to``, ``attempt``, ``token``, ``error``, and ``agent``
  (the member it went to: a compensation's, the member of the mark it undoes,
  :func:`marked_member`) for a step of an ``AnyOf`` group;
- for workflows: ``from``, ``to``, ``error``;
- for operator actions: ``action``, ``who``, ``why``, ``step`` and ``result`` when given.

An event is written in the same write transaction as the transition it describes: one
extra put, never a separate commit.

Stored layout (schema 3): the two events written on every transition are compact arrays,
``[0, t, step, from, to, attempt, token, error]`` (plus the ``traceback`` when one was
noted) and ``[1, t, from, to, error]``; the rare kinds stay maps. Schema 2 stored every
event as its map, and both read the same.
"""

from __future__ import annotations

import datetime
import struct
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from herder.store._codec import decode, encode
from herder.store._errors import StoreCorrupt
from herder.store._keys import KEY_SEP, history_key, seq_suffix, workflow_key
from herder.store._ops import Put
from herder.store._records import StepRecord, StepState, WorkflowRecord, WorkflowState

if TYPE_CHECKING:
    from herder.store._env import Store

HISTORY_DB = "history"

_SEQ = struct.Struct(">Q")  # the sequence at the end of a history_key


MARK_KEY = "marked_on"
"""The key of an ``AnyOf`` step record's ``extra`` naming the member whose attempt set
its undo mark once a later attempt went to another member: ``[member, done_token]``
(actors/engine/_members.py keeps it)."""


def marked_member(st: StepRecord) -> str | None:
    """The member ``MARK_KEY`` names while it holds (the step's ``done_token`` is the one
    it names), else None: the step's mark, if any, is its last attempt's."""
    mark = st.extra.get(MARK_KEY)
    if isinstance(mark, list | tuple) and len(mark) == 2 and mark[1] == st.done_token:
        return mark[0] if isinstance(mark[0], str) else None
    return None


_STEP, _WORKFLOW = 0, 1
_UNDOING = frozenset(s for s in StepState if s.is_compensation)  # (a set test, no call)
_ENDED = frozenset({StepState.RETRY_WAIT, StepState.FAILED, StepState.UNKNOWN})
"""States a forward attempt's failure leads to: the event says its error even when the
record's is the same words as the attempt before (a DISPATCHED record keeps the last one)."""


def _event_error(old: StepRecord, new: StepRecord, failure: bool) -> str | None:
    """The error an event of ``old`` -> ``new`` carries: a new one, or that of a failed
    attempt (forward, or a compensation's: ``failure``); None when nothing failed."""
    if new.error != old.error or failure or (new.state in _ENDED and old.token != new.token):
        return new.error
    return None


_STEP_FIELDS = ("t", "step", "from", "to", "attempt", "token", "error", "traceback")
_WORKFLOW_FIELDS = ("t", "from", "to", "error")


def history_put(workflow_id: str, seq: int, event: dict[str, Any]) -> Put:
    """The put that appends ``event`` to a workflow's history (a step or workflow event
    of the usual fields as its compact array, any other as its map)."""
    return Put(HISTORY_DB, history_key(workflow_id, seq), _stored(event))


def _stored(event: dict[str, Any]) -> bytes:
    kind = event.get("kind")
    stored: Any = event
    if kind == "step" and event.keys() <= _STEP_KEYS:
        g = event.get
        stored = [_STEP, g("t"), g("step"), g("from"), g("to"), g("attempt"), g("token")]
        stored.append(g("error"))
        if g("traceback") is not None:
            stored.append(event["traceback"])
    elif kind == "workflow" and event.keys() <= _WORKFLOW_KEYS:
        g = event.get
        stored = [_WORKFLOW, g("t"), g("from"), g("to"), g("error")]
    return encode(stored)


_STEP_KEYS = frozenset({"kind", *_STEP_FIELDS})
_WORKFLOW_KEYS = frozenset({"kind", *_WORKFLOW_FIELDS})


def as_event(value: Any) -> dict[str, Any] | None:
    """A stored history value as its event map (either schema); None if it is neither
    (:func:`event_flaw` says why). ``read_history`` lists such a value as ``damaged``
    and ``herder check`` reports it: this is the one rule of what an event is."""
    event = _event(value)
    return event if isinstance(event, dict) else None


def event_flaw(value: Any) -> str | None:
    """Why a stored history value is not an event (what :func:`as_event` refuses it
    for); None when it is one."""
    event = _event(value)
    return event if isinstance(event, str) else None


def _event(value: Any) -> dict[str, Any] | str:
    """The event map of a stored history value, or what keeps it from being one: a map
    of a known kind with that kind's fields, or a compact array of its layout; either
    with its time ``t``, a date (shown as one)."""
    if isinstance(value, dict):
        kind = value.get("kind")
        needs = _NEEDS.get(kind) if type(kind) is str else None
        if needs is None:
            return f"a map whose kind is {kind!r}, not one of {sorted(_NEEDS)}"
        missing = [name for name in needs if name not in value]
        if missing:
            return f"a {kind} event without {', '.join(missing)}"
        event = value
    elif type(value) is list and value and type(value[0]) is int and value[0] in _LAYOUTS:
        kind, names, lengths = _LAYOUTS[value[0]]
        if len(value) - 1 not in lengths:
            return (
                f"a {kind} event of {len(value) - 1} fields, not {' or '.join(map(str, lengths))}"
            )
        event = {"kind": kind, **dict(zip(names, value[1:], strict=False))}
    elif type(value) is list:
        return f"a list that is no event's array (it starts {value[:1]!r:.20})"
    else:
        return f"a {type(value).__name__}, neither an event's map nor its array"
    if type(event["t"]) not in (int, float):
        return f"a {kind} event whose time is {event['t']!r:.20}, not a number"
    if not _FIRST_DATE <= event["t"] <= _LAST_DATE:  # (NaN is neither)
        return f"a {kind} event whose time is {event['t']!r:.20}, out of the range of dates"
    return event


# Times an event may have: each is shown as a local date (a day's margin for the zone).
_FIRST_DATE = datetime.datetime(1, 1, 2, tzinfo=datetime.UTC).timestamp()
_LAST_DATE = datetime.datetime(9999, 12, 30, tzinfo=datetime.UTC).timestamp()


_LAYOUTS: dict[int, tuple[str, tuple[str, ...], tuple[int, ...]]] = {
    _STEP: ("step", _STEP_FIELDS, (7, 8)),  # the traceback is there only when noted
    _WORKFLOW: ("workflow", _WORKFLOW_FIELDS, (4,)),
}
_NEEDS: dict[str, tuple[str, ...]] = {  # the fields each kind's map holds, at least
    "step": ("t", "step", "from", "to"),
    "workflow": ("t", "from", "to"),
    "probe": ("t", "step"),
    "operator": ("t", "action"),
}


def step_event(old: StepRecord, new: StepRecord, now: float) -> dict[str, Any] | None:
    """The event of a step change, or None when it is not a transition (a heartbeat).
    A failed compensation attempt is one though its step stays COMPENSATING (retried or
    escalated): :func:`_compensation_failed`."""
    same = (
        old.state is new.state
        and old.attempt == new.attempt
        and old.comp_attempt == new.comp_attempt
    )
    failure = same and _compensation_failed(old, new)  # (looked at only then: per step)
    if same and not failure:
        return None
    compensating = new.state.is_compensation
    event = {
        "kind": "step",
        "t": now,
        "step": new.name,
        "from": old.state.value,
        "to": new.state.value,
        "attempt": _event_attempt(old, new, compensating),
        "token": new.token,
        "error": _event_error(old, new, failure),
    }
    agent = new.extra.get("agent")  # the AnyOf member the attempt went to
    if compensating and MARK_KEY in new.extra:  # an undo goes to the member of the mark
        agent = marked_member(new) or agent
    if agent is not None:
        event["agent"] = agent
    return event


def _event_attempt(old: StepRecord, new: StepRecord, undoing: bool) -> int:
    """The attempt a step event names: the new record's, except when a failed attempt
    gave its number back (lost through no fault of its own, it does not count: the next
    attempt has its number) — then the one that failed, as its log line says. A number
    reset by an operator (no error) is the new one."""
    was, now = (old.comp_attempt, new.comp_attempt) if undoing else (old.attempt, new.attempt)
    return was if now < was and new.error is not None else now


def _compensation_failed(old: StepRecord, new: StepRecord) -> bool:
    """Of a step that kept its state and attempt numbers: a compensation attempt failed.
    It stays COMPENSATING with the failure's error and a fresh token (its retry, or an
    operator, takes it from there); its message may repeat the last one's word for word."""
    return new.state is StepState.COMPENSATING and old.token != new.token and new.error is not None


def step_history(
    prefix: bytes,
    old: StepRecord,
    new: StepRecord,
    now: float,
    *,
    note: str | None,
    seq: Callable[[], int],
    pack: Callable[[Any], bytes] = encode,
) -> tuple[tuple[str, bytes], bytes] | None:
    """The history ``(db, key)`` and stored value of a step change of the workflow whose
    keys start with ``prefix`` (``key_prefix``): its :func:`step_event` as
    :func:`history_put` stores it, ``note`` as a failure's traceback, built straight
    from the records (the Scheduler writes one per transition). ``seq`` draws the
    event's sequence, only for a transition (:func:`step_event`'s): None when the change
    is none (a heartbeat). ``pack`` encodes the value (``encode``, or the caller's own
    ``encoder()``)."""
    same = (
        old.state is new.state
        and old.attempt == new.attempt
        and old.comp_attempt == new.comp_attempt
    )
    failure = same and _compensation_failed(old, new)  # (looked at only then: per step)
    if same and not failure:
        return None
    if "agent" in new.extra:  # an AnyOf member: the event keeps its map
        event = step_event(old, new, now)
        assert event is not None
        if note is not None and event["error"]:
            event["traceback"] = note
        return (HISTORY_DB, prefix + seq_suffix(seq())), _stored(event)
    state = new.state  # a StrEnum: packed as its value
    error = _event_error(old, new, failure)
    attempt = _event_attempt(old, new, state in _UNDOING)
    stored = [_STEP, now, new.name, old.state, state, attempt, new.token, error]
    if note is not None and error:
        stored.append(note)
    return (HISTORY_DB, prefix + seq_suffix(seq())), pack(stored)


def workflow_event(old: WorkflowState | None, new: WorkflowRecord) -> dict[str, Any]:
    """The event of a workflow entering ``new.state`` (from ``old``; None when created)."""
    return {
        "kind": "workflow",
        "t": new.updated,
        "from": old,  # (StrEnums: packed and compared as their values; .value is 2 calls)
        "to": new.state,
        "error": new.error,
    }


def workflow_history(
    prefix: bytes,
    seq: int,
    old: WorkflowState | None,
    new: WorkflowRecord,
    pack: Callable[[Any], bytes] = encode,
) -> tuple[tuple[str, bytes], bytes]:
    """The history ``(db, key)`` and stored value of the workflow whose keys start with
    ``prefix`` entering ``new.state``: its :func:`workflow_event` as :func:`history_put`
    stores it, built straight from the record (the Scheduler writes one per workflow)."""
    stored = [_WORKFLOW, new.updated, old, new.state, new.error]
    return (HISTORY_DB, prefix + seq_suffix(seq)), pack(stored)


def read_history(
    store: Store, workflow_id: str, *, since: int = 0, before: int | None = None
) -> list[dict[str, Any]]:
    """Every event of a workflow, oldest first (with its ``seq``); with ``since`` or
    ``before``, those whose seq is at least ``since`` and below ``before`` (a key range:
    no other event is read; :func:`history_seqs` says where one starts). One that cannot
    be read is a ``damaged`` event in its place, with the reason as its ``error``: the
    rest of the story is still told."""
    prefix = _prefix(workflow_id)
    if prefix is None:
        return []
    end = None if before is None or before > _LAST_SEQ else prefix + seq_suffix(max(0, before))
    first = prefix + seq_suffix(min(max(0, since), _LAST_SEQ))
    size = len(prefix) + _SEQ.size
    events: list[dict[str, Any]] = []
    for key, raw in store._paged(HISTORY_DB, prefix, first):
        if end is not None and key >= end:
            break
        if len(key) != size:
            continue  # (not an event key of this workflow)
        try:
            event = as_event(decode(raw, db=HISTORY_DB, key=key))
        except StoreCorrupt as exc:
            event = {"kind": "damaged", "error": exc.reason}
        if event is None:
            event = {"kind": "damaged", "error": "not a history event"}
        seq = _SEQ.unpack_from(key, len(prefix))[0]
        events.append({"seq": seq, **event})
        events[-1]["seq"] = seq  # (its key's, whatever a foreign map says)
    return events


def history_seqs(store: Store, workflow_id: str) -> Iterator[int]:
    """The sequence numbers of a workflow's events, oldest first, from their keys alone
    (no event is read: ~10 ms for 40,000), paged: how many there are, and where a window
    of them starts and ends (:func:`read_history`'s ``since`` and ``before``)."""
    prefix = _prefix(workflow_id)
    if prefix is None:
        return
    at, size = len(prefix), len(prefix) + _SEQ.size
    for key, _ in store._paged(HISTORY_DB, prefix, values=False):
        if len(key) == size:
            yield _SEQ.unpack_from(key, at)[0]


_LAST_SEQ = (1 << 64) - 1


def _prefix(workflow_id: str) -> bytes | None:
    """How the history keys of ``workflow_id`` start (None: no workflow has that id)."""
    wkey = workflow_key(workflow_id)
    return wkey + KEY_SEP if wkey and KEY_SEP not in wkey else None


def recall_reason(store: Store, record: WorkflowRecord) -> WorkflowRecord:
    """``record`` with its ``reason`` (why it compensates) taken from its history when it
    was stored without one (by schema 2, or by schema 3 before the field was appended):
    the error of its last workflow event into COMPENSATING, which says why it turned
    back. So an operator who resolves a failed compensation of such a parked workflow
    leaves it saying why it compensates, as one stored with its reason does, not the
    failure it stopped at. Anything else is returned as it is."""
    if record.reason is not None:
        return record
    reason = None
    for event in read_history(store, record.id):
        if event["kind"] == "workflow" and event.get("to") == WorkflowState.COMPENSATING:
            reason = event.get("error")
    return record.evolve(reason=reason) if isinstance(reason, str) else record
