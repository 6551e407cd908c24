"""Starting workflows on a :class:`Runtime` (a base class of it): ``start`` and
``start_many`` (and, through ``_starting``/``_starting_many``, their ``_async`` forms).

A start is checked first (``_prepare``: nothing is written), takes a slot under
``max_active_workflows`` (``_capacity``), and is one compare-and-set transaction that
creates the workflow only if its id is free (``_starts.creation``): idempotent per id
inside the write transaction. Once durable, the workflow is admitted to the Scheduler.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
import threading
import uuid
from collections.abc import Iterable, Mapping
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, cast

from herder.actors import UnknownName, WorkflowConflict
from herder.runtime._async import Steps, Wait, awaited, run_blocking
from herder.runtime._deadlines import deadline_at
from herder.runtime._handle import WorkflowHandle
from herder.runtime._routing import check_registered, resolve_agents
from herder.runtime._starts import NewStart, creation, same_record, same_start, start_args
from herder.runtime._timing import begin_at, check_priority
from herder.runtime._workflow import Workflow
from herder.store import (
    ConditionFailed,
    Plan,
    Put,
    StepRecord,
    WorkflowRecord,
    encode,
    normalize,
    validate_id,
)

if TYPE_CHECKING:
    from herder.runtime._runtime import Runtime

_log = logging.getLogger("herder.runtime")


def _runtime(part: object) -> Runtime:
    return cast("Runtime", part)  # a base of Runtime only


class _Ids:
    """Random workflow ids (uuid4 hex), 256 from one ``os.urandom`` read: each read
    releases the GIL, and on an event loop beside busy runtime threads getting it back
    cost ~0.5 ms per start (issue 16). A forked child drops the parent's unused bytes."""

    _BATCH = 256

    def __init__(self) -> None:
        self._pool, self._used = b"", 0
        self._guard = threading.Lock()
        os.register_at_fork(after_in_child=self._forget)

    def _forget(self) -> None:
        self._pool, self._used = b"", 0

    def new(self) -> str:
        with self._guard:
            if self._used >= len(self._pool):
                self._pool, self._used = os.urandom(16 * self._BATCH), 0
            raw = self._pool[self._used : self._used + 16]
            self._used += 16
        return uuid.UUID(bytes=raw, version=4).hex


_new_id = _Ids().new


