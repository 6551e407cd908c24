"""High availability on one host: keeping the lease, waiting as a standby, handing over.

- :class:`~herder.runtime._keeper.LeaseKeeper` (its own module) keeps the active
  runtime's lease; :func:`lease_kept` keeps it during the app's setup, before that.
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

from herder.runtime._once import SaidOnce
from herder.store import (
    Lease,
    SchemaTooNew,
    StandbyMark,
    Store,
    StoreError,
    Unrenewed,
    fence,
    get_logger,
    holder_stopped,
)

_log = get_logger("herder.ha")


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
