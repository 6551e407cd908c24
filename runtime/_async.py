"""The asyncio face of the Runtime: the same calls, awaitable, never blocking the loop.

One :class:`~herder.runtime.Runtime` serves threads and an event loop alike, so the
asyncio forms are methods of the same objects with an ``_async`` suffix (DBOS's
``start_workflow_async``; Temporal's client awaits the same calls)::

    async with Runtime("var/herder") as rt:          # __aexit__ awaits stop_async()
        h = await rt.start_async("trip", {"who": "ada"})   # durable when it returns
        results = await h.result_async(timeout=10)
        await rt.cancel_async(h.id)

How nothing blocks: every wait is resolved by a runtime thread (the store writer once a
commit is durable, the Scheduler once a workflow is final, an actor answering an ask),
which hands the result to the loop through its inbox (``_event_loop.LoopInbox``: one
``call_soon_threadsafe`` for many hand-overs, at most a batch of them run per loop turn):
a ``concurrent.futures.Future`` mirrored onto the loop (:func:`awaited`), or for
``start_async`` a future of the loop itself that the writer's callback resolves
(``_starts.Landing``). A waiter costs no thread, so thousands of ``result_async`` calls
wait on one loop. Only the calls that do
real work of their own on the caller (``stop_async``'s drain and tree shutdown,
``stats_async``'s scan of the store, ``handoff_async``, a start's router) run it once on
a worker thread.

Cancelling an awaiting task stops the wait, never the work: the workflow runs on, as
after a :class:`TimedOut` (a ``TimeoutError``) from the blocking call.
"""

from __future__ import annotations

import asyncio
import datetime
import signal
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, TypeVar, cast

import pykka

from herder.actors import Complete, Operate, WrongThread, call_future
from herder.runtime._claims import left
from herder.runtime._operations import unrecorded
from herder.runtime._routing import routes
from herder.runtime._starts import start_items
from herder.runtime._waits import awaited, run_async, seconds, wait_limit
from herder.runtime._workflow import Workflow
from herder.store import TimedOut, get_logger

if TYPE_CHECKING:
    from herder.runtime._runtime import Runtime, WorkflowHandle

T = TypeVar("T")

_log = get_logger("herder.runtime")


_Held = tuple[signal.Signals, asyncio.Handle | None, Any]
"""A signal, the loop's handler for it before ours and the process's (None: unknown)."""


def _take_signals(
    loop: asyncio.AbstractEventLoop,
    signals: tuple[signal.Signals, ...],
    on_signal: Callable[[signal.Signals], None],
) -> list[_Held]:
    """Install ``on_signal`` for ``signals`` on ``loop``; return what they had before.

    ``add_signal_handler`` replaces the loop's handler for a signal and
    ``remove_signal_handler`` leaves none, so an application's own shutdown handler
    would be lost; asyncio has no public way to read that handler. The unix loops keep
    theirs in the private ``loop._signal_handlers`` (signal -> ``asyncio.Handle``), read
    here. A loop without that table (uvloop, ...) has no handler of its own to give
    back: its handlers are then only removed on return, as its public API allows, and
    the process's handler before is put back, unless it was the loop's own dispatcher
    (uvloop's, serving a handler added on the loop: it would dispatch to nothing).
    """
    table = getattr(loop, "_signal_handlers", None)
    held: list[_Held] = [(sig, None, _process_handler(loop, sig)) for sig in signals]
    if isinstance(table, dict):
        held = [(sig, table.get(sig), signal.getsignal(sig)) for sig in signals]
    for sig in signals:
        loop.add_signal_handler(sig, on_signal, sig)
    return held


def _process_handler(loop: asyncio.AbstractEventLoop, sig: signal.Signals) -> Any:
    """The process's handler for ``sig`` to give back; None for the loop's own."""
    handler = signal.getsignal(sig)
    return None if getattr(handler, "__self__", None) is loop else handler


