"""High availability on one host: keeping the lease, waiting as a standby, handing over.

- :class:`LeaseKeeper` runs on the active runtime as a listener of the Supervisor's sweep
  (the sweep only completes when the store is readable and the actors run, which makes it
  the runtime's health check). It renews the lease every third of its duration (and
  reserves the incarnation its fencing tokens will run into) and looks for a handoff
  request; a renewal refused because another runtime took the lease deposes
  this one (the writer's lease check is the single "am I the active runtime" test).
- :class:`StandbyWatcher` is the thread of a standby runtime: it tries to take the lease
  every ``poll`` seconds; once it has it, the runtime starts its actors and recovers every
  unfinished workflow exactly as a restart does.

A standby never compares wall clocks across processes: it deems the lease expired once
the record stayed unchanged (not renewed) for a whole lease duration on its own
monotonic clock. A wall-clock step on either side (NTP, a VM resumed from a snapshot)
therefore neither deposes a healthy holder nor keeps a dead one.

The lease itself (record, take, the writer's check) lives in ``herder.store._lease``.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import TYPE_CHECKING

from herder.actors import RuntimeClosed
from herder.runtime._once import SaidOnce
from herder.store import (
    HandoffRequest,
    Lease,
    LeaseLost,
    SchemaTooNew,
    StandbyMark,
    Store,
    StoreCorrupt,
    StoreError,
    Unrenewed,
    fence,
    get_logger,
    holder_stopped,
)

if TYPE_CHECKING:
    from herder.actors import EngineContext

_log = get_logger("herder.ha")

HEADROOM = 1 << 31
"""Fencing tokens left in an incarnation's range (of 2**32) when the keeper reserves the
next incarnation for them: days of tokens at full speed to write that down."""


class LeaseKeeper:
    """Renews the active runtime's lease from the sweep and notices handoff requests.

    ``on_handoff(deadline)`` is called once, on a new thread, when an operator asked this
    runtime to hand over.
    """

    def __init__(
        self,
        store: Store,
        ctx: EngineContext,
        on_handoff: Callable[[float], None],
        *,
        gate: bool = True,
    ) -> None:
        self._store = store
        # Whether attempts wait for a renewal once the lease may have lapsed: not on an
        # injected clock, whose sweeps (and so renewals) come only when a test moves it.
        self._gate = gate
        self._ctx = ctx
        self._on_handoff = on_handoff
        self._every = store.lease_duration / 3
        self._next = store.lease_taken_at + self._every  # (a long start: at the first sweep)
        self._renewing = False
        self._asked = store.lease_taken_at  # when the renewal in flight was asked for
        # What attempts about to start check (AttemptPort.leased): a lease from its take.
        self._set_until(store.lease_taken_at + store.lease_duration)
        self._handing_off = False
        self._damaged = SaidOnce(_log, logging.ERROR)  # an unreadable request, said once
        self._reserved = store.incarnation  # the highest incarnation our tokens may reach

    def on_sweep(self) -> None:
        """Renew the lease when due; start a handoff if one was requested."""
        if self._ctx.lost is not None:
            return
        self._store.note_clock(self._ctx.clock.time())  # written with the next renewal
        now = time.monotonic()
        if now >= self._next and not self._renewing:
            self._renewing = True
            self._next = now + self._every
            self._asked = now
            try:
                self._store.renew_lease().add_done_callback(self._renewed)
            except StoreError:
                self._renewing = False  # closing: nothing left to renew
                return
            self._reserve()
        if not self._handing_off:
            request = self._handoff_request()
            if request is not None:
                self._handing_off = True
                _log.warning(
                    "handoff requested by %s: finishing running attempts (up to %ss)",
                    request.by,
                    request.deadline,
                )
                threading.Thread(
                    target=self._hand_over,
                    args=(request.deadline,),
                    name="herder-handoff",
                    daemon=True,
                ).start()

    def _hand_over(self, deadline: float) -> None:
        """The handoff, on its own thread; a stop() that came meanwhile ends it (the stop
        releases the lease itself): said, not left as the thread's traceback."""
        try:
            self._on_handoff(deadline)
        except RuntimeClosed:
            _log.warning("handoff ended by a stop of this runtime, which let the lease go")

    def _reserve(self) -> None:
        """Reserve the incarnation our fencing tokens will reach next, well before they
        do: the next holder's take starts above it, so its tokens are above all of ours
        (they were equal to some, and below the last, once ours had passed 2**32)."""
        reach = (self._ctx.next_token() + HEADROOM) >> 32  # (a token drawn and not used)
        if reach <= self._reserved:
            return
        self._reserved = reach
        try:
            done = self._store.reserve_incarnations(reach)
        except StoreError:  # (handing over or closing: the lease is going)
            return
        done.add_done_callback(lambda written: self._reserved_or_not(written, reach))

    def _reserved_or_not(self, written: Future[None], reach: int) -> None:
        if written.exception() is not None:  # (asked again at the next renewal)
            self._reserved = min(self._reserved, reach - 1)

    def _handoff_request(self) -> HandoffRequest | None:
        """The pending handoff request; None, said once, for one that cannot be read (a
        traceback at every sweep said to restore the store from a backup, where a new
        request overwrites it and the next holder's lease deletes it)."""
        try:
            return self._store.handoff_request()
        except StoreCorrupt as exc:
            self._damaged.say(
                "handoff",
                f"the handoff request in store {self._store.path} cannot be read "
                f"({exc.reason}), so it is ignored: ask again (`herder handoff`, rt.handoff() "
                "on a standby) to write a new one; nothing else of the store is affected",
                cause=exc.reason,
            )
            return None

    def _set_until(self, until: float) -> None:
        if not self._gate:
            return
        ctx = self._ctx
        with ctx.leased:
            ctx.lease_until = until
            ctx.leased.notify_all()

    def _renewed(self, done: Future[None]) -> None:
        self._renewing = False
        error = done.exception()
        if error is None:  # nobody takes it before a lease from when it was asked for
            self._set_until(self._asked + self._store.lease_duration)
            return
        if self._store.releasing:
            return  # refused because we gave the lease up ourselves
        if isinstance(error, LeaseLost):
            self._ctx.lease_lost(error)
        else:
            _log.warning("could not renew the lease: %s", error)


