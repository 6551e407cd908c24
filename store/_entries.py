"""What the writer's queue holds, how it is written into a transaction, and how the
outcome reaches whoever queued each entry (a future, a callback, or the engine's batch sink).

An entry is a group of :class:`~herder.store.Transition` objects with its future or
callback, a :class:`Batch` of the engine's plain ops, or the engine's :class:`Resync`
marker (fail-stop, see :meth:`Writer.resync`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from typing import Any

import lmdb

from herder.store._codec import encode
from herder.store._errors import LeaseLost, StoreIOError, TimedOut
from herder.store._keys import batch_put
from herder.store._logs import Sparse, get_logger
from herder.store._ops import (
    BatchSink,
    Callback,
    Ops,
    Outcome,
    Put,
    Transition,
    check,
    stored_values,
)

Written = list[tuple[bytes, "bytes | None"]]
"""The keys of one database a transaction writes, each with its final value (None: deleted)."""
Derived = Mapping[str, Callable[[lmdb.Transaction, Written, set[bytes]], None]]
"""Per database, what keeps a secondary index in step with the keys a transaction wrote
(``_recent``), told also which keys of it the transaction read as absent before it wrote
anything (its conditions': a new workflow's id)."""

log = get_logger("herder.store._writer")


Watch = tuple[int, list[list[Any]]]
"""Attempts whose deadlines a batch entry is to watch: the earliest due ms, and the
items ``[workflow id, step, token]`` (``_keys.batch_entry``)."""


class Commit(Future[None]):
    """One submitted transition's future (``Writer.submit``), resolved once it is durably
    committed. :meth:`result` past its ``timeout`` raises :class:`TimedOut` saying so (a
    bare ``TimeoutError()`` said nothing) to the public call that waited on it."""

    def result(self, timeout: float | None = None) -> None:
        try:
            return super().result(timeout)
        except TimeoutError:
            if self.done():  # (its own outcome)
                raise
            raise TimedOut(
                f"the store did not commit a write within {timeout} s (a slow or stalled "
                "disk?); it may still land: look before trying again"
            ) from None


class Batch:
    """A queued :meth:`Writer.submit_batch` group: its ops, its effects, its sink, and
    the attempts it records whose deadlines a batch entry is to watch."""

    __slots__ = ("count", "effects", "ops", "sink", "watch")

    def __init__(
        self, ops: Ops, effects: list[Any], count: int, sink: BatchSink, watch: Watch | None
    ) -> None:
        self.ops = ops
        self.effects = effects
        self.count = count
        self.sink = sink
        self.watch = watch


class Resync:
    """The engine's resync marker (:meth:`Writer.resync`) in the queue: it ends a halt
    only if no write failed since it was queued (``halts``: how many halts there had
    been then), for the engine sent it knowing nothing of a later failure."""

    __slots__ = ("halts",)

    def __init__(self, halts: int) -> None:
        self.halts = halts


# One queued entry: the transitions, where their outcomes go (a future or a callback) and
# whether the engine builds on them before they are durable (``Writer.submit_many``'s
# ``halts``), or a plain batch; the queue also holds resync markers.
Entry = tuple[Sequence[Transition], "Future[None] | Callback", bool] | Batch
Queued = Entry | Resync


def apply(
    txn: lmdb.Transaction, handles: Mapping[str, Any], derived: Derived, batch: list[Entry]
) -> tuple[list[list[Outcome]], int]:
    """Write ``batch`` into ``txn``; the outcomes of its transitions (a condition that
    does not hold skips only its own, unless the engine builds on it: then no engine
    batch behind it in ``batch`` is written either, fail-stop), and how many of them
    failed."""
    # Every op of the batch lands in ``pending`` first (a later write of a key wins),
    # conditions read through it, and then one putmulti per database writes it all:
    # separate txn.put calls cost about ten times as much per item. Nothing is written
    # before that, so the conditions' keys are all read up front, in one go.
    expects = [e for x in batch if not isinstance(x, Batch) for t in x[0] for e in t.expect]
    stored = stored_values(txn, handles, expects)
    pending: Ops = {}
    outcomes: list[list[Outcome]] = []
    failures = 0
    due = 0
    watched: list[list[Any]] = []  # the attempts of one batch entry for the transaction
    halted: Outcome = None  # a transition the engine built on failed: its batches stop
    for entry in batch:
        if isinstance(entry, Batch):
            if halted is not None:
                outcomes.append([halted])
                failures += 1
                continue
            pending.update(entry.ops)
            outcomes.append([None])
            if entry.watch is not None:
                if not watched or entry.watch[0] < due:
                    due = entry.watch[0]
                watched += entry.watch[1]
            continue
        results: list[Outcome] = []
        for t in entry[0]:
            if t.expect:
                failed = check(t.expect, pending, stored)
                if failed is not None:
                    results.append(failed)
                    failures += 1
                    if entry[2] and halted is None:
                        halted = halt_error(failed)  # one error: one sink call
                    continue
            for op in t.ops:
                pending[(op.db, op.key)] = op.value if type(op) is Put else None
            results.append(None)
        outcomes.append(results)
    if watched:  # one batch entry per transaction, due at the earliest deadline it holds
        timer, value = batch_put(due, watched, encode)
        pending[timer] = value
    absent = {(e.db, e.key) for e in expects} - stored.keys() if expects else set()
    _write(txn, handles, derived, pending, absent)
    return outcomes, failures


def _write(
    txn: lmdb.Transaction,
    handles: Mapping[str, Any],
    derived: Derived,
    ops: Ops,
    absent: set[tuple[str, bytes]],
) -> None:
    """Write ``ops``; ``absent``: the keys the transaction read as absent before."""
    puts: defaultdict[str, list[tuple[bytes, bytes]]] = defaultdict(list)
    deletes: defaultdict[str, list[bytes]] = defaultdict(list)
    for (db, key), value in ops.items():
        if value is None:
            deletes[db].append(key)
        else:
            puts[db].append((key, value))
    for db, items in puts.items():
        with txn.cursor(db=handles[db]) as cursor:
            cursor.putmulti(items)
    delete = txn.delete
    for db, keys in deletes.items():
        handle = handles[db]
        for key in keys:
            delete(key, db=handle)
    for db, keep in derived.items():  # secondary indexes follow each key's final value
        written: Written = list(puts.get(db, ()))
        written += [(key, None) for key in deletes.get(db, ())]
        if written:
            keep(txn, written, {key for d, key in absent if d == db})


def resolve(batch: list[Entry], outcomes: list[list[Outcome]]) -> None:
    """Hand each entry its outcomes: set its future, call its callback, or call each
    batch sink once with the effects of all its batches."""
    sinks: dict[tuple[BatchSink, int], tuple[list[Any], Outcome]] = {}
    for entry, results in zip(batch, outcomes, strict=True):
        if isinstance(entry, Batch):
            # One call per sink and outcome: the batches of a transaction share its
            # outcome (so their effects travel together), except those behind a failed
            # group the engine built on (``apply``).
            got = sinks.get((entry.sink, id(results[0])))
            if got is None:
                sinks[(entry.sink, id(results[0]))] = (list(entry.effects), results[0])
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
            call(sink, results)
    for (batch_sink, _), (effects, error) in sinks.items():
        call_sink(batch_sink, effects, error)


def halting(batch: list[Entry], outcomes: list[list[Outcome]]) -> Outcome:
    """The error that halts the engine's batches behind it (fail-stop): that of the
    first engine batch that failed, or of the first group the engine built on
    (``halts``) that did; None if neither failed."""
    for entry, results in zip(batch, outcomes, strict=True):
        if isinstance(entry, Batch):
            failed = results[0]
        else:
            failed = next((r for r in results if r is not None), None) if entry[2] else None
        if failed is not None:
            return failed
    return None


def count_of(entry: Queued) -> int:
    """How many transitions a queued entry stands for."""
    if isinstance(entry, Resync):
        return 0
    return entry.count if isinstance(entry, Batch) else len(entry[0])


def counted(stats: dict[str, int | float], n: int, conflicts: int) -> None:
    """Count a committed write transaction of ``n`` transitions in the writer's stats."""
    stats["batches"] += 1
    stats["transitions"] += n
    stats["last_batch"] = n
    stats["max_batch"] = max(stats["max_batch"], n)
    stats["conflicts"] += conflicts


