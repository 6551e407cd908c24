"""Opening a store's LMDB environment: the directory, the named databases, the schema.

Functions only; the :class:`~herder.store.Store` (``_env.py``) keeps what they open.
:func:`open_lmdb` holds the settings every opener of a store directory shares.
``lmdb.Error`` is translated into the :class:`HerderError` tree here (:func:`translate`).
"""

from __future__ import annotations

import contextlib
import errno
import os
import pathlib
import stat
from typing import Any, cast

import lmdb

from herder.store import _recent as recent
from herder.store._codec import decode, encode, legacy_int
from herder.store._errors import SchemaTooNew, StoreCorrupt, StoreError, StoreIOError
from herder.store._fence import begin_fenced, refuse_stopped
from herder.store._locktable import (
    LMDB_LOCK,
    LOCK_FILE,
    check_lock_table,
    is_held,
    reserve_lock_table,
)
from herder.store._metapage import check_not_truncated, never_committed
from herder.store._recent import RECENT_AT_DB, RECENT_DB
from herder.store._records import SCHEMA_VERSION

DATABASES = (
    "workflows",
    "steps",
    "timers",
    "meta",
    "definitions",
    "history",
    "commands",
    "resources",
    "schedules",
    RECENT_DB,
    RECENT_AT_DB,
)
"""The named databases of a store."""

ADDED_LATER = frozenset({"resources", "schedules", RECENT_DB, RECENT_AT_DB})
"""Databases a store written by an older version may lack; read-only opens see them empty."""

MAX_DBS = 16
"""Named databases an environment may hold: room for the ones later versions add."""
MAX_READERS = 126

Handles = dict[str, Any]


def open_lmdb(path: str | os.PathLike[str], **options: Any) -> lmdb.Environment:
    """``lmdb.open`` of a store directory with the settings every opener shares (room
    for the named databases, LMDB's lock table, no readahead, the reader slots) plus
    ``options``. A ``data.mdb`` cut short is refused first: mapped, it would kill the
    process with SIGBUS at the first read past its end; and a missing ``lock.mdb`` is
    created with its blocks allocated (:func:`reserve_lock_table`), for the same reason."""
    check_not_truncated(pathlib.Path(path))
    settings: dict[str, Any] = {"lock": True, **options}
    if settings["lock"]:
        reserve_lock_table(pathlib.Path(path))
    return lmdb.open(
        str(path),
        max_dbs=MAX_DBS,
        subdir=True,
        readahead=False,
        max_readers=MAX_READERS,
        **settings,
    )


def has_store(path: str | os.PathLike[str]) -> bool:
    """True if the directory ``path`` holds a ``data.mdb`` (a store was created there).

    :class:`StoreError` if it cannot be looked into (``Path.is_file()`` raises then): a
    store directory is mode 700, so another user's (an operator's CLI beside a daemon's
    user) is refused with EACCES."""
    try:
        return stat.S_ISREG(os.stat(pathlib.Path(path) / "data.mdb").st_mode)
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError as exc:
        raise unreachable(path, exc) from exc


def unreachable(path: str | os.PathLike[str], exc: OSError) -> StoreError:
    """The error for a store path the operating system would not let us look at."""
    if exc.errno in (errno.EACCES, errno.EPERM):
        return StoreError(
            f"cannot look into store {path}: {exc.strerror}; a store directory is its "
            "owner's only (mode 700): run this as the user the runtime runs as"
        )
    return StoreError(f"cannot look into store {path}: {exc.strerror}: check the path")


def prepare_dir(path: pathlib.Path) -> None:
    """Create the store directory (mode 700), or refuse one others may write."""
    mode = _mode(path)
    if mode is None:
        try:
            path.mkdir(mode=0o700, parents=True)
            path.chmod(0o700)
            return
        except FileExistsError as exc:
            # Made meanwhile by another process (a runtime and its standby started
            # together on a new store): checked as found, not "cannot create" it.
            mode = _mode(path)
            if mode is None:  # (a link to nowhere)
                raise StoreError(f"cannot create store directory {path}: {exc}") from exc
        except OSError as exc:
            raise StoreError(f"cannot create store directory {path}: {exc}") from exc
    if not stat.S_ISDIR(mode):
        raise StoreError(f"store path {path} exists and is not a directory")
    if mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise StoreError(
            f"store directory {path} is writable by group or others "
            f"(mode {stat.S_IMODE(mode):o}); run `chmod 700 {path}` and retry"
        )