def clock_floor(store: Store) -> float:
    """Where the engine's clock starts once ``store``'s lease is taken. Persisted deadlines
    are re-based: time starts no earlier than the last time the store's previous holder
    recorded, however the wall clock stepped since: the time it noted with its lease, or
    its newest workflow update when it died before its first renewal could note one."""
    lease = store.lease
    noted = 0.0 if lease is None or lease.clock is None else lease.clock
    newest = next(store.recent(newest_first=True), None)
    return max(noted, 0.0 if newest is None else newest[0])


@contextlib.contextmanager
def lease_kept(store: Store) -> Iterator[None]:
    """Renew ``store``'s lease every third of its duration while the block runs: the
    app's ``setup`` on a runtime that took the lease at open, before the sweep (and its
    :class:`LeaseKeeper`) runs. A setup slower than the lease let a waiting standby
    depose the healthy runtime before it started. Nothing to do on a standby."""
    if store.lease is None:
        yield
        return
    done = threading.Event()

    def renew() -> None:
        every = store.lease_duration / 3
        while not done.wait(every):
            try:
                store.renew_lease().result(timeout=every)
            except (StoreError, TimeoutError) as exc:  # (lost: the first commit says so)
                _log.warning("could not renew the lease during setup: %s", exc)

    keeper = threading.Thread(target=renew, name="herder-setup-lease", daemon=True)
    keeper.start()
    try:
        yield
    finally:
        done.set()
        keeper.join()


