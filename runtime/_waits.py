"""Waiting across threads and an event loop: what a runtime thread resolves and a caller
(a blocking thread or an asyncio task) waits for, without a thread per waiter.

- :class:`OneShot`: a value or an error handed once to one waiter (a bare lock, or a
  future of the waiter's loop resolved through the loop's inbox).
- :class:`NotifyingEvent`: a flag an event loop can await; :func:`wake`: a future
  resolved from any thread.
- :func:`awaited`: a ``concurrent.futures.Future`` awaited without blocking the loop.
- :class:`Wait`, :func:`run_blocking`, :func:`run_async`: a call written once as a
  generator of waits, run blocking on a thread or awaited on a loop (``_start.py``).
- :func:`seconds`: a caller's ``timeout`` checked at the door; :func:`off_loop`: a
  blocking call refused on the loop of the runtime's ``async def`` actions,
  :func:`off_writer` on a store's writer thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Awaitable, Callable, Generator
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, cast

from herder.actors import EventLoop, LoopInbox, NotActive, WrongThread, inbox
from herder.store import InvalidInput, TimedOut, real_number

T = TypeVar("T")


def seconds(value: object, name: str = "timeout") -> float | None:
    """A caller's wait in seconds: None (or infinity, or more than a lock can wait) for
    no limit; anything but a number >= 0 raises :class:`InvalidInput` (a negative one
    was no limit at all to ``Lock.acquire``)."""
    if value is None:
        return None
    number = real_number(value)
    if number is None or not number >= 0:
        raise InvalidInput(f"{name} must be None or a number of seconds >= 0, got {value!r}")
    return None if number > threading.TIMEOUT_MAX else number


def wait_limit(value: object, name: str = "timeout") -> float:
    """:func:`seconds` for a wait that needs a number: no limit is ``TIMEOUT_MAX``."""
    checked = seconds(value, name)
    return threading.TIMEOUT_MAX if checked is None else checked


def off_loop(event_loop: EventLoop, what: str, instead: str) -> None:
    """:class:`WrongThread` on the thread of the event loop the runtime's ``async def``
    actions run on (``event_loop``): ``what`` would hold that loop while it waits, and
    what it waits for (a drain: those actions' ends) could not come meanwhile."""
    if event_loop.runs_here():
        raise WrongThread(
            f"{what} blocks its thread, and this one runs the event loop of the runtime's "
            "async def actions: they could not run (nor finish, for a drain) meanwhile. "
            f"Nothing was done; await {instead} instead"
        )


WRITER = "herder-store-writer"
"""The name of a store's writer thread (``store/_writer.py``)."""


def off_writer(what: str) -> None:
    """:class:`WrongThread` on a store's writer thread, where herder calls a tracer's
    span processors and logging handlers as a workflow ends: ``what`` waits for a commit,
    which that thread makes, so it would hold every commit of the runtime until it timed
    out."""
    if threading.current_thread().name == WRITER:
        raise WrongThread(
            f"{what} waits for the store's writer, and this is its thread (a span processor "
            "or logging handler runs there as a workflow ends): it would wait for itself, "
            "holding every commit meanwhile. Nothing was done; make the call from a thread "
            "of your own (hand it over through a queue or an executor)"
        )


def not_in_setup(setup_thread: int | None, what: str) -> None:
    """:class:`NotActive` on the thread running the runtime's ``setup`` (``setup_thread``):
    the runtime becomes active only once setup has returned, so ``what``, which waits for
    that, waited for ever there (or its whole timeout, for False)."""
    if setup_thread == threading.get_ident():
        raise NotActive(
            f"{what} in setup would wait for ever: the runtime becomes active only once "
            "setup (herder run: the app factory) has returned. Start the work that waits "
            "for it on a thread of its own, or after Runtime() has returned"
        )


class NotifyingEvent(threading.Event):
    """A ``threading.Event`` whose :meth:`set` also calls subscribers (on the setting
    thread), so an event loop can wait for it without a thread of its own."""

    def __init__(self) -> None:
        super().__init__()
        self._subscribers: list[Callable[[], None]] = []
        self._guard = threading.Lock()
        # The signals received (run_forever's): a signal handler appends, which takes no
        # lock, and the waiter, which polls, then sets. A handler must not set(): it runs
        # in the main thread, between two bytecodes, maybe while that thread holds this
        # event's lock in wait(), which set() takes too: a self-deadlock.
        self.signals: list[int] = []

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

        if not self.subscribe(notify):
            return True
        try:
            async with asyncio.timeout(timeout):  # (3.11's wait_for could drop a cancel)
                await woke.wait()
        except TimeoutError:
            return False
        finally:
            self.unsubscribe(notify)
        return True

    def subscribe(self, notify: Callable[[], None]) -> bool:
        """Have :meth:`set` call ``notify`` (once); False, and no call, if set already."""
        with self._guard:
            if self.is_set():
                return False
            self._subscribers.append(notify)
            return True

    def unsubscribe(self, notify: Callable[[], None]) -> None:
        """``notify`` is no longer called (if it was not yet)."""
        with self._guard:
            if notify in self._subscribers:
                self._subscribers.remove(notify)


async def awaited(future: Future[T], timeout: float | None) -> T:
    """The result of a future some thread resolves, awaited without blocking the loop.

    The resolving thread hands the outcome over through the loop's inbox (one
    ``call_soon_threadsafe`` for many, ``_event_loop.LoopInbox``). A timeout or a
    cancelled task leaves ``future`` itself alone (``asyncio.wrap_future`` would cancel
    it, and the runtime thread resolving it would then fail).
    """
    loop = asyncio.get_running_loop()
    mirror: asyncio.Future[T] = loop.create_future()
    box = inbox(loop)

    def copy(done: Future[T]) -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits any more
            box.call(_copy_outcome, done, mirror)

    future.add_done_callback(copy)
    return await _within(mirror, timeout)


async def _within(future: asyncio.Future[T], timeout: float | None) -> T:
    """Await ``future`` (cancelled if the wait is): :class:`TimedOut` after ``timeout`` s.
    Cheaper on the loop than ``asyncio.wait_for``, which adds a future and a callback."""
    if timeout is None:
        return await future
    limit = asyncio.timeout(timeout)
    try:
        async with limit:
            return await future
    except TimeoutError:
        if limit.expired():  # (not a TimeoutError the future itself carried)
            raise TimedOut(f"not resolved within {timeout} s") from None
        raise


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
    event loop resolved through the loop's inbox (``_event_loop.LoopInbox``: one wake-up
    of the loop for many, a bounded number run per loop turn). The first :meth:`set` or
    :meth:`fail` wins; later ones do nothing."""

    __slots__ = ("_done", "_future", "_inbox", "_ready", "_won", "error", "value")

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._won = threading.Lock()  # taken by the first resolver
        self._done = threading.Lock()
        self._inbox = None if loop is None else inbox(loop)
        self._future: asyncio.Future[None] | None = None
        self.value: T | None = None
        self.error: BaseException | None = None
        self._ready = False  # resolved: value or error is final (set before the wake-up)
        if loop is None:
            self._done.acquire()  # released once resolved
        else:
            self._future = loop.create_future()

    def set(self, value: T) -> None:
        """Resolve with ``value`` (callable from any thread)."""
        if self._won.acquire(blocking=False):
            self.value = value
            self._ready = True
            self._wake()

    def fail(self, error: BaseException) -> None:
        """Resolve with ``error``, raised to the waiter (callable from any thread)."""
        if self._won.acquire(blocking=False):
            self.error = error
            self._ready = True
            self._wake()

    def _wake(self) -> None:
        if self._future is None:
            self._done.release()
            return
        with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits any more
            cast("LoopInbox", self._inbox).call(self._deliver)

    def _deliver(self) -> None:
        """On the loop: resolve the waiters' future (a fresh one if a wait that timed
        out cancelled it, so that a later wait returns at once)."""
        future = cast("asyncio.Future[None]", self._future)
        if future.cancelled():
            future = self._future = future.get_loop().create_future()
        future.set_result(None)

    def wait(self, timeout: float | None) -> T:
        """Block until resolved (made without a loop); :class:`TimedOut` after ``timeout`` s."""
        if not self._done.acquire(timeout=-1 if timeout is None else timeout):
            raise TimedOut(f"not resolved within {timeout} s")
        self._done.release()  # a second wait returns at once too
        return self._outcome()

    async def wait_async(self, timeout: float | None) -> T:
        """As :meth:`wait`, awaited on the loop it was made with. Resolved already, it
        returns at once, even with a timeout of 0 while the loop has not yet run the
        wake-up the resolver sent it."""
        if not self._ready:
            future = cast("asyncio.Future[None]", self._future)
            if future.cancelled():  # an earlier wait timed out: wait on a fresh one
                future = self._future = future.get_loop().create_future()
            if not future.done():
                await _within(future, timeout)
        return self._outcome()

    def _outcome(self) -> T:
        if self.error is not None:
            raise self.error
        return cast("T", self.value)


def wake(woken: asyncio.Future[None]) -> bool:
    """Resolve ``woken`` on its loop (from any thread; a waiter that gave up meanwhile
    is left alone); False if that loop closed: nobody waits any more."""
    try:
        inbox(woken.get_loop()).call(_wake, woken)
    except RuntimeError:
        return False
    return True


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
            finished, wait = await _off_loop(steps, value, error)
        else:
            finished, wait = _advance(steps, value, error)
        if finished:
            return cast("T", wait)
        value, error = None, None
        try:
            value = await cast("Wait", wait).wait()
        except BaseException as exc:  # handed back to the body, which decides
            error = exc


async def _off_loop(steps: Steps[Any], value: Any, error: BaseException | None) -> Any:
    """:func:`_advance` on a worker thread. A caller cancelled meanwhile leaves the thread
    running: whichever of the two ends last closes the body (its ``finally`` gives back
    what it took, such as ``start_many``'s slots), rather than leave it suspended at its
    next wait until it is garbage-collected. The job is shielded from the cancel: a job
    cancelled before a worker took it up would never run, and nothing would close the
    body (it holds ``start_many``'s slots once handed them)."""
    lock, state = threading.Lock(), {"gone": False, "done": False}

    def advance() -> tuple[bool, Any]:
        result = _advance(steps, value, error)
        with lock:
            state["done"] = True
            if not state["gone"]:
                return result
        steps.close()  # (its caller gave up while this ran)
        return result

    job = asyncio.ensure_future(asyncio.to_thread(advance))
    job.add_done_callback(_retrieved)  # (its error, once nobody awaits it, is not logged)
    try:
        return await asyncio.shield(job)
    except asyncio.CancelledError:
        with lock:
            state["gone"] = True
            done = state["done"]
        if done:  # it ended just before the cancel: nobody else will close it
            steps.close()
        raise


def _retrieved(job: asyncio.Future[Any]) -> None:
    if not job.cancelled():
        job.exception()


def _advance(steps: Steps[T], value: Any, error: BaseException | None) -> tuple[bool, Any]:
    """``(False, the body's next wait)`` given the last one's outcome, or ``(True, what
    it returned)`` (a StopIteration cannot cross a thread's future)."""
    try:
        return False, steps.send(value) if error is None else steps.throw(error)
    except StopIteration as finished:
        return True, finished.value