def _mode(path: pathlib.Path) -> int | None:
    """The mode of ``path``, None if there is nothing there."""
    try:
        return path.stat().st_mode
    except (FileNotFoundError, NotADirectoryError):
        return None  # (a parent that is a file: mkdir says so)
    except OSError as exc:
        raise unreachable(path, exc) from exc


def protect_files(path: pathlib.Path) -> None:
    """Make the store's files readable by their owner only."""
    for name in ("data.mdb", "lock.mdb", LOCK_FILE):
        with contextlib.suppress(FileNotFoundError):
            (path / name).chmod(0o600)


MIN_MAP_SIZE = 1 << 16
"""The smallest map a writer opens with: creating the databases takes a few pages, and a
``map_size`` of 4096 failed at open with MDB_MAP_FULL ("check free disk space"), where
the map is meant to start small and grow on demand."""


def room(path: pathlib.Path, map_size: int) -> int:
    """The map a writer opens the store at ``path`` with: ``map_size``, but at least
    :data:`MIN_MAP_SIZE` and twice its file. LMDB maps a file larger than the size asked
    for at its exact size, and a compacted file has no free page: the first write at open
    (the lease) failed with MDB_MAP_FULL, and a runtime would not start on a store that
    ``herder compact`` left larger than its ``map_size`` (64 MiB by default)."""
    try:
        size = (path / "data.mdb").stat().st_size
    except FileNotFoundError:
        size = 0
    except OSError as exc:
        raise unreachable(path, exc) from exc
    return max(map_size, MIN_MAP_SIZE, 2 * size)


def open_for_writing(
    path: pathlib.Path, map_size: int, lease: float, flocked: bool = True
) -> tuple[lmdb.Environment, Handles]:
    """Open the environment for writing and its databases (created if missing). A lease
    holder stopped inside a commit is fenced once its lease (``lease`` seconds at least)
    lapsed: its writer lock held the open for ever (``_fence.py``). Not ``flocked`` (a
    standby beside the runtime that holds the flock), it must share that runtime's
    writer mutex, as a client does (``check_lock_table``)."""
    try:
        env = open_lmdb(
            path,
            map_size=room(path, map_size),
            readonly=False,
            sync=True,
            metasync=True,
            writemap=False,
            mode=0o600,
        )
    except lmdb.Error as exc:
        raise translate(exc, f"cannot open LMDB environment at {path}") from exc
    try:
        if not flocked:  # (a lock.mdb deleted under the runtime: it would take over unfenced)
            check_lock_table(path)
        env.reader_check()
        # An explicit write transaction: open_db's own would wait for LMDB's writer
        # mutex while holding the GIL, freezing every thread of this process.
        with begin_fenced(env, path, lease) as txn:
            if txn.get(b"meta") is None and txn.cursor().first():
                raise not_a_store(path, "meta")  # (it has data, but not this)
            # A store a newer herder wrote is refused before anything is created in it
            # (its databases may differ from ours): the refusal aborts this transaction.
            meta = env.open_db(b"meta", txn=txn, create=True)
            read_schema(txn, meta, path)
            handles = {n: env.open_db(n.encode(), txn=txn, create=True) for n in DATABASES}
            if txn.get(b"schema", db=meta) is None:
                txn.put(b"schema", encode(SCHEMA_VERSION), db=meta)
    except BaseException as exc:
        env.close()
        if isinstance(exc, lmdb.Error):
            raise translate(exc, f"cannot initialise store {path}") from exc
        raise
    return env, handles