class Starting:
    """``start`` and ``start_many``."""

    def start(
        self,
        workflow: str | Workflow,
        input: Any = None,
        *,
        workflow_id: str | None = None,
        timeout: float | None = None,
        priority: int = 0,
        start_at: datetime.datetime | None = None,
        delay: float | None = None,
        deadline: float | datetime.datetime | None = None,
    ) -> WorkflowHandle:
        """Start a workflow; it is durable when this returns.

        Idempotent on ``workflow_id``: the same id with the same input returns a handle to
        the existing workflow; with different input it raises :class:`WorkflowConflict`.
        Blocks while ``max_active_workflows`` are unfinished (up to ``timeout`` seconds,
        then :class:`TimeoutError`).

        ``priority`` (default 0; higher first) orders its steps against other work
        waiting for the same agent; waiting raises it (see ``priority_aging``).
        ``start_at`` (a datetime) or ``delay`` (seconds) holds its first steps until then;
        the wait is a timer in the store and survives restarts.
        ``deadline`` (seconds from now, or an aware datetime; default: the definition's
        ``Workflow(deadline=)``) is when it must have ended: past it no new attempt
        starts, running attempts are superseded and the workflow is compensated, also
        when it passed while no process ran (docs/workflows.md).
        """
        rt = _runtime(self)
        steps = rt._starting(
            workflow,
            input,
            workflow_id=workflow_id,
            timeout=timeout,
            priority=priority,
            start_at=start_at,
            delay=delay,
            deadline=deadline,
        )
        return run_blocking(steps)

    def _start(self, workflow: str | Workflow, input: Any, **options: Any) -> WorkflowHandle:
        """:meth:`start`, with ``_starting``'s extra options (``also``)."""
        rt = _runtime(self)
        return run_blocking(rt._starting(workflow, input, **options))

    def _starting(
        self,
        workflow: str | Workflow,
        input: Any,
        *,
        workflow_id: str | None,
        timeout: float | None,
        priority: int = 0,
        start_at: datetime.datetime | None = None,
        delay: float | None = None,
        deadline: float | datetime.datetime | None = None,
        also: tuple[Put, ...] = (),
    ) -> Steps[WorkflowHandle]:
        """The body of :meth:`start` and ``start_async``; it yields their two waits.

        ``also`` is written in the transaction that creates the workflow, and only if it
        does (a schedule's cursor, see ``_firing``)."""
        rt = _runtime(self)
        rt._check_active()
        times = (rt._ctx.clock.time(), rt._clock.time())  # one read of each clock (its lock)
        new = rt._prepare(
            workflow,
            input,
            workflow_id=workflow_id,
            priority=priority,
            start_at=start_at,
            delay=delay,
            deadline=deadline,
            times=times,
        )
        plan, wid, normalized = new.plan, new.workflow_id, new.input
        # An existing id is found by the compare-and-set below, without a read. Only when
        # start() would have to wait for capacity is it worth looking first: a repeated
        # start of an existing workflow never waits.
        full = rt._active >= rt._max_active
        if full:
            existing = rt._store.get_workflow(wid)
            if existing is not None:
                return rt._same_start(existing, plan, normalized)
        yield Wait(lambda: rt._wait_capacity(timeout), lambda: rt._capacity_async(timeout))
        record, steps, transition = rt._creation(new, also, now=None if full else times[0])
        committed = rt._store.writer.submit(transition)
        gave_up = threading.Event()
        slot = threading.Lock()  # whoever acquires it first gives the capacity back

        def release_once() -> None:
            if slot.acquire(blocking=False):
                rt._release_capacity()

        def on_commit(done: Future[None]) -> None:
            # Admitted from here, so a start() that stopped waiting (timeout) still gets
            # its workflow running once it is durable, or its capacity back if it failed.
            if done.exception() is None:
                rt._admit(record, steps)
            elif gave_up.is_set():
                release_once()

        committed.add_done_callback(on_commit)
        try:
            yield Wait(
                lambda: committed.result(timeout=rt._ask_timeout),
                lambda: awaited(committed, rt._ask_timeout),
            )
            rt._started.add((plan.name, plan.version))
        except ConditionFailed:
            rt._id_taken(record)
            raced = rt._store.get_workflow(wid)
            assert raced is not None
            return rt._same_start(raced, plan, normalized)
        except (TimeoutError, asyncio.CancelledError):  # the commit may still land
            gave_up.set()
            if committed.done() and committed.exception() is not None:
                release_once()  # it failed between the timeout and gave_up
            raise
        except BaseException:
            rt._release_capacity()
            raise
        _log.info(
            "workflow %s started (%s@%d)",
            wid,
            plan.name,
            plan.version,
            extra={"workflow_id": wid, "workflow": plan.name},
        )
        return WorkflowHandle(rt, wid)

    def start_many(
        self, starts: Iterable[Mapping[str, Any]], *, timeout: float | None = None
    ) -> list[WorkflowHandle]:
        """Start many workflows in one group commit (one fsync, not one each); all are
        durable when this returns, with one handle per item, in order.

        Each item is a mapping of :meth:`start`'s arguments: ``workflow`` (required),
        ``input``, ``workflow_id``, ``priority``, ``start_at``, ``delay``, ``deadline``.
        Every item is checked before anything is written: a bad one raises and nothing
        starts.
        Idempotent per id like :meth:`start`: an id that exists (or repeats in the list)
        with the same input gives a handle to that workflow; when one has different
        input, the others still start and :class:`WorkflowConflict` names it. Blocks while
        ``max_active_workflows`` are unfinished (up to ``timeout`` seconds).
        """
        rt = _runtime(self)
        return run_blocking(rt._starting_many(list(starts), timeout))

    def _starting_many(
        self, starts: list[Mapping[str, Any]], timeout: float | None
    ) -> Steps[list[WorkflowHandle]]:
        """The body of :meth:`start_many` and ``start_many_async``."""
        rt = _runtime(self)
        rt._check_active()
        # One clock read for the batch, and each definition's agents checked once (per
        # item only when its agents come from the input), not both per item.
        times = (rt._ctx.clock.time(), rt._clock.time())
        checked: set[int] = set()  # id() of plans, all held by ``news``
        news = [
            rt._prepare(**start_args(i, item), times=times, checked=checked)
            for i, item in enumerate(starts)
        ]
        unique: dict[str, NewStart] = {}
        for new in news:
            first = unique.setdefault(new.workflow_id, new)
            if first is not new and not same_start(first, new):
                raise WorkflowConflict(
                    f"workflow id {new.workflow_id!r} appears twice in start_many with "
                    "different workflows or input; nothing was started"
                )
        taken = rt._take_capacity_now(len(unique))
        try:
            while taken < len(unique):
                yield Wait(lambda: rt._wait_capacity(timeout), lambda: rt._capacity_async(timeout))
                taken += 1
        except BaseException:
            for _ in range(taken):
                rt._release_capacity()
            raise
        marked = set(rt._started)  # one started mark per definition, not one per item
        created = []
        for new in unique.values():
            key = (new.plan.name, new.plan.version)
            created.append(rt._creation(new, mark=key not in marked, now=times[0]))
            marked.add(key)
        committed: Future[list[BaseException | None]] = Future()

        def on_done(results: list[BaseException | None]) -> None:
            # Admitted here, on the writer thread, so workflows are running once durable
            # even if the caller stopped waiting; a failed one gives its capacity back.
            committed.set_result(results)
            for (record, steps, _), result in zip(created, results, strict=True):
                if result is None:
                    rt._admit(record, steps)
                else:
                    rt._id_taken(record)  # or not written at all: the same for both

        rt._store.writer.submit_many([c[2] for c in created], on_done)
        outcomes = yield Wait(
            lambda: committed.result(timeout=rt._ask_timeout),
            lambda: awaited(committed, rt._ask_timeout),
        )
        conflicts = []
        for new, outcome in zip(unique.values(), outcomes, strict=True):
            if outcome is None:
                rt._started.add((new.plan.name, new.plan.version))
                continue
            if not isinstance(outcome, ConditionFailed):
                raise outcome
            existing = rt._store.get_workflow(new.workflow_id)
            if existing is None or not same_record(existing, new):
                conflicts.append(new.workflow_id)
        if conflicts:
            raise WorkflowConflict(
                f"{len(conflicts)} workflow ids were already started with different input "
                f"({', '.join(map(repr, conflicts[:5]))}); the other workflows started"
            )
        _log.info("%d workflows started in one commit", len(created))
        return [WorkflowHandle(rt, new.workflow_id) for new in news]

    def _prepare(
        self,
        workflow: str | Workflow,
        input: Any,
        *,
        workflow_id: str | None,
        priority: int,
        start_at: datetime.datetime | None,
        delay: float | None,
        deadline: float | datetime.datetime | None = None,
        times: tuple[float, float] | None = None,
        checked: set[int] | None = None,
    ) -> NewStart:
        """Check one start's arguments (nothing is written): see :meth:`start`.

        ``times`` is (engine time, wall time) if the caller read them already (a batch
        reads them once); ``checked`` holds the definitions whose fixed agents a batch
        found registered already, so they are checked once per batch, not per item."""
        rt = _runtime(self)
        name = workflow.name if isinstance(workflow, Workflow) else workflow
        plan = rt._latest.get(name) if isinstance(name, str) else None
        if plan is None:
            known = ", ".join(sorted(rt._latest)) or "none"
            raise UnknownName(
                f"no workflow named {name!r} is registered (registered: {known}); "
                "call add_workflow first"
            )
        wid = _new_id() if workflow_id is None else validate_id(workflow_id)
        priority = check_priority(priority)
        now, wall = times or (rt._ctx.clock.time(), rt._clock.time())
        begin = begin_at(now, start_at, delay, wall=wall)
        ends = deadline_at(now, plan.deadline if deadline is None else deadline, wall=wall)
        normalized = normalize(input, limit=rt._max_input_bytes, what="workflow input")
        if checked is not None and id(plan) in checked:
            return NewStart(plan, wid, normalized, priority, begin, {}, ends)
        agents = resolve_agents(plan, normalized, rt._routers)
        check_registered(plan, agents, rt._ctx.agents, rt._actions)
        if checked is not None and not agents:  # no templated step: the same for every item
            checked.add(id(plan))
        return NewStart(plan, wid, normalized, priority, begin, agents, ends)

    def _creation(
        self,
        new: NewStart,
        also: tuple[Put, ...] = (),
        *,
        mark: bool | None = None,
        now: float | None = None,
    ) -> tuple[WorkflowRecord, list[StepRecord], Any]:
        """The new workflow's records and transition; ``mark`` (default: unless this
        runtime marked it already) adds its definition's started mark; ``now`` defaults
        to the engine's clock."""
        rt = _runtime(self)
        if mark is None:
            mark = (new.plan.name, new.plan.version) not in rt._started
        if now is None:
            now = rt._ctx.clock.time()
        return creation(
            new,
            now,
            rt._ctx.next_token(),
            mark_started=mark,
            also=also,
            trace=None
            if rt._tracing is None
            else rt._tracing.start_workflow(new.plan.name, new.workflow_id, now),
        )

    def _same_start(self, existing: WorkflowRecord, plan: Plan, normalized: Any) -> WorkflowHandle:
        rt = _runtime(self)
        same = existing.input == normalized or encode(existing.input) == encode(normalized)
        if existing.name != plan.name or not same:  # (the bytes also match when NaN is in it)
            raise WorkflowConflict(
                f"workflow id {existing.id!r} was already started as {existing.name!r} with "
                "different input; use a new id, or the same input to get the existing handle"
            )
        return WorkflowHandle(rt, existing.id)

    def _id_taken(self, record: WorkflowRecord) -> None:
        """A start was not written (its id was taken): give its capacity back and drop
        its span."""
        rt = _runtime(self)
        rt._release_capacity()
        if rt._tracing is not None and record.trace is not None:
            rt._tracing.discard(record.trace)
