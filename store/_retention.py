"""Retention: deleting finished workflows (with their steps, history, timers and index
entries) that were last updated before a cutoff, in bounded batches.

A workflow is *finished* in SUCCEEDED, COMPENSATED, CANCELLED or ABANDONED (a
NEEDS_ATTENTION one waits for an operator and is never purged unless asked by state).
The candidates come from the ``recent`` index (oldest update first, see ``_recent.py``),
so finding them reads a range, not the store. One batch is one consistent snapshot (the
keys of each workflow's steps and history) and one group of transitions committed
together; each transition deletes one workflow and holds only if the workflow is still
in the state it was found in (an ``Expect``), so nothing that moved meanwhile is lost;
what was written of a workflow after its keys were read and before its deletion
committed goes with the next batch (``deletions``' ``gone``), so nothing of it outlives
it. The writer drops the index entries in the same transaction (``Writer`` ``derived``).

Used by the runtime's retention (each Supervisor sweep purges at most one batch, sized by
the backlog, in the background of the writer's other work, found by a bounded read of the
index that goes on where the last sweep's stopped: :func:`resumed_candidates`) and by
``herder purge`` (on a store no runtime holds, or through the command channel while one
runs).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from herder.store._codec import decode
from herder.store._errors import ConditionFailed, StoreCorrupt, StoreIOError, TimedOut
from herder.store._history import HISTORY_DB
from herder.store._keys import KEY_SEP, step_key, timer_key, workflow_key
from herder.store._ops import Delete, Expect, Transition
from herder.store._recent import RECENT_DB, to_ms, window
from herder.store._records import StepRecord, WorkflowState, stored_field

if TYPE_CHECKING:
    from herder.store._env import Store
    from herder.store._reads import Snapshot

FINISHED = frozenset(
    str(s)
    for s in (
        WorkflowState.SUCCEEDED,
        WorkflowState.COMPENSATED,
        WorkflowState.CANCELLED,
        WorkflowState.ABANDONED,
    )
)
"""States retention deletes by default: final, and nothing left for anyone to do."""

PURGEABLE = FINISHED | {str(WorkflowState.NEEDS_ATTENTION)}
"""States ``herder purge --state`` accepts (a parked workflow only when asked by name)."""

BATCH = 500
"""Workflows deleted per transaction group by default."""

RETENTION_SCAN = 1000
"""Most ``recent`` index entries one :func:`resumed_candidates` call reads."""

MOST_DELETES = 20_000
"""Deletes after which a batch takes no more workflows (:func:`deletions`): a :data:`BATCH`
of workflows of a few steps is a few thousand, but of workflows with a hundred steps (or
long histories) it is 150,000, a group that held the writer, and every step commit queued
behind it, for a fifth of a second; a batch takes fewer of those (one at least, however
large)."""


def candidates(
    store: Store, before: float, states: frozenset[str] = FINISHED, limit: int | None = None
) -> list[tuple[str, str]]:
    """(workflow id, state) of workflows in ``states`` last updated before ``before``,
    oldest first, at most ``limit``."""
    out: list[tuple[str, str]] = []
    for _, wid, state in store.recent(newest_first=False, states=states, until=before):
        out.append((wid, state))
        if limit is not None and len(out) >= limit:
            break
    return out


def resumed_candidates(
    store: Store,
    before: float,
    states: frozenset[str],
    limit: int,
    *,
    after: bytes | None,
    most: int = RETENTION_SCAN,
) -> tuple[list[tuple[str, str]], bytes | None]:
    """:func:`candidates` for a caller that comes back (the runtime's retention, each
    sweep): read at most ``most`` entries of the ``recent`` index, from just after the
    position ``after`` that the previous call returned (None: the oldest). Returns the
    candidates and where the next call goes on, or None once the range up to ``before``
    is read to its end (the next call starts from the oldest again). So each call costs
    a bounded read however many unfinished workflows are older than ``before``, and
    every candidate is found within one pass of the range."""
    if not store.indexed:  # an older store never opened by a writer: no positions
        return candidates(store, before, states, limit), None

    def read(snap: Snapshot) -> tuple[list[tuple[int, str, str]], bytes | None]:
        cur = snap.cursor(RECENT_DB)
        return window(
            cur, after=after, until_ms=to_ms(before), states=states, limit=limit, most=most
        )

    found, position = store.view(read)
    return [(wid, state) for _, wid, state in found], position


def count(store: Store, before: float, states: frozenset[str] = FINISHED) -> int:
    """How many workflows :func:`purge` would delete now (``herder purge --dry-run``)."""
    return sum(1 for _ in store.recent(newest_first=False, states=states, until=before))


def deletions(
    store: Store, found: Iterable[tuple[str, str]], gone: Iterable[str] = ()
) -> tuple[int, list[Transition]]:
    """One transition per workflow of ``found`` deleting it whole, read on one snapshot,
    in order, until they hold :data:`MOST_DELETES` deletes (one workflow at least);
    then, for each workflow of ``gone`` (those the previous batch deleted) anything is
    left of, one deleting that, if the workflow is still absent. Returns how many of
    ``found`` the transitions delete (the first ones: the rest go with a later batch)
    and the transitions.

    What is left of one are the keys written after the previous batch read its keys and
    before it committed (a refused operator command's event in its history, say). Once
    the purge of a workflow has committed, nothing more is written of it (an operator's
    action and a command's event are written only while it is there), so one more look,
    in the next batch, finds all there is."""
    found, gone = list(found), list(gone)

    def read(snap: Snapshot) -> tuple[int, list[Transition]]:
        taken, ops = [], 0
        for wid, state in found:
            if ops >= MOST_DELETES:
                break
            taken.append(_deletion(snap, wid, state))
            ops += len(taken[-1].ops)
        left = [t for t in (_deletion(snap, wid, None) for wid in gone) if t.ops]
        return len(taken), taken + left

    return store.view(read)


def _deletion(snap: Snapshot, workflow_id: str, state: str | None) -> Transition:
    """Delete the workflow whole if it is in ``state``; None: what is left of one
    deleted (its steps, timers and history), if it is still absent."""
    key = workflow_key(workflow_id)
    ops: list[Delete] = [] if state is None else [Delete("workflows", key)]
    for skey, raw in snap.items("steps", step_key(workflow_id, "")):
        ops.append(Delete("steps", skey))
        try:
            timer_ms = stored_field(decode(raw, db="steps", key=skey), StepRecord, "timer_ms")
        except (StoreCorrupt, KeyError):
            continue
        if isinstance(timer_ms, int):  # a final workflow has none; a leftover goes too
            name = skey[len(key) + len(KEY_SEP) :].decode("utf-8", "replace")
            ops.append(Delete("timers", timer_key(timer_ms, workflow_id, name)))
    ops += [Delete(HISTORY_DB, hkey) for hkey, _ in snap.items(HISTORY_DB, key + KEY_SEP)]
    held = (
        Expect("workflows", key, exists=False)
        if state is None
        else Expect("workflows", key, "state", state)
    )
    return Transition(ops=tuple(ops), expect=(held,))


def purge(
    store: Store,
    before: float,
    states: frozenset[str] = FINISHED,
    *,
    batch: int = BATCH,
    timeout: float | None = 60.0,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Delete every workflow in ``states`` last updated before ``before``, ``batch`` at
    a time (each batch one group commit, waited for); returns how many were deleted.
    ``progress`` is given the count so far after each batch (``herder purge`` shows it)."""
    deleted, gone = 0, list[str]()
    while True:
        found = candidates(store, before, states, batch)
        taken, transitions = deletions(store, found, gone)  # (and what the last batch left)
        if not transitions:
            return deleted
        found = found[:taken]  # (the rest: from the oldest again, with the next batch)
        try:
            outcomes = commit_group(store, transitions, timeout)
        except StoreIOError as exc:
            if not deleted:
                raise
            raise StoreIOError(  # (a full disk, say: what the batches before it deleted)
                f"{exc} The {deleted} workflows deleted before it stay deleted; run the purge "
                "again to go on"
            ) from exc
        gone = [wid for (wid, _), o in zip(found, outcomes, strict=False) if o is None]
        deleted += len(gone)
        if progress is not None:
            progress(deleted)
        if not gone:  # every one moved meanwhile (or none was left): nothing more to do now
            return deleted


def commit_group(
    store: Store, transitions: list[Transition], timeout: float | None
) -> list[BaseException | None]:
    """Submit ``transitions`` as one group, wait, and return their outcomes; a condition
    that failed (the workflow moved meanwhile) is an outcome, any other failure raises."""
    done = threading.Event()
    results: list[BaseException | None] = []

    def on_done(outcomes: list[BaseException | None]) -> None:
        results.extend(outcomes)
        done.set()

    store.writer.submit_many(transitions, on_done)
    if not done.wait(timeout):
        raise TimedOut(
            f"the store did not commit a purge batch within {timeout} s (a slow or stalled "
            "disk?); what was committed stays purged: purge again later for the rest"
        )
    for r in results:
        if r is not None and not isinstance(r, ConditionFailed | StoreCorrupt):
            raise r
    return results
