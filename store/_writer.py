"""The single group-commit writer thread.

Every write to the store is a :class:`Transition`: a few :class:`Put`/:class:`Delete`
operations guarded by optional :class:`Expect` conditions, handed to :meth:`Writer.submit`
(a future each) or :meth:`Writer.submit_many` (a callback per group). The Scheduler's
writes take a cheaper path, :meth:`Writer.submit_batch`: plain ``(db, key) -> bytes |
None`` ops, whose sink gets the effects of every batch a transaction committed (one batch
entry per transaction watches the deadlines of the attempts they record). One daemon
thread, ``herder-store-writer``, drains everything queued into one write transaction (one
``putmulti`` per database) and commits it durably (``sync=True``); only then are its
futures and callbacks resolved: before the next transaction's sync, once its puts are
written (so the threads they wake run while that sync holds no GIL, not while the writer
needs it for its puts: +14-17% at 256 in flight), or at once when nothing else is queued.
A condition that does not hold skips only its own transition; an I/O failure (or a bug)
fails the whole batch, and the thread keeps going. A ``guard`` (the lease check) runs
first in every write transaction: when it refuses, the batch fails with its error.
``derived`` keeps a secondary index (``recent``) in step. On ``MapFullError`` the
transaction is aborted, the map doubled (``Store._grow``) and the batch replayed; when
another process (the next lease holder) wrote past this map, its size is adopted and the
guard then refuses the batch. A commit of starts admitted early only (``halts``) waits
:data:`MERGE_WAIT` for the engine's batch on them (their first DISPATCHED).
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

import lmdb

from herder.store._crashpoints import crash_point
from herder.store._entries import (
    Batch,
    Commit,
    Derived,
    Entry,
    Queued,
    Resync,
    Watch,
    apply,
    call,
    call_sink,
    count_of,
    counted,
    every,
    halt_error,
    halting,
    io_error,
    resolve,
)
from herder.store._errors import InvalidInput, StoreClosed, TimedOut
from herder.store._logs import get_logger
from herder.store._ops import BatchSink, Callback, Ops, Outcome, Transition, validate, validate_ops

log = get_logger(__name__)

MAX_BATCH = 10_000
"""Most transitions drained into one write transaction (a submit_many group is never split)."""

MAX_MAP_SIZE = 2**40
"""The writer refuses to grow the map beyond 1 TiB; such a batch fails with StoreIOError."""

MERGE_WAIT = 0.0005
"""Seconds a commit of early-admitted starts only waits for the engine's batch on them."""


