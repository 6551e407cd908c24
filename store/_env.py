"""The LMDB environment of a store: opening (permissions, flock, process registry, schema,
lease at open), its writer, closing. The reader gate, map growth, paging and direct
writes are in ``_access``, the typed reads in ``_reads`` and the lease lifecycle in
``_leaseholder`` (base classes of Store); the flock and the lock table in ``_locktable``.

A :class:`Store` in writer mode owns the directory: it holds the leader lease (taking it
bumps the incarnation) and an exclusive ``flock`` on ``herder.lock``, and every write
batch re-checks the lease. A standby store opens the environment for writing but writes
nothing until :meth:`Store.try_take_lease` succeeds. A client store (the CLI sending an
operator command to a running runtime) opens an existing environment writable, takes
neither flock nor lease and writes only through :meth:`Store._write_direct`, after
checking it shares the runtime's lock table. A process-level registry keeps other
``Store`` objects of this process out (LMDB allows one environment per path per
process); :func:`opened` finds the one this process has. Reads run in short read
transactions on any thread; long scans are paged so no read transaction lives long.
Writes go through :attr:`Store.writer`.
"""

from __future__ import annotations

import os
import pathlib
import threading
import time
from types import TracebackType
from typing import Literal

import lmdb

from herder.store import _recent as recent
from herder.store._access import Pinned
from herder.store._entries import Written
from herder.store._errors import (
    InvalidInput,
    StoreClosed,
    StoreCorrupt,
    StoreError,
    StoreLocked,
    TimedOut,
)
from herder.store._fresh import FreshKeys
from herder.store._keys import workflow_key
from herder.store._lease import DEFAULT_LEASE, Lease, guard, read_lease, take
from herder.store._leaseholder import LeaseHolder
from herder.store._locktable import close_flock_file, note_lock_table, open_lock, try_flock
from herder.store._metapage import never_committed
from herder.store._open import (
    open_existing,
    open_for_writing,
    prepare_dir,
    protect_files,
    read_schema,
    translate,
    upgrade_schema,
)
from herder.store._reads import Reads
from herder.store._writer import Writer

Mode = Literal["writer", "readonly", "standby", "client"]

_registry_lock = threading.Lock()
_registry: dict[str, Store] = {}
"""Open stores of this process by real path: LMDB allows one environment per path."""


def opened(path: str | os.PathLike[str]) -> Store | None:
    """The Store this process has open on ``path``, or None."""
    with _registry_lock:
        return _registry.get(os.path.realpath(path))