def halt_error(cause: BaseException | None) -> BaseException:
    """The error of an engine batch refused because an earlier one failed with ``cause``."""
    if isinstance(cause, LeaseLost):
        return cause  # deposed: the same news for every batch behind it
    error = StoreIOError(
        f"not written: an earlier batch of the engine failed ({cause}), and its batches "
        "are refused until it has read the affected workflows back and resynced"
    )
    error.__cause__ = cause
    return error


def every(batch: list[Entry], outcome: Outcome) -> list[list[Outcome]]:
    """The same outcome for every transition of the batch."""
    return [[outcome] if isinstance(e, Batch) else [outcome] * len(e[0]) for e in batch]


def call(on_done: Callback, results: list[Outcome]) -> None:
    try:
        on_done(results)
    except Exception:
        log.exception("a store writer callback raised; the writer carries on")


def call_sink(sink: BatchSink, effects: list[Any], error: Outcome) -> None:
    try:
        sink(effects, error)
    except Exception:
        log.exception("a store writer batch sink raised; the writer carries on")


_FAILED = Sparse()
"""The line for a failed commit (one per batch) in this process, sparsely."""


def io_error(exc: BaseException, note: str) -> StoreIOError:
    """What the callers of a batch whose commit failed with ``exc`` get (logged here,
    :class:`Sparse`: once per 10 s with how many more failed)."""
    more = _FAILED.due()
    if more is not None:
        log.error("store commit failed: %s (%s)%s", exc, note, more)
    error = StoreIOError(
        f"commit failed: {type(exc).__name__}: {exc}; {note}. Data committed earlier is "
        "intact; check free disk space and permissions, then retry"
    )
    error.__cause__ = exc
    return error
