"""The event loop asyncio agents run on: the application's, or one the runtime owns, and
the one way the runtime's threads reach it (:class:`LoopInbox`).

``Runtime(loop=...)`` hands the application's loop in: attempts then run as tasks on it
(it must keep running while the runtime does). Without one, the runtime starts its own
loop on a daemon thread (``herder-asyncio``) the first time an asyncio agent needs it, and
stops it when the runtime stops. Either way the runtime's threads only ever reach the loop
through its :func:`inbox`, and :meth:`EventLoop.close` cancels the attempts still running
(their outcomes would have nowhere to go) and gives them :data:`ENDING` seconds to end.

**The inbox** (issue 16: the application's loop lagged 53-70 ms behind its timers while
1,000 workflows ran on it). Every hand-over from a runtime thread to a loop (an attempt
to start or cancel, a start's commit, a workflow's end, freed capacity) is a call queued
on that loop's :class:`LoopInbox`: one ``call_soon_threadsafe`` (a write to the loop's
self-pipe) wakes the loop for all the calls queued until it runs, and one loop turn runs
at most :attr:`LoopInbox.BATCH` of them, the rest in the next turns. So a group commit
that decides 500 starts, or a Scheduler pass that dispatches 500 attempts, resumes at most
``BATCH`` tasks per turn instead of all of them in one, and the application's own
callbacks (its timers, its sockets) run between the batches.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import threading
import weakref
from collections.abc import Callable, Coroutine
from typing import Any

from herder.store import Lines, bounded_traceback, describe, get_logger, printable_lines

_log = get_logger("herder.asyncio")


class LoopInbox:
    """Calls handed to one event loop from any thread, run there in batches of at most
    :attr:`BATCH` per loop turn (see the module docstring). Get a loop's with
    :func:`inbox`."""

    BATCH = 64
    """Calls run per loop turn: each resumes at most one task in the next turn, so a
    turn does bounded herder work whatever the number of workflows in flight."""

    __slots__ = ("__weakref__", "_armed", "_calls", "_guard", "_loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = weakref.ref(loop)  # the registry's key: a strong one would keep it
        self._calls: collections.deque[tuple[Callable[..., object], tuple[Any, ...]]]
        self._calls = collections.deque()
        self._guard = threading.Lock()
        self._armed = False  # a drain is scheduled on the loop

    def call(self, fn: Callable[..., object], *args: Any) -> None:
        """Run ``fn(*args)`` on the loop soon, after the calls queued before it (callable
        from any thread, the loop's own included). RuntimeError if the loop is closed."""
        loop = self._loop()
        with self._guard:
            self._calls.append((fn, args))
            # Armed, the loop will drain this call with the others, unless it closed
            # before running that drain: then call_soon_threadsafe below says so.
            if self._armed and loop is not None and not loop.is_closed():
                return
            self._armed = True
        try:
            if loop is None:
                raise RuntimeError("the event loop is gone")
            loop.call_soon_threadsafe(self._drain)
        except RuntimeError:  # closed: nothing queued here will ever run
            with self._guard:
                self._armed = False
                self._calls.clear()
            raise

    def _drain(self) -> None:
        """On the loop: run up to ``BATCH`` queued calls; the next turn runs the rest."""
        calls = self._calls
        loop = self._loop()
        for _ in range(self.BATCH):
            if not calls:
                break
            fn, args = calls.popleft()  # appended by other threads meanwhile: atomic
            try:
                fn(*args)
            except Exception as exc:  # herder's own calls: report it, run the rest
                if loop is not None:
                    loop.call_exception_handler(
                        {"message": f"herder: {fn!r} failed on the event loop", "exception": exc}
                    )
        with self._guard:
            if not calls:
                self._armed = False
                return
        if loop is not None:
            loop.call_soon(self._drain)


ENDING = 1.0
"""Seconds the attempts cancelled by a stop get to end (a ``finally`` that awaits, closing
a connection), on either loop, before the stop goes on without them."""


_inboxes: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LoopInbox]
_inboxes = weakref.WeakKeyDictionary()
_inboxes_guard = threading.Lock()


def inbox(loop: asyncio.AbstractEventLoop) -> LoopInbox:
    """The :class:`LoopInbox` of ``loop`` (one per loop, made on first use)."""
    found = _inboxes.get(loop)
    if found is None:
        with _inboxes_guard:
            found = _inboxes.get(loop)
            if found is None:
                found = _inboxes[loop] = LoopInbox(loop)
    return found