def _give_back_signals(loop: asyncio.AbstractEventLoop, held: list[_Held]) -> None:
    """Undo :func:`_take_signals`: the loop's former handler (the same ``Handle``, so
    with its context) back in its slot, or ours removed and the process's handler
    restored (``remove_signal_handler`` sets SIG_DFL, which would drop one installed
    with ``signal.signal`` or ``asyncio.run``'s own for SIGINT)."""
    table = getattr(loop, "_signal_handlers", None)
    for sig, handle, handler in held:
        if handle is not None and isinstance(table, dict) and sig in table:
            table[sig] = handle  # (the loop's wiring of a signal is the same for any handler)
            continue
        loop.remove_signal_handler(sig)
        if handler is not None and signal.getsignal(sig) is not handler:
            signal.signal(sig, handler)


_SIGNALS = (signal.SIGTERM, signal.SIGINT)

_serving: dict[asyncio.AbstractEventLoop, tuple[list[_Held], list[Callable[[str], None]]]] = {}
"""Per loop, while runtimes serve on it (``run_forever_async``): what its signals had
before the first of them, and how to wake each one. Only its loop's thread touches it."""


def _serve_signals(loop: asyncio.AbstractEventLoop, wake: Callable[[str], None]) -> None:
    """Have SIGTERM and SIGINT call ``wake`` (with the signal's name), and ``wake`` every
    other runtime serving on ``loop``: one set of handlers for them all, taken by the
    first (each taking the one before's woke only the last) and given back by the last
    to return (:func:`_unserve_signals`), whatever order they return in."""
    serving = _serving.get(loop)
    if serving is None:
        wakers: list[Callable[[str], None]] = []

        def on_signal(sig: signal.Signals) -> None:
            for woken in list(wakers):
                woken(sig.name)

        serving = _serving[loop] = (_take_signals(loop, _SIGNALS, on_signal), wakers)
    serving[1].append(wake)


def _unserve_signals(loop: asyncio.AbstractEventLoop, wake: Callable[[str], None]) -> None:
    """Undo :func:`_serve_signals`; the last runtime serving on ``loop`` gives back what
    its signals had before the first."""
    held, wakers = _serving[loop]
    wakers.remove(wake)
    if not wakers:
        del _serving[loop]
        _give_back_signals(loop, held)


def _routed(rt: Runtime, workflow: str | Workflow) -> bool:
    """Whether a start of ``workflow`` runs a router (``{@name}`` in an agent template)."""
    if isinstance(workflow, Workflow):
        plan = rt._ctx.plans.get((workflow.name, workflow.version))
    else:  # (anything else than a name is refused by the checks, on the loop)
        plan = rt._latest.get(workflow) if isinstance(workflow, str) else None
    return plan is not None and routes(plan)


def unended(workflow_id: str, timeout: float | None) -> TimedOut:
    """A wait for a workflow's result that ran out of time."""
    return TimedOut(
        f"workflow {workflow_id!r} did not end within {timeout} s; it goes on running: wait "
        "for it again (result(), with a longer timeout), or look at its status()"
    )


def _runtime(mixin: object) -> Runtime:
    return cast("Runtime", mixin)  # the mixins below are bases of these classes only


def _handle(mixin: object) -> WorkflowHandle:
    return cast("WorkflowHandle", mixin)


class AsyncHandle:
    """The asyncio forms of :class:`WorkflowHandle` (its base class)."""

    async def result_async(self, timeout: float | None = None) -> dict[str, Any]:
        """As :meth:`WorkflowHandle.result`, awaited: no thread waits for it."""
        handle = _handle(self)
        runtime = handle._runtime
        limit = seconds(timeout)
        waiter = runtime._watch(handle.id, asyncio.get_running_loop())
        try:
            record = await waiter.wait_async(limit)
        except TimedOut:
            raise unended(handle.id, limit) from None
        finally:
            runtime._unwatch(handle.id, waiter)
        return handle._outcome(record)


