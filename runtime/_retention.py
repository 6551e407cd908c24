"""Retention in a running runtime: ``Runtime(retention=...)`` and ``herder purge`` sent
through the command channel.

A :class:`Retention` runs on the Supervisor's thread, once per sweep (it is a sweep
listener, and the Supervisor hands it the ``purge`` commands it finds). Each sweep it
deletes at most one batch of finished workflows (``store/_retention.py``), found by a
bounded read of the ``recent`` index that goes on where the last sweep's stopped, and
never waits for it: the batch goes to the writer as one group, and until that group is
committed the next sweeps skip. A batch takes ``BATCH`` workflows; after a full one (a
backlog) that committed within half a sweep interval the next takes twice as many (up
to :data:`GROWTH` times, and its index read as many times more), after a slower one half
(never fewer than ``BATCH``), so retention keeps up with any finish rate the runtime
sustains (a batch per sweep, 2,000 a second, did not) while it takes about half the
writer's time at most. So a backlog of a million is worked off while dispatch goes on,
each step commit waiting at most one batch's worth of deletes in the writer (a batch of
large workflows stops at ``MOST_DELETES``: the rest go with the next sweeps, read again
from where this one's read began). A ``purge`` command
is worked off the same way, before the retention's own cutoff, and its outcome (with the
count) is recorded when a pass over the index finds nothing more to delete. Until then
each batch's group also records the count so far on the pending command
(``progress_ops``: no commit of its own), which the waiting ``herder purge`` shows, and a
runtime that takes the command over after a crash counts on from (one batch short at
most: the batch whose commit the crash cut off from its count). The retention's own
sweeps also delete the answered commands older than its cutoff (and than
:data:`COMMANDS_KEPT`), up to a batch each.
"""

from __future__ import annotations

import datetime
import math
import threading
import time
from collections.abc import Callable
from typing import Any

from herder.store import (
    BATCH,
    FINISHED,
    PURGEABLE,
    RETENTION_SCAN,
    ConditionFailed,
    Store,
    StoreCorrupt,
    StoreError,
    Transition,
    answered_before,
    commit_group,
    deletions,
    finished_ops,
    get_logger,
    progress_ops,
    real_number,
    resumed_candidates,
)

_log = get_logger("herder.retention")

DEFAULT_RETENTION = 7 * 86400.0
"""Seconds a finished workflow is kept by default (7 days)."""

GROWTH = 16
"""A batch takes at most this many times ``BATCH`` workflows (with a backlog: ``_pace``);
a batch of small workflows reaches ``MOST_DELETES`` deletes about there."""

COMMANDS_KEPT = 86400.0
"""Seconds an answered operator command is kept at least, whatever the retention: the
CLI that sent it reads its answer from the store."""


def retention_seconds(retention: float | datetime.timedelta | None) -> float | None:
    """``Runtime(retention=)`` as seconds (None keeps everything); checked."""
    if retention is None:
        return None
    if isinstance(retention, datetime.timedelta):
        retention = retention.total_seconds()
    seconds = real_number(retention) if isinstance(retention, int | float) else None
    if seconds is None or not math.isfinite(seconds) or seconds < 0:  # (10**400: inf)
        from herder.store import InvalidInput

        raise InvalidInput(
            f"retention must be seconds >= 0, a datetime.timedelta or None (keep "
            f"everything), got {retention!r:.100}"
        )
    return seconds


