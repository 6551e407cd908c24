"""The ``commands`` database: a durable channel from other processes to the active runtime.

Only one process runs a store (it holds ``herder.lock``), but an operator's CLI runs in
another. The CLI appends a *command* here and waits; the active runtime's Supervisor
finds pending commands in its sweep, the Scheduler applies each through the same code as
the ``Runtime`` method of that name, and records the outcome on the command, in the same
write transaction as the change it made.

Appending does not take herder's ``flock`` and does not touch the incarnation: the CLI
opens the store as a client (``Store(path, mode="client")``: the environment writable,
no flock, no lease, no writer thread), and LMDB serializes writers across
processes - as long as they share ``lock.mdb``: the CLI refuses to write when the
running runtime uses another one (``_locktable.py``). One command is one write
transaction. Its id is given out inside that transaction (the highest id so far + 1),
so ids are unique and ordered. A pending command lives under ``b"P" + 8-byte big-endian
id``; applying it moves it to ``b"D" + id`` in the same commit, so the sweep reads only
what is pending, never the whole log. The runtime's retention deletes the answered ones
once old (:func:`answered_before`), all but the newest, so ids are never given out again.

A command is a map: ``id``, ``action``, ``workflow_id``, ``args`` (e.g. ``step``,
``result``), ``who``, ``why``, ``created``, ``state`` (``PENDING`` → ``DONE`` or
``FAILED``), ``error``, ``finished``, ``step`` (once applied: the step an action
took, a skip's that named none too) and ``decided_on`` (the workflow's state the
operator decided on: the runtime refuses the command once the workflow is in another;
None, or absent in an older record: no such check). The channel is generic: ``action``
is any name the applying runtime knows; an unknown one ends FAILED with a message.
"""

from __future__ import annotations

import contextlib
import os
import struct
import threading
import time
from collections.abc import Callable
from typing import Any, Literal

import lmdb

from herder.store._codec import decode, encode
from herder.store._env import Store, opened
from herder.store._errors import ConditionFailed, StoreCorrupt, StoreError, StoreLocked, TimedOut
from herder.store._locktable import compacting
from herder.store._open import has_store
from herder.store._ops import Delete, Expect, Put, Transition

COMMANDS_DB = "commands"
PENDING, DONE, FAILED = "PENDING", "DONE", "FAILED"

_ID = struct.Struct(">Q")
_PENDING, _DONE = b"P", b"D"


def pending_key(command_id: int) -> bytes:
    """The ``commands`` key of a pending command."""
    return _PENDING + _ID.pack(command_id)


def done_key(command_id: int) -> bytes:
    """The ``commands`` key of a command once it was applied or refused."""
    return _DONE + _ID.pack(command_id)


def new_command(
    action: str,
    workflow_id: str,
    *,
    args: dict[str, Any] | None = None,
    who: str,
    why: str,
    now: float | None = None,
    decided_on: str | None = None,
) -> dict[str, Any]:
    """A pending command record (without its id, given out when it is appended).
    ``decided_on``: the workflow's state the operator decided on (the CLI's and the
    console's read as they queue it); the runtime refuses the command if the workflow
    is in another by the time it applies it (None: whatever state it is in)."""
    return {
        "v": 1,
        "action": action,
        "workflow_id": workflow_id,
        "args": args or {},
        "who": who,
        "why": why,
        "created": time.time() if now is None else now,
        "state": PENDING,
        "error": None,
        "finished": None,
        "decided_on": decided_on,
    }


def finished_ops(command: dict[str, Any], error: str | None, now: float) -> tuple[Put, Delete]:
    """The ops that record a command's outcome (``error`` None: it was applied)."""
    done = {**command, "state": FAILED if error else DONE, "error": error, "finished": now}
    command_id = command["id"]
    return (
        Put(COMMANDS_DB, done_key(command_id), encode(done)),
        Delete(COMMANDS_DB, pending_key(command_id)),
    )


def progress_ops(command: dict[str, Any], **progress: Any) -> Transition:
    """Record how far a long command has got (``herder purge``: ``deleted`` so far) on
    its pending record, if it is pending still: the waiting CLI shows it, and a runtime
    that takes the command over after a crash goes on from it."""
    key = pending_key(command["id"])
    put = Put(COMMANDS_DB, key, encode({**command, **progress}))
    return Transition(ops=(put,), expect=(Expect(COMMANDS_DB, key),))


def pending_commands(
    store: Any, corrupt: list[StoreCorrupt] | None = None, *, most: int | None = None
) -> list[dict[str, Any]]:
    """Every pending command, oldest first (a prefix scan of the pending ones only), or
    the ``most`` oldest. A damaged one raises :class:`StoreCorrupt`, or, given
    ``corrupt``, is added to it and passed over: it cannot stop the others."""
    out: list[dict[str, Any]] = []
    for key, value in store.scan(COMMANDS_DB, _PENDING, corrupt=corrupt):
        if most is not None and len(out) >= most:
            break
        if len(key) == 1 + _ID.size and isinstance(value, dict):
            out.append({**value, "id": _ID.unpack_from(key, 1)[0]})
    return out