class AsyncRuntime:
    """The asyncio forms of :class:`Runtime` (its base class); see the module docstring."""

    async def __aenter__(self) -> Runtime:
        return _runtime(self)

    async def __aexit__(self, *exc_info: object) -> None:
        rt = _runtime(self)
        await rt.stop_async()

    async def start_async(
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
        """As :meth:`Runtime.start`, awaited: the workflow is durable when it returns.

        Waiting for another start of the same ``workflow_id``, for capacity
        (``max_active_workflows``) and for the commit costs no thread.
        """
        rt = _runtime(self)
        timeout = seconds(timeout)
        when = {"priority": priority, "start_at": start_at, "delay": delay, "deadline": deadline}
        if _routed(rt, workflow):  # a router is user code that may block: not on the loop
            new, now = await asyncio.to_thread(rt._checked, workflow, input, workflow_id, when)
        else:
            new, now = rt._checked(workflow, input, workflow_id, when)
        wid, claims = new.workflow_id, rt._claims  # as Runtime._start, awaiting where it blocks
        began, claim = time.monotonic(), None
        if workflow_id is not None:
            claim = await claims.claim_async(wid, timeout, rt._ask_timeout, "start_async()")
        try:
            repeated = rt._repeated(new, workflow_id)
            if repeated is not None:
                return repeated
            if not rt._take_capacity_now(1):
                await rt._capacity_async(left(timeout, began))
                now = None
            early = workflow_id is None or claims.sole(claim)
            landing = rt._submit_start(
                new, (), now, asyncio.get_running_loop(), claim=claim, early=early
            )
            claim = None  # the landing ends it once the commit is decided
            return rt._landed(new, await landing.wait_async(rt._ask_timeout))
        finally:
            claims.give_back(wid, claim)

    async def start_many_async(
        self, starts: Iterable[Mapping[str, Any]], *, timeout: float | None = None
    ) -> list[WorkflowHandle]:
        """As :meth:`Runtime.start_many`, awaited: one group commit, and no thread waits.

        Checking and encoding the items grows with their number, so that work runs on a
        worker thread: the loop serves on meanwhile."""
        rt = _runtime(self)
        many = rt._starting_many(start_items(starts), seconds(timeout))
        return await run_async(many, off_loop=True)

    async def cancel_async(
        self, workflow_id: str, *, who: str | None = None, why: str | None = None
    ) -> None:
        """As :meth:`Runtime.cancel`, awaited."""
        rt = _runtime(self)
        await rt._operate_async(Operate("cancel", workflow_id, who=who, why=why))

    async def retry_async(
        self, workflow_id: str, *, who: str | None = None, why: str | None = None
    ) -> None:
        """As :meth:`Runtime.retry`, awaited."""
        rt = _runtime(self)
        await rt._operate_async(Operate("retry", workflow_id, who=who, why=why))

    async def skip_async(
        self,
        workflow_id: str,
        step: str | None = None,
        result: Any = None,
        *,
        who: str | None = None,
        why: str | None = None,
    ) -> None:
        """As :meth:`Runtime.skip`, awaited."""
        rt = _runtime(self)
        await rt._operate_async(Operate("skip", workflow_id, step, result, who=who, why=why))

    async def compensate_async(
        self, workflow_id: str, *, who: str | None = None, why: str | None = None
    ) -> None:
        """As :meth:`Runtime.compensate`, awaited."""
        rt = _runtime(self)
        await rt._operate_async(Operate("compensate", workflow_id, who=who, why=why))

    async def abandon_async(
        self, workflow_id: str, *, who: str | None = None, why: str | None = None
    ) -> None:
        """As :meth:`Runtime.abandon`, awaited."""
        rt = _runtime(self)
        await rt._operate_async(Operate("abandon", workflow_id, who=who, why=why))

    async def complete_step_async(self, task_token: str, result: Any = None) -> None:
        """As :meth:`Runtime.complete_step`, awaited."""
        rt = _runtime(self)
        await rt._ask_durable_async("complete", rt._completion(task_token, result))

    async def fail_step_async(
        self, task_token: str, error: str | BaseException, *, permanent: bool = False
    ) -> None:
        """As :meth:`Runtime.fail_step`, awaited."""
        rt = _runtime(self)
        failure = rt._failure(task_token, error, permanent=permanent)
        await rt._ask_durable_async("complete", failure)

    async def wait_active_async(self, timeout: float | None = None) -> bool:
        """As :meth:`Runtime.wait_active`, awaited without a thread."""
        rt = _runtime(self)
        await rt._is_active.wait_async(seconds(timeout))
        return rt.is_active

    async def stats_async(self) -> dict[str, Any]:
        """As :meth:`Runtime.stats`; it reads the store and asks the Scheduler, so on a
        worker thread."""
        rt = _runtime(self)
        return await asyncio.to_thread(rt.stats)

    async def handoff_async(self, deadline: float = 30.0, *, timeout: float | None = None) -> bool:
        """As :meth:`Runtime.handoff`; it drains, so on a worker thread."""
        rt = _runtime(self)
        return await asyncio.to_thread(rt.handoff, deadline, timeout=timeout)

    async def stop_async(self, timeout: float = 10.0, *, drain: bool = False) -> None:
        """As :meth:`Runtime.stop`, on a worker thread: actions running on this loop (an
        asyncio agent) can still finish while it drains."""
        rt = _runtime(self)
        await asyncio.to_thread(rt.stop, timeout, drain=drain)

    async def run_forever_async(self, *, drain_timeout: float = 30.0) -> None:
        """As :meth:`Runtime.run_forever`, on the running loop: serve until SIGTERM or
        SIGINT (handlers installed with ``loop.add_signal_handler``), then drain and stop.
        Returns early if the runtime is stopped or fails. Several runtimes serving on one
        loop share the handlers: a signal wakes each of them, and once the last has
        returned the handlers the loop (or the process) had before the first are back.

        The loop must run in the main thread (Python delivers signals only there).
        """
        rt = _runtime(self)
        drain_timeout = wait_limit(drain_timeout, "drain_timeout")  # (not at the SIGTERM)
        if threading.current_thread() is not threading.main_thread():
            raise WrongThread(
                "run_forever_async() must run on an event loop in the main thread (Python "
                "delivers signals only there); elsewhere await your own event and then "
                "stop_async(drain=True)"
            )
        loop = asyncio.get_running_loop()
        received: list[str] = []

        def on_signal(name: str) -> None:
            received.append(name)
            rt._wake.set()

        _serve_signals(loop, on_signal)
        try:
            _log.info("runtime on %s serving until SIGTERM or SIGINT", rt.path)
            await rt._wake.wait_async()
            if received:
                _log.info("%s received: draining for up to %ss", received[0], drain_timeout)
            await asyncio.to_thread(rt._stop, *serving_ended(rt, drain_timeout))
        finally:
            _unserve_signals(loop, on_signal)
        _log.info("runtime on %s stopped", rt.path)

    # -- the shared waits ----------------------------------------------------------------

    async def _operate_async(self, op: Operate) -> None:
        rt = _runtime(self)
        await rt._ask_durable_async("operate", rt._operation(op))

    async def _ask_durable_async(self, method: str, msg: Operate | Complete) -> None:
        """Ask the Scheduler to record ``msg``; return once that is durable."""
        rt = _runtime(self)
        rt._check_active()
        asked = call_future(rt._scheduler, method, msg)
        try:
            done: Future[None] = await awaited(asked, rt._ask_timeout)
            await awaited(done, rt._ask_timeout)
        except pykka.ActorDeadError:
            raise rt._scheduler_gone() from None
        except TimedOut:
            raise unrecorded(msg, rt._ask_timeout) from None


def serving_ended(rt: Runtime, drain_timeout: float) -> tuple[float, float | None]:
    """How ``run_forever`` stops: the actors and the store get ``drain_timeout``, and at
    least stop()'s default (a drain timeout of 0 closed no store and blamed the disk);
    running attempts get ``drain_timeout``, none on a deposed runtime (nothing of theirs
    could be recorded)."""
    return max(drain_timeout, 10.0), None if rt._ctx.lost is not None else drain_timeout
