"""Every key layout of the store, and the value layout of a timer entry.

Keys (all ``bytes``):

- ``workflows``: the workflow id (UTF-8).
- ``steps``: ``workflow id + b"\\x00" + step name``; a workflow's steps are a prefix scan.
- ``timers``: ``8-byte big-endian due time in ms + step key``; the Supervisor's sweep is a
  cursor range scan up to "now". The value is a :func:`timer_entry`: the fencing token of
  the step transition that set the timer, so a stale entry is told apart. The deadlines
  of the attempts one commit records share one *batch* entry (:func:`batch_timer_key`:
  the timer key of workflow ``""``, which no workflow has, and step ``str(token)`` of its
  first attempt), due at the earliest of them; its value is a :func:`batch_entry`.
- ``definitions``: ``name + b"\\x00" + 4-byte big-endian version``: the compiled plan.
- ``history``: ``workflow key + b"\\x00" + 8-byte big-endian sequence`` (see ``_history``).

Times in keys are whole milliseconds of the runtime's clock, by :func:`ms` only.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable
from typing import Any

from herder.store._errors import InvalidInput

MAX_ID_BYTES = 400
"""Longest workflow id accepted (UTF-8 bytes); leaves room in LMDB's 511-byte keys."""
MAX_NAME_BYTES = 100
"""Longest step, workflow, agent or action name accepted (UTF-8 bytes)."""

KEY_SEP = b"\x00"


def ms(seconds: float) -> int:
    """A clock time (seconds) as the whole milliseconds timer keys are ordered by."""
    return int(seconds * 1000)


def timer_entry(token: int) -> dict[str, Any]:
    """The value of a timer entry (before encoding): the token of the step it wakes."""
    return {"token": token}


def timer_token(value: Any) -> int | None:
    """The token a decoded timer entry holds; None for a value of any other shape."""
    token = value.get("token") if isinstance(value, dict) else None
    return token if isinstance(token, int) else None


BATCH_TIMER = ""
"""The workflow id of a batch entry's timer key (:func:`validate_id` refuses it)."""


def batch_timer_key(due_ms: int, first_token: int) -> bytes:
    """The key of a batch deadline entry due at ``due_ms`` whose first attempt holds
    ``first_token`` (tokens are unique, so two batches never share a key)."""
    return timer_key(due_ms, BATCH_TIMER, str(first_token))


def batch_entry(items: list[tuple[str, str, int]]) -> list[list[Any]]:
    """The value of a batch entry (before encoding): ``[[workflow id, step, token], ...]``,
    the attempts whose deadline it watches; an attempt whose step moved on is stale."""
    return [[wf, step, token] for wf, step, token in items]


def batch_put(
    due_ms: int, watched: list[list[Any]], pack: Callable[[Any], bytes]
) -> tuple[tuple[str, bytes], bytes]:
    """The ``(db, key)`` and encoded value of the batch entry watching ``watched`` (a
    :func:`batch_entry`), due at ``due_ms``: one place for the writer's and the
    Scheduler's (``pack``: their encoder)."""
    return ("timers", batch_timer_key(due_ms, watched[0][2])), pack(watched)


def batch_items(value: Any) -> list[tuple[str, str, int]] | None:
    """The attempts a decoded batch entry holds; None for a value of any other shape."""
    if type(value) is not list:
        return None
    items = []
    for item in value:
        if type(item) is not list or len(item) != 3:
            return None
        wf, step, token = item
        if type(wf) is not str or type(step) is not str or type(token) is not int:
            return None
        items.append((wf, step, token))
    return items


_SEQ = struct.Struct(">Q")


def history_key(workflow_id: str, seq: int) -> bytes:
    """The ``history`` key of one event of a workflow."""
    return workflow_key(workflow_id) + KEY_SEP + _SEQ.pack(seq)


def history_owner(key: bytes) -> bytes | None:
    """The :func:`workflow_key` a ``history`` key belongs to (all before its NUL and
    8-byte sequence); None for a key of any other shape, which no history holds."""
    owner, sep = key[: -_SEQ.size - 1], key[-_SEQ.size - 1 : -_SEQ.size]
    return owner if sep == KEY_SEP and owner and KEY_SEP not in owner else None