GONE = (
    "the event loop given as Runtime(loop=) is closed, so no async def action can run any "
    "more: their steps wait (durably) until this runtime stops and another runs them. Stop "
    "the runtime before its loop ends: `async with Runtime(...)`, or `await rt.stop_async()`"
)
"""Why no async def action runs: the application's loop closed under the runtime."""
IDLE = (
    "an async def attempt timed out (or was replaced) before it started: the event loop "
    "given as Runtime(loop=) is not running, so no async def action runs. Pass the loop "
    "that runs your code (Runtime(path, loop=asyncio.get_running_loop()) inside it), and "
    "keep it running while the runtime runs"
)
"""Why no async def action runs: the application's loop is not running (and may never)."""


class Attempt:
    """An attempt's coroutine handed to the loop: its task once the loop started it.
    :meth:`cancel` is callable from any thread; ``ended_cancelled()`` runs on the loop if
    the task ends cancelled (by anyone: user code may cancel a task before its first
    step, and then no line of the coroutine runs to say so)."""

    __slots__ = ("_cancelled", "_coro", "_ended_cancelled", "_inbox", "_owner", "task")

    def __init__(
        self,
        owner: EventLoop,
        box: LoopInbox,
        coro: Coroutine[Any, Any, Any],
        ended_cancelled: Callable[[], object] | None = None,
    ) -> None:
        self._owner, self._inbox = owner, box
        self._coro: Coroutine[Any, Any, Any] | None = coro
        self._ended_cancelled = ended_cancelled
        self._cancelled = False
        self.task: asyncio.Task[Any] | None = None

    def cancel(self, then: Callable[[], object] | None = None) -> None:
        """Cancel the task (its coroutine sees ``CancelledError`` at its next ``await``),
        or, not started yet, never start it; ``then()`` runs on the loop once it has
        ended (never, if the loop closed)."""
        self._cancelled = True
        with contextlib.suppress(RuntimeError):  # the loop closed: the task is gone too
            self._inbox.call(self._cancel, then)

    def is_alive(self) -> bool:
        """Whether it has not ended yet (started or not)."""
        return self in self._owner._running

    def then(self, callback: Callable[[], object]) -> None:
        """``callback()`` runs on the loop once the attempt has ended (at once if it has;
        never, if the loop closed). Callable from any thread."""
        with contextlib.suppress(RuntimeError):
            self._inbox.call(self._then, callback)

    def _then(self, callback: Callable[[], object]) -> None:
        if self.task is not None and not self.task.done():
            self.task.add_done_callback(lambda _task: callback())
        elif self._coro is None:  # (ended; else not started: it is closed when it starts)
            callback()
        else:
            self._inbox.call(self._then, callback)  # (after its start, or its close)

    def _start(self) -> None:
        """On the loop: run the coroutine as a task, unless cancelled first."""
        coro, self._coro = self._coro, None
        if coro is None:
            return
        if self._cancelled:
            coro.close()
            self._owner._finished(self)
            return
        task = self.task = asyncio.get_running_loop().create_task(coro)
        task.add_done_callback(self._ended)

    def _cancel(self, then: Callable[[], object] | None = None) -> None:
        if self.task is not None:
            self.task.cancel()
            if then is not None:  # (at once, the next turn, if the task has ended)
                self.task.add_done_callback(lambda _task: then())
        else:
            self._start()  # not started: closes the coroutine
            if then is not None:
                then()

    def _ended(self, task: asyncio.Task[Any]) -> None:
        self._owner._finished(self)
        if task.cancelled():
            if self._ended_cancelled is not None:
                self._ended_cancelled()
        elif task.exception() is not None:  # herder's own bug
            _log.error("an asyncio attempt failed", exc_info=task.exception())