class Retention:
    """Deletes finished workflows older than ``keep`` seconds, and runs purge commands."""

    def __init__(
        self,
        store: Store,
        now: Callable[[], float],
        keep: float | None,
        *,
        batch: int = BATCH,
        scan: int = RETENTION_SCAN,
        interval: float = 0.25,
    ):
        self._store = store
        self._now = now  # the engine's clock, read each time (see Runtime._parts)
        self._keep = keep
        self._batch = batch
        self._scan = scan  # index entries a sweep reads at most, per batch workflows
        # Workflows the next batch takes: ``batch``, doubled after each full batch that
        # committed within half a sweep interval (a backlog), up to GROWTH times ``batch``.
        self._size = batch
        self._budget = interval / 2
        # Where the next sweep's read of the index goes on (None: from the oldest), and
        # whose scan that is (a purge command's id; None: the retention's own).
        self._position: bytes | None = None
        self._scanning: int | None = None
        self._lock = threading.Lock()
        self._busy = False
        self._jobs: dict[int, dict[str, Any]] = {}  # purge commands by id, oldest first
        self._deleted: dict[int, int] = {}
        self._recorded: dict[int, int] = {}  # the count last recorded on each (progress)
        # Commands finished here: a sweep that read one while its result was committing
        # hands it over again, and running it twice would overwrite that result.
        self._finished: set[int] = set()
        self.deleted = 0  # workflows deleted by this runtime so far (stats)
        self._purged: list[str] = []  # those of the last batch: is anything left of them?

    def on_command(self, command: dict[str, Any]) -> None:
        """A pending ``purge`` command (seen again at later sweeps until it is done)."""
        with self._lock:
            if command["id"] not in self._jobs and command["id"] not in self._finished:
                self._jobs[command["id"]] = _aged(command, self._now())
                so_far = command.get("deleted")  # (recorded by a runtime that crashed)
                if not isinstance(so_far, int) or isinstance(so_far, bool) or so_far < 0:
                    so_far = 0
                self._deleted.setdefault(command["id"], so_far)
                self._recorded.setdefault(command["id"], so_far)

    def on_sweep(self) -> None:
        """Submit one batch of deletions, unless the previous one is still committing."""
        with self._lock:
            if self._busy:
                return
            job = next(iter(self._jobs.values()), None)
            purged, self._purged = self._purged, []  # (what they left goes with this batch)
        try:
            if job is not None:
                before, states = _job_cutoff(job)
            elif self._keep is None:
                return
            else:
                # (a keep longer than the epoch is old: no index time is before 0)
                before, states = max(0.0, self._now() - self._keep), FINISHED
            job_id = None if job is None else job["id"]
            if job_id != self._scanning:  # another cutoff: its own scan, from the oldest
                self._position, self._scanning = None, job_id
            after, size = self._position, self._size
            found, self._position = resumed_candidates(
                self._store,
                before,
                states,
                size,
                after=after,
                most=self._scan * size // self._batch,
            )
            full = len(found) >= size
            if not found and job is not None and self._position is None:
                self._finish(job, None)  # a whole pass found no more
            taken, transitions = (
                deletions(self._store, found, purged) if found or purged else (0, [])
            )
            if taken < len(found):  # (large workflows: the rest from the same place next time)
                found, self._position, size = found[:taken], after, 0  # (as large as it gets)
            if transitions and job is not None:
                transitions += self._progress(job)
            if job is None:  # answered commands go with the retention's own cutoff
                kept = min(before, self._now() - COMMANDS_KEPT)  # (a CLI waits on its answer)
                old = answered_before(self._store, kept, self._batch)
                transitions += [] if old is None else [old]
            if not transitions:
                return
        except (StoreError, ValueError, TypeError) as exc:
            _log.error("retention could not read the store: %s", exc)
            if job is not None:
                self._finish(job, f"{type(exc).__name__}: {exc}")
            return
        with self._lock:
            self._busy = True
        sent = self._now()
        grow = size if full else None  # (None: no backlog, the next batch takes ``batch``)

        def committed(outcomes: list[BaseException | None]) -> None:
            self._pace(grow, self._now() - sent)  # (first: the next sweep may go on at once)
            self._committed(job_id, found, outcomes)

        self._store.writer.submit_many(transitions, committed)

    def _pace(self, size: int | None, took: float) -> None:
        """The size of the next batch: one that was full (``size``; 0: full of deletes)
        found a backlog, and the next takes twice as many, so retention keeps up with any
        finish rate, unless it took the writer more than half a sweep interval (from its
        submission to its commit): then half as many, so retention takes about half the
        writer's time at most and each batch stays bounded (by ``MOST_DELETES`` too)."""
        with self._lock:
            if size is None:
                self._size = self._batch
            elif took > self._budget:
                self._size = max(self._batch, self._size // 2)
            elif size:
                self._size = min(self._size * 2, self._batch * GROWTH)

    def _progress(self, job: dict[str, Any]) -> list[Transition]:
        """The write of the job's count so far on its pending command, if it grew since
        the last one (with a batch: one more put in its group)."""
        with self._lock:
            deleted = self._deleted.get(job["id"], 0)
            if deleted == self._recorded.get(job["id"]):
                return []
            self._recorded[job["id"]] = deleted
        return [progress_ops(job, deleted=deleted)]

    def _committed(
        self, job_id: int | None, found: list[tuple[str, str]], outcomes: list[BaseException | None]
    ) -> None:
        # (found's first; after them, those of what the previous batch's workflows left)
        purged = [wid for (wid, _), o in zip(found, outcomes, strict=False) if o is None]
        done = len(purged)
        failed = any(
            o is not None and not isinstance(o, ConditionFailed | StoreCorrupt) for o in outcomes
        )
        with self._lock:
            if failed:  # (a full disk) its workflows are still there, behind the scan: a
                self._position = None  # pass ends only once one went over them again
            self._busy = False
            self._purged = purged
            self.deleted += done
            if job_id is not None and job_id in self._deleted:
                self._deleted[job_id] += done
        if done:
            _log.info("retention deleted %d finished workflows", done)

    def on_stop(self, timeout: float | None) -> None:
        """At a clean stop, once nothing writes to the store any more but its writer:
        delete what the last batch's workflows left (``deletions``' ``gone``), which the
        next sweep would have; else it outlives them (``herder check`` names it)."""
        try:
            with self._lock:
                busy = self._busy
            if busy:  # (its outcome, which names what it deleted: _committed)
                self._store.writer.flush(timeout)
            with self._lock:
                purged, self._purged = self._purged, []
            if purged:
                _, transitions = deletions(self._store, [], purged)
                if transitions:
                    commit_group(self._store, transitions, timeout)
        except Exception as exc:  # (a stalled or full disk: the stop goes on)
            _log.error("retention could not delete what its last batch left: %s", exc)

    def _finish(self, job: dict[str, Any], error: str | None) -> None:
        job_id = job["id"]
        with self._lock:
            self._jobs.pop(job_id, None)
            self._finished.add(job_id)
            deleted = self._deleted.get(job_id, 0)
        record = {**job, "deleted": deleted}

        def landed(outcomes: list[BaseException | None]) -> None:
            with self._lock:
                if outcomes[0] is not None:  # (a full disk): pending still, handed over
                    self._finished.discard(job_id)  # again, run again, its count kept
                    return
                self._deleted.pop(job_id, None)
                self._recorded.pop(job_id, None)
            _log.warning(
                "purge command #%d by %s: %s",
                job_id,
                job.get("who") or "?",
                error or f"deleted {deleted} workflows",
            )

        ops = finished_ops(record, error, self._now())
        self._store.writer.submit_many([Transition(ops=ops)], landed)


def _aged(command: dict[str, Any], now: float) -> dict[str, Any]:
    """A purge by age (``herder purge --older-than``: ``older_than`` seconds) with its
    cutoff taken on the engine's clock ``now``, once, when it is first seen: the
    ``updated`` times it is compared with are the engine's, which may be far from the
    wall clock the CLI read (a stepped wall clock, a FakeClock). The age is the operator's
    as of when they asked: the time the command waited for a runtime (by the wall clock
    it was ``created`` on) is taken off too. The CLI's own cutoff, ``before``, stays the
    fallback (and what a runtime of an older herder uses)."""
    args = command.get("args")
    if not isinstance(args, dict) or "older_than" not in args:
        return command
    try:
        wall = _wall()
        waited = max(0.0, wall - float(command.get("created") or wall))
        before = now - float(args["older_than"]) - waited
    except (TypeError, ValueError):
        return command
    if not math.isfinite(before):
        return command
    return {**command, "args": {**args, "before": before}}


def _wall() -> float:
    """The wall clock, which commands are created on (a seam for tests)."""
    return time.time()


_LAST = datetime.datetime(9999, 12, 31, tzinfo=datetime.UTC).timestamp()


def _job_cutoff(job: dict[str, Any]) -> tuple[float, frozenset[str]]:
    """A purge command's cutoff and states, checked: any process may write a command,
    and what no index key can hold must be refused on the record, not raise each sweep."""
    args = job.get("args") or {}
    before = real_number(args.get("before")) if isinstance(args, dict) else None
    if before is None or not -_LAST <= before <= _LAST:  # (NaN is neither)
        raise ValueError(
            f"a purge needs args.before, a time in seconds up to the year 9999 (herder "
            f"purge gives one), got {args!r:.100}"
        )
    states = frozenset(args.get("states") or FINISHED)
    if not states <= PURGEABLE:
        raise ValueError(f"cannot purge states {sorted(states - PURGEABLE)}")
    return before, states
