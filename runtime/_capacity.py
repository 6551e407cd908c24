"""How many workflows are unfinished, and waiting for room under
``max_active_workflows`` (a base class of :class:`Runtime`).

``start()`` takes a slot before it writes and the final listener gives it back; the
Scheduler's first recovery counts the unfinished workflows it found (``_on_recovered``)
and an operator action that resumes a parked workflow counts it again (``_on_resumed``).

A ``start()`` that finds no slot queues itself (:class:`QueuedStart`) and sleeps once:
the thread that frees a slot (the store writer announcing a final state, mostly) hands
it to the oldest queued start and submits that start's creation itself
(:meth:`Capacity._hand_off`), and the caller wakes when the creation is decided. Woken at
the free slot instead, it would first wait for the GIL among the other threads, then
write, then sleep again: at 16 in flight most starts wait for a slot, and each such gap
is a workflow not in flight (benchmarks/ANALYSIS.md).

A ``start_async()``, and a ``start_many`` waiting for its n slots at once, wait in the
same queue (:class:`QueuedSlots`): handed their slots, they are woken (on their loop, or
thread) and create their workflows themselves. So starts get their slots in the
order they came, whatever their face, and one arriving while queued ones wait queues
behind them (it used to take a slot freed but not yet handed on, and a waiting
``start_async()`` could be overtaken by every blocking start queued after it).

Most slots are handed on sooner still: once the Scheduler has decided a workflow's final
state, before it flushes it, the oldest queued start takes a slot on the Scheduler's
thread (:meth:`Capacity._pass_on`, one per ending workflow), so that start's creation
and its first DISPATCHED go into the commit that ends the workflow: three synced commits
for a 3-step workflow instead of four when starts wait for room (+25-30% at 1 in
flight). Until that commit lands both count, so the count may pass the limit by the
workflows whose end is on its way. The creation waits for the Scheduler's batch
(``MERGE_WAIT``), so with few in flight the end and the start land in one commit; under
load (a Scheduler turn longer than that) the start may be durable a commit before the end.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from time import monotonic
from typing import TYPE_CHECKING

from herder.actors import RuntimeClosed, WrongThread
from herder.runtime._part import whole as _runtime
from herder.runtime._starts import undecided
from herder.runtime._waits import wake
from herder.store import TimedOut

if TYPE_CHECKING:
    from herder.runtime._starts import Landing, NewStart
    from herder.store import Put


@dataclass(slots=True, eq=False)
class QueuedStart:
    """A ``start()`` waiting for a slot; ``decided`` is held until it was refused
    (``error``) or handed a slot and its creation's commit was decided (``landing``)."""

    new: NewStart
    also: tuple[Put, ...]
    decided: threading.Lock
    claim: threading.Lock | None = None  # its id's, held by its caller (runtime/_claims.py)
    fresh: bool = False  # an id made for it: no other start has it
    landing: Landing | None = None
    error: BaseException | None = None
    handed: bool = False
    handed_at: float = 0.0  # (time.monotonic)

    def refuse(self, error: BaseException) -> None:
        self.error = error
        self.decided.release()


@dataclass(slots=True, eq=False)
class QueuedSlots:
    """A start that creates its workflows itself (``start_async``, ``start_many``,
    ``start_many_async``) waiting for ``need`` slots. At the head of the queue it takes
    each slot that frees (``got``), so nothing queued behind it overtakes it and two
    batches never split the slots that free between them; it is woken once it has them
    all (``handed``) or was refused (``error``): on its loop (``woken`` a future) or its
    thread (``woken`` a held lock)."""

    woken: asyncio.Future[None] | threading.Lock
    need: int = 1
    got: int = 0
    error: BaseException | None = None
    handed: bool = False

    def wake(self) -> bool:
        """False if its loop closed: nobody waits for it any more."""
        if isinstance(self.woken, asyncio.Future):
            return wake(self.woken)
        self.woken.release()
        return True

    def refuse(self, error: BaseException) -> None:
        self.error = error
        self.wake()


def _full(active: int, limit: int, timeout: float | None, what: str) -> TimedOut:
    waited = "its timeout" if timeout is None else f"{timeout:.3g} s"  # (what was left of it)
    return TimedOut(
        f"{active} workflows are unfinished or being started (max_active_workflows="
        f"{limit}); {what} waited {waited} for room; nothing of it was written: try "
        "again later, or raise max_active_workflows"
    )


def _on_loop(what: str, instead: str) -> WrongThread:
    return WrongThread(
        f"{what} must wait for room (max_active_workflows), and this thread runs the event "
        "loop of the runtime's async def actions: the workflows holding the room could not "
        f"end there meanwhile. Nothing was written; await {instead} instead"
    )


