"""Starting many workflows in one group commit: ``start_many`` (and the body
``start_many_async`` shares, ``_starting_many``), a base class of :class:`Runtime`
through ``Starting``.

Every item is checked as one ``start()`` is (``Starting._prepare``) before anything is
written; all of them take their slots under ``max_active_workflows``, and their creating
transitions go to the store writer as one group, committed in one write transaction
(one fsync). Each is still idempotent per id inside that transaction.

While it checks and builds the batch (not while it waits), the cyclic garbage collector is
held off (:class:`_CollectorPause`): the batch makes about 25 tracked objects per item that
all stay alive, and each 700 of them set off a young collection, every tenth an older one
and now and then a full one over the whole heap; without them a batch of 2,000 costs
about a quarter less CPU (the deferred collection included) and its wall time no longer
jumps by a full collection's 10-150 ms.
"""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future
from typing import Any

from herder.actors import WorkflowConflict
from herder.runtime._claims import Held, lapsed, left, within
from herder.runtime._handle import WorkflowHandle
from herder.runtime._part import whole as _runtime
from herder.runtime._starts import (
    NewStart,
    creation,
    existing_workflow,
    same_record,
    same_start,
    start_args,
    start_items,
    started_mark,
    stopped,
    submit_creations,
)
from herder.runtime._waits import Steps, Wait, awaited, run_blocking, seconds
from herder.store import ConditionFailed, InvalidInput, Put, TimedOut, get_logger

_log = get_logger("herder.runtime")


