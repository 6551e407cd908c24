"""The single group-commit writer thread.

Every write to the store is a :class:`Transition`: a few :class:`Put`/:class:`Delete`
operations guarded by optional :class:`Expect` conditions. Callers hand transitions to
:meth:`Writer.submit` (one future each) or :meth:`Writer.submit_many` (one callback for a
group). The Scheduler's own writes take a cheaper path, :meth:`Writer.submit_batch`: plain
``(db, key) -> bytes | None`` ops with no conditions, whose sink is called once per
write transaction with the effects of every batch it committed. One daemon thread,
``herder-store-writer``, drains everything queued into one LMDB write transaction (one
``putmulti`` per database), commits it durably (the environment is opened with
``sync=True``) and only then resolves the futures and callbacks. A condition that does not
hold skips only its own transition; an I/O failure fails the whole batch and the thread
keeps going.
A ``guard`` (the leader-lease check, see ``_lease.py``) runs first in every write
transaction; when it refuses, the whole batch fails with its error and nothing is written.
``derived`` maps a database to a function the thread calls, in the same transaction, with
each key of it the batch writes and its final value (None: deleted): it keeps a secondary
index in step (the ``recent`` index, ``_recent.py``).

Batches are replayable: on ``MapFullError`` the transaction is aborted, the map doubled
(with no transaction open in this process, see ``Store._grow``) and the batch replayed.
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from typing import Any

import lmdb

from herder.store._crashpoints import crash_point
from herder.store._errors import InvalidInput, StoreClosed, StoreIOError
from herder.store._ops import (
    BatchSink,
    Callback,
    Delete,
    Ops,
    Outcome,
    Put,
    Transition,
    check,
    validate,
)

log = logging.getLogger(__name__)

MAX_BATCH = 10_000
"""Most transitions drained into one write transaction (a submit_many group is never split)."""

MAX_MAP_SIZE = 2**40
"""The writer refuses to grow the map beyond 1 TiB; such a batch fails with StoreIOError."""


class _Batch:
    """A queued :meth:`Writer.submit_batch` group: its ops, its effects and its sink."""

    __slots__ = ("count", "effects", "ops", "sink")

    def __init__(self, ops: Ops, effects: list[Any], count: int, sink: BatchSink) -> None:
        self.ops = ops
        self.effects = effects
        self.count = count
        self.sink = sink


# One queued entry: the transitions and where their outcomes go (a future or a callback),
# or a plain batch.
_Entry = tuple[Sequence[Transition], "Future[None] | Callback"] | _Batch


class Writer:
    """The group-commit writer. Created and owned by :class:`~herder.store.Store`.

    Thread-safe: any thread may submit. Only the writer thread touches LMDB for writing.
    ``fault``, when set, is called inside the thread right before each commit; raising
    ``lmdb.Error`` or ``OSError`` from it simulates a failed commit (for chaos tests).
    With ``thread=False`` there is no thread: each submission is committed (and its
    callbacks run) on the submitting thread before the submit returns, one transaction
    per submission, which the single-threaded simulation (``herder.runtime.testing``)
    needs to be exact.
    """

    def __init__(
        self,
        env: lmdb.Environment,
        handles: Mapping[str, Any],
        *,
        grow: Callable[[int], None],
        max_value_bytes: int | None = None,
        guard: Callable[[lmdb.Transaction], BaseException | None] | None = None,
        derived: Mapping[str, Callable[[lmdb.Transaction, bytes, bytes | None], None]]
        | None = None,
        thread: bool = True,
    ) -> None:
        self._env = env
        self._derived = dict(derived or {})
        self._guard = guard
        self._handles = dict(handles)
        self._grow = grow
        self._max_key = env.max_key_size()
        self._max_value = max_value_bytes
        self._cond = threading.Condition(threading.Lock())
        self._queue: collections.deque[_Entry] = collections.deque()
        self._queued = 0  # transitions in the queue
        self._closing = False
        self._submitted = 0  # transitions accepted so far
        self._done = 0  # transitions resolved so far
        self._done_cond = threading.Condition(threading.Lock())
        self._stats: dict[str, int | float] = dict.fromkeys(
            (
                "batches",
                "transitions",
                "max_batch",
                "last_batch",
                "conflicts",
                "map_resizes",
                "io_errors",
                "refused",
            ),
            0,
        )
        self.fault: Callable[[], None] | None = None
        self._draining = False  # inline mode: a callback's submission joins the drain
        self._thread: threading.Thread | None = None
        if thread:
            self._thread = threading.Thread(
                target=self._run, name="herder-store-writer", daemon=True
            )
            self._thread.start()

    # ------------------------------------------------------------------ submitting

    def submit(self, transition: Transition) -> Future[None]:
        """Queue one transition; the future resolves once it is durably committed.

        The future fails with :class:`ConditionFailed` (only this transition was skipped),
        :class:`StoreIOError` (the batch's commit failed) or :class:`StoreClosed`.
        A malformed transition (unknown database, bad key) raises :class:`InvalidInput`
        here and is not queued.
        """
        self._validate(transition)
        fut: Future[None] = Future()
        fut.set_running_or_notify_cancel()  # a commit cannot be cancelled
        if not self._enqueue(((transition,), fut), 1):
            fut.set_exception(StoreClosed("the store writer is closed; reopen the store"))
        return fut

    def submit_many(self, transitions: Sequence[Transition], on_done: Callback) -> None:
        """Queue a group of transitions that all go into the same batch.

        ``on_done`` receives one entry per transition, in order: ``None`` when committed,
        else the exception (as for :meth:`submit`). It runs on the writer thread after the
        commit, or in the calling thread if the writer is already closed. It must be quick;
        an exception it raises is logged and does not affect the writer.
        """
        for t in transitions:
            self._validate(t)
        n = len(transitions)
        if not self._enqueue((transitions, on_done), n):
            closed = StoreClosed("the store writer is closed; reopen the store")
            _call(on_done, [closed] * n)

    def submit_batch(self, ops: Ops, effects: list[Any], count: int, sink: BatchSink) -> None:
        """Queue plain writes (no conditions), applied all or nothing with their batch.

        ``count`` is how many transitions they stand for (for the stats and the batch
        cap). ``sink(effects, error)`` runs on the writer thread once the write
        transaction holding them is durable (``error`` None) or failed; batches of one
        sink committed together reach it as one call with their effects concatenated in
        submission order. If the writer is already closed it runs here, with
        :class:`StoreClosed`. The ops are checked as :meth:`submit` checks a transition.
        """
        handles = self._handles
        for db, key in ops:
            if db not in handles or type(key) is not bytes or not 0 < len(key) <= self._max_key:
                self._validate(Transition(ops=(Delete(db, key),)))  # raises, saying why
        limit = self._max_value
        if limit is not None:
            for (db, key), value in ops.items():
                if value is not None and len(value) > limit and db != "meta":
                    self._validate(Transition(ops=(Put(db, key, value),)))
        if not self._enqueue(_Batch(ops, effects, count, sink), count):
            _call_sink(sink, effects, StoreClosed("the store writer is closed; reopen the store"))

    def _enqueue(self, entry: _Entry, n: int) -> bool:
        """Queue ``entry`` (``n`` transitions), and without a thread commit it now; False
        (nothing queued) once the writer is closing."""
        with self._cond:
            if self._closing:
                return False
            self._queue.append(entry)
            self._queued += n
            self._submitted += n
            self._cond.notify()
        self._inline()
        return True

    def _validate(self, t: Transition) -> None:
        validate(t, self._handles, self._max_key, self._max_value)

    # ------------------------------------------------------------------ waiting

    def flush(self, timeout: float | None = None) -> None:
        """Wait until everything submitted so far is committed (or failed).

        Raises :class:`TimeoutError` if that takes longer than ``timeout`` seconds.
        """
        with self._cond:
            target = self._submitted
        with self._done_cond:
            if not self._done_cond.wait_for(lambda: self._done >= target, timeout):
                raise TimeoutError(
                    f"store writer did not commit {target - self._done} pending transitions "
                    f"within {timeout} s; the disk may be slow or stalled"
                )

    def close(self, timeout: float | None = 10.0) -> None:
        """Stop accepting transitions (they fail with :class:`StoreClosed`), drain, join.

        Raises :class:`TimeoutError` if the queue is not drained within ``timeout``; the
        thread keeps draining and ``close`` may be called again.
        """
        with self._cond:
            self._closing = True
            self._cond.notify()
        if self._thread is None:
            return  # inline: every submission was committed before its submit returned
        if threading.current_thread() is self._thread:
            raise InvalidInput("Writer.close() called from a writer callback; close elsewhere")
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError(f"store writer did not drain its queue within {timeout} s")

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._closing

    def stats(self) -> dict[str, int | float]:
        """Counters: batches, transitions, max_batch, last_batch, conflicts, map_resizes,
        io_errors, refused (batches the guard refused) and mean_batch (transitions per
        batch)."""
        with self._cond:
            out = dict(self._stats)
        out["mean_batch"] = out["transitions"] / out["batches"] if out["batches"] else 0.0
        return out

    # ------------------------------------------------------------------ the thread

    def _run(self) -> None:
        cond = self._cond
        while True:
            with cond:
                while not self._queue and not self._closing:
                    cond.wait()
                if not self._queue:
                    return  # closing and drained
                batch, n = self._take()
            self._process(batch, n)

    def _inline(self) -> None:
        """Without a thread: commit everything queued, here and now."""
        if self._thread is not None or self._draining:
            return  # the thread commits it; or a callback of the loop below submitted
        self._draining = True
        try:
            while True:
                with self._cond:
                    if not self._queue:
                        return
                    batch, n = self._take()
                self._process(batch, n)
        finally:
            self._draining = False

    def _take(self) -> tuple[list[_Entry], int]:
        """The next batch off the queue (called with ``_cond`` held)."""
        if self._queued <= MAX_BATCH:
            batch = list(self._queue)
            self._queue.clear()
            n = self._queued
            self._queued = 0
            return batch, n
        batch, n = [], 0
        while self._queue and n < MAX_BATCH:
            entry = self._queue.popleft()
            batch.append(entry)
            n += _size(entry)
        self._queued -= n
        return batch, n

    def _process(self, batch: list[_Entry], n: int) -> None:
        try:
            outcomes = self._commit(batch, n)
        except BaseException as exc:  # a bug here must not hang callers forever
            log.exception("store writer failed on a batch of %d transitions", n)
            outcomes = _all(batch, exc)
        self._resolve(batch, outcomes, n)

    def _commit(self, batch: list[_Entry], n: int) -> list[list[Outcome]]:
        env = self._env
        while True:
            txn = env.begin(write=True)
            try:
                refused = None if self._guard is None else self._guard(txn)
                if refused is not None:
                    txn.abort()
                    with self._cond:
                        self._stats["refused"] += 1
                    return _all(batch, refused)
                outcomes = self._apply(txn, batch)
                if self.fault is not None:
                    self.fault()
                crash_point("writer.before_commit")
                txn.commit()
                crash_point("writer.after_commit")
            except lmdb.MapFullError as exc:
                txn.abort()
                size = env.info()["map_size"]
                if size * 2 > MAX_MAP_SIZE:
                    return self._io_failed(batch, exc, f"the map is already {size} bytes")
                try:
                    self._grow(size * 2)
                except (lmdb.Error, OSError) as grow_exc:
                    return self._io_failed(batch, grow_exc, f"could not grow the map to {size * 2}")
                with self._cond:
                    self._stats["map_resizes"] += 1
                continue
            except (lmdb.Error, OSError) as exc:
                txn.abort()
                return self._io_failed(batch, exc, "nothing of this batch was written")
            conflicts = sum(1 for results in outcomes for r in results if r is not None)
            with self._cond:
                s = self._stats
                s["batches"] += 1
                s["transitions"] += n
                s["last_batch"] = n
                s["max_batch"] = max(s["max_batch"], n)
                s["conflicts"] += conflicts
            return outcomes

    def _apply(self, txn: lmdb.Transaction, batch: list[_Entry]) -> list[list[Outcome]]:
        # Every op of the batch lands in ``pending`` first (a later write of a key wins),
        # conditions read through it, and then one putmulti per database writes it all:
        # separate txn.put calls cost about ten times as much per item.
        pending: Ops = {}
        outcomes: list[list[Outcome]] = []
        for entry in batch:
            if isinstance(entry, _Batch):
                pending.update(entry.ops)
                outcomes.append([None])
                continue
            results: list[Outcome] = []
            for t in entry[0]:
                if t.expect:
                    failed = check(txn, self._handles, t.expect, pending)
                    if failed is not None:
                        results.append(failed)
                        continue
                for op in t.ops:
                    pending[(op.db, op.key)] = op.value if type(op) is Put else None
                results.append(None)
            outcomes.append(results)
        self._write(txn, pending)
        return outcomes

    def _write(self, txn: lmdb.Transaction, ops: Ops) -> None:
        puts: dict[str, list[tuple[bytes, bytes]]] = {}
        deletes: list[tuple[str, bytes]] = []
        for (db, key), value in ops.items():
            if value is None:
                deletes.append((db, key))
            else:
                items = puts.get(db)
                if items is None:
                    items = puts[db] = []
                items.append((key, value))
        handles = self._handles
        for db, items in puts.items():
            with txn.cursor(db=handles[db]) as cursor:
                cursor.putmulti(items)
        for db, key in deletes:
            txn.delete(key, db=handles[db])
        derived = self._derived
        if derived:  # secondary indexes follow the final value of each key, same txn
            for (db, key), value in ops.items():
                keep = derived.get(db)
                if keep is not None:
                    keep(txn, key, value)

    def _io_failed(self, batch: list[_Entry], exc: BaseException, note: str) -> list[list[Outcome]]:
        with self._cond:
            self._stats["io_errors"] += 1
        log.error("store commit failed: %s (%s)", exc, note)
        error = StoreIOError(
            f"commit failed: {type(exc).__name__}: {exc}; {note}. Data committed earlier is "
            "intact; check free disk space and permissions, then retry"
        )
        error.__cause__ = exc
        return _all(batch, error)

    def _resolve(self, batch: list[_Entry], outcomes: list[list[Outcome]], n: int) -> None:
        sinks: dict[BatchSink, tuple[list[Any], Outcome]] = {}
        for entry, results in zip(batch, outcomes, strict=True):
            if isinstance(entry, _Batch):
                # One call per sink and transaction: every batch of a transaction shares
                # its outcome, so their effects travel together.
                got = sinks.get(entry.sink)
                if got is None:
                    sinks[entry.sink] = (list(entry.effects), results[0])
                else:
                    got[0].extend(entry.effects)
                continue
            sink = entry[1]
            if isinstance(sink, Future):
                error = results[0]
                if error is None:
                    sink.set_result(None)
                else:
                    sink.set_exception(error)
            else:
                _call(sink, results)
        for batch_sink, (effects, error) in sinks.items():
            _call_sink(batch_sink, effects, error)
        with self._done_cond:
            self._done += n
            self._done_cond.notify_all()


def _size(entry: _Entry) -> int:
    """How many transitions a queued entry stands for."""
    return entry.count if isinstance(entry, _Batch) else len(entry[0])


def _all(batch: list[_Entry], outcome: Outcome) -> list[list[Outcome]]:
    """The same outcome for every transition of the batch."""
    return [[outcome] if isinstance(e, _Batch) else [outcome] * len(e[0]) for e in batch]


def _call(on_done: Callback, results: list[Outcome]) -> None:
    try:
        on_done(results)
    except Exception:
        log.exception("a store writer callback raised; the writer carries on")


def _call_sink(sink: BatchSink, effects: list[Any], error: Outcome) -> None:
    try:
        sink(effects, error)
    except Exception:
        log.exception("a store writer batch sink raised; the writer carries on")
