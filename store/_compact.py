"""``herder compact``: LMDB files never shrink, so write a compacting copy and swap it in.

Offline only: it takes the store's ``flock`` (so no runtime can open it meanwhile) and
refuses while a runtime holds the lease or a standby waits (a standby has the old file
open and would take over on it). The copy (``mdb_env_copy2`` with compaction: only live
pages, in order) is written to ``compact.tmp/`` inside the store directory, synced, and
renamed over ``data.mdb`` (atomic on one filesystem); a crash before the rename leaves
the old store whole and a stale ``compact.tmp/`` that the next compact removes.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pathlib
import shutil

import lmdb

from herder.store._errors import StoreError, StoreLocked
from herder.store._locktable import LOCK_FILE
from herder.store._open import open_existing, open_lmdb, read_schema, translate
from herder.store._standby import standby_waiting

TMP = "compact.tmp"


def compact(path: str | os.PathLike[str]) -> tuple[int, int]:
    """Compact the store at ``path`` in place; returns (bytes before, bytes after)."""
    root = pathlib.Path(path)
    data = root / "data.mdb"
    if not data.is_file():
        raise StoreError(f"no store at {root}: check --store")
    fd = os.open(root / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StoreLocked(_busy(root, "a runtime holds it")) from None
        if standby_waiting(root):
            raise StoreLocked(_busy(root, "a standby runtime waits on it"))
        tmp = root / TMP
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(mode=0o700)
        before = data.stat().st_size
        held = census(root)  # a whole herder store this herder reads, or refused
        try:
            env = open_lmdb(root, readonly=True)
            try:
                env.copy(str(tmp), compact=True)
            finally:
                env.close()
        except lmdb.Error as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise translate(exc, f"cannot compact {root}") from exc
        copied = tmp / "data.mdb"
        if (got := census(tmp)) != held:
            shutil.rmtree(tmp, ignore_errors=True)
            lost = {db: (held.get(db), got.get(db)) for db in held if held[db] != got.get(db)}
            raise StoreError(
                f"cannot compact {root}: its compacted copy does not hold what the store "
                f"does (entries per database, store vs copy: {lost}); the store was left "
                "as it was. It may be damaged: run `herder check` on it, restore a backup"
            )
        copied.chmod(0o600)
        with open(copied, "rb") as f:
            os.fsync(f.fileno())
        os.replace(copied, data)
        dir_fd = os.open(root, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        shutil.rmtree(tmp, ignore_errors=True)
        return before, data.stat().st_size
    finally:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def census(path: pathlib.Path) -> dict[str, int]:
    """Entries in each database of the store at ``path``, refusing (``StoreError``) one
    that is not a herder store of a schema this herder reads: the store is counted
    before it is copied, and the copy must count the same before it replaces it."""
    env, handles = open_existing(path, write=False)
    try:
        with env.begin() as txn:
            read_schema(txn, handles["meta"], path)
            return {name: txn.stat(db)["entries"] for name, db in handles.items()}
    except lmdb.Error as exc:
        raise translate(exc, f"cannot read store {path}") from exc
    finally:
        env.close()


def _busy(root: pathlib.Path, why: str) -> str:
    return (
        f"cannot compact {root}: {why}. Compacting is offline: stop the runtime (and any "
        "standby), run `herder compact`, then start it again"
    )