def open_existing(path: pathlib.Path, *, write: bool) -> tuple[lmdb.Environment, Handles]:
    """Open a store some writer created, to read it or (``write``: a client that may
    append while its runtime runs) to write to it directly."""
    if not has_store(path):
        raise StoreError(
            f"no store at {path} (no data.mdb there): check the path; a store is created "
            "when a Runtime (or Store(path) without readonly=True) first opens it"
        )
    if never_committed(path):
        raise never_set_up(path)
    refuse_foreign(path)
    options: dict[str, Any] = {"readonly": True}
    if write:  # the size the store has; the settings every writer uses
        options = {"map_size": 0, "create": False, "sync": True, "metasync": True}
    try:
        env = open_lmdb(path, writemap=False, **options)
    except lmdb.Error as exc:
        raise translate(exc, f"cannot open LMDB environment at {path}") from exc
    try:
        if write and is_held(path):
            check_lock_table(path)  # one writer mutex with the running runtime
        env.reader_check()
        if write:  # (opening the databases takes the writer lock: not a stopped one's)
            refuse_stopped(env, path)
        handles = {}
        # When writable, in a write transaction of ours: open_db's own would wait for
        # LMDB's writer lock while holding the GIL, freezing every thread of this process.
        with env.begin(write=True) if write else contextlib.nullcontext() as txn:
            for name in DATABASES:
                try:
                    handles[name] = env.open_db(name.encode(), txn=txn, create=False)
                except lmdb.NotFoundError:
                    # Written by an older version that never created it: read as empty.
                    if name not in ADDED_LATER:
                        raise
    except lmdb.NotFoundError as exc:
        empty = not _holds_data(env)
        env.close()
        if empty:  # (created, and nothing committed: its first open failed, or is under way)
            raise never_set_up(path) from exc
        raise not_a_store(path, name) from exc
    except lmdb.Error as exc:
        env.close()
        raise translate(exc, f"cannot read store {path}") from exc
    except BaseException:
        env.close()
        raise
    return env, handles


def refuse_foreign(path: pathlib.Path) -> None:
    """Refuse a directory whose ``data.mdb`` is no herder store's, and write nothing to it.

    Opening an environment creates its ``lock.mdb``: a read-only command pointed at
    another program's LMDB directory (or a stray ``data.mdb``) left one there before it
    said "not a herder store". So where there is no ``lock.mdb`` yet the environment is
    first looked at without LMDB's locks, which creates and writes nothing (and without
    a ``lock.mdb`` no process has it open to write under the look). Where there is one,
    LMDB opened the directory before and the open that follows creates nothing; a look
    that fails as a runtime creates the store meanwhile leaves the verdict to that open."""
    if (path / LMDB_LOCK).exists():
        return
    try:
        env = open_lmdb(path, readonly=True, lock=False)
    except lmdb.Error as exc:
        if (path / LMDB_LOCK).exists():
            return
        what = f"cannot open LMDB environment at {path} (nothing was written to it)"
        raise translate(exc, what) from exc
    try:
        with env.begin() as txn:
            empty = not txn.cursor().first()
            missing = [n for n in DATABASES if n not in ADDED_LATER and txn.get(n.encode()) is None]
    except lmdb.Error:
        return  # (the open that follows says what is wrong)
    finally:
        env.close()
    if empty:
        raise never_set_up(path)
    if missing and not (path / LMDB_LOCK).exists():
        raise not_a_store(path, missing[0])


def not_a_store(path: pathlib.Path, missing: str) -> StoreError:
    """The error for an LMDB environment that lacks a database every herder store has."""
    return StoreError(
        f"{path} is not a herder store, or a damaged one (its {missing!r} database is "
        "missing, which every herder store has): check the path (--store), and pass the "
        "directory a herder runtime created; if it is the store, restore a backup (a "
        "data.mdb copied with cp while a runtime wrote it holds pages of different "
        "commits and reads like this: make backups with `herder backup`); nothing was "
        "written to it"
    )


def never_set_up(path: pathlib.Path) -> StoreError:
    """The error for a store created but never set up (nothing committed to it)."""
    return StoreError(
        f"store {path} was never set up: the runtime that created it failed before its "
        "first commit (a full disk?) or is opening it now; start a runtime on it (that "
        "sets it up), then retry"
    )


