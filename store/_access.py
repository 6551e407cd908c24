"""How a Store touches its LMDB environment outside the writer: reads in short
transactions that never overlap a map resize (the reader gate), map growth, paged prefix
scans, and single write transactions of this process that bypass the writer (taking the
lease, a handoff request, a client's append).

:class:`Access` is the base of the Store's read and lease classes (``_reads``,
``_leaseholder``); the Store (``_env``) opens the environment and sets its attributes.
"""

from __future__ import annotations

import pathlib
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar, cast

import lmdb

from herder.store._errors import InvalidInput, StoreClosed, StoreError
from herder.store._open import ADDED_LATER, DATABASES, translate
from herder.store._writer import MAX_MAP_SIZE

PAGE = 1000
"""Keys read per read transaction by the paged scans."""

_T = TypeVar("_T")


class Pinned(threading.local):
    """Per thread: the read transaction of the :meth:`Access.together` it is inside, if
    any (a class default, so the many threads never inside one read it at no cost)."""

    txn: lmdb.Transaction | None = None

    def refuse(self, what: str) -> None:
        """InvalidInput if this thread is inside ``together``: ``what`` would wait for
        the writer, which may need the map to grow, which waits for this read to end."""
        if self.txn is not None:
            raise InvalidInput(
                f"{what} inside Store.together(), which holds a read open: a commit that "
                "needs the map to grow would wait for it for ever; read only inside it"
            )