class _CollectorPause:
    """``with _PAUSE:`` holds the cyclic garbage collector off, and on after (unless the
    application had it off when the first of any overlapping pauses began)."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._pauses = 0
        self._resume = False

    def __enter__(self) -> None:
        with self._guard:
            if self._pauses == 0:
                self._resume = gc.isenabled()
                gc.disable()
            self._pauses += 1

    def __exit__(self, *_exc: object) -> None:
        with self._guard:
            self._pauses -= 1
            if self._pauses == 0 and self._resume:
                gc.enable()


_PAUSE = _CollectorPause()


class StartingMany:
    """``start_many``."""

    def start_many(
        self, starts: Iterable[Mapping[str, Any]], *, timeout: float | None = None
    ) -> list[WorkflowHandle]:
        """Start many workflows in one group commit (one fsync, not one each); all are
        durable when this returns, with one handle per item, in order.

        Each item is a mapping of :meth:`start`'s arguments: ``workflow`` (required),
        ``input``, ``workflow_id``, ``priority``, ``start_at``, ``delay``, ``deadline``.
        Every item is checked before anything is written: a bad one raises and nothing
        starts.
        Idempotent per id like :meth:`start`: an id that exists with the same input gives
        a handle to that workflow; when one has different input, the others still start
        and :class:`WorkflowConflict` names it. An id repeated in the list must repeat the
        same start, else :class:`WorkflowConflict` and nothing starts. Blocks until as
        many slots of ``max_active_workflows`` as it has new ids are free at once (up to
        ``timeout`` seconds; ids that exist take none, so a batch repeated after it landed
        returns at once); more ids than that can never fit: :class:`InvalidInput`.
        """
        rt = _runtime(self)
        return run_blocking(rt._starting_many(start_items(starts), seconds(timeout)))

    def _starting_many(
        self,
        starts: list[Mapping[str, Any]] | list[Mapping[str, Any] | NewStart],
        timeout: float | None,
        also: Mapping[str, tuple[Put, ...]] | None = None,
    ) -> Steps[list[WorkflowHandle]]:
        """The body of :meth:`start_many` and ``start_many_async``; ``also``: puts by
        workflow id, each written in the transaction that creates that workflow, and only
        if it does (schedules' cursors, ``_firing``, whose starts may come checked
        already: a ``NewStart``)."""
        rt = _runtime(self)
        rt._check_active()
        # One clock read for the batch, not one per item (and each definition's agents
        # are looked at once, see _prepare).
        now, wall = rt._ctx.clock.time(), rt._clock.time()
        with _PAUSE:
            news = _prepared(rt._prepare, starts, now, wall)
        unique: dict[str, NewStart] = {}
        for new in news:
            first = unique.setdefault(new.workflow_id, new)
            if first is not new and not same_start(first, new):
                raise WorkflowConflict(
                    f"workflow id {new.workflow_id!r} appears twice in start_many with "
                    "different workflows or input; nothing was started"
                )
        taken = self._taken(unique)  # a repeated batch: no slot for what exists already
        unique = {wid: new for wid, new in unique.items() if wid not in taken}
        n = len(unique)
        if not n:
            return self._repeated_many(news, taken)
        if n > rt._max_active:
            raise InvalidInput(
                f"start_many of {n} workflow ids can never fit max_active_workflows="
                f"{rt._max_active}; start them in batches of at most {rt._max_active}"
            )
        began = time.monotonic()
        if not rt._take_capacity_now(n):  # all at once (see _wait_capacity)
            yield Wait(
                lambda: rt._wait_capacity(timeout, n),
                lambda: rt._capacity_async(timeout, n, "start_many_async()"),
            )
        try:  # (runtime/_claims.py; after the wait: none held meanwhile)
            wait = within(left(timeout, began), rt._ask_timeout)
            claims = yield Wait(
                lambda: rt._claims.take_many(list(unique), wait),
                lambda: rt._claims.take_many_async(list(unique), wait),
            )
            late = lapsed("start_many()", timeout, wait, rt._ask_timeout)
            if late is not None and any(claim is None for _, claim in claims):
                rt._claims.give_back_many(claims)
                raise late
        except BaseException:
            for _ in range(n):
                rt._release_capacity()
            raise
        # Created now that it has its room, as a queued start() is (its start_at, delay
        # and deadline were reckoned from the call, as documented).
        now = rt._ctx.clock.time()
        try:
            rt._check_open()  # (stopped while it waited, or crossed threads: the store is shut)
            committed, handles, marks = self._submit_many(news, unique, claims, now, also or {})
        except BaseException:  # nothing was queued: its claims and slots go back
            rt._claims.give_back_many(claims)
            for _ in range(n):
                rt._release_capacity()
            raise
        try:
            outcomes = yield Wait(
                lambda: committed.result(timeout=rt._ask_timeout),
                lambda: awaited(committed, rt._ask_timeout),
            )
        except TimeoutError:  # (its workflows are admitted once durable: on_done)
            raise _undecided(rt._ask_timeout) from None
        rt._started.update(key for key, o in zip(marks, outcomes[n:], strict=True) if o is None)
        if outcomes[:n].count(None) != n:  # (one pass in C when every one was created)
            rt._refused(list(unique.values()), outcomes)
        _log.info("%d workflows started in one commit", n)
        return self._repeated_many(news, taken) if taken else handles

    def _taken(self, unique: dict[str, NewStart]) -> dict[str, bool]:
        """The ids of ``unique`` a workflow has already, each with whether it is the same
        start (its handle) or another (a conflict): read before any slot is taken, so a
        batch repeated after it landed (a retry) needs no room (as :meth:`start`)."""
        rt = _runtime(self)
        taken = {}
        for wid, new in unique.items():
            record = existing_workflow(rt, wid)
            if record is not None:
                taken[wid] = same_record(record, new)
        return taken

    def _repeated_many(self, news: list[NewStart], taken: dict[str, bool]) -> list[WorkflowHandle]:
        """The handles of a batch some of whose ids existed (``taken``), or
        :class:`WorkflowConflict` naming those that are another workflow (the others
        started)."""
        conflicts = [wid for wid, same in taken.items() if not same]
        if conflicts:
            raise _conflict(conflicts)
        rt = _runtime(self)
        return [WorkflowHandle(rt, new.workflow_id) for new in news]

    def _submit_many(
        self,
        news: list[NewStart],
        unique: dict[str, NewStart],
        claims: Held,
        now: float,
        also: Mapping[str, tuple[Put, ...]],
    ) -> tuple[Future[list[BaseException | None]], list[WorkflowHandle], list[tuple[str, int]]]:
        """Queue ``start_many``'s creations in one group: the future of their outcomes,
        the handles, and the definitions' started marks it writes. Its writer callback
        admits the durable ones and ends ``claims``."""
        rt = _runtime(self)
        with _PAUSE:
            # creation() straight, not through _creation() per item: thousands of calls.
            token, tracing = rt._ctx.next_token, rt._tracing
            created = [
                creation(
                    new,
                    now,
                    token(),
                    mark_started=False,
                    also=also.get(new.workflow_id, ()),
                    trace=None
                    if tracing is None
                    else tracing.start_workflow(new.plan.name, new.workflow_id, now),
                )
                for new in unique.values()
            ]
            # Each definition's started mark once, as a transition of its own in the same
            # group (one write transaction): it lands even when an item's id was taken.
            used = list({id(new.plan): new.plan for new in news}.values())
            marks = list(dict.fromkeys((plan.name, plan.version) for plan in used))
            marks = [key for key in marks if key not in rt._started]
            committed: Future[list[BaseException | None]] = Future()

            def on_done(results: list[BaseException | None]) -> None:
                # Admitted here, on the writer thread, so workflows are running once durable
                # even if the caller stopped waiting (all in one message to the Scheduler); a
                # failed one gives its capacity back.
                committed.set_result(results)
                durable = []
                for (record, steps, _), result in zip(created, results, strict=False):
                    if result is None:
                        durable.append((record, steps))
                    else:
                        rt._id_taken(record)  # or not written at all: the same for both
                if durable:
                    rt._admit(durable)
                rt._claims.give_back_many(claims)

            group = [c[2] for c in created] + [started_mark(*key) for key in marks]
            submit_creations(rt, group, on_done, used)
            # The handles are made while the commit is synced (its fsync lets go of the GIL):
            # once it is durable the Scheduler admits the batch, and whatever the caller has
            # left to do then waits for the GIL behind it.
            handles = [WorkflowHandle(rt, new.workflow_id) for new in news]
        return committed, handles, marks

    def _refused(self, news: list[NewStart], outcomes: list[BaseException | None]) -> None:
        """Raise what refused some of ``start_many``'s creations (``outcomes``, in the
        order of ``news``): the store's error, or :class:`WorkflowConflict` naming the ids
        that were taken by a workflow with other input (a taken id with the same input
        gives that workflow's handle)."""
        rt = _runtime(self)
        conflicts = []
        for new, outcome in zip(news, outcomes, strict=False):
            if outcome is None:
                continue
            if not isinstance(outcome, ConditionFailed):
                raise stopped(rt, outcome)
            existing = rt._store.get_workflow(new.workflow_id)
            if existing is None or not same_record(existing, new):
                conflicts.append(new.workflow_id)
        if conflicts:
            raise _conflict(conflicts)


def _prepared(
    prepare: Callable[..., NewStart],
    starts: list[Mapping[str, Any]] | list[Mapping[str, Any] | NewStart],
    now: float,
    wall: float,
) -> list[NewStart]:
    """Each of ``starts`` checked (``Starting._prepare``), unless it is checked already."""
    news: list[NewStart] = []
    for i, item in enumerate(starts):
        if type(item) is NewStart:
            news.append(item)
            continue
        args = start_args(i, item)
        try:
            news.append(prepare(**args, now=now, wall=wall))
        except InvalidInput as exc:  # (which of thousands: the caller must know)
            raise _at_item(i, exc) from None
    return news


def _at_item(index: int, error: InvalidInput) -> InvalidInput:
    """``error`` (of the same class) naming the ``start_many`` item that caused it."""
    named = type(error)(f"start_many item {index}: {error}")
    return named.with_traceback(error.__traceback__)


def _undecided(timeout: float) -> TimedOut:
    """``start_many``'s error for a group commit not decided within ``ask_timeout``."""
    return TimedOut(
        f"the store did not commit the batch within {timeout} s (ask_timeout); its "
        "workflows may still start: calling start_many again with the same items is safe "
        "for those with a workflow_id (an item without one would start another workflow)"
    )


def _conflict(ids: list[str]) -> WorkflowConflict:
    """``start_many``'s error for the ids that were started as another workflow."""
    return WorkflowConflict(
        f"{len(ids)} workflow ids were already started as another workflow or with "
        f"different input ({', '.join(map(repr, ids[:5]))}); the other workflows started"
    )
