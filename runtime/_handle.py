"""Waiting for a workflow's end: :class:`WorkflowHandle`, and the waiters a
:class:`Runtime` keeps (a base class of it), resolved by the Scheduler's final listener.
"""

from __future__ import annotations

import asyncio
import logging
from functools import partial
from typing import TYPE_CHECKING, Any

from herder.actors import (
    Admit,
    EarlyStart,
    RuntimeClosed,
    Unadmit,
    UnknownWorkflow,
    WrongThread,
)
from herder.runtime._async import AsyncHandle, unended
from herder.runtime._part import whole as _runtime
from herder.runtime._status import WorkflowFailed, WorkflowStatus, in_plan_order, steps_if_kept
from herder.runtime._waits import OneShot, off_writer, seconds
from herder.store import (
    Snapshot,
    StepRecord,
    StoreClosed,
    StoreCorrupt,
    TimedOut,
    WorkflowRecord,
    WorkflowState,
    get_logger,
    peek_field,
    workflow_key,
)

if TYPE_CHECKING:
    from herder.runtime._runtime import Runtime

_log = get_logger("herder.runtime")

Final = tuple[WorkflowRecord, "list[StepRecord] | None"]
"""What a waiter on a workflow gets: its final record and, when the Scheduler announced
it, its steps in plan order (None when it had ended before: read them from the store)."""


class WorkflowHandle(AsyncHandle):
    """A started workflow: wait for its result (``result`` or ``await result_async``) or
    look at its status."""

    def __init__(self, runtime: Runtime, workflow_id: str) -> None:
        self._runtime = runtime
        self.id = workflow_id

    def result(self, timeout: float | None = None) -> dict[str, Any]:
        """Step results by name once the workflow SUCCEEDED.

        Raises :class:`WorkflowFailed` once it is COMPENSATED, CANCELLED, ABANDONED or
        NEEDS_ATTENTION, :class:`TimedOut` (a ``TimeoutError``) if ``timeout`` seconds
        pass first (it goes on running: wait again), :class:`UnknownWorkflow` if the store
        has no such workflow (one that ended may have been deleted by ``retention`` or
        ``herder purge`` before this read it),
        :class:`StoreCorrupt` at once if one of its records is damaged (it cannot end),
        and :class:`WrongThread` on the thread of the event loop the runtime's ``async
        def`` actions run on (await :meth:`result_async` there), and on the store's writer
        thread (a span processor's) for a workflow not yet ended.
        """
        timeout = seconds(timeout)
        if self._runtime._ctx.event_loop.runs_here():
            raise WrongThread(
                "h.result() blocks its thread, and this one runs the event loop of the "
                "runtime's async def actions: the workflow's own steps could not run there "
                "meanwhile, so it might never end; await h.result_async() instead"
            )
        return self._outcome(self._runtime._wait_final(self.id, timeout))

    def _outcome(self, final: Final) -> dict[str, Any]:
        record, steps = final
        if steps is None:  # it had ended before anyone watched: read them from the store
            steps = self._runtime._steps_if_kept(record)
            if steps is None:
                raise UnknownWorkflow(
                    f"workflow {record.id!r} ended {record.state}, and was deleted (retention "
                    "or herder purge) before its outcome was read: keep retention longer "
                    "than a caller may wait to read it"
                )
        status = WorkflowStatus.from_records(record, steps)
        if status.state is WorkflowState.SUCCEEDED:
            return status.results
        raise WorkflowFailed(status)

    def status(self) -> WorkflowStatus:
        """The workflow's current durable status."""
        return self._runtime.status(self.id)

    def done(self) -> bool:
        """True once the workflow reached a final state."""
        return self._runtime.status(self.id).state.is_final

    def __repr__(self) -> str:
        return f"WorkflowHandle({self.id!r})"


def _maybe_ended(ids: list[str], snap: Snapshot) -> list[str]:
    """Those of ``ids`` whose workflow may have ended: its stored state is final or
    unreadable (read whole, that says what is wrong), or it is not stored. The state is
    read without decoding the record (its input comes before it): a standby polls this,
    20 times a second, for every workflow a caller waits on."""
    out = []
    for workflow_id in ids:
        raw = snap.raw("workflows", workflow_key(workflow_id))
        if raw is not None:
            try:
                if not WorkflowState(peek_field(raw, WorkflowRecord, "state")).is_final:
                    continue
            except (KeyError, ValueError, TypeError):
                pass
        out.append(workflow_id)
    return out