class Access:
    """The environment plumbing of a Store (see the module docstring)."""

    path: pathlib.Path
    readonly: bool
    _env: lmdb.Environment | None
    _handles: dict[str, Any]
    # Readers enter this gate; a map resize waits until no read transaction is open.
    _gate: threading.Condition
    _gate_lock: threading.Lock  # the gate's lock, taken as itself (see _read)
    _readers: int
    _resizing: bool
    _pinned: Pinned  # the read transaction of this thread's ``together``

    def together(self, fn: Callable[[], _T]) -> _T:
        """Run ``fn`` with every read it makes of this store, on this thread, in one read
        transaction: a record and its history read by two calls then agree, with no
        commit landing between them. ``fn`` only reads: the writer and ``close()`` are
        refused inside it (InvalidInput). It may run again if another process grows the
        map meanwhile; keep it short on a store a runtime is writing."""

        def pinned(txn: lmdb.Transaction) -> _T:
            self._pinned.txn = txn
            try:
                return fn()
            finally:
                self._pinned.txn = None

        if self._pinned.txn is not None:
            return fn()  # already inside one
        return self._read(pinned)

    def _read(self, fn: Callable[[lmdb.Transaction], _T]) -> _T:
        """Run ``fn`` in one short read transaction, outside any map resize (in the
        transaction of :meth:`together` when this thread is inside one)."""
        txn = self._pinned.txn
        if txn is not None:
            return fn(txn)  # (an LMDB error reaches the _read of ``together``)
        while True:
            # Counted and uncounted in one try, the gate taken by its C lock: a Ctrl-C
            # (KeyboardInterrupt) that came as ``with self._gate`` had taken it, or
            # between the count and the ``try``, left it taken or counted, and close()
            # waited for ever (``herder stats`` hung on Ctrl-C).
            resized = counted = False
            try:
                with self._gate_lock:
                    while self._resizing:
                        self._gate.wait()
                    env = self._env
                    if env is None:
                        raise StoreClosed(f"store {self.path} is closed; open it again")
                    self._readers += 1
                    counted = True
                with env.begin() as txn:
                    return fn(txn)
            except lmdb.MapResizedError:
                resized = True  # another process grew the map: adopt its size and retry
            except lmdb.Error as exc:
                raise translate(exc, f"read from store {self.path} failed") from exc
            finally:
                if counted:
                    with self._gate_lock:
                        self._readers -= 1
                        if self._readers == 0:
                            self._gate.notify_all()
            if resized:
                self._grow(0)

    def _grow(self, new_size: int, *, before: Callable[[], None] | None = None) -> None:
        """Set the map size (0: adopt the size on disk) with no read transaction open.

        Called by the writer thread on ``MapFullError``, ``before`` aborting its write
        transaction once no read runs (py-lmdb's abort waits until no operation of the
        environment runs in any thread: readers that keep coming would hold it off for
        ever), and by readers on ``MapResizedError``.
        """
        with self._gate_lock:  # (see _read)
            while self._resizing:
                self._gate.wait()
            self._resizing = True
            try:
                self._gate.wait_for(lambda: self._readers == 0)
                if before is not None:
                    before()
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

    def _paged(
        self, db: str, prefix: bytes, start: bytes = b"", *, values: bool = True
    ) -> Iterator[tuple[bytes, bytes]]:
        """Yield raw (key, value) pairs with ``prefix``, from the key ``start`` on (when
        it sorts after ``prefix``), one short read txn per page; ``values=False``: the
        keys alone, each with ``b""`` (no value is read)."""
        handle = self._handle(db)
        if handle is None:
            return
        start = max(start, prefix)
        skip_first = False
        while True:

            def page(
                txn: lmdb.Transaction, start: bytes = start, skip: bool = skip_first
            ) -> list[tuple[bytes, bytes]]:
                out: list[tuple[bytes, bytes]] = []
                cur = txn.cursor(db=handle)
                if not cur.set_range(start):
                    return out
                rows = cur.iternext() if values else ((k, b"") for k in cur.iternext(values=False))
                for key, value in cast(Iterator[tuple[bytes, bytes]], rows):
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

    def _write_direct(self, fn: Callable[[lmdb.Transaction], _T], what: str) -> _T:
        """Run ``fn`` in one write transaction of this process, not through the writer:
        taking the lease, a handoff request, a client's append. ``what`` starts the
        message of a failure ("cannot ... store"). A full map is grown as the writer
        grows it: a standby taking over from a holder that filled its map (and indexing
        an older store as it does) failed every try, and never took over."""
        env = self._env
        if env is None or self.readonly:
            raise StoreError(f"{what} {self.path}: the store is closed or open read-only")
        resized = 0
        while resized < 3:
            try:
                txn = env.begin(write=True)
            except lmdb.MapResizedError:
                resized += 1
                self._grow(0)  # another process grew the map: adopt its size, again
                continue
            except lmdb.Error as exc:
                raise translate(exc, f"{what} {self.path}") from exc
            try:
                out = fn(txn)
                txn.commit()
                return out
            except lmdb.MapFullError as exc:
                size = env.info()["map_size"]
                if size * 2 > MAX_MAP_SIZE:
                    txn.abort()
                    raise translate(exc, f"{what} {self.path}") from exc
                # Aborted with no read running, as the writer does (Writer._commit): an
                # abort waits for every read of this process, and reads that keep coming
                # (another thread's polls) held a standby's take of the lease 38 s.
                try:
                    self._grow(size * 2, before=txn.abort)  # (the others adopt the size)
                except lmdb.Error as grow_exc:
                    txn.abort()  # (if it failed before the abort; a second does nothing)
                    raise translate(grow_exc, f"{what} {self.path}") from grow_exc
            except BaseException as exc:
                txn.abort()
                if isinstance(exc, lmdb.Error):
                    raise translate(exc, f"{what} {self.path}") from exc
                raise
        raise StoreError(f"{what} {self.path}: its map keeps growing; try again")

    def reclaim_readers(self) -> int:
        """Free reader slots left by dead processes; return how many were freed.

        A reader killed inside a read transaction keeps its slot, which pins old pages
        (the file then grows instead of reusing them). Every open reclaims such slots;
        a long-running runtime also calls this periodically from its Supervisor.
        """
        freed: int = self._read(lambda _txn: self._env.reader_check() if self._env else 0)
        return freed