class Capacity:
    """Slots under ``max_active_workflows``."""

    def _take_capacity_now(self, n: int) -> int:
        """Take ``n`` slots at once if they are free (start_many's fast path); else none."""
        rt = _runtime(self)
        with rt._lock:
            rt._check_open()
            if rt._active + n > rt._max_active or rt._queued:  # (queued: theirs first)
                return 0
            rt._active += n
            return n

    def _wait_capacity(self, timeout: float | None, n: int = 1) -> None:
        """Take ``n`` slots, waiting in the queue of starts (:class:`QueuedSlots`) if they
        are not free or others wait already (start_many's wait). :class:`TimedOut` if
        they did not come within ``timeout`` seconds."""
        woken = threading.Lock()
        woken.acquire()
        queued = QueuedSlots(woken, n)
        if not self._join_queue(queued):
            return
        if _runtime(self)._ctx.event_loop.runs_here() and self._leave(queued):
            raise _on_loop("start_many()", "rt.start_many_async()")
        try:
            came = woken.acquire(timeout=-1 if timeout is None else timeout)
        except BaseException:  # interrupted (Ctrl-C): as a cancelled task, below
            self._give_up(queued)
            raise
        if not came and self._leave(queued):
            rt = _runtime(self)
            raise _full(rt._active, rt._max_active, timeout, "start_many()")
        if queued.error is not None:
            raise queued.error

    def _give_up(self, queued: QueuedSlots) -> None:
        """``queued``'s caller is gone (interrupted, cancelled): its place in the queue
        and every slot it got, or was handed meanwhile, go on to the next."""
        if not self._leave(queued) and queued.handed:
            self._release_capacity(queued.need)

    def _join_queue(self, queued: QueuedSlots) -> bool:
        """Take ``queued.need`` slots now if they are free and nobody waits (False), else
        queue it (True), taking what is free for it if it is the oldest."""
        rt = _runtime(self)
        with rt._lock:
            rt._check_open()
            if rt._active + queued.need <= rt._max_active and not rt._queued:
                rt._active += queued.need
                return False
            rt._queued.append(queued)
        self._hand_off()
        return True

    def _leave(self, queued: QueuedSlots) -> bool:
        """``queued`` stops waiting (timed out, cancelled): out of the queue, with the
        slots it got given on; False if it was handed them all (or refused) meanwhile."""
        rt = _runtime(self)
        with rt._lock:
            if queued.handed or queued.error is not None:
                return False
            rt._queued.remove(queued)
            rt._active -= queued.got
        if queued.got:
            self._hand_off()
        return True

    def _queue_start(
        self,
        new: NewStart,
        also: tuple[Put, ...],
        timeout: float | None,
        claim: threading.Lock | None = None,
        fresh: bool = False,
    ) -> Landing | None:
        """Wait for a slot with ``new`` queued, to be created by the thread that hands
        it one (the module docstring): its decided :class:`Landing`; None if a slot was free
        after all (taken: the caller creates it, and keeps ``claim``). :class:`TimedOut` if
        no slot came within ``timeout`` seconds (nothing is written then), or if the
        commit, once handed a slot, was not decided within ``ask_timeout``. It ends
        ``claim`` (its id's) unless handed a slot: then its :class:`Landing` does, once
        the commit is decided, also if this caller stopped waiting for it (a retry of
        the id waits for it then, and finds the workflow)."""
        rt = _runtime(self)
        decided = threading.Lock()
        decided.acquire()
        queued = QueuedStart(new, also, decided, claim, fresh)
        try:
            with rt._lock:
                rt._check_open()
                if rt._active < rt._max_active and not rt._queued:
                    rt._active += 1
                    queued.claim = None  # (back to the caller)
                    return None
                if rt._ctx.event_loop.runs_here():
                    raise _on_loop("start()", "rt.start_async()")
                rt._queued.append(queued)
            return self._await_slot(queued, timeout)
        finally:
            if not queued.handed:  # (handed: _create gave it to the Landing)
                rt._claims.give_back(new.workflow_id, queued.claim)

    def _await_slot(self, queued: QueuedStart, timeout: float | None) -> Landing | None:
        """The wait of :meth:`_queue_start`, with ``queued`` in the queue."""
        rt, new, decided = _runtime(self), queued.new, queued.decided
        ask, deadline = rt._ask_timeout, None if timeout is None else monotonic() + timeout
        while True:  # (woken once; the timeouts only bound the wait)
            if queued.handed:  # its commit is decided within ask_timeout, or it is stuck
                wait = queued.handed_at + ask - monotonic()
            else:
                wait = ask if deadline is None else min(ask, deadline - monotonic())
            try:
                if decided.acquire(timeout=max(0.0, wait)):
                    break
            except BaseException:  # interrupted (Ctrl-C): not created unless handed a slot
                with rt._lock:
                    if not queued.handed and queued.error is None:
                        rt._queued.remove(queued)
                raise
            with rt._lock:
                if queued.handed or queued.error is not None:
                    if queued.error is None and monotonic() >= queued.handed_at + ask:
                        raise undecided(ask, new.workflow_id)
                    continue
                if deadline is not None and monotonic() >= deadline:
                    rt._queued.remove(queued)
                    raise _full(rt._active, rt._max_active, timeout, "start()")
        if queued.error is not None:
            raise queued.error
        return queued.landing

    def _hand_off(self) -> None:
        """Give the free slots to the queued starts, oldest first, each ``start()``
        created here (on the thread that freed the slot). One thread hands off at a time:
        a slot freed meanwhile (a creation that failed at once gives its slot back) is
        handed by the loop of the one that is."""
        rt = _runtime(self)
        while True:
            with rt._lock:
                if rt._handing or not rt._queued or rt._active >= rt._max_active:
                    return
                start = self._give()
                if start is None:
                    continue
                rt._handing = True
            try:
                self._create(start)
            finally:
                with rt._lock:
                    rt._handing = False

    def _give(self) -> QueuedStart | None:
        """One slot (taken) for the oldest queued start (call holding ``rt._lock``): the
        ``start()`` to create now (:meth:`_create`), out of the queue; or None (a
        :class:`QueuedSlots` counted it, and left the queue, woken, if it has all it
        needs; or the runtime is stopping, and the start was refused)."""
        rt = _runtime(self)
        try:
            rt._check_open()
        except BaseException as exc:  # stopping: refused, as at a free slot before
            rt._queued.popleft().refuse(exc)
            return None
        queued = rt._queued[0]
        rt._active += 1
        if isinstance(queued, QueuedStart):
            rt._queued.popleft()
            queued.handed = True
            queued.handed_at = monotonic()
            return queued
        queued.got += 1
        if queued.got == queued.need:
            rt._queued.popleft()
            queued.handed = True
            if not queued.wake():  # its loop closed: nobody waits for them
                rt._active -= queued.need
        return None

    def _create(self, start: QueuedStart) -> None:
        """Create a queued ``start()`` handed a slot (:meth:`_give`), here."""
        rt = _runtime(self)
        early = start.fresh or rt._claims.sole(start.claim)  # (its claim: see _claims)
        try:
            new, claim = start.new, start.claim
            rt._submit_start(new, start.also, None, handed=start, claim=claim, early=early)
        except BaseException as exc:  # (_submit_start gave its slot back)
            rt._claims.give_back(start.new.workflow_id, start.claim)
            start.refuse(exc)

    def _stop_starting(self) -> bool:
        """stop() was called: ``start()`` refuses from here, and the starts queued for room
        are refused at once (nothing of them written), not once a slot frees or a
        ``drain=True`` ends; whether the runtime was stopped already."""
        rt = _runtime(self)
        with rt._lock:
            closed, rt._draining = rt._closed, True
            if not closed:
                self._refuse_queued(RuntimeClosed("stop() was called"))
        return closed

    def _refuse_queued(self, why: BaseException) -> None:
        """Every queued start fails (the runtime stopped, lost its lease or failed:
        ``why``, which the result() waiters hear, is the cause); call holding
        ``rt._lock``. None of them was written: they are told so, not what the waiters
        are told (that their workflow is durable)."""
        rt = _runtime(self)
        while rt._queued:
            refused = RuntimeClosed(
                "the runtime stopped while this start waited for room under "
                "max_active_workflows; nothing of it was written: start it again on the "
                "runtime that runs the store next"
            )
            refused.__cause__ = why
            rt._queued.popleft().refuse(refused)

    async def _capacity_async(
        self, timeout: float | None, n: int = 1, what: str = "start_async()"
    ) -> None:
        """As :meth:`_wait_capacity`, awaited (``start_async``, or ``what``)."""
        queued = QueuedSlots(asyncio.get_running_loop().create_future(), n)
        if not self._join_queue(queued):
            return
        try:
            # Not asyncio.wait_for: on 3.11 it returns the result when the cancel comes in
            # the loop turn the slots do, and the cancelled task runs on as if never asked.
            async with asyncio.timeout(timeout):
                await queued.woken  # type: ignore[misc]
        except TimeoutError:
            if self._leave(queued):
                rt = _runtime(self)
                raise _full(rt._active, rt._max_active, timeout, what) from None
        except BaseException:  # the awaiting task was cancelled
            self._give_up(queued)
            raise
        if queued.error is not None:
            raise queued.error

    def _pass_on(self, workflow_id: str) -> None:
        """The Scheduler decided ``workflow_id``'s final state and is about to flush it:
        the oldest queued start takes a slot now (on the Scheduler's thread), so its
        creation and first DISPATCHED join the commit that ends that workflow (one synced
        commit less per workflow while starts wait for room). Until that final is durable
        both count: at most one start per ending workflow (``_passed``) goes past the
        limit (the module docstring: under load the start may land a commit first)."""
        rt = _runtime(self)
        if not rt._queued:
            return
        with rt._lock:
            if not rt._queued or workflow_id in rt._passed:
                return
            rt._passed.add(workflow_id)
            start = self._give()
        if start is not None:
            self._create(start)

    def _release_capacity(self, n: int = 1) -> None:
        rt = _runtime(self)
        with rt._lock:
            rt._active -= n
        self._hand_off()

    def _on_recovered(self, unfinished: int) -> None:
        rt = _runtime(self)
        with rt._lock:
            rt._active += unfinished

    def _on_resumed(self) -> None:
        rt = _runtime(self)
        with rt._lock:
            rt._active += 1