def key_prefix(workflow_id: str) -> bytes:
    """How every ``steps`` and ``history`` key of a workflow starts (its id, NUL): built
    once per workflow by a writer of many of its keys."""
    return workflow_id.encode("utf-8") + KEY_SEP


seq_suffix = _SEQ.pack
"""The end of a :func:`history_key`: its sequence, 8 bytes big-endian."""


def workflow_key(workflow_id: str) -> bytes:
    """The ``workflows`` key of a workflow id."""
    return workflow_id.encode("utf-8")


def step_key(workflow_id: str, step: str) -> bytes:
    """The ``steps`` key of one step: id, NUL, step name."""
    return workflow_id.encode("utf-8") + KEY_SEP + step.encode("utf-8")


def split_step_key(key: bytes) -> tuple[str, str]:
    """Inverse of :func:`step_key`."""
    wf, _, step = key.partition(KEY_SEP)
    return wf.decode("utf-8"), step.decode("utf-8")


_TIMER_PREFIX = struct.Struct(">Q")


def timer_key(due_ms: int, workflow_id: str, step: str) -> bytes:
    """The ``timers`` key: big-endian due time in ms, then the step key."""
    return _TIMER_PREFIX.pack(due_ms) + step_key(workflow_id, step)


def step_timer_key(due_ms: int, key: bytes) -> bytes:
    """:func:`timer_key` of the step whose :func:`step_key` is ``key``."""
    return _TIMER_PREFIX.pack(due_ms) + key


def split_timer_key(key: bytes) -> tuple[int, str, str]:
    """Inverse of :func:`timer_key`: (due ms, workflow id, step name)."""
    (due_ms,) = _TIMER_PREFIX.unpack_from(key)
    wf, step = split_step_key(key[_TIMER_PREFIX.size :])
    return due_ms, wf, step


def timer_upper_bound(until_ms: int) -> bytes:
    """The first timer key strictly after every timer due at or before ``until_ms``."""
    return _TIMER_PREFIX.pack(until_ms + 1)


def definition_key(name: str, version: int) -> bytes:
    """The ``definitions`` key of a plan."""
    return name.encode("utf-8") + KEY_SEP + struct.pack(">I", version)


def started_key(name: str, version: int) -> bytes:
    """The ``meta`` key marking that a workflow of a definition was started (from then on
    the definition may not change under its version)."""
    return b"started\x00" + definition_key(name, version)


def validate_id(workflow_id: object) -> str:
    """Return ``workflow_id`` if it can be stored as a key, else raise :class:`InvalidInput`."""
    if not isinstance(workflow_id, str):
        raise InvalidInput(f"workflow id must be a str, got {type(workflow_id).__name__}")
    if not workflow_id:
        raise InvalidInput("workflow id must not be empty")
    if "\x00" in workflow_id:
        raise InvalidInput(f"workflow id must not contain NUL: {workflow_id!r}")
    try:
        size = len(workflow_id.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise InvalidInput(f"workflow id is not valid UTF-8: {workflow_id!r}") from exc
    if size > MAX_ID_BYTES:
        raise InvalidInput(
            f"workflow id is {size} bytes in UTF-8; the limit is {MAX_ID_BYTES}: "
            "use a shorter id (e.g. a hash of the long one)"
        )
    return workflow_id


_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
"""Control characters and line/paragraph separators: they break logs, tables and keys.
(Other unprintable characters, a no-break space or an emoji's joiner, are names' own.)"""


def validate_name(kind: str, name: object, *, lookup: bool = False) -> str:
    """Return ``name`` if it is a usable step/agent/action/workflow name, else raise;
    ``lookup``: it names a stored record (one a version before this check may have made),
    so its characters are not checked."""
    if not isinstance(name, str) or not name:
        raise InvalidInput(f"{kind} name must be a non-empty str, got {name!r:.120}")
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise InvalidInput(f"{kind} name is not valid UTF-8: {name!r:.120}") from exc
    if not lookup and _CONTROL.search(name):
        raise InvalidInput(
            f"{kind} name must not contain a NUL, newline or other control character: {name!r:.120}"
        )
    if size > MAX_NAME_BYTES:
        raise InvalidInput(f"{kind} name is {size} bytes; the limit is {MAX_NAME_BYTES}")
    return name
