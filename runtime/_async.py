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
which schedules the result on the loop with ``loop.call_soon_threadsafe``: a
``concurrent.futures.Future`` mirrored onto the loop (:func:`awaited`), or for
``start_async`` a future of the loop itself that the writer's callback resolves
(``_starts.Landing``). A waiter costs
no thread, so thousands of ``result_async`` calls wait on one loop. Only the calls that do
real work of their own on the caller (``stop_async``'s drain and tree shutdown,
``stats_async``'s scan of the store, ``handoff_async``) run it once on a worker thread.

Cancelling an awaiting task stops the wait, never the work: the workflow runs on, as
after a ``TimeoutError`` from the blocking call.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import signal
import threading
from collections.abc import Awaitable, Callable, Generator, Iterable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

from herder.actors import Complete, Operate, call_future

if TYPE_CHECKING:
    from herder.runtime._runtime import Runtime, WorkflowHandle
    from herder.runtime._workflow import Workflow

T = TypeVar("T")

_log = logging.getLogger("herder.runtime")


class NotifyingEvent(threading.Event):
    """A ``threading.Event`` whose :meth:`set` also calls subscribers (on the setting
    thread), so an event loop can wait for it without a thread of its own."""

    def __init__(self) -> None:
        super().__init__()
        self._subscribers: list[Callable[[], None]] = []
        self._guard = threading.Lock()

    def set(self) -> None:
        """Set the flag and call every subscriber once."""
        with self._guard:
            super().set()
            subscribers, self._subscribers = self._subscribers, []
        for notify in subscribers:
            notify()

    async def wait_async(self, timeout: float | None = None) -> bool:
        """``await`` until set; False when ``timeout`` seconds passed first."""
        loop = asyncio.get_running_loop()
        woke = asyncio.Event()

        def notify() -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits any more
                loop.call_soon_threadsafe(woke.set)

        with self._guard:
            if self.is_set():
                return True
            self._subscribers.append(notify)
        try:
            await asyncio.wait_for(woke.wait(), timeout)
        except TimeoutError:
            return False
        finally:
            with self._guard:
                if notify in self._subscribers:
                    self._subscribers.remove(notify)
        return True


async def awaited(future: Future[T], timeout: float | None) -> T:
    """The result of a future some thread resolves, awaited without blocking the loop.

    The resolving thread hands the outcome over with ``loop.call_soon_threadsafe``. A
    timeout or a cancelled task leaves ``future`` itself alone (``asyncio.wrap_future``
    would cancel it, and the runtime thread resolving it would then fail).
    """
    loop = asyncio.get_running_loop()
    mirror: asyncio.Future[T] = loop.create_future()

    def copy(done: Future[T]) -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits any more
            loop.call_soon_threadsafe(_copy_outcome, done, mirror)

    future.add_done_callback(copy)
    return await asyncio.wait_for(mirror, timeout)


def _copy_outcome(done: Future[T], mirror: asyncio.Future[T]) -> None:
    if mirror.done():  # the waiter gave up
        return
    error = done.exception()
    if error is None:
        mirror.set_result(done.result())
    else:
        mirror.set_exception(error)


class OneShot(Generic[T]):
    """A value or an error handed once from a runtime thread to one waiter: a bare lock
    for a blocking waiter (hot-path.md §3: a third of a ``Future``'s cost, and no
    ``Condition`` with a fresh lock per wait), or, made with ``loop``, a future of that
    event loop resolved through ``call_soon_threadsafe``. The first :meth:`set` or
    :meth:`fail` wins; later ones do nothing."""

    __slots__ = ("_done", "_future", "_loop", "_won", "error", "value")

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._won = threading.Lock()  # taken by the first resolver
        self._done = threading.Lock()
        self._loop = loop
        self._future: asyncio.Future[None] | None = None
        self.value: T | None = None
        self.error: BaseException | None = None
        if loop is None:
            self._done.acquire()  # released once resolved
        else:
            self._future = loop.create_future()

    def set(self, value: T) -> None:
        """Resolve with ``value`` (callable from any thread)."""
        if self._won.acquire(blocking=False):
            self.value = value
            self._wake()

    def fail(self, error: BaseException) -> None:
        """Resolve with ``error``, raised to the waiter (callable from any thread)."""
        if self._won.acquire(blocking=False):
            self.error = error
            self._wake()

    def _wake(self) -> None:
        if self._future is None:
            self._done.release()
            return
        with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits any more
            cast("asyncio.AbstractEventLoop", self._loop).call_soon_threadsafe(_wake, self._future)

    def wait(self, timeout: float | None) -> T:
        """Block until resolved (made without a loop); TimeoutError after ``timeout`` s."""
        if not self._done.acquire(timeout=-1 if timeout is None else timeout):
            raise TimeoutError(f"not resolved within {timeout} s")
        self._done.release()  # a second wait returns at once too
        return self._outcome()

    async def wait_async(self, timeout: float | None) -> T:
        """As :meth:`wait`, awaited on the loop it was made with."""
        await asyncio.wait_for(asyncio.shield(cast("asyncio.Future[None]", self._future)), timeout)
        return self._outcome()

    def _outcome(self) -> T:
        if self.error is not None:
            raise self.error
        return cast("T", self.value)


class Pulse:
    """Wakes every event-loop waiter armed so far (each once): how ``start_async`` learns
    that capacity was freed, where a blocking ``start`` waits on a condition."""

    def __init__(self) -> None:
        self._armed: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self._guard = threading.Lock()

    def arm(self) -> asyncio.Future[None]:
        """A future the next :meth:`fire` resolves (arm it before checking the condition
        it stands for, under the same lock as whoever fires, so no wake-up is lost)."""
        loop = asyncio.get_running_loop()
        woken: asyncio.Future[None] = loop.create_future()
        with self._guard:
            self._armed.append((loop, woken))
        return woken

    def fire(self) -> None:
        """Resolve every armed future (callable from any thread)."""
        with self._guard:
            armed, self._armed = self._armed, []
        for loop, woken in armed:
            with contextlib.suppress(RuntimeError):  # its loop closed: nobody waits any more
                loop.call_soon_threadsafe(_wake, woken)


def _wake(woken: asyncio.Future[None]) -> None:
    if not woken.done():
        woken.set_result(None)


@dataclass(frozen=True, slots=True)
class Wait:
    """One wait of a call written once for both faces (see :func:`run_blocking` and
    :func:`run_async`): how to block for it, and how to await it."""

    block: Callable[[], Any]
    wait: Callable[[], Awaitable[Any]]


Steps = Generator[Wait, Any, T]
"""A call's body as a generator: it yields each :class:`Wait` and gets its outcome back
(the value sent in, or the exception thrown in), so the sync and async forms share it."""


def run_blocking(steps: Steps[T]) -> T:
    """Run ``steps`` on this thread, blocking at each wait."""
    value: Any = None
    error: BaseException | None = None
    while True:
        finished, wait = _advance(steps, value, error)
        if finished:
            return cast("T", wait)
        value, error = None, None
        try:
            value = cast("Wait", wait).block()
        except BaseException as exc:  # handed back to the body, which decides
            error = exc


async def run_async(steps: Steps[T], *, off_loop: bool = False) -> T:
    """Run ``steps`` on the running loop, awaiting each wait. With ``off_loop`` the work
    between waits runs on a worker thread instead (for bodies whose work grows with
    their input, such as ``start_many``'s checks and encoding: the loop stays free)."""
    value: Any = None
    error: BaseException | None = None
    while True:
        if off_loop:
            finished, wait = await asyncio.to_thread(_advance, steps, value, error)
        else:
            finished, wait = _advance(steps, value, error)
        if finished:
            return cast("T", wait)
        value, error = None, None
        try:
            value = await cast("Wait", wait).wait()
        except BaseException as exc:  # handed back to the body, which decides
            error = exc


def _advance(steps: Steps[T], value: Any, error: BaseException | None) -> tuple[bool, Any]:
    """``(False, the body's next wait)`` given the last one's outcome, or ``(True, what
    it returned)`` (a StopIteration cannot cross a thread's future)."""
    try:
        return False, steps.send(value) if error is None else steps.throw(error)
    except StopIteration as finished:
        return True, finished.value


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
        waiter = runtime._watch(handle.id, asyncio.get_running_loop())
        try:
            record = await waiter.wait_async(timeout)
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

        Waiting for capacity (``max_active_workflows``) and for the commit costs no thread.
        """
        rt = _runtime(self)
        when = {"priority": priority, "start_at": start_at, "delay": delay, "deadline": deadline}
        new, now = rt._checked(workflow, input, workflow_id, when)
        if not rt._take_capacity_now(1):  # as Runtime._start, awaiting where it blocks
            repeated = rt._repeated(new, workflow_id)
            if repeated is not None:
                return repeated
            await rt._capacity_async(timeout)
            now = None
        landing = rt._submit_start(new, (), now, asyncio.get_running_loop())
        return rt._landed(new, await landing.wait_async(rt._ask_timeout))

    async def start_many_async(
        self, starts: Iterable[Mapping[str, Any]], *, timeout: float | None = None
    ) -> list[WorkflowHandle]:
        """As :meth:`Runtime.start_many`, awaited: one group commit, and no thread waits.

        Checking and encoding the items grows with their number, so that work runs on a
        worker thread: the loop serves on meanwhile."""
        rt = _runtime(self)
        return await run_async(rt._starting_many(list(starts), timeout), off_loop=True)

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
        return await rt._is_active.wait_async(timeout)

    async def stats_async(self) -> dict[str, Any]:
        """As :meth:`Runtime.stats`; it scans the store, so on a worker thread."""
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
        SIGINT (handlers installed with ``loop.add_signal_handler``, removed on return),
        then drain and stop. Returns early if the runtime is stopped or fails.

        The loop must run in the main thread (Python delivers signals only there).
        """
        rt = _runtime(self)
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError(
                "run_forever_async() must run on an event loop in the main thread (Python "
                "delivers signals only there); elsewhere await your own event and then "
                "stop_async(drain=True)"
            )
        loop = asyncio.get_running_loop()
        received: list[str] = []

        def on_signal(sig: signal.Signals) -> None:
            received.append(sig.name)
            rt._wake.set()

        signals = (signal.SIGTERM, signal.SIGINT)
        for sig in signals:
            loop.add_signal_handler(sig, on_signal, sig)
        try:
            _log.info("runtime on %s serving until SIGTERM or SIGINT", rt.path)
            await rt._wake.wait_async()
            if received:
                _log.info("%s received: draining for up to %ss", received[0], drain_timeout)
            await rt.stop_async(drain_timeout, drain=rt._ctx.lost is None)
        finally:
            for sig in signals:
                loop.remove_signal_handler(sig)
        _log.info("runtime on %s stopped", rt.path)

    # -- the shared waits ----------------------------------------------------------------

    async def _operate_async(self, op: Operate) -> None:
        rt = _runtime(self)
        await rt._ask_durable_async("operate", rt._operation(op))

    async def _ask_durable_async(self, method: str, msg: Operate | Complete) -> None:
        """Ask the Scheduler to record ``msg``; return once that is durable."""
        rt = _runtime(self)
        rt._check_active()
        done: Future[None] = await awaited(call_future(rt._scheduler, method, msg), rt._ask_timeout)
        await awaited(done, rt._ask_timeout)
