"""Which LMDB lock table the store's writer uses, so a second writer can tell it shares it.

LMDB keeps its writer mutex and reader table in ``lock.mdb``. Processes that open the
environment while ``lock.mdb`` is the same file share them; a process that opens it after
``lock.mdb`` was deleted (a "stale lock" clean-up) or replaced under a running runtime
creates a fresh one, and then LMDB keeps nothing apart: both processes write at once
(each commit overwrites the other's, free pages are handed out twice, pages a reader of
the other side still uses are reused). Measured: a second writer committed while the
first held its write transaction, and its write was gone after the first committed.

The runtime holding the store's flock (``herder.lock``) writes the identity (device and
inode) of the ``lock.mdb`` it opened into ``herder.lock``; a process that writes without
that flock (the CLI appending an operator command) compares it with the ``lock.mdb`` it
opened itself and refuses to write on a mismatch.
"""

from __future__ import annotations

import os
import pathlib

from herder.store._errors import StoreError

LOCK_FILE = "herder.lock"
"""herder's own lock: the runtime that writes the store holds its flock."""
LMDB_LOCK = "lock.mdb"


def _identity(path: pathlib.Path) -> str:
    st = os.stat(path / LMDB_LOCK)
    return f"{st.st_dev}:{st.st_ino}"


def note_lock_table(lock_fd: int, path: str | os.PathLike[str]) -> None:
    """Record, in the flocked ``herder.lock`` (``lock_fd``), the ``lock.mdb`` this
    process's environment uses (call right after opening it)."""
    data = (_identity(pathlib.Path(path)) + "\n").encode()
    os.ftruncate(lock_fd, 0)
    os.pwrite(lock_fd, data, 0)


def check_lock_table(path: str | os.PathLike[str]) -> None:
    """Raise :class:`StoreError` if the runtime holding the store at ``path`` uses another
    ``lock.mdb`` than the one there now (the one a process opening it now shares).

    Call it only while a runtime holds the store: what a stopped one recorded says
    nothing. Nothing is checked when no identity was recorded (an older herder).
    """
    root = pathlib.Path(path)
    try:
        recorded = (root / LOCK_FILE).read_text().strip()
        current = _identity(root)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise StoreError(f"cannot read the locks of store {path}: {exc}") from exc
    if recorded and recorded != current:
        raise StoreError(
            f"store {path}: {LMDB_LOCK} is not the one the running runtime uses (it was "
            "deleted or replaced while that runtime ran), so LMDB cannot keep this "
            "process's writes apart from the runtime's and writing now could corrupt the "
            f"store. Nothing was written. Restart the runtime (it then uses the new "
            f"{LMDB_LOCK}), run `herder check --store {path}`, then send the command again"
        )
