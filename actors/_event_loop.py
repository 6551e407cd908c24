"""The event loop asyncio agents run on: the application's, or one the runtime owns.

``Runtime(loop=...)`` hands the application's loop in: attempts then run as tasks on it
(it must keep running while the runtime does). Without one, the runtime starts its own
loop on a daemon thread (``herder-asyncio``) the first time an asyncio agent needs it, and
stops it when the runtime stops. Either way the runtime's threads only ever reach the loop
through ``run_coroutine_threadsafe``, and :meth:`EventLoop.close` cancels the attempts
still running (their outcomes would have nowhere to go).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
from collections.abc import Coroutine
from typing import Any

_log = logging.getLogger("herder.asyncio")


class EventLoop:
    """Where coroutines of asyncio agents run (see the module docstring)."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._given = loop
        self._owned: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._closed = False
        self._running: set[concurrent.futures.Future[Any]] = set()
        self._guard = threading.Lock()

    @property
    def owned(self) -> bool:
        """True when the runtime runs this loop on a thread of its own."""
        return self._given is None

    def submit(self, coro: Coroutine[Any, Any, Any]) -> concurrent.futures.Future[Any] | None:
        """Run ``coro`` as a task on the loop; None (``coro`` closed, never started) when
        the loop is closed or the runtime stopped. Callable from any thread."""
        with self._guard:
            loop = None if self._closed else self._loop()
            try:
                if loop is None:
                    raise RuntimeError("closed")
                future = asyncio.run_coroutine_threadsafe(coro, loop)
            except RuntimeError:  # the loop (or the application's) is closed
                coro.close()
                return None
            self._running.add(future)
        future.add_done_callback(self._finished)
        return future

    def close(self, timeout: float = 5.0) -> None:
        """Cancel what still runs; stop and join the runtime's own loop. Idempotent."""
        with self._guard:
            self._closed = True
            running, self._running = self._running, set()
            owned, thread = self._owned, self._thread
        for future in running:
            future.cancel()  # run_coroutine_threadsafe cancels its task on the loop
        if owned is not None and thread is not None:
            with contextlib.suppress(RuntimeError):
                owned.call_soon_threadsafe(owned.stop)
            thread.join(timeout)
            if thread.is_alive():
                _log.warning("the asyncio agents' loop did not stop within %ss", timeout)

    def _finished(self, future: concurrent.futures.Future[Any]) -> None:
        with self._guard:
            self._running.discard(future)

    def _loop(self) -> asyncio.AbstractEventLoop:
        """The loop, starting the runtime's own on first use (under ``_guard``)."""
        if self._given is not None:
            return self._given
        if self._owned is None:
            self._owned = asyncio.new_event_loop()
            self._thread = threading.Thread(
                target=_serve, args=(self._owned,), name="herder-asyncio", daemon=True
            )
            self._thread.start()
        return self._owned


def _serve(loop: asyncio.AbstractEventLoop) -> None:
    """The runtime's loop thread: run until stopped, then cancel what is left and close.

    An exception escaping ``run_forever`` (a task of the user's own raising SystemExit or
    KeyboardInterrupt, which asyncio re-raises out of the loop) is logged and the loop
    runs on: user code never stops the runtime's loop.
    """
    asyncio.set_event_loop(loop)
    while True:
        try:
            loop.run_forever()
            break
        except BaseException:  # user code may raise anything at all
            _log.exception("user code escaped to the asyncio agents' loop; it runs on")
    tasks = asyncio.all_tasks(loop)
    for task in tasks:
        task.cancel()
    with contextlib.suppress(BaseException):  # they end now, whatever they raise
        loop.run_until_complete(asyncio.wait(tasks, timeout=1.0) if tasks else asyncio.sleep(0))
        loop.run_until_complete(loop.shutdown_asyncgens())
    loop.close()
