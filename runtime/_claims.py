"""One start of a workflow id at a time in this process.

``start()`` takes a new workflow up early, while its creation is on its way to disk
(``_starts.Landing.admit_early``). Two starts of one id at once (a client's retry racing
its first call) both found the id free; the one whose creation failed then halted the
Scheduler's writes until it had reloaded the workflows behind it, and a reload ran again
the steps still running. So a start holds its id from before it looks at the store until
its commit is decided: a second start of the id waits for the first, then finds its
workflow (the same handle, or a conflict) like any repeated start. The claim ends when
the commit is decided (the :class:`~herder.runtime._starts.Landing` ends it, also for a
caller that stopped waiting), or when the start ends before it was queued. A wait is
bounded by ``ask_timeout``; past it the start goes on unclaimed (the store decides).
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import TypeAlias

Held: TypeAlias = "list[tuple[str, threading.Lock | None]]"
"""Claims of :meth:`Claims.take_many`: each id with its claim (None: not claimed)."""


class Claims:
    """The ids a start of this process is creating (see the module doc)."""

    __slots__ = ("_held", "_lock")

    def __init__(self) -> None:
        self._held: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()  # (give_back: a claim may be given back twice)

    def take(self, workflow_id: str, timeout: float | None) -> threading.Lock | None:
        """Claim ``workflow_id``, waiting while another start holds it; the claim to
        :meth:`give_back`, or None if the wait outlasted ``timeout``."""
        mine = threading.Lock()
        mine.acquire()
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            other = self._held.setdefault(workflow_id, mine)  # (atomic: one C call)
            if other is mine:
                return mine
            left = -1.0 if deadline is None else max(0.0, deadline - time.monotonic())
            if not other.acquire(timeout=left):
                return None
            other.release()

    async def take_async(self, workflow_id: str, timeout: float | None) -> threading.Lock | None:
        """As :meth:`take`, awaited: only a start that must wait does so on a thread."""
        mine = threading.Lock()
        mine.acquire()
        if self._held.setdefault(workflow_id, mine) is mine:
            return mine
        waiting = asyncio.ensure_future(asyncio.to_thread(self.take, workflow_id, timeout))
        try:
            return await asyncio.shield(waiting)
        except asyncio.CancelledError:  # the thread may claim it yet: then give it back
            waiting.add_done_callback(lambda done: self._dropped(workflow_id, done))
            raise

    def _dropped(self, workflow_id: str, done: asyncio.Future[threading.Lock | None]) -> None:
        if not done.cancelled() and done.exception() is None:
            self.give_back(workflow_id, done.result())

    def take_many(self, workflow_ids: list[str], timeout: float | None) -> Held:
        """Claim each of ``workflow_ids`` (``start_many``), in sorted order, so that two
        batches sharing ids cannot each wait for the other; what was claimed."""
        deadline = None if timeout is None else time.monotonic() + timeout
        held: Held = []
        for workflow_id in sorted(workflow_ids):
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            held.append((workflow_id, self.take(workflow_id, left)))
        return held

    async def take_many_async(self, workflow_ids: list[str], timeout: float | None) -> Held:
        """As :meth:`take_many`, awaited (a batch that must wait does so on a thread)."""
        waiting = asyncio.ensure_future(asyncio.to_thread(self.take_many, workflow_ids, timeout))
        try:
            return await asyncio.shield(waiting)
        except asyncio.CancelledError:  # the thread claims them yet: then give them back
            waiting.add_done_callback(self._dropped_many)
            raise

    def _dropped_many(self, done: asyncio.Future[Held]) -> None:
        if not done.cancelled() and done.exception() is None:
            self.give_back_many(done.result())

    def give_back_many(self, held: Held) -> None:
        """End the claims :meth:`take_many` made."""
        for workflow_id, claim in held:
            self.give_back(workflow_id, claim)

    def give_back(self, workflow_id: str, claim: threading.Lock | None) -> None:
        """End a claim (None: there was none; one ended already: nothing): a start
        waiting for the id goes on."""
        if claim is None:
            return
        with self._lock:
            if self._held.get(workflow_id) is not claim:
                return
            del self._held[workflow_id]
        claim.release()