class Writer:
    """The group-commit writer. Created and owned by :class:`~herder.store.Store`.

    Thread-safe: any thread may submit; only the writer thread writes to LMDB. ``fault``,
    if set, is called right before each commit: raising ``lmdb.Error`` or ``OSError``
    simulates a failed commit (chaos tests). With ``thread=False`` each submission is
    committed (callbacks run) on the submitting thread, as the exact simulation needs.
    """

    def __init__(
        self,
        env: lmdb.Environment,
        handles: Mapping[str, Any],
        *,
        grow: Callable[..., None],  # (Store._grow)
        max_value_bytes: int | None = None,
        guard: Callable[[lmdb.Transaction], BaseException | None] | None = None,
        derived: Derived | None = None,
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
        self._queue: collections.deque[Queued] = collections.deque()
        self._queued = 0  # transitions in the queue
        self._closing = False
        self._submitted = 0  # transitions accepted so far
        self._done = 0  # transitions resolved so far
        self._done_cond = threading.Condition(threading.Lock())
        counts = "batches transitions max_batch last_batch conflicts map_resizes io_errors refused"
        self._stats: dict[str, int | float] = dict.fromkeys([*counts.split(), "halted"], 0)
        # Fail-stop: the error of the last engine batch that failed, until the engine
        # resyncs (for every halt so far: Resync); batches behind it fail with it.
        self._halted: BaseException | None = None
        self._halts = 0
        self.fault: Callable[[], None] | None = None
        self._draining = False  # inline mode: a callback's submission joins the drain
        self._later: tuple[list[Entry], list[list[Outcome]], int] | None = None
        self._thread: threading.Thread | None = None
        if thread:
            self._thread = threading.Thread(
                target=self._run, name="herder-store-writer", daemon=True
            )
            self._thread.start()

    # ------------------------------------------------------------------ submitting

    def submit(self, transition: Transition) -> Commit:
        """Queue one transition; the future resolves once it is durably committed. It
        fails with :class:`ConditionFailed` (only this transition was skipped),
        :class:`StoreIOError` (the batch's commit failed) or :class:`StoreClosed`. A
        malformed one (unknown database, bad key) raises :class:`InvalidInput`, unqueued.
        """
        self._validate(transition)
        fut = Commit()
        fut.set_running_or_notify_cancel()  # a commit cannot be cancelled
        if not self._enqueue(((transition,), fut, False), 1):
            fut.set_exception(StoreClosed("the store writer is closed; reopen the store"))
        return fut

    def submit_many(
        self, transitions: Sequence[Transition], on_done: Callback, *, halts: bool = False
    ) -> None:
        """Queue a group of transitions that all go into the same batch.

        ``on_done`` receives one entry per transition, in order: ``None`` when committed,
        else the exception (as for :meth:`submit`). It runs on the writer thread after the
        commit, or in the calling thread if the writer is already closed. It must be quick;
        an exception it raises is logged and does not affect the writer.

        ``halts``: the engine builds on these transitions before they are durable (a
        workflow admitted while its creation is on its way, so that its first DISPATCHED
        shares the creation's commit: :data:`MERGE_WAIT`). If one of them fails, no engine
        batch queued behind it is written: fail-stop, as when an engine batch fails
        (:meth:`resync`)."""
        for t in transitions:
            self._validate(t)
        n = len(transitions)
        if not self._enqueue((transitions, on_done, halts), n):
            closed = StoreClosed("the store writer is closed; reopen the store")
            call(on_done, [closed] * n)

    def submit_batch(
        self, ops: Ops, effects: list[Any], count: int, sink: BatchSink, watch: Watch | None = None
    ) -> None:
        """Queue plain writes (no conditions), applied all or nothing with their batch.

        ``count`` is how many transitions they stand for (for the stats and the batch
        cap). ``sink(effects, error)`` runs on the writer thread once the write
        transaction holding them is durable (``error`` None) or failed; batches of one
        sink committed together reach it as one call with their effects concatenated in
        submission order (or here, with :class:`StoreClosed`, if the writer is closed).
        Ops are checked as :meth:`submit` checks a transition. ``watch``: attempts whose
        deadlines the transaction's one batch entry watches.
        """
        validate_ops(ops, self._handles, self._max_key, self._max_value)
        if not self._enqueue(Batch(ops, effects, count, sink, watch), count):
            call_sink(sink, effects, StoreClosed("the store writer is closed; reopen the store"))

    def resync(self) -> None:
        """The engine's resync marker: it read back every workflow a failed batch touched
        and holds nothing built on one, so its batches queued after this commit again.

        Fail-stop: once a write transaction holding a :meth:`submit_batch` batch fails,
        every such batch queued behind it and every one queued later, up to this marker,
        fails too (with :class:`LeaseLost` if that is why, else :class:`StoreIOError`),
        and nothing of them is written. A marker while nothing failed changes nothing.
        Transitions (:meth:`submit`, :meth:`submit_many`) are not held back."""
        self._enqueue(Resync(self._halts), 0)

    def _enqueue(self, entry: Queued, n: int) -> bool:
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

    def flush(self, timeout: float | None = None) -> None:
        """Wait until everything submitted so far is committed (or failed), at most
        ``timeout`` seconds (then :class:`TimedOut`)."""
        with self._cond:
            target = self._submitted
        with self._done_cond:
            if not self._done_cond.wait_for(lambda: self._done >= target, timeout):
                raise TimedOut(
                    f"store writer did not commit {target - self._done} pending transitions "
                    f"within {timeout} s; the disk may be slow or stalled: wait, then retry"
                )

    def close(self, timeout: float | None = 10.0) -> None:
        """Stop accepting transitions (they fail with :class:`StoreClosed`), drain, join.
        :class:`TimedOut` if the queue is not drained within ``timeout``; the thread
        keeps draining and ``close`` may be called again."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        if self._thread is None:
            return  # inline: every submission was committed before its submit returned
        if threading.current_thread() is self._thread:
            raise InvalidInput("Writer.close() called from a writer callback; close elsewhere")
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimedOut(f"store writer did not drain its queue within {timeout} s; retry")

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._closing

    def stats(self) -> dict[str, int | float]:
        """Counters: batches, transitions, max_batch, last_batch, conflicts, map_resizes,
        io_errors, refused (by the guard), halted (engine batches failed as an earlier one
        failed, :meth:`resync`), mean_batch (transitions per batch)."""
        with self._cond:
            out = dict(self._stats)
        out["mean_batch"] = out["transitions"] / out["batches"] if out["batches"] else 0.0
        return out

    # ------------------------------------------------------------------ the thread

    def _run(self) -> None:
        cond = self._cond
        while True:
            if not self._queue:  # nothing to write first: the last batch's callbacks now
                self._settle_later()
            with cond:
                while not self._queue and not self._closing:
                    cond.wait()
                if not self._queue:
                    return  # closing and drained
                batch, n = self._take()
                if all(type(e) is tuple and e[2] for e in batch):  # early-admitted starts
                    cond.wait(MERGE_WAIT)  # for their first DISPATCHED: one commit for both
                    more, m = self._take()
                    batch, n = batch + more, n + m
            self._process(batch, n)
            del batch  # (not kept while waiting: a start_many's 2,000 transitions)

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

    def _take(self) -> tuple[list[Queued], int]:
        """The next batch off the queue (called with ``_cond`` held)."""
        if self._queued <= MAX_BATCH:
            batch, n = list(self._queue), self._queued
            self._queue.clear()
            self._queued = 0
            return batch, n
        batch, n = [], 0
        while self._queue and n < MAX_BATCH:
            batch.append(entry := self._queue.popleft())
            n += count_of(entry)
        self._queued -= n
        return batch, n

    def _settle_later(self) -> None:  # (the last clean batch's callbacks: module docstring)
        if (later := self._later) is not None:
            self._later = None
            self._resolve(*later)

    def _process(self, queued: list[Queued], n: int) -> None:
        batch, refused, cause = self._sift(queued)
        if refused or not batch:
            self._settle_later()
        if refused:
            held = sum(entry.count for entry in refused)
            self._resolve(list[Entry](refused), [[halt_error(cause)]] * len(refused), held)
            n -= held
        if not batch:
            return
        try:
            outcomes, clean = self._commit(batch, n)
        except BaseException as exc:  # a bug here must not hang callers forever
            log.exception("store writer failed on a batch of %d transitions", n)
            outcomes, clean = every(batch, exc), False
        if clean and self._thread is not None:
            self._later = (batch, outcomes, n)
            return
        self._settle_later()
        failed = None if clean else halting(batch, outcomes)
        if failed is not None:
            self._halted = failed  # fail-stop
            self._halts += 1
        self._resolve(batch, outcomes, n)

    def _sift(self, batch: list[Queued]) -> tuple[list[Entry], list[Batch], BaseException | None]:
        """Split a drained batch into what goes into the write transaction and the
        engine batches refused while halted (and the error that halted it); a resync
        marker ends the halt, unless a write failed after it was sent."""
        cause = self._halted
        if cause is None and not any(type(e) is Resync for e in batch):
            return cast("list[Entry]", batch), [], None
        keep: list[Entry] = []
        refused: list[Batch] = []  # (engine batches while halted)
        for entry in batch:
            if isinstance(entry, Resync):
                self._halted = None if entry.halts == self._halts else self._halted
            elif self._halted is not None and isinstance(entry, Batch):
                refused.append(entry)
            else:
                keep.append(entry)
        if refused:
            crash_point("writer.halted")
            with self._cond:
                self._stats["halted"] += len(refused)
        return keep, refused, cause

    def _commit(self, batch: list[Entry], n: int) -> tuple[list[list[Outcome]], bool]:
        """Write and commit ``batch``: each transition's outcome, and whether all of them
        were written."""
        env = self._env
        while True:
            try:
                txn = env.begin(write=True)
            except lmdb.MapResizedError:  # (before the guard could tell whose the lease is)
                self._grow(0)
                continue
            except lmdb.Error as exc:
                return self._io_failed(batch, exc, "nothing of this batch was written"), False
            try:
                refused = None if self._guard is None else self._guard(txn)
                if refused is not None:
                    txn.abort()
                    with self._cond:
                        self._stats["refused"] += 1
                    return every(batch, refused), False
                outcomes, conflicts = apply(txn, self._handles, self._derived, batch)
                self._settle_later()  # the previous batch's callbacks, before this fsync
                if self.fault is not None:
                    self.fault()
                crash_point("writer.before_commit")
                txn.commit()
                crash_point("writer.after_commit")
            except lmdb.MapFullError as exc:
                size = env.info()["map_size"]
                if size * 2 > MAX_MAP_SIZE:
                    txn.abort()
                    return self._io_failed(batch, exc, f"the map is already {size} bytes"), False
                try:  # (aborted with no read running: an abort waits for all to end)
                    self._grow(size * 2, before=txn.abort)
                except (lmdb.Error, OSError) as grow_exc:
                    txn.abort()  # (if the grow failed before it; a second abort does nothing)
                    note = f"could not grow the map to {size * 2}"
                    return self._io_failed(batch, grow_exc, note), False
                with self._cond:
                    self._stats["map_resizes"] += 1
                continue
            except BaseException as exc:
                txn.abort()  # (also after a bug: left open, it would refuse every later write)
                if not isinstance(exc, lmdb.Error | OSError):
                    raise  # (_process fails this batch's callers)
                return self._io_failed(batch, exc, "nothing of this batch was written"), False
            with self._cond:
                counted(self._stats, n, conflicts)
            return outcomes, conflicts == 0

    def _io_failed(self, batch: list[Entry], exc: BaseException, note: str) -> list[list[Outcome]]:
        with self._cond:
            self._stats["io_errors"] += 1
        return every(batch, io_error(exc, note))

    def _resolve(self, batch: list[Entry], outcomes: list[list[Outcome]], n: int) -> None:
        resolve(batch, outcomes)
        with self._done_cond:
            self._done += n
            self._done_cond.notify_all()
