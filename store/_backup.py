"""``herder backup``: a consistent copy of a store, taken while a runtime writes it.

A plain ``cp`` of ``data.mdb`` while a runtime commits copies pages from different
moments: LMDB reuses freed pages in place, so the copy's tree points at pages the copy
holds in another version. Opened, such a copy said "not a herder store" or killed
``herder check`` with an assertion in LMDB. LMDB's own copy reads the store in one read
transaction instead, which the runtime's writer respects (it does not reuse a page that
transaction may read), so the copy is the store as of one commit, compacted (only live
pages) like ``herder compact``'s.

It is written to ``backup.tmp/`` inside the destination, checked (each database holds as
many entries as the store did in that transaction), synced, and renamed to the
destination's ``data.mdb``: a copy cut off (a full disk, a kill) is never left where it
would be taken for a backup. The destination is a store directory like any other: a
runtime, ``herder check`` or ``herder ls`` opens it as it is.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import shutil
import threading
from collections.abc import Callable

import lmdb

from herder.store._compact import _watch, census
from herder.store._env import Store
from herder.store._errors import StoreError
from herder.store._open import prepare_dir, translate

TMP = "backup.tmp"


def backup(
    path: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    progress: Callable[[int], None] | None = None,
) -> int:
    """Copy the store at ``path`` into the directory ``dest`` (created if missing; one
    that holds a store already is refused) as of one commit, also while a runtime writes
    it; returns the copy's size in bytes. ``progress`` is given the bytes written so far,
    from another thread while it writes (as :func:`~._compact.compact`'s)."""
    target = pathlib.Path(dest)
    data = target / "data.mdb"
    with Store(path, readonly=True) as store:  # (refused first: nothing created for it)
        prepare_dir(target)
        if data.exists():
            raise StoreError(
                f"cannot back up into {target}: it holds a store already (a data.mdb); "
                "give a new or empty directory"
            )
        tmp = target / TMP
        shutil.rmtree(tmp, ignore_errors=True)  # (a backup cut off before)
        try:
            tmp.mkdir(mode=0o700)
            held = store._read(lambda txn: _copy(store, txn, tmp, progress))
            if (got := census(tmp)[0]) != held:
                lost = {db: (n, got.get(db)) for db, n in held.items() if n != got.get(db)}
                raise StoreError(
                    f"cannot back up {path}: the copy does not hold what the store does "
                    f"(entries per database, store vs copy: {lost}); nothing was kept. "
                    "The store may be damaged: run `herder check` on it"
                )
            copied = tmp / "data.mdb"
            copied.chmod(0o600)
            with open(copied, "rb") as f:
                os.fsync(f.fileno())
            os.replace(copied, data)
            _sync_dir(target)
            return data.stat().st_size
        except OSError as exc:  # a full disk, a read-only destination: no traceback
            raise StoreError(f"cannot back up {path} into {target}: {exc}") from exc
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def _copy(
    store: Store,
    txn: lmdb.Transaction,
    tmp: pathlib.Path,
    progress: Callable[[int], None] | None,
) -> dict[str, int]:
    """Write the copy as of ``txn`` into ``tmp``; the entries per database it holds."""
    held = {name: txn.stat(db)["entries"] for name, db in store._handles.items()}
    done = threading.Event()
    watcher = threading.Thread(target=_watch, args=(tmp / "data.mdb", done, progress))
    if progress is not None:
        watcher.start()
    try:
        assert store._env is not None  # (open: inside its read)
        store._env.copy(str(tmp), compact=True, txn=txn)
    except lmdb.Error as exc:
        raise translate(exc, f"cannot back up {store.path}") from exc
    finally:
        done.set()
        if progress is not None:
            watcher.join()
    return held


def _sync_dir(path: pathlib.Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        with contextlib.suppress(OSError):  # (a file system that cannot sync a directory)
            os.fsync(fd)
    finally:
        os.close(fd)