class StandbyWatcher:
    """A standby runtime's thread: take the lease when it is free, then ``promote()``.

    Each poll that read the lease calls ``on_poll`` (the standby's health signal). A
    store a newer herder marked with its schema since this one opened it is never taken:
    the watcher stops and calls ``give_up(SchemaTooNew)``.

    Fencing: a holder stopped (SIGSTOP) in the middle of a commit keeps LMDB's writer
    mutex, so the attempt to take its expired lease blocks until it resumes (and so do
    this store's reads). A second thread watches for that: when an attempt has been
    blocked for ``fence_after`` seconds, the lease (as read right before the attempt) has
    expired and its holder is a stopped process on this host, it SIGKILLs the holder
    (the kernel then frees the mutex and the flock). A holder that is merely
    slow, or stopped outside a commit, is never killed: the lease check in every write
    batch deposes it when it wakes. A holder already stopped so when this standby
    opened the store was fenced the same way by that open (``Store``'s own watch).
    """

    def __init__(
        self,
        store: Store,
        poll: float,
        promote: Callable[[str], None],
        on_poll: Callable[[], None],
        give_up: Callable[[BaseException], None],
    ) -> None:
        self._store = store
        self.poll = poll
        self._promote = promote
        self._give_up = give_up
        self._on_poll = on_poll
        self._stop = threading.Event()
        self._attempt_since: float | None = None  # monotonic start of a running attempt
        self._taking = threading.Lock()  # an attempt to take the lease, or a handoff asked
        self._last_seen: Lease | None = None  # the lease as read before that attempt
        self._unrenewed = Unrenewed(store.lease_duration)  # the lease record last seen
        self._failing = SaidOnce(_log, logging.ERROR)  # why polls fail, said once
        self.fence_after = max(0.25, 5 * poll)
        self._mark = StandbyMark(store.path)  # `herder handoff` sees a standby waiting
        self._thread = threading.Thread(target=self._run, name="herder-standby", daemon=True)
        self._thread.start()
        self._fencer = threading.Thread(target=self._fence, name="herder-fence", daemon=True)
        self._fencer.start()

    def stop(self) -> None:
        """Stop polling (the thread ends at its next wake-up)."""
        self._stop.set()
        self._mark.release()

    def ask_handoff(self, deadline: float) -> int | None:
        """:func:`ask_handoff`, unless this standby took the lease already (its promotion
        under way): a request written then was its own to hear, and it handed over to
        nobody and stopped as soon as it was active. (A take deletes one written before.)
        The incarnation asked, if one was."""
        with self._taking:
            if self._store.lease is None:
                return self._store.request_handoff(deadline).to
        return None

    def lost_to_another(self, asked: int) -> bool:
        """Whether the lease the holder of incarnation ``asked`` was asked to hand over is
        held now by another runtime than this standby (it lost the race, or that holder
        died and another took over)."""
        seen = self._store.read_lease()
        if seen is None or seen.incarnation == asked:
            return False
        with self._taking:  # (a take of ours that the read saw has set our lease by now)
            mine = self._store.lease
        return mine is None or mine.owner != seen.owner

    def _run(self) -> None:
        waited_since = time.monotonic()
        while not self._stop.is_set():
            try:
                # Read before the attempt: while a stopped holder blocks the attempt, the
                # store's reads wait too, and this is what the fencer judges by.
                self._last_seen = seen = self._store.read_lease()
                if seen is not None:
                    self._lapsed(seen)  # observed now: the fencer judges by this record
                self._attempt_since = time.monotonic()
                with self._taking:
                    reason = self._store.try_take_lease(lapsed=self._lapsed)
            except SchemaTooNew as exc:  # (a newer herder held the store since our open)
                _log.critical("standby cannot take over: %s", exc)
                self.stop()
                self._give_up(exc)
                return
            except StoreError as exc:
                self._failed(exc)
                reason = None
            else:
                self._failing.clear("poll")
                try:
                    self._on_poll()
                except Exception:  # (a listener's failure must not end the standby)
                    _log.exception("standby poll listener failed")
            finally:
                self._attempt_since = None
            if reason is not None:
                _log.warning(
                    "took the lease of %s (%s) after %.2fs as standby; incarnation %d",
                    self._store.path,
                    reason,
                    time.monotonic() - waited_since,
                    self._store.incarnation,
                )
                self._stop.set()  # ends the fencer too
                self._mark.release()
                self._promote(reason)
                return
            self._stop.wait(self.poll)

    def _failed(self, exc: StoreError) -> None:
        """Say why a poll failed, once until that changes: a damaged lease record failed
        every poll, the same error 20 times a second."""
        self._failing.say(
            "poll",
            f"standby could not check the lease: {exc} (it keeps polling, and says this "
            "again only once it changes)",
        )

    def _lapsed(self, lease: Lease, *, observe: bool = True) -> bool:
        """True once ``lease`` has gone unrenewed for a whole lease duration (the store's
        :class:`Unrenewed` rule; only the polling thread ``observe``s)."""
        return self._unrenewed.lapsed(lease, observe=observe)

    def _fence(self) -> None:
        while not self._stop.wait(self.poll):
            since = self._attempt_since
            if since is None or time.monotonic() - since < self.fence_after:
                continue
            lease = self._last_seen
            if lease is None or not self._lapsed(lease, observe=False) or not holder_stopped(lease):
                continue
            fence(lease, self._store.path, self._unrenewed.seconds())


def ask_handoff(
    store: Store,
    watcher: StandbyWatcher | None,
    deadline: float,
    timeout: float,
    active: threading.Event,
) -> None:
    """``rt.handoff()`` on a standby: ask the holder (another process) to hand over,
    through the standby's ``watcher`` (None: in its setup, before it polls), then wait up
    to ``timeout`` seconds for ``active`` (set once this runtime is active, or stopped), and
    no longer once the lease is seen held by another runtime (looked at every poll)."""
    if watcher is None:
        store.request_handoff(deadline)
        active.wait(timeout)
        return
    asked = watcher.ask_handoff(deadline)
    end = time.monotonic() + timeout
    while not active.wait(max(0.0, min(watcher.poll, end - time.monotonic()))):
        if time.monotonic() >= end or (asked is not None and watcher.lost_to_another(asked)):
            return