class Store(Reads, LeaseHolder):
    """One herder store directory: an LMDB environment with its named databases.

    ``Store(path)`` opens (creating if needed) for writing, takes the leader lease and
    starts the writer thread; :class:`StoreLocked` if another runtime holds the lease.
    ``Store(path, readonly=True)`` opens an existing store for reading, e.g. from the CLI
    while a daemon runs; it sees consistent snapshots. ``Store(path, standby=True)`` opens
    for reading and waits: :meth:`try_take_lease` takes the lease once its holder is gone
    or let it lapse, and only then is there a writer. ``lease`` is the lease duration in
    seconds; the holder renews it with :meth:`renew_lease` well before it expires.
    ``Store(path, mode="client")`` opens an existing store that another process may be
    running, to append to it directly (the operator commands, ``_commands.py``). ``mode``
    names any of the four; ``readonly=True`` and ``standby=True`` are the same as their
    modes. Reads are thread-safe. ``inline_writes=True`` gives the writer no thread:
    each submission commits on the submitting thread (for the single-threaded simulation
    of ``herder.runtime.testing``).
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
        mode: Mode | None = None,
        lease: float = DEFAULT_LEASE,
        map_size: int = 64 * 2**20,
        max_value_bytes: int | None = None,
        inline_writes: bool = False,
    ) -> None:
        if not lease > 0:
            raise InvalidInput(f"lease must be > 0 seconds, got {lease!r}")
        if mode is None:
            if readonly and standby:
                raise InvalidInput("a store is opened readonly or standby, not both")
            mode = "readonly" if readonly else "standby" if standby else "writer"
        elif mode not in ("writer", "readonly", "standby", "client") or readonly or standby:
            raise InvalidInput(
                f"mode must be 'writer', 'readonly', 'standby' or 'client' (and then "
                f"without readonly=/standby=), got {mode!r}"
            )
        self.path = pathlib.Path(path)
        self.mode = mode
        self.readonly = mode == "readonly"
        self.standby = mode == "standby"
        self.lease_duration = lease
        self._lease: Lease | None = None
        self.releasing = False
        self._clock_note: float | None = None
        self._max_value = max_value_bytes
        self._inline_writes = inline_writes
        self._env: lmdb.Environment | None = None
        self._writer: Writer | None = None
        self._fresh: FreshKeys | None = None  # the writer's knowledge of new ids
        self._lock_fd: int | None = None
        self._have_flock = False
        self._closed = False
        # Held by a standby's take of the lease (its commit and the writer it starts) and
        # by close(): a close never lands between the two, leaving the lease held.
        self._taking = threading.Lock()
        # Readers enter this gate; a map resize waits until no read transaction is open.
        self._gate_lock = threading.Lock()
        self._gate = threading.Condition(self._gate_lock)
        self._readers = 0
        self._resizing = False
        self._pinned = Pinned()
        self._real = os.path.realpath(self.path)
        with _registry_lock:
            holder = _registry.get(self._real)
            if holder is not None and holder.readonly:
                raise StoreLocked(
                    f"store {self.path} is already open read-only in this process (by a "
                    "Store(readonly=True), or a herder ui Console that read it): close that "
                    "(Console.shutdown(), Store.close()) before opening the store again; a "
                    "console runs beside a Runtime in a process of its own"
                )
            if holder is not None:
                raise StoreLocked(
                    f"store {self.path} is already open in this process: stop the Runtime "
                    "that has it open before opening another on it (one Runtime per store "
                    "per process; a standby runs in another process), or share that Store "
                    "object (its reads are thread-safe) instead of opening it twice"
                )
            _registry[self._real] = self
        try:
            if mode in ("readonly", "client"):
                self._open_existing(write=mode == "client")
            else:
                self._open_writer(map_size)
        except BaseException:
            self._release()
            raise

    # ------------------------------------------------------------------ opening

    def _open_writer(self, map_size: int) -> None:
        path = self.path
        prepare_dir(path)
        self._lock_fd, self._have_flock = open_lock(path, wait=self.standby)
        if self._have_flock and never_committed(path):  # (its first open hit a full disk)
            os.truncate(path / "data.mdb", 0)  # nothing in it: LMDB sets it up afresh
        env, self._handles = open_for_writing(path, map_size, self.lease_duration, self._have_flock)
        self._env = env
        if self._have_flock:
            self._note_lock_table()
        try:
            with env.begin(write=not self.standby) as txn:
                self.schema_version, self.incarnation = read_schema(
                    txn, self._handles["meta"], path
                )
                if not self.standby:
                    self.incarnation = self._take_at_open(txn)
                    self._upgrade(txn, self.incarnation, self.taken_from)
        except lmdb.Error as exc:
            raise translate(exc, f"cannot initialise store {path}") from exc
        protect_files(path)
        if self._lease is not None:
            self._start_writer(self._lease)

    def _open_existing(self, *, write: bool) -> None:
        self._env, self._handles = open_existing(self.path, write=write)
        try:
            with self._env.begin() as txn:
                self.schema_version, self.incarnation = read_schema(
                    txn, self._handles["meta"], self.path
                )
        except lmdb.Error as exc:
            raise translate(exc, f"cannot read store {self.path}") from exc

    def _upgrade(self, txn: lmdb.Transaction, incarnation: int, before: int | None) -> None:
        # The schema read again, in the transaction taking the lease: a standby read it at
        # its open, and a newer herder may have held the store and marked it since
        # (SchemaTooNew: nothing is taken; this herder would write what it misreads).
        schema, _ = read_schema(txn, self._handles["meta"], self.path)
        self.schema_version = upgrade_schema(txn, self._handles, schema, incarnation, before)

    def _note_lock_table(self) -> None:
        assert self._lock_fd is not None
        try:
            note_lock_table(self._lock_fd, self.path)
        except OSError as exc:
            raise StoreError(f"cannot write the lock of store {self.path}: {exc}") from exc

    def _take_at_open(self, txn: lmdb.Transaction) -> int:
        self.lease_taken_at = time.monotonic()  # (before it is taken: no later)
        lease, reason, self.taken_from = take(
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
        self._fresh = fresh = FreshKeys(self._handles["workflows"])
        handles = self._handles

        def workflows_written(txn: lmdb.Transaction, written: Written, absent: set[bytes]) -> None:
            recent.maintain(txn, written, absent, handles)
            fresh.note(txn, written)

        self._writer = Writer(
            self._env,
            handles,
            grow=self._grow,
            max_value_bytes=self._max_value,
            guard=guard(handles["meta"], lease.owner),
            derived={"workflows": workflows_written},
            thread=not self._inline_writes,
        )

    def _try_flock(self) -> bool:
        """Take the directory's flock if it is free (never blocks); True if we hold it."""
        if not self._have_flock:
            assert self._lock_fd is not None
            self._have_flock = try_flock(self._lock_fd)
            if self._have_flock and self._env is not None:
                self._note_lock_table()  # a standby taking over: the store is ours to write
        return self._have_flock

    # ------------------------------------------------------------------ public reads

    @property
    def writer(self) -> Writer:
        """The group-commit writer; :class:`StoreError` in read-only mode (InvalidInput
        inside :meth:`together`)."""
        self._pinned.refuse("a write")
        if self._writer is None:
            if self.readonly or self.mode == "client":
                what = "read-only" if self.readonly else "as a client"
                raise StoreError(f"store {self.path} is open {what}; it has no writer")
            if self.standby and self._lease is None and not self._closed:
                raise StoreError(
                    f"store {self.path} is open as a standby; it has no writer until it "
                    "takes the lease (try_take_lease)"
                )
            raise StoreClosed(f"store {self.path} is closed; open it again")
        return self._writer

    def _held_writer(self) -> Writer | None:
        return self._writer

    def workflow_counts(self) -> dict[str, int] | None:
        """How many workflows are in each state, from the ``recent`` index alone (no
        record is decoded); :data:`~._recent.UNREADABLE` counts those listed unreadable.
        The counts the writer keeps (:meth:`kept_workflow_counts`) where they hold, else
        the index counted (~0.2 s per million). None for a store without the index (read
        the records)."""
        if not self.indexed:
            return None
        kept = self.kept_workflow_counts()
        if kept is not None:
            return kept
        return recent.count(self._read, self._handles[recent.RECENT_DB])

    def kept_workflow_counts(self) -> dict[str, int] | None:
        """The counts by state the lease holder's writer keeps beside the ``recent`` index
        (one read, ~0.1 ms however large the store), for any reader (the console, its
        inbox, ``herder stats``): None unless they carry the incarnation of the lease
        stored, that is unless they were counted or carried over when the lease was last
        taken and kept since: an older herder (which keeps none) took it since, or none
        are kept yet (a store no herder that keeps them held), or they are damaged. (Not
        the store's incarnation counter: a holder whose fencing tokens run on raises that
        ahead of them, ``reserve_incarnations``, and keeps the counts as before.)"""
        meta = self._handles["meta"]

        def read(txn: lmdb.Transaction) -> dict[str, int] | None:
            kept = recent.stored_counts(txn, meta)
            if kept is None:
                return None
            try:
                lease = read_lease(txn, meta)
            except StoreCorrupt:  # (herder check names it)
                return None
            return kept[1] if lease is not None and lease.incarnation == kept[0] else None

        return self._read(read)

    def surely_new(self, workflow_id: str) -> bool:
        """True if no workflow has ``workflow_id``, known without a read (``_fresh.py``);
        False if it takes one (:meth:`get_workflow`)."""
        fresh = self._fresh
        return fresh is not None and fresh.surely_new(workflow_key(workflow_id))

    # ------------------------------------------------------------------ closing

    def close(self, timeout: float = 10.0) -> None:
        """Drain and close the writer, close the environment, release the lock.

        Idempotent. Raises :class:`TimedOut` (store left open) if the writer cannot
        drain within ``timeout`` seconds; call again to retry.
        """
        if self._closed:
            return
        self._pinned.refuse("close()")
        if not self._taking.acquire(timeout=timeout):
            raise TimedOut(
                f"a standby's take of the lease did not end within {timeout} s; the store "
                "is still open: call close() again"
            )
        try:
            self._close(timeout)
        finally:
            self._taking.release()

    def _close(self, timeout: float) -> None:
        if self._closed:
            return
        if self._writer is not None:
            deadline = time.monotonic() + timeout  # (for the two waits together)
            if not self._writer.closed:
                self.release_lease(timeout)
            try:
                self._writer.close(max(0.0, deadline - time.monotonic()))
            except TimeoutError as exc:
                raise TimedOut(
                    f"store {self.path}: its writer did not drain within {timeout} s (a "
                    "stalled disk?); the store is still open: call close() again"
                ) from exc
        with self._gate_lock:  # (see Access._read)
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
            close_flock_file(self._lock_fd)  # closing the descriptor drops the flock
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
        state = "closed" if self._closed else f"incarnation={self.incarnation}"
        return f"<Store {str(self.path)!r} {self.mode} {state}>"
