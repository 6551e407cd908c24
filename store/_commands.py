"""The ``commands`` database: a durable channel from other processes to the active runtime.

Only one process runs a store (it holds ``herder.lock``), but an operator's CLI runs in
another. The CLI appends a *command* here and waits; the active runtime's Supervisor
finds pending commands in its sweep, the Scheduler applies each through the same code as
the ``Runtime`` method of that name, and records the outcome on the command, in the same
write transaction as the change it made.

Appending does not take herder's ``flock`` and does not touch the incarnation: the CLI
opens the LMDB environment writable by itself, and LMDB serializes writers across
processes - as long as they share ``lock.mdb``: the CLI refuses to write when the
running runtime uses another one (``_locktable.py``). One command is one write
transaction. Its id is given out inside that transaction (the highest id so far + 1),
so ids are unique and ordered. A pending command lives under ``b"P" + 8-byte big-endian
id``; applying it moves it to ``b"D" + id`` in the same commit, so the sweep reads only
what is pending, never the whole log.

A command is a map: ``id``, ``action``, ``workflow_id``, ``args`` (e.g. ``step``,
``result``), ``who``, ``why``, ``created``, ``state`` (``PENDING`` → ``DONE`` or
``FAILED``), ``error`` and ``finished``. The channel is generic: ``action`` is any name
the applying runtime knows; an unknown one ends FAILED with a message.
"""

from __future__ import annotations

import os
import pathlib
import struct
import threading
import time
from typing import Any

import lmdb

from herder.store._codec import decode, encode
from herder.store._errors import ConditionFailed, StoreError
from herder.store._locktable import check_lock_table
from herder.store._writer import Delete, Expect, Put, Transition

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
) -> dict[str, Any]:
    """A pending command record (without its id, given out when it is appended)."""
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
    }


def finished_ops(command: dict[str, Any], error: str | None, now: float) -> tuple[Put, Delete]:
    """The ops that record a command's outcome (``error`` None: it was applied)."""
    done = {**command, "state": FAILED if error else DONE, "error": error, "finished": now}
    command_id = command["id"]
    return (
        Put(COMMANDS_DB, done_key(command_id), encode(done)),
        Delete(COMMANDS_DB, pending_key(command_id)),
    )


def pending_commands(store: Any) -> list[dict[str, Any]]:
    """Every pending command, oldest first (a prefix scan of the pending ones only)."""
    out = []
    for key, value in store.scan(COMMANDS_DB, _PENDING):
        if len(key) == 1 + _ID.size and isinstance(value, dict):
            out.append({**value, "id": _ID.unpack_from(key, 1)[0]})
    return out


def append_command(path: str | os.PathLike[str], command: dict[str, Any]) -> int:
    """Append ``command`` to the store at ``path``; return its id. Durable when it returns.

    Works while another process runs the store: the environment is opened writable
    without herder's lock (LMDB serializes writers). If this very process has the store
    open, its writer is used instead (LMDB allows one environment per path per process).
    """
    store = _open_here(path)
    if store is not None:
        return _append_through(store, command)
    env = _open_env(path)
    try:
        if _held(path):
            check_lock_table(path)  # one writer mutex with the running runtime
        db = _commands_db(env, path)
        for _ in range(3):
            try:
                with env.begin(write=True, db=db) as txn:
                    command_id = _highest_id(txn.cursor()) + 1
                    txn.put(pending_key(command_id), encode({**command, "id": command_id}))
            except lmdb.MapResizedError:
                env.set_mapsize(0)  # the runtime grew the map meanwhile: adopt it, again
                continue
            return command_id
        raise StoreError(f"cannot append a command to store {path}: its map keeps growing")
    except lmdb.Error as exc:
        raise StoreError(f"cannot append a command to store {path}: {exc}") from exc
    finally:
        env.close()


def wait_outcome(
    path: str | os.PathLike[str], command_id: int, timeout: float, poll: float = 0.05
) -> dict[str, Any] | None:
    """The command once it is DONE or FAILED, or None if it is still pending at ``timeout``."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()  # never set: the pause between two looks at the record
    store = _open_here(path)
    env = None if store is not None else _open_env(path, readonly=True)
    try:
        while True:
            record = _read_command(store, env, path, command_id)
            if record is not None and record.get("state") != PENDING:
                return record
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            pause.wait(min(poll, left))
    finally:
        if env is not None:
            env.close()


def command_outcome(store: Any, command_id: int) -> dict[str, Any] | None:
    """The command once it was applied or refused (read through an open ``store``), else None."""
    value = store.get(COMMANDS_DB, done_key(command_id))
    return value if isinstance(value, dict) else None


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


def _read_command(
    store: Any, env: lmdb.Environment | None, path: Any, command_id: int
) -> dict[str, Any] | None:
    key = done_key(command_id)  # only there once it was applied or refused
    if store is not None:
        value = store.get(COMMANDS_DB, key)
    else:
        assert env is not None
        db = _commands_db(env, path)
        try:
            with env.begin(db=db) as txn:
                raw = txn.get(key)
        except lmdb.MapResizedError:
            env.set_mapsize(0)  # the runtime grew the map: adopt its size, look again
            return None
        value = None if raw is None else decode(raw, db=COMMANDS_DB, key=key)
    return value if isinstance(value, dict) else None


def _held(path: str | os.PathLike[str]) -> bool:
    from herder.store._env import is_held

    return is_held(path)


def _open_here(path: str | os.PathLike[str]) -> Any:
    from herder.store._env import _registry, _registry_lock

    with _registry_lock:
        store = _registry.get(os.path.realpath(path))
    return None if store is None or store.readonly else store


def _append_through(store: Any, command: dict[str, Any]) -> int:
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
        return command_id


def _open_env(path: str | os.PathLike[str], *, readonly: bool = False) -> lmdb.Environment:
    from herder.store._env import open_lmdb

    if not (pathlib.Path(path) / "data.mdb").is_file():
        raise StoreError(f"no store at {path}: a runtime creates it when it first opens it")
    try:
        return open_lmdb(
            path,
            map_size=0,  # the size the store already has
            readonly=readonly,
            create=False,
            sync=True,
            metasync=True,
            writemap=False,
        )
    except lmdb.Error as exc:
        raise StoreError(f"cannot open store {path} to send a command: {exc}") from exc


def _commands_db(env: lmdb.Environment, path: Any) -> Any:
    try:
        return env.open_db(COMMANDS_DB.encode(), create=False)
    except lmdb.NotFoundError:
        raise StoreError(
            f"store {path} has no commands database (written by an older herder): open it "
            "once with a current Runtime"
        ) from None
