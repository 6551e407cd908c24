"""The instance an agent's health checks run on (``_health.py``), and the event loop its
coroutines run on.

Imports: herder.store (to contain user code).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect

from herder.store import contain


class Checker:
    """An instance built for checks alone, and the event loop its coroutines (an ``async
    def`` factory's, each ``async def health``) run on, made by the first of them. One
    loop for its life: a connection it holds belongs to the loop it was opened on, and
    on a fresh loop per check (``asyncio.run``) every other check failed with it. The
    loop closes once the checker is dropped (by the thread of its last check, if that
    check hung past its timeout). A coroutine past its check's timeout is cancelled
    (:meth:`cancel`): unlike a thread it can be, and left to run it held every later
    check of its agent, and so the agent's work, for as long as it hung."""

    __slots__ = ("loop", "obj", "task")

    def __init__(self) -> None:
        self.obj: object = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.task: asyncio.Task[object] | None = None  # the coroutine running, if any

    def finish(self, value: object) -> object:
        """``value``, or what it returns when it is a coroutine, run to its end on this
        checker's loop; whatever it raises comes out as :class:`UserCodeFailed`."""
        if not inspect.iscoroutine(value):
            return value
        if self.loop is None:
            self.loop = asyncio.new_event_loop()
        self.task = self.loop.create_task(value)
        try:
            return contain(self.loop.run_until_complete, self.task)
        finally:
            self.task = None

    def cancel(self) -> None:
        """Cancel the coroutine running (from any thread): it sees ``CancelledError`` at
        its next ``await``, and its check ends (failed) once it has."""
        task, loop = self.task, self.loop
        if task is not None and loop is not None:
            with contextlib.suppress(RuntimeError):  # (closed: nothing runs on it)
                loop.call_soon_threadsafe(task.cancel)

    def __del__(self) -> None:
        if self.loop is not None and not self.loop.is_running():
            self.loop.close()
