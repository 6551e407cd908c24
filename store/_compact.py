"""``herder compact``: LMDB files never shrink, so write a compacting copy and swap it in.

Offline only: it takes the store's ``flock`` (so no runtime can open it meanwhile) and
refuses while a runtime holds the lease or a standby waits (a standby has the old file
open and would take over on it). The copy (``mdb_env_copy2`` with compaction: only live
pages, in order) is written to ``compact.tmp/`` inside the store directory, synced, and
renamed over ``data.mdb`` (atomic on one filesystem); a crash before the rename leaves
the old store whole and a stale ``compact.tmp/`` that the next compact, or the next
writer open (``open_lock``), removes.

No other process may have the environment open at the swap, whatever it is: a reader
(``herder ui``, a script's read-only ``Store``) keeps the old file mapped, and LMDB's lock
table (``lock.mdb``, kept across the swap) would still carry the old file's transaction
counter, so the next opener could read the new file through the wrong meta page (an
empty store, half the time). Every process with the environment open holds a read lock
on byte 0 of ``lock.mdb``, so compact refuses when it finds one, before the copy and
again at the swap, where it holds the write lock on that byte: an opener then waits, and
one that opened during the copy, or a write that landed in it (an operator's command),
makes compact give up with the store as it was. After the swap it opens the new file
once while it holds that lock, which has LMDB set its lock table up afresh.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pathlib
import shutil
import threading
from collections.abc import Callable

import lmdb

from herder.store._errors import StoreError, StoreLocked
from herder.store._locktable import COMPACT_COPY, COMPACTING, LMDB_LOCK, LOCK_FILE, compacting
from herder.store._metapage import last_txnid
from herder.store._open import has_store, open_existing, open_lmdb, read_schema, translate
from herder.store._standby import standby_waiting

TMP = COMPACT_COPY
LOOK = 0.25  # seconds between two looks at the size of the copy (its progress)


def compact(
    path: str | os.PathLike[str], progress: Callable[[int], None] | None = None
) -> tuple[int, int]:
    """Compact the store at ``path`` in place; returns (bytes before, bytes after).
    ``progress`` is given the bytes of the copy written so far, from another thread
    while it is written (every ``LOOK`` seconds), then once it is whole."""
    root = pathlib.Path(path)
    data = root / "data.mdb"
    if not has_store(root):
        raise StoreError(f"no store at {root}: check --store")
    try:
        fd = os.open(root / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:  # a read-only filesystem, permissions: no traceback
        raise StoreError(f"cannot compact {root}: {exc}") from exc
    mark: pathlib.Path | None = None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = compacting(root)
            why = "a runtime holds it" if pid is None else f"another compact (pid {pid}) runs"
            raise StoreLocked(_busy(root, why)) from None
        (root / COMPACTING).write_text(f"{os.getpid()}\n")
        mark = root / COMPACTING  # (ours to remove)
        if standby_waiting(root):
            raise StoreLocked(_busy(root, "a standby runtime waits on it"))
        opened = "another process has it open (`herder ui`, a script's Store, a standby)"
        alone = _lock_lmdb(root, opened)
        if alone is not None:
            os.close(alone)  # (and its lock with it: the copy opens the environment)
        before = data.stat().st_size
        held, txnid = census(root)  # a whole herder store this herder reads, or refused
        tmp = root / TMP
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(mode=0o700)
        try:
            _copy(root, tmp, held, progress)
            _swap(root, tmp / "data.mdb", txnid)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return before, data.stat().st_size
    except OSError as exc:  # (as above)
        raise StoreError(f"cannot compact {root}: {exc}") from exc
    finally:
        if mark is not None:
            with contextlib.suppress(OSError):
                mark.unlink()
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _copy(
    root: pathlib.Path,
    tmp: pathlib.Path,
    held: dict[str, int],
    progress: Callable[[int], None] | None = None,
) -> None:
    """Write the compacting copy into ``tmp``; refuse one that does not hold ``held``
    (the store's entries per database)."""
    done = threading.Event()
    watcher = threading.Thread(target=_watch, args=(tmp / "data.mdb", done, progress))
    if progress is not None:
        watcher.start()
    try:
        env = open_lmdb(root, readonly=True)
        try:
            env.copy(str(tmp), compact=True)
        finally:
            env.close()
            done.set()
            if progress is not None:
                watcher.join()
    except lmdb.Error as exc:
        raise translate(exc, f"cannot compact {root}") from exc
    if (got := census(tmp)[0]) != held:
        lost = {db: (held.get(db), got.get(db)) for db in held if held[db] != got.get(db)}
        raise StoreError(
            f"cannot compact {root}: its compacted copy does not hold what the store "
            f"does (entries per database, store vs copy: {lost}); the store was left "
            "as it was. It may be damaged: run `herder check` on it, restore a backup"
        )


def _watch(copy: pathlib.Path, done: threading.Event, progress: Callable[[int], None]) -> None:
    """Hand ``progress`` the size of ``copy`` as it grows, and once it is written."""
    while True:
        over = done.wait(LOOK)
        with contextlib.suppress(OSError):  # (not created yet)
            progress(copy.stat().st_size)
        if over:
            return


def _swap(root: pathlib.Path, copied: pathlib.Path, txnid: int) -> None:
    """Put ``copied`` in place of the store's ``data.mdb`` (read at commit ``txnid``),
    holding LMDB's lock so that nobody has the environment open or opens it meanwhile."""
    data = root / "data.mdb"
    fd = _lock_lmdb(root, "another process opened it while it was copied")
    assert fd is not None  # (the census opened the environment: lock.mdb is there)
    try:
        if last_txnid(data) != txnid:
            raise StoreLocked(
                _busy(root, "it was written while it was copied (an operator's command?)")
            )
        original = data.stat()
        with contextlib.suppress(PermissionError):  # (not root: the copy is the user's own)
            os.chown(copied, original.st_uid, original.st_gid)
        copied.chmod(0o600)
        with open(copied, "rb") as f:
            os.fsync(f.fileno())
        os.replace(copied, data)
        dir_fd = os.open(root, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        # Opened while this process holds the lock, LMDB takes it for the only user and
        # sets the lock table up for the new file; closing it lets the waiters in.
        open_lmdb(root, readonly=True).close()
    finally:
        os.close(fd)


def _lock_lmdb(root: pathlib.Path, why: str) -> int | None:
    """Take the write lock on byte 0 of ``lock.mdb``, on which every process with the
    environment open holds a read lock: the descriptor holding it (closing it lets go),
    or None when there is no ``lock.mdb`` (never opened); :class:`StoreLocked`, saying
    ``why``, while another process has the environment open."""
    try:
        fd = os.open(root / LMDB_LOCK, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 0)
    except OSError:
        os.close(fd)
        raise StoreLocked(_busy(root, why)) from None
    return fd


def census(path: pathlib.Path) -> tuple[dict[str, int], int]:
    """Entries in each database of the store at ``path`` and the commit they were read
    at, refusing (``StoreError``) one that is not a herder store of a schema this herder
    reads: the store is counted before it is copied, and the copy must count the same
    before it replaces it."""
    env, handles = open_existing(path, write=False)
    try:
        with env.begin() as txn:
            read_schema(txn, handles["meta"], path)
            return {name: txn.stat(db)["entries"] for name, db in handles.items()}, txn.id()
    except lmdb.Error as exc:
        raise translate(exc, f"cannot read store {path}") from exc
    finally:
        env.close()


def _busy(root: pathlib.Path, why: str) -> str:
    return (
        f"cannot compact {root}: {why}; the store was left as it was. Compacting is "
        "offline: stop the runtime, any standby and every other process that opens the "
        "store, run `herder compact`, then start them again"
    )
