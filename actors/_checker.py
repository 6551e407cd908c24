"""The instance an agent's health checks run on (``_health.py``), and the event loop its
coroutines run on.

Imports: herder.store (to contain user code).
"""

from __future__ import annotations

import asyncio
import inspect

from herder.store import contain


class Checker:
    """An instance built for checks alone, and the event loop its coroutines (an ``async
    def`` factory's, each ``async def health``) run on, made by the first of them. One
    loop for its life: a connection it holds belongs to the loop it was opened on, and
    on a fresh loop per check (``asyncio.run``) every other check failed with it. The
    loop closes once the checker is dropped (by the thread of its last check, if that
    check hung past its timeout)."""

    __slots__ = ("loop", "obj")

    def __init__(self) -> None:
        self.obj: object = None
        self.loop: asyncio.AbstractEventLoop | None = None

    def finish(self, value: object) -> object:
        """``value``, or what it returns when it is a coroutine, run to its end on this
        checker's loop; whatever it raises comes out as :class:`UserCodeFailed`."""
        if not inspect.iscoroutine(value):
            return value
        if self.loop is None:
            self.loop = asyncio.new_event_loop()
        return contain(self.loop.run_until_complete, value)

    def __del__(self) -> None:
        if self.loop is not None and not self.loop.is_running():
            self.loop.close()
