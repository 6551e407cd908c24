"""The LMDB environment: opening (locks, lease, permissions, schema), the reader gate,
map growth, paging, closing. The typed reads are in ``_reads`` (a base class of Store).

A :class:`Store` in writer mode owns the directory: it holds the leader lease (see
``_lease.py``; taking it bumps the incarnation) and an exclusive ``flock`` on
``herder.lock``, and every write batch re-checks the lease. A standby store opens the
environment for writing but writes nothing until :meth:`Store.try_take_lease` succeeds.
A process-level registry keeps other ``Store`` objects of this process out (LMDB allows
one environment per path per process). Reads run in short read transactions on any
thread; long scans are paged so no read transaction lives long. Writes go through
:attr:`Store.writer`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import functools
import os
import pathlib
import stat
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from types import TracebackType
from typing import Any, TypeVar, cast

import lmdb

from herder.store import _recent as recent
from herder.store._codec import decode, encode, legacy_int
from herder.store._errors import (
    InvalidInput,
    SchemaTooNew,
    StoreClosed,
    StoreCorrupt,
    StoreError,
    StoreIOError,
    StoreLocked,
)
from herder.store._lease import (
    DEFAULT_LEASE,
    HANDOFF_KEY,
    LEASE_KEY,
    HandoffRequest,
    Lease,
    guard,
    read_handoff,
    read_lease,
    take,
)
from herder.store._locktable import LOCK_FILE, note_lock_table
from herder.store._reads import Reads
from herder.store._recent import RECENT_AT_DB, RECENT_DB
from herder.store._records import SCHEMA_VERSION
from herder.store._writer import Expect, Put, Transition, Writer

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

PAGE = 1000
"""Keys read per read transaction by the paged scans."""

MAX_DBS = 16
"""Named databases an environment may hold: room for the ones later versions add."""
MAX_READERS = 126


def open_lmdb(path: str | os.PathLike[str], **options: Any) -> lmdb.Environment:
    """``lmdb.open`` of a store directory with the settings every opener shares (room
    for the named databases, LMDB's lock table, no readahead, the reader slots) plus
    ``options``."""
    return lmdb.open(
        str(path),
        max_dbs=MAX_DBS,
        subdir=True,
        lock=True,
        readahead=False,
        max_readers=MAX_READERS,
        **options,
    )


_T = TypeVar("_T")

_registry_lock = threading.Lock()
_registry: dict[str, Store] = {}
"""Open stores of this process by real path: LMDB allows one environment per path."""


class Store(Reads):
    """One herder store directory: an LMDB environment with its named databases.

    ``Store(path)`` opens (creating if needed) for writing, takes the leader lease and
    starts the writer thread; :class:`StoreLocked` if another runtime holds the lease.
    ``Store(path, readonly=True)`` opens an existing store for reading, e.g. from the CLI
    while a daemon runs; it sees consistent snapshots. ``Store(path, standby=True)`` opens
    for reading and waits: :meth:`try_take_lease` takes the lease once its holder is gone
    or let it lapse, and only then is there a writer. ``lease`` is the lease duration in
    seconds; the holder renews it with :meth:`renew_lease` well before it expires. Reads are
    thread-safe.
    """

    path: pathlib.Path
    readonly: bool
    incarnation: int
    schema_version: int

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        readonly: bool = False,
        standby: bool = False,
        lease: float = DEFAULT_LEASE,
        map_size: int = 64 * 2**20,
        max_value_bytes: int | None = None,
    ) -> None:
        if not lease > 0:
            raise InvalidInput(f"lease must be > 0 seconds, got {lease!r}")
        if readonly and standby:
            raise InvalidInput("a store is opened readonly or standby, not both")
        self.path = pathlib.Path(path)
        self.readonly = readonly
        self.standby = standby
        self.lease_duration = lease
        self._lease: Lease | None = None
        self.releasing = False
        self._clock_note: float | None = None
        self._max_value = max_value_bytes
        self._env: lmdb.Environment | None = None
        self._writer: Writer | None = None
        self._lock_fd: int | None = None
        self._have_flock = False
        self._closed = False
        # Readers enter this gate; a map resize waits until no read transaction is open.
        self._gate = threading.Condition(threading.Lock())
        self._readers = 0
        self._resizing = False
        self._real = os.path.realpath(self.path)
        with _registry_lock:
            if self._real in _registry:
                raise StoreLocked(
                    f"store {self.path} is already open in this process; share that Store "
                    "object (its reads are thread-safe) instead of opening it twice"
                )
            _registry[self._real] = self
        try:
            if readonly:
                self._open_readonly()
            else:
                self._open_writer(map_size)
        except BaseException:
            self._release()
            raise

    # ------------------------------------------------------------------ opening

    def _open_writer(self, map_size: int) -> None:
        path = self.path
        if path.exists():
            mode = path.stat().st_mode
            if not stat.S_ISDIR(mode):
                raise StoreError(f"store path {path} exists and is not a directory")
            if mode & (stat.S_IWGRP | stat.S_IWOTH):
                raise StoreError(
                    f"store directory {path} is writable by group or others "
                    f"(mode {stat.S_IMODE(mode):o}); run `chmod 700 {path}` and retry"
                )
        else:
            try:
                path.mkdir(mode=0o700, parents=True)
                path.chmod(0o700)
            except OSError as exc:
                raise StoreError(f"cannot create store directory {path}: {exc}") from exc
        self._lock()
        env = self._env = self._open_env(map_size)
        if self._have_flock:
            self._note_lock_table()
        try:
            with env.begin(write=not self.standby) as txn:
                schema = self._meta_int(txn, b"schema")
                if schema is not None and schema > SCHEMA_VERSION:
                    raise _too_new(path, schema)
                schema = schema or SCHEMA_VERSION  # _open_env wrote it if it was missing
                incarnation = self._meta_int(txn, b"incarnation") or 0
                if not self.standby:
                    incarnation = self._take_at_open(txn)
        except lmdb.Error as exc:
            raise _translate(exc, f"cannot initialise store {path}") from exc
        self.schema_version = schema
        self.incarnation = incarnation
        for name in ("data.mdb", "lock.mdb", LOCK_FILE):
            with contextlib.suppress(FileNotFoundError):
                (path / name).chmod(0o600)
        if self._lease is not None:
            self._start_writer(self._lease)

    def _lock(self) -> None:
        """Open ``herder.lock`` and take its flock; a standby goes on without it."""
        path = self.path
        try:
            self._lock_fd = os.open(path / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            if not self._try_flock() and not self.standby:
                raise BlockingIOError(errno.EWOULDBLOCK, "flock held")
        except BlockingIOError as exc:
            raise StoreLocked(
                f"store {path} is held by another process (a running herder runtime); "
                f"only one process may write it. To look inside while it runs, open it "
                f"read-only: Store(path, readonly=True) or `herder ls --store {path}`; "
                "to write, stop the other process first"
            ) from exc
        except OSError as exc:
            raise StoreError(f"cannot lock store {path}/{LOCK_FILE}: {exc}") from exc

    def _note_lock_table(self) -> None:
        assert self._lock_fd is not None
        try:
            note_lock_table(self._lock_fd, self.path)
        except OSError as exc:
            raise StoreError(f"cannot write the lock of store {self.path}: {exc}") from exc

    def _open_env(self, map_size: int) -> lmdb.Environment:
        """Open the environment for writing and its databases (created if missing)."""
        try:
            env = open_lmdb(
                self.path,
                map_size=map_size,
                readonly=False,
                sync=True,
                metasync=True,
                writemap=False,
                mode=0o600,
            )
        except lmdb.Error as exc:
            raise _translate(exc, f"cannot open LMDB environment at {self.path}") from exc
        try:
            env.reader_check()
            # An explicit write transaction: open_db's own would wait for LMDB's writer
            # mutex while holding the GIL, freezing every thread of this process.
            with env.begin(write=True) as txn:
                self._handles = {
                    n: env.open_db(n.encode(), txn=txn, create=True) for n in DATABASES
                }
                if txn.get(b"schema", db=self._handles["meta"]) is None:
                    txn.put(b"schema", encode(SCHEMA_VERSION), db=self._handles["meta"])
                recent.build(txn, self._handles)  # once, for a store older than the index
        except lmdb.Error as exc:
            env.close()
            raise _translate(exc, f"cannot initialise store {self.path}") from exc
        return env

    def _take_at_open(self, txn: lmdb.Transaction) -> int:
        lease, reason = take(
            txn, self._handles["meta"], duration=self.lease_duration, have_flock=self._have_flock
        )
        if reason is None:
            raise StoreLocked(
                f"store {self.path} is leased to another runtime ({lease.describe()}); only "
                "the lease holder may write it. Open it read-only to look inside, with "
                "standby=True to take over when that runtime goes, or ask it to hand over "
                f"with `herder handoff --store {self.path}`"
            )
        self._lease = lease
        return lease.incarnation

    def _start_writer(self, lease: Lease) -> None:
        assert self._env is not None
        self._writer = Writer(
            self._env,
            self._handles,
            grow=self._grow,
            max_value_bytes=self._max_value,
            guard=guard(self._handles["meta"], lease.owner),
            derived={"workflows": functools.partial(recent.maintain, handles=self._handles)},
        )

    def _try_flock(self) -> bool:
        """Take the directory's flock if it is free (never blocks); True if we hold it."""
        if self._have_flock:
            return True
        assert self._lock_fd is not None
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        self._have_flock = True
        if self._env is not None:  # a standby taking over: the store is ours to write now
            self._note_lock_table()
        return True

    def _open_readonly(self) -> None:
        path = self.path
        if not (path / "data.mdb").is_file():
            raise StoreError(
                f"no store at {path}: it is created by the first writer open "
                "(Store(path) without readonly=True)"
            )
        try:
            env = open_lmdb(path, readonly=True)
        except lmdb.Error as exc:
            raise _translate(exc, f"cannot open LMDB environment at {path} read-only") from exc
        self._env = env
        try:
            env.reader_check()
            self._handles = {}
            for name in DATABASES:
                try:
                    self._handles[name] = env.open_db(name.encode(), create=False)
                except lmdb.NotFoundError:
                    # Written by an older version that never created it: read as empty.
                    if name not in ADDED_LATER:
                        raise
            with env.begin() as txn:
                schema = self._meta_int(txn, b"schema")
                incarnation = self._meta_int(txn, b"incarnation") or 0
        except lmdb.NotFoundError as exc:
            raise StoreError(
                f"{path} is not a herder store (a named database is missing): {exc}"
            ) from exc
        except lmdb.Error as exc:
            raise _translate(exc, f"cannot read store {path}") from exc
        if schema is not None and schema > SCHEMA_VERSION:
            raise _too_new(path, schema)
        self.schema_version = schema or SCHEMA_VERSION
        self.incarnation = incarnation

    def _meta_int(self, txn: lmdb.Transaction, key: bytes) -> int | None:
        raw = cast("bytes | None", txn.get(key, db=self._handles["meta"]))
        if raw is None:
            return None
        try:
            value = decode(raw, db="meta", key=key)
        except StoreCorrupt:
            old = legacy_int(raw) if key == b"schema" else None
            if old is None or old >= SCHEMA_VERSION:
                raise
            raise StoreError(
                f"store {self.path} has schema version {old}, written before records carried "
                f"checksums; this herder reads schema {SCHEMA_VERSION}: start a new store "
                "(there is no migration yet)"
            ) from None
        if type(value) is not int:
            raise StoreCorrupt("meta", key, f"expected an int, got {type(value).__name__}")
        return value

    # ------------------------------------------------------------------ read plumbing

    def _read(self, fn: Callable[[lmdb.Transaction], _T]) -> _T:
        """Run ``fn`` in one short read transaction, outside any map resize."""
        while True:
            with self._gate:
                while self._resizing:
                    self._gate.wait()
                env = self._env
                if env is None:
                    raise StoreClosed(f"store {self.path} is closed; open it again")
                self._readers += 1
            resized = False
            try:
                with env.begin() as txn:
                    return fn(txn)
            except lmdb.MapResizedError:
                resized = True  # another process grew the map: adopt its size and retry
            except lmdb.Error as exc:
                raise _translate(exc, f"read from store {self.path} failed") from exc
            finally:
                with self._gate:
                    self._readers -= 1
                    if self._readers == 0:
                        self._gate.notify_all()
            if resized:
                self._grow(0)

    def _grow(self, new_size: int) -> None:
        """Set the map size (0: adopt the size on disk) with no read transaction open.

        Called by the writer thread on ``MapFullError`` (no write transaction is open then)
        and by readers on ``MapResizedError``.
        """
        with self._gate:
            while self._resizing:
                self._gate.wait()
            self._resizing = True
            try:
                self._gate.wait_for(lambda: self._readers == 0)
                env = self._env
                if env is not None:
                    env.set_mapsize(new_size)
            finally:
                self._resizing = False
                self._gate.notify_all()

    def _handle(self, db: str) -> Any:
        try:
            return self._handles[db]
        except KeyError:
            if db in ADDED_LATER:
                return None  # an older store opened read-only: the database reads empty
            raise InvalidInput(
                f"unknown database {db!r}; use one of {', '.join(DATABASES)}"
            ) from None

    def _paged(self, db: str, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        """Yield raw (key, value) pairs with ``prefix``, one short read txn per page."""
        handle = self._handle(db)
        if handle is None:
            return
        start = prefix
        skip_first = False
        while True:

            def page(
                txn: lmdb.Transaction, start: bytes = start, skip: bool = skip_first
            ) -> list[tuple[bytes, bytes]]:
                out: list[tuple[bytes, bytes]] = []
                cur = txn.cursor(db=handle)
                if not cur.set_range(start):
                    return out
                for key, value in cast(Iterator[tuple[bytes, bytes]], cur):
                    if skip and key == start:
                        continue
                    if not key.startswith(prefix) or len(out) >= PAGE:
                        break
                    out.append((key, value))
                return out

            items = self._read(page)
            yield from items
            if len(items) < PAGE:
                return
            start, skip_first = items[-1][0], True

    # ------------------------------------------------------------------ public reads

    @property
    def writer(self) -> Writer:
        """The group-commit writer; :class:`StoreError` in read-only mode."""
        if self._writer is None:
            if self.readonly:
                raise StoreError(f"store {self.path} is open read-only; it has no writer")
            if self.standby and self._lease is None and not self._closed:
                raise StoreError(
                    f"store {self.path} is open as a standby; it has no writer until it "
                    "takes the lease (try_take_lease)"
                )
            raise StoreClosed(f"store {self.path} is closed; open it again")
        return self._writer

    def reclaim_readers(self) -> int:
        """Free reader slots left by dead processes; return how many were freed.

        A reader killed inside a read transaction keeps its slot, which pins old pages
        (the file then grows instead of reusing them). Every open reclaims such slots;
        a long-running runtime also calls this periodically from its Supervisor.
        """
        freed: int = self._read(lambda _txn: self._env.reader_check() if self._env else 0)
        return freed

    # ------------------------------------------------------------------ the lease

    @property
    def lease(self) -> Lease | None:
        """The lease this store holds (as last written by it), or None."""
        return self._lease

    def read_lease(self) -> Lease | None:
        """The lease record as stored now (whoever holds it), or None."""
        return self._read(lambda txn: read_lease(txn, self._handles["meta"]))

    def try_take_lease(self, lapsed: Callable[[Lease], bool] | None = None) -> str | None:
        """Standby: take the lease if its holder released it, let it lapse or is gone.

        Returns why it was taken ("free", "released", "expired", "holder gone"), or None
        while another runtime holds it. Taking bumps the incarnation (in the same write
        transaction as the lease, so of racing standbys exactly one wins) and starts the
        writer. Call it from one thread at a time. ``lapsed`` judges expiry instead of
        the wall clock (see :func:`why_takeable`).
        """
        if self._lease is not None:
            return "held"
        if not self.standby or self._env is None:
            raise StoreError(f"store {self.path} is not an open standby store")
        self._try_flock()
        try:
            assert self._env is not None
            with self._env.begin(write=True) as txn:
                lease, reason = take(
                    txn,
                    self._handles["meta"],
                    duration=self.lease_duration,
                    have_flock=self._have_flock,
                    lapsed=lapsed,
                )
        except lmdb.Error as exc:
            raise _translate(exc, f"cannot take the lease of store {self.path}") from exc
        if reason is None:
            return None
        self._lease, self.incarnation = lease, lease.incarnation
        self._start_writer(lease)
        return reason

    def note_clock(self, now: float) -> None:
        """The engine's time now (see :class:`Lease`), written with the lease at its next
        renewal or release so that the next holder's clock starts no earlier."""
        self._clock_note = now

    def renew_lease(self) -> Future[None]:
        """Renew our lease for another ``lease_duration`` seconds through :attr:`writer`.

        The future fails with :class:`LeaseLost` if the lease is no longer ours (the
        writer's check), or with :class:`ConditionFailed` if it changed since we last
        wrote it (we released it meanwhile): a renewal never revives a released lease.
        A holder that took the lease without the flock (its old holder was paused, not
        dead) picks the flock up here once that holder is gone.
        """
        lease = self._lease
        if lease is None or self.releasing:
            raise StoreError(f"store {self.path} holds no lease to renew")
        flock = lease.flock or (self._lock_fd is not None and self._try_flock())
        expires = time.time() + self.lease_duration
        clock = self._clock_note if self._clock_note is not None else lease.clock
        renewed = dataclasses.replace(lease, expires=expires, flock=flock, clock=clock)
        done = self.writer.submit(_renewal(lease, renewed))

        def adopt(result: Future[None]) -> None:
            if result.exception() is None and self._lease is lease:
                self._lease = renewed

        done.add_done_callback(adopt)
        return done

    def release_lease(self, timeout: float = 10.0) -> bool:
        """Give the lease up now (a standby takes over at once); True if it was ours.

        After this every write of this store fails with :class:`LeaseLost`, and
        :attr:`releasing` is True from the start, so callers can tell that from a lease
        taken by another runtime.
        """
        lease = self._lease
        if lease is None or self._writer is None or self._writer.closed:
            return False
        self.releasing = True
        clock = self._clock_note if self._clock_note is not None else lease.clock
        released = dataclasses.replace(lease, expires=0.0, clock=clock)
        done = self._writer.submit(
            Transition(ops=(Put("meta", LEASE_KEY, encode(released.to_dict())),))
        )
        try:
            done.result(timeout=timeout)
        except StoreError:
            return False
        self._lease = released
        return True

    def handoff_request(self) -> HandoffRequest | None:
        """A pending handoff request made since our lease was taken, or None."""
        request = self._read(lambda txn: read_handoff(txn, self._handles["meta"]))
        if request is None or self._lease is None or request.requested < self._lease.taken:
            return None
        return request

    def request_handoff(self, deadline: float, by: str = "") -> HandoffRequest:
        """Ask the lease holder (another process) to hand over: it lets running attempts
        finish for up to ``deadline`` seconds, releases the lease and exits.

        Written directly (this store has no writer, or a writer that may not write this
        key on another holder's behalf); the holder reads it at its next renewal.
        """
        if self.readonly or self._env is None:
            raise StoreError(f"store {self.path} must be open with standby=True to ask a handoff")
        request = HandoffRequest(time.time(), float(deadline), by or f"pid {os.getpid()}")
        try:
            with self._env.begin(write=True) as txn:
                txn.put(HANDOFF_KEY, encode(request.to_dict()), db=self._handles["meta"])
        except lmdb.Error as exc:
            raise _translate(exc, f"cannot write a handoff request to {self.path}") from exc
        return request

    # ------------------------------------------------------------------ closing

    def close(self) -> None:
        """Drain and close the writer, close the environment, release the lock.

        Idempotent. Raises :class:`TimeoutError` (store left open) if the writer cannot
        drain in time; call again to retry.
        """
        if self._closed:
            return
        if self._writer is not None:
            if not self._writer.closed:
                self.release_lease()
            self._writer.close()
        with self._gate:
            self._gate.wait_for(lambda: self._readers == 0 and not self._resizing)
            env, self._env = self._env, None
        self._writer = None
        if env is not None:
            env.close()
        self._release()

    def _release(self) -> None:
        self._closed = True
        if self._env is not None:
            self._env.close()
            self._env = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor drops the flock
            self._lock_fd = None
            self._have_flock = False
        with _registry_lock:
            if _registry.get(self._real) is self:
                del _registry[self._real]

    def __enter__(self) -> Store:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        mode = "readonly" if self.readonly else "writer"
        state = "closed" if self._closed else f"incarnation={self.incarnation}"
        return f"<Store {str(self.path)!r} {mode} {state}>"


def _renewal(lease: Lease, renewed: Lease) -> Transition:
    """Write ``renewed`` only if the stored lease is still exactly ``lease``."""
    return Transition(
        ops=(Put("meta", LEASE_KEY, encode(renewed.to_dict())),),
        expect=(Expect("meta", LEASE_KEY, field="expires", value=lease.expires),),
    )


def is_held(path: str | os.PathLike[str]) -> bool:
    """True if a process (this one included) holds the writer lock of the store at ``path``.

    A probe for tools that must not open the store for writing while a runtime runs on
    it; the answer can change right after it is given.
    """
    try:
        fd = os.open(pathlib.Path(path) / LOCK_FILE, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise StoreError(f"cannot read the lock of store {path}: {exc}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing releases a lock this probe took
    return False


def _too_new(path: pathlib.Path, schema: int) -> SchemaTooNew:
    return SchemaTooNew(
        f"store {path} has schema version {schema}; this herder understands up to "
        f"{SCHEMA_VERSION}: upgrade herder to open it"
    )


def _translate(exc: lmdb.Error, what: str) -> StoreError:
    """Map an ``lmdb.Error`` onto the HerderError tree, with a hint."""
    if isinstance(exc, lmdb.ReadersFullError):
        return StoreError(
            f"{what}: too many readers ({exc}); close idle read-only stores or other processes"
        )
    if isinstance(exc, lmdb.DiskError | lmdb.MapFullError):
        return StoreIOError(f"{what}: {exc}; check free disk space and permissions")
    if isinstance(exc, lmdb.CorruptedError | lmdb.PageNotFoundError | lmdb.InvalidError):
        return StoreError(f"{what}: {exc}; the files look damaged or foreign, restore a backup")
    if isinstance(exc, lmdb.VersionMismatchError | lmdb.IncompatibleError):
        return StoreError(f"{what}: {exc}; the store was written by an incompatible LMDB")
    return StoreError(f"{what}: {type(exc).__name__}: {exc}")