def _holds_data(env: lmdb.Environment) -> bool:
    """True if anything was ever committed to ``env`` (its main database has a key)."""
    try:
        with env.begin() as txn:
            return bool(txn.cursor().first())
    except lmdb.Error:
        return True  # (then it is not known to be empty)


def read_schema(txn: lmdb.Transaction, meta: Any, path: pathlib.Path) -> tuple[int, int]:
    """The store's schema version and incarnation; :class:`SchemaTooNew` if this herder
    cannot read it."""
    schema = meta_int(txn, meta, b"schema", path)
    if schema is not None and schema > SCHEMA_VERSION:
        raise SchemaTooNew(
            f"store {path} has schema version {schema}; this herder understands up to "
            f"{SCHEMA_VERSION}: upgrade herder to open it"
        )
    return schema or SCHEMA_VERSION, meta_int(txn, meta, b"incarnation", path) or 0


def upgrade_schema(
    txn: lmdb.Transaction, handles: Handles, schema: int, incarnation: int, before: int | None
) -> int:
    """Mark a store this herder is about to write as :data:`SCHEMA_VERSION` (its records
    move to the new layout as they are next written, and both layouts read), so that an
    older herder refuses it instead of misreading it; index a store older than the
    ``recent`` index, and carry its counts by state over to the lease's ``incarnation``
    from the one it replaced (``before``), or count them afresh: an older herder wrote
    without keeping them. Returns the schema now stored.

    Called in the transaction that takes the lease: from then on only this herder writes
    the store. A standby that built the index when it opened, beside an older runtime
    that went on writing, left out every workflow that runtime started meanwhile, and
    after the takeover recovery (which reads the unfinished ones off the index) never
    resumed them."""
    if schema < SCHEMA_VERSION:
        txn.put(b"schema", encode(SCHEMA_VERSION), db=handles["meta"])
    recent.build(txn, handles)  # (once)
    recent.take_counts(txn, handles, incarnation, before)
    return SCHEMA_VERSION


def meta_int(txn: lmdb.Transaction, meta: Any, key: bytes, path: pathlib.Path) -> int | None:
    """The int stored under ``key`` in ``meta``, or None."""
    raw = cast("bytes | None", txn.get(key, db=meta))
    if raw is None:
        return None
    try:
        value = decode(raw, db="meta", key=key)
    except StoreCorrupt:
        old = legacy_int(raw) if key == b"schema" else None
        if old is None or old >= SCHEMA_VERSION:
            raise
        raise StoreError(
            f"store {path} has schema version {old}, written before records carried "
            f"checksums; this herder reads schema {SCHEMA_VERSION}: start a new store "
            "(there is no migration yet)"
        ) from None
    if type(value) is not int:
        raise StoreCorrupt("meta", key, f"expected an int, got {type(value).__name__}")
    return value


_DISK = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO})
"""How a disk that refuses writes reaches LMDB (py-lmdb makes only ENOSPC a DiskError;
a write cut short by a full disk is EIO)."""


def translate(exc: lmdb.Error, what: str) -> StoreError:
    """Map an ``lmdb.Error`` onto the HerderError tree, with a hint."""
    if isinstance(exc, lmdb.ReadersFullError):
        return StoreError(
            f"{what}: too many readers ({exc}); close idle read-only stores or other processes"
        )
    if isinstance(exc, lmdb.DiskError | lmdb.MapFullError) or getattr(exc, "code", 0) in _DISK:
        return StoreIOError(f"{what}: {exc}; check free disk space and permissions")
    if isinstance(exc, lmdb.CorruptedError | lmdb.PageNotFoundError | lmdb.InvalidError):
        return StoreError(f"{what}: {exc}; the files look damaged or foreign, restore a backup")
    if isinstance(exc, lmdb.VersionMismatchError | lmdb.IncompatibleError):
        return StoreError(f"{what}: {exc}; the store was written by an incompatible LMDB")
    return StoreError(f"{what}: {type(exc).__name__}: {exc}")