def append_command(path: str | os.PathLike[str], command: dict[str, Any]) -> int:
    """Append ``command`` to the store at ``path``; return its id. Durable when it returns.

    Works while another process runs the store: it is opened as a client
    (``Store(path, mode="client")``: writable, without herder's lock; LMDB serializes
    writers). If this very process has the store open, its writer is used instead (LMDB
    allows one environment per path per process).
    """
    pid = compacting(path)
    if pid is not None:  # it would give up at the swap, or the command would be lost
        raise StoreLocked(
            f"store {path} is being compacted (`herder compact`, pid {pid}); nothing was "
            "queued: run the command again once that ends"
        )
    store = _open_here(path)
    if store is not None:
        return _append_through(store, command)
    with _client(path, "client") as client:
        handle = client._handle(COMMANDS_DB)

        def append(txn: lmdb.Transaction) -> int:
            command_id = _highest_id(txn.cursor(db=handle)) + 1
            txn.put(pending_key(command_id), encode({**command, "id": command_id}), db=handle)
            return command_id

        return client._write_direct(append, "cannot append a command to store")


def wait_outcome(
    path: str | os.PathLike[str],
    command_id: int,
    timeout: float,
    poll: float = 0.05,
    pending: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any] | None:
    """The command once it is DONE or FAILED, or None if it is still pending at ``timeout``.
    ``pending`` is given the pending record at each look (its progress: ``progress_ops``)."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()  # never set: the pause between two looks at the record
    here = opened(path)
    with contextlib.nullcontext(here) if here is not None else _client(path, "readonly") as store:
        while True:
            record = command_outcome(store, command_id)
            if record is not None and record.get("state") != PENDING:
                return record
            if pending is not None:
                value = store.get(COMMANDS_DB, pending_key(command_id))
                if isinstance(value, dict):
                    pending(value)
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            pause.wait(min(poll, left))


def command_outcome(store: Any, command_id: int) -> dict[str, Any] | None:
    """The command once it was applied or refused (read through an open ``store``), else None."""
    value = store.get(COMMANDS_DB, done_key(command_id))
    return value if isinstance(value, dict) else None


def answered_before(store: Any, before: float, most: int) -> Transition | None:
    """The deletion of the answered (DONE or FAILED) commands that finished before
    ``before``, oldest id first, up to the first that finished later, among the ``most``
    oldest (retention's: the log would grow for as long as commands are sent); None if
    there are none. The newest one is kept whatever its age: the next id is the highest
    so far + 1, and a runtime remembers the ids it answered, so none may be given out
    again. A record that cannot be read, or has no time it finished, is passed over."""

    def read(snap: Any) -> list[bytes]:
        cur = snap.cursor(COMMANDS_DB)
        newest = done_key(_highest_id(snap.cursor(COMMANDS_DB)))
        old: list[bytes] = []
        if not cur.set_range(_DONE):
            return old
        for n, (key, raw) in enumerate(cur):  # (at most ``most`` read, kept ones too)
            if key[:1] != _DONE or key >= newest or n >= most:
                break
            try:
                value = decode(raw, db=COMMANDS_DB, key=key)
            except StoreCorrupt:
                continue
            finished = value.get("finished") if isinstance(value, dict) else None
            if not isinstance(finished, int | float):
                continue
            if not finished < before:
                break  # (ids are about in the order they were answered)
            old.append(key)
        return old

    keys = store.view(read)
    return Transition(ops=tuple(Delete(COMMANDS_DB, key) for key in keys)) if keys else None


def _highest_id(cur: Any) -> int:
    """The highest command id in the database (0 if none), pending or done."""
    highest = 0
    if cur.set_range(_PENDING):  # the first pending key: the done ones are just before it
        if cur.prev() and cur.key()[:1] == _DONE:
            highest = _ID.unpack_from(cur.key(), 1)[0]
    elif cur.last() and cur.key()[:1] == _DONE:
        highest = _ID.unpack_from(cur.key(), 1)[0]
    if cur.last() and cur.key()[:1] == _PENDING:
        highest = max(highest, _ID.unpack_from(cur.key(), 1)[0])
    return highest


def _open_here(path: str | os.PathLike[str]) -> Store | None:
    store = opened(path)
    return None if store is None or store.readonly or store.mode == "client" else store


def _append_through(store: Store, command: dict[str, Any]) -> int:
    while True:
        command_id = store.view(lambda snap: _highest_id(snap.cursor(COMMANDS_DB))) + 1
        key = pending_key(command_id)
        put = Put(COMMANDS_DB, key, encode({**command, "id": command_id}))
        absent = (
            Expect(COMMANDS_DB, key, exists=False),
            Expect(COMMANDS_DB, done_key(command_id), exists=False),
        )
        try:
            store.writer.submit(Transition(ops=(put,), expect=absent)).result(timeout=30.0)
        except ConditionFailed:
            continue  # another command took that id first
        except TimeoutError:
            raise TimedOut(
                f"the store at {store.path} did not commit the command within 30 s (a slow "
                "or stalled disk?); it may still land and be carried out: look with `herder "
                "show` before asking again"
            ) from None
        return command_id


def _client(path: str | os.PathLike[str], mode: Literal["client", "readonly"]) -> Store:
    if not has_store(path):
        raise StoreError(f"no store at {path}: a runtime creates it when it first opens it")
    store = Store(path, mode=mode)
    if store._handle(COMMANDS_DB) is None:
        store.close()
        raise StoreError(
            f"store {path} has no commands database (written by an older herder): open it "
            "once with a current Runtime"
        )
    return store