class EventLoop:
    """Where coroutines of asyncio agents run (see the module docstring)."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._given = loop
        self._owned: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._closed = False
        self._running: set[Attempt] = set()
        self._guard = threading.Condition()  # (notified when the last attempt ends)
        self._said: set[str] = set()  # (:meth:`say`)

    @property
    def owned(self) -> bool:
        """True when the runtime runs this loop on a thread of its own."""
        return self._given is None

    @property
    def gone(self) -> bool:
        """True once the application's loop (``loop=``) is closed: nothing can run on it
        any more, in this runtime. (The runtime's own loop closes only at its stop.)"""
        return self._given is not None and self._given.is_closed()

    @property
    def idle(self) -> bool:
        """True while the application's loop (``loop=``) is open but not running: what is
        sent to it waits until it runs, which it may never do (the application runs its
        code on another loop)."""
        given = self._given
        return given is not None and not given.is_running() and not given.is_closed()

    def say(self, trouble: str) -> None:
        """Log ``trouble`` (:data:`GONE`, :data:`IDLE`) once for this runtime."""
        with self._guard:
            if trouble in self._said:
                return
            self._said.add(trouble)
        _log.error("%s", trouble)

    def runs_here(self) -> bool:
        """True on the thread that runs this loop (the application's, or the runtime's
        own): a blocking wait there holds up every ``async def`` action."""
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:  # (no loop runs on this thread)
            return False
        return running is self._given or running is self._owned

    def submit(
        self, coro: Coroutine[Any, Any, Any], ended_cancelled: Callable[[], object] | None = None
    ) -> Attempt | None:
        """Run ``coro`` as a task on the loop (:class:`Attempt`); None (``coro`` closed,
        never started) when the loop is closed or the runtime stopped. Callable from any
        thread."""
        with self._guard:
            loop = None if self._closed else self._loop()
            attempt = None if loop is None else Attempt(self, inbox(loop), coro, ended_cancelled)
            if attempt is not None:
                self._running.add(attempt)
        try:
            if attempt is None:
                raise RuntimeError("closed")
            attempt._inbox.call(attempt._start)
        except RuntimeError:  # the loop (or the application's) is closed
            coro.close()
            if attempt is not None:
                self._finished(attempt)
            return None
        return attempt

    def close(self, timeout: float = 5.0) -> None:
        """Cancel what still runs; stop and join the runtime's own loop, or wait (up to
        :data:`ENDING` s) for the attempts on the application's to end, as that loop's
        end (``asyncio.run`` cancelling what is left) would cut their cleanup short and
        the next runtime's attempts could run beside it. Idempotent."""
        with self._guard:
            self._closed = True
            running = list(self._running)  # (each leaves the set as it ends)
            owned, thread = self._owned, self._thread
        for attempt in running:
            attempt.cancel()
        given = self._given
        if given is not None and given.is_running() and not self.runs_here():
            with self._guard:
                self._guard.wait_for(lambda: not self._running, min(timeout, ENDING))
        if owned is not None and thread is not None:
            with contextlib.suppress(RuntimeError):
                owned.call_soon_threadsafe(owned.stop)
            if thread is threading.current_thread():
                return  # (a blocking stop() from an action on it: it stops once that returns)
            thread.join(timeout)
            if thread.is_alive():
                _log.warning("the asyncio agents' loop did not stop within %ss", timeout)

    def supersede(self) -> None:
        """Cancel every attempt still running here (or not started yet): the Scheduler
        that sent them has ended, and the next one runs their steps again."""
        with self._guard:
            running = list(self._running)
        for attempt in running:
            attempt.cancel()

    def abandoned(self) -> int:
        """Attempts cancelled that have not ended: their coroutine goes on past the cancel
        (catches ``CancelledError``, awaits under ``asyncio.shield``), as a hung thread
        does on the thread hosts."""
        with self._guard:
            return sum(1 for attempt in self._running if attempt._cancelled)

    def _finished(self, attempt: Attempt) -> None:
        with self._guard:
            self._running.discard(attempt)
            if not self._running:
                self._guard.notify_all()

    def _loop(self) -> asyncio.AbstractEventLoop:
        """The loop, starting the runtime's own on first use (under ``_guard``)."""
        if self._given is not None:
            return self._given
        if self._owned is None:
            self._owned = asyncio.new_event_loop()
            self._thread = threading.Thread(
                target=_serve, args=(self._owned, self), name="herder-asyncio", daemon=True
            )
            self._thread.start()
        return self._owned


def _serve(loop: asyncio.AbstractEventLoop, owner: EventLoop) -> None:
    """The runtime's loop thread: run until :meth:`EventLoop.close` stops it, then cancel
    what is left and close.

    User code never stops the runtime's loop: an exception escaping ``run_forever`` (a
    task of the user's own raising SystemExit or KeyboardInterrupt, which asyncio
    re-raises out of the loop) is logged (described: never handed to logging, whose
    formatting would read it) and the loop runs on, and so is a ``stop()`` the
    user's code called on it (``asyncio.get_running_loop().stop()`` in an action): the
    loop runs again, its tasks untouched, so the attempt that stopped it ends as its
    coroutine does, and every later one runs as before.
    """
    asyncio.set_event_loop(loop)
    while True:
        try:
            loop.run_forever()
        except BaseException as exc:  # user code may raise anything at all
            # Described here, never handed to logging: formatting its traceback reads
            # the user's object (its __notes__, its type's names), which may raise too.
            what = Lines(printable_lines(bounded_traceback(exc) or describe(exc)))
            _log.error("user code escaped to the asyncio agents' loop; it runs on\n%s", what)
            continue
        if owner._closed:  # close() stops it (it sets _closed first)
            break
        _log.warning(
            "user code stopped the asyncio agents' loop (loop.stop() in an action, or a "
            "library it called); the runtime owns that loop: it runs on"
        )
    tasks = asyncio.all_tasks(loop)
    for task in tasks:
        task.cancel()
    with contextlib.suppress(BaseException):  # they end now, whatever they raise
        loop.run_until_complete(asyncio.wait(tasks, timeout=ENDING) if tasks else asyncio.sleep(0))
        loop.run_until_complete(loop.shutdown_asyncgens())
    loop.close()