def unknown(workflow_id: str) -> UnknownWorkflow:
    """The error for an id the store has no workflow of (a handle's, status()...)."""
    return UnknownWorkflow(
        f"no workflow with id {workflow_id!r}: none was started with it, or it ended and "
        "was deleted (retention or herder purge) before this read it: keep retention "
        "longer than a caller may wait to read it"
    )


def _purged(workflow_id: str) -> UnknownWorkflow:
    return UnknownWorkflow(
        f"workflow {workflow_id!r} ended, and was deleted (retention or herder purge) before "
        "its outcome was read: keep retention longer than a caller may wait to read it"
    )


class Waiting:
    """The futures waiting for workflows to end, and the final listener that ends them."""

    def _admit(
        self,
        starts: list[tuple[WorkflowRecord, list[StepRecord]]],
        *,
        early: EarlyStart | None = None,
    ) -> None:
        """Hand durable new workflows to the Scheduler (one message for a batch), or one on
        its way (``early``), noting them as running here: until its final announcement a
        waiter on one needs no store read (issue 16: a read per ``result_async`` on an
        event loop beside busy runtime threads costs ~0.5 ms).

        One on its way joins the hosts' outcomes (``actors/_answers.py``): the Scheduler
        takes a burst of them in one turn, and the caller tells it only when no drain is
        on its way (no inbox put, and no wake-up of an idle Scheduler, per start). What the
        caller tells it later (a cancel) still comes after it."""
        rt = _runtime(self)
        rt._running.update([record.id for record, _ in starts])  # before any can end
        if early is None:
            rt._ctx.tell_scheduler(Admit(starts))
        else:
            rt._ctx.answers.put(Admit(starts, early))

    def _unadmit(self, record: WorkflowRecord) -> None:
        """A workflow admitted before it was durable was not created (Landing)."""
        rt = _runtime(self)
        rt._running.discard(record.id)  # a waiter on its id reads the store
        rt._ctx.tell_scheduler(Unadmit(record))

    def _on_final(self, record: WorkflowRecord, steps: list[StepRecord] | None) -> None:
        rt = _runtime(self)
        level = logging.WARNING if record.state is WorkflowState.NEEDS_ATTENTION else logging.INFO
        if _log.isEnabledFor(level):  # (its extra= map, built on the writer's thread)
            extra = {"workflow_id": record.id, "workflow": record.name, "state": str(record.state)}
            _log.log(level, "workflow %s ended %s", record.id, record.state, extra=extra)
        if rt._tracing is not None:
            rt._tracing.ended(record, rt._ctx.clock.time())
        with rt._lock:
            futures = rt._waiters.pop(record.id, [])
            rt._running.discard(record.id)
            rt._passed.discard(record.id)
            rt._active = max(0, rt._active - 1)
        if rt._firer is not None:
            rt._firer.on_final(record.id)
        for waiter in futures:
            waiter.set((record, steps))
        rt._hand_off()  # (after the waiters: they are woken first)

    def _resolve_ended(self) -> None:
        """Becoming active (a standby promoted, its recovery run): waiters on workflows the
        previous holder ended meanwhile hear of it now, as nothing here will announce
        them (those it deleted since, too: :class:`UnknownWorkflow`); those still
        unfinished are this runtime's to announce."""
        rt = _runtime(self)
        with rt._lock:
            waited = list(rt._waiters)
        try:
            ended = rt._store.view(partial(_maybe_ended, waited))
        except StoreClosed:
            return  # (a stop fails them)
        for workflow_id in ended:
            try:
                record = rt._store.get_workflow(workflow_id)
            except (StoreClosed, StoreCorrupt):
                continue  # (a stop fails them; a damaged one waits as before)
            if record is not None and not record.state.is_final:
                continue
            with rt._lock:
                if record is None and workflow_id in rt._running:
                    continue  # (started here, its record not yet durable)
                futures = rt._waiters.pop(workflow_id, [])
            for waiter in futures:
                if record is not None:
                    waiter.set((record, None))
                else:  # ended and deleted between two polls: as h.result() says on the active
                    waiter.fail(_purged(workflow_id))

    def _standby_polled(self) -> None:
        """A standby's lease poll: its health signal, and the waiters on workflows the
        active runtime (another process) ended hear of it from the store: nothing here
        announces them before this runtime takes over."""
        rt = _runtime(self)
        rt._healthy()
        if rt._waiters:
            self._resolve_ended()

    def _fail_waiters(self, error: BaseException) -> None:
        """The runtime stopped: every waiter (and start() waiting for capacity) hears it."""
        rt = _runtime(self)
        with rt._lock:
            waiters, rt._waiters = rt._waiters, {}
            rt._running.clear()
            rt._passed.clear()
            rt._refuse_queued(error)
        for futures in waiters.values():
            for waiter in futures:
                waiter.fail(error)

    def _wait_final(self, workflow_id: str, timeout: float | None) -> Final:
        waiter = self._watch(workflow_id)
        try:
            if waiter.value is None and waiter.error is None:  # (it would wait for its end,
                off_writer("h.result()")  # which the writer's thread announces)
            return waiter.wait(timeout)
        except TimedOut:
            raise unended(workflow_id, timeout) from None
        finally:
            self._unwatch(workflow_id, waiter)

    def _watch(
        self, workflow_id: str, loop: asyncio.AbstractEventLoop | None = None
    ) -> OneShot[Final]:
        """A one-shot resolved with the workflow's :data:`Final` (at once if it is final;
        awaitable on ``loop`` if given); pass it to :meth:`_unwatch` when done with it.
        :class:`UnknownWorkflow` if none."""
        rt = _runtime(self)
        fut: OneShot[Final] = OneShot(loop)
        with rt._lock:
            if rt._fatal is not None:  # (its actors are gone: nothing would announce it)
                raise RuntimeClosed(f"the runtime failed and stopped its actors: {rt._fatal}")
            rt._waiters.setdefault(workflow_id, []).append(fut)
            if workflow_id in rt._running:  # its final announcement resolves ``fut``
                return fut
        try:
            record = rt._store.get_workflow(workflow_id)
            if record is not None and not record.state.is_final:
                rt._store.steps_of(workflow_id)  # one damaged: it can never end, say so now
        except StoreClosed:
            with rt._lock:
                self._unlisted(workflow_id, fut)
            raise RuntimeClosed(
                "the runtime is stopped: a handle waits only while its runtime runs; open "
                "a new Runtime (or read the store with herder show) for the workflow's state"
            ) from None
        except StoreCorrupt:
            with rt._lock:
                self._unlisted(workflow_id, fut)
            raise
        if record is None or record.state.is_final:
            with rt._lock:
                mine = self._unlisted(workflow_id, fut)  # else _on_final resolves it
            if record is None:
                raise unknown(workflow_id)
            if mine:
                fut.set((record, None))
        return fut

    def _unwatch(self, workflow_id: str, fut: OneShot[Final]) -> None:
        with _runtime(self)._lock:
            self._unlisted(workflow_id, fut)

    def _unlisted(self, workflow_id: str, fut: OneShot[Final]) -> bool:
        """Take ``fut`` off the waiters (under ``_lock``); False if it was not on them."""
        waiters = _runtime(self)._waiters
        futures = waiters.get(workflow_id)
        if futures is None or fut not in futures:
            return False
        futures.remove(fut)
        if not futures:
            del waiters[workflow_id]
        return True

    def _with_steps(self, workflow_id: str) -> tuple[WorkflowRecord, list[StepRecord]] | None:
        """The workflow's record and its steps in plan order, read in one snapshot (or
        None: there is none). Two reads let a deletion (retention, a purge) land between
        them: a SUCCEEDED record with no steps, shown PENDING, and no results."""
        rt = _runtime(self)

        def read() -> tuple[WorkflowRecord, list[StepRecord]] | None:
            record = rt._store.get_workflow(workflow_id)
            if record is None:
                return None
            return record, self._ordered_steps(record, rt._store.steps_of(workflow_id))

        return rt._store.together(read)

    def _steps_if_kept(self, record: WorkflowRecord) -> list[StepRecord] | None:
        """``record``'s steps in plan order, read with a look that the workflow is still
        stored in the same snapshot (None: deleted since ``record`` was read); cheaper
        than :meth:`_with_steps` for a record just read (``list()``, ``h.result()``: no
        second read of the record)."""
        steps = steps_if_kept(_runtime(self)._store, record.id)
        return None if steps is None else self._ordered_steps(record, steps)

    def _ordered_steps(self, record: WorkflowRecord, steps: list[StepRecord]) -> list[StepRecord]:
        plan = _runtime(self)._ctx.plans.get((record.name, record.version))
        return in_plan_order(record, steps, plan)
