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
bounded by ``ask_timeout``; past it the start goes on unclaimed (the store decides). The
claim it went past is *contested* from then on (:meth:`Claims.sole`): the holder may be
waiting for room under ``max_active_workflows`` for longer than that, and the other
start's creation may land before its own. Neither of them is then taken up early (a
creation that fails halts nothing), so whichever lands first is the workflow and the
other gets its handle.

``start_many`` (never taken up early itself), and a blocking ``start()`` on the loop of
the async actions (which its wait would hold up), do not wait for a claim: they go past
it at once, contesting it (that start may be queued for room behind the batch itself,
and would only get it once the batch had gone on). Going past a claim whose start was
just taken up early (:meth:`Claims.sole` said so) waits until that start has queued its
creation (:meth:`Claims.queued`, a moment later), which then lands first.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import TypeAlias

from herder.runtime._waits import wake
from herder.store import TimedOut

Held: TypeAlias = "list[tuple[str, threading.Lock | None]]"
"""Claims of :meth:`Claims.take_many`: each id with its claim (None: its wait ran out;
:data:`PASSED`: gone past at once)."""

PASSED = threading.Lock()
"""What a ``passing`` take gets for a claim it went past: nobody's claim, so giving it
back does nothing."""


class Claims:
    """The ids a start of this process is creating (see the module doc).

    A blocking start waits for an id on the holder's lock; an awaiting one
    (:meth:`take_async`) on a future of its own loop, kept per id in ``_waiting`` and
    resolved through the loop's inbox when the claim is given back: no thread waits for
    it, and a cancelled waiter takes its future away."""

    __slots__ = ("_contested", "_early", "_held", "_lock", "_queued", "_waiting")

    def __init__(self) -> None:
        self._held: dict[str, threading.Lock] = {}
        self._contested: set[threading.Lock] = set()  # claims a start went past (_lock)
        self._early: set[threading.Lock] = set()  # went early, creation not queued (_lock)
        self._waiting: dict[str, list[asyncio.Future[None]]] = {}  # (under _lock)
        self._lock = threading.Lock()  # (give_back: a claim may be given back twice)
        self._queued = threading.Condition(self._lock)  # an early start's creation queued

    def take(
        self, workflow_id: str, timeout: float | None, *, passing: bool = False
    ) -> threading.Lock | None:
        """Claim ``workflow_id``, waiting while another start holds it; the claim to
        :meth:`give_back`, or None if the wait outlasted ``timeout``. ``passing`` (see the
        module doc): :data:`PASSED` at once, the claim contested, unless its start went
        early."""
        mine = threading.Lock()
        mine.acquire()
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            other = self._held.setdefault(workflow_id, mine)  # (atomic: one C call)
            if other is mine:
                return mine
            if passing and self._pass(workflow_id, other):
                return PASSED
            left = -1.0 if deadline is None else max(0.0, deadline - time.monotonic())
            if not other.acquire(timeout=left):
                self._contest(workflow_id)
                return None
            other.release()

    async def take_async(
        self, workflow_id: str, timeout: float | None, *, passing: bool = False
    ) -> threading.Lock | None:
        """As :meth:`take`, awaited: a start that must wait holds no thread. It waits on
        a future of the running loop that :meth:`give_back` resolves, then tries again
        (another start may have claimed the id first); cancelled or past ``timeout``, it
        takes its future away and holds nothing."""
        mine = threading.Lock()
        mine.acquire()
        if self._held.setdefault(workflow_id, mine) is mine:  # (the common case: no wait)
            return mine
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            with self._lock:  # (give_back ends a claim under it: no wake-up is lost)
                other = self._held.setdefault(workflow_id, mine)
                if other is mine:
                    return mine
                if passing and other not in self._early:
                    self._contested.add(other)
                    return PASSED
                woken: asyncio.Future[None] = loop.create_future()
                self._waiting.setdefault(workflow_id, []).append(woken)
            try:
                async with asyncio.timeout_at(deadline):  # (None: no limit)
                    await woken
            except TimeoutError:  # (woken itself only ever gets None)
                self._contest(workflow_id)
                return None
            finally:
                self._unwait(workflow_id, woken)

    def _pass(self, workflow_id: str, holder: threading.Lock) -> bool:
        """Go past ``holder``'s claim of ``workflow_id``, contesting it (True; False if
        it was given back meanwhile: try again). See :meth:`_contest`."""
        with self._lock:
            self._contest_held(workflow_id)
            return self._held.get(workflow_id) is holder

    def _contest(self, workflow_id: str) -> None:
        """A start goes on past the claim of ``workflow_id`` (its wait ran out)."""
        with self._lock:
            self._contest_held(workflow_id)

    def _contest_held(self, workflow_id: str) -> None:
        """Contest the claim of ``workflow_id`` (holding ``_lock``), once a start that
        went early with it has queued its creation (:meth:`queued`, at once): a creation
        of the one going past then lands behind it. Under ``_lock``, as :meth:`sole`
        decides, so a start goes early only if nothing went past it."""
        while (holder := self._held.get(workflow_id)) is not None and holder in self._early:
            self._queued.wait()
        if holder is not None:
            self._contested.add(holder)

    def queued(self, claim: threading.Lock) -> None:
        """The creation of the start that went early with ``claim`` is queued (a start
        going past the claim waited for that)."""
        with self._lock:
            self._early.discard(claim)
            self._queued.notify_all()

    def sole(self, claim: threading.Lock | None) -> bool:
        """Whether ``claim`` (None: none) holds its id with no other start gone past it:
        its creation may be taken up early, as no other creation of the id can land
        before it (see the module doc). True is a decision: until its caller queued the
        creation (:meth:`queued`), a start cannot go past the claim."""
        if claim is None:
            return False
        with self._lock:
            if claim in self._contested:
                return False
            self._early.add(claim)
            return True

    def _unwait(self, workflow_id: str, woken: asyncio.Future[None]) -> None:
        with self._lock:
            waiting = self._waiting.get(workflow_id)
            if waiting is not None and woken in waiting:
                waiting.remove(woken)
                if not waiting:
                    del self._waiting[workflow_id]

    def take_many(self, workflow_ids: list[str], timeout: float | None) -> Held:
        """Claim each of ``workflow_ids`` (``start_many``), in sorted order, so that two
        batches sharing ids cannot each wait for the other; what was claimed."""
        deadline = None if timeout is None else time.monotonic() + timeout
        held: Held = []
        for workflow_id in sorted(workflow_ids):
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            held.append((workflow_id, self.take(workflow_id, left, passing=True)))
        return held

    async def take_many_async(self, workflow_ids: list[str], timeout: float | None) -> Held:
        """As :meth:`take_many`, awaited: an id that must wait holds no thread either
        (:meth:`take_async`); cancelled, the batch gives back what it claimed."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        held: Held = []
        try:
            for workflow_id in sorted(workflow_ids):
                rest = None if deadline is None else max(0.0, deadline - loop.time())
                held.append((workflow_id, await self.take_async(workflow_id, rest, passing=True)))
        except BaseException:
            self.give_back_many(held)
            raise
        return held

    def claim(
        self, workflow_id: str, timeout: float | None, ask: float, what: str, *, passing: bool
    ) -> threading.Lock | None:
        """:meth:`take` for a start given ``timeout``: it waits at most that or ``ask``
        (``ask_timeout``, past which it goes on unclaimed); :func:`lapsed` if its own
        timeout ran out first (nothing written). ``passing`` (a start on the loop of the
        async actions, which a wait would hold up): it goes on unclaimed at once past a
        claim it need not wait for (see :meth:`take`)."""
        wait = within(timeout, ask)
        mine = self.take(workflow_id, wait, passing=passing)
        if mine is None and (late := lapsed(what, timeout, wait, ask)) is not None:
            raise late
        return None if mine is PASSED else mine

    async def claim_async(
        self, workflow_id: str, timeout: float | None, ask: float, what: str
    ) -> threading.Lock | None:
        """As :meth:`claim`, awaited (:meth:`take_async`: no thread waits)."""
        wait = within(timeout, ask)
        mine = await self.take_async(workflow_id, wait)
        if mine is None and (late := lapsed(what, timeout, wait, ask)) is not None:
            raise late
        return mine

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
            self._contested.discard(claim)
            self._early.discard(claim)
            self._queued.notify_all()
            if self._held.get(workflow_id) is not claim:
                return
            del self._held[workflow_id]
            waiting = self._waiting.pop(workflow_id, None) if self._waiting else None
        claim.release()
        if waiting is not None:  # awaiting starts: each tries again on its loop
            for woken in waiting:
                wake(woken)  # (False: its loop closed, nobody waits)


def within(timeout: float | None, ask: float) -> float:
    """How long a start waits for its id's claim: ``ask`` (``ask_timeout``; past it the
    start goes on unclaimed), or its caller's ``timeout`` if that is shorter."""
    return ask if timeout is None else min(timeout, ask)


def lapsed(what: str, timeout: float | None, wait: float, ask: float) -> TimedOut | None:
    """The caller's :class:`TimedOut` for a claim wait of ``wait`` seconds that ran out, if
    what was left of its ``timeout``, not ``ask_timeout``, bounded it; else None."""
    if timeout is None or wait >= ask:
        return None
    return TimedOut(
        f"another start of the same workflow id was still being decided; {what} waited "
        f"{timeout}s for it; nothing of it was written: try again later (once that one "
        "is decided, a start of the id returns its workflow)"
    )


def left(timeout: float | None, began: float) -> float | None:
    """What is left of ``timeout`` seconds since ``began`` (``time.monotonic()``)."""
    return None if timeout is None else max(0.0, timeout - (time.monotonic() - began))
