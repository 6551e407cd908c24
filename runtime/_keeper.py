"""Keeping the active runtime's lease (the standby's side: ``_ha.py``).

A :class:`LeaseKeeper` runs on the active runtime: a thread of its own renews the lease
every third of its duration (and reserves the incarnation its fencing tokens will run
into), as long as the Supervisor swept within the last two lease durations (the sweep
only completes when the store is readable and the actors run, which makes it the
runtime's health check). Renewed from the sweep itself, the lease waited for every
sweep's turn: under load (100,000 workflows recovered or started) sweeps stretched to
0.5-1.2 s, renewals came a sweep or two late, and a standby deposed a healthy holder
of a 1 s lease. Each sweep looks for a handoff request;
a renewal refused because another runtime took the lease deposes this one (the
writer's lease check is the single "am I the active runtime" test).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import TYPE_CHECKING

from herder.actors import RuntimeClosed
from herder.runtime._once import SaidOnce
from herder.store import HandoffRequest, LeaseLost, Store, StoreCorrupt, StoreError, get_logger

if TYPE_CHECKING:
    from herder.actors import EngineContext

_log = get_logger("herder.ha")

HEADROOM = 1 << 31
"""Fencing tokens left in an incarnation's range (of 2**32) when the keeper reserves the
next incarnation for them: days of tokens at full speed to write that down."""


class LeaseKeeper:
    """Renews the active runtime's lease on a thread of its own while the Supervisor
    sweeps, and notices handoff requests at each sweep.

    ``on_handoff(deadline)`` is called once, on a new thread, when an operator asked this
    runtime to hand over. :meth:`stop` ends the renewals at once (the runtime stops, or
    failed).
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
        self._next = store.lease_taken_at + self._every
        self._renewing = False
        self._asked = store.lease_taken_at  # when the renewal in flight was asked for
        # What attempts about to start check (AttemptPort.leased): a lease from its take.
        self._set_until(store.lease_taken_at + store.lease_duration)
        self._handing_off = False
        self._damaged = SaidOnce(_log, logging.ERROR)  # an unreadable request, said once
        self._reserved = store.incarnation  # the highest incarnation our tokens may reach
        self._changed = threading.Condition()  # a sweep, a renewal's end, stop()
        self._swept = time.monotonic()  # the last sweep (the actors start with the keeper)
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="herder-lease", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Ask for no renewal from now on (one asked before still lands); the thread ends
        at once. (Renewals are asked holding ``_changed``: none is asked after this.)"""
        with self._changed:
            self._stopping = True
            self._changed.notify_all()

    def on_sweep(self) -> None:
        """Note the runtime healthy (renewals go on); start a handoff if one was requested."""
        if self._ctx.lost is not None:
            return
        self._store.note_clock(self._ctx.clock.time())  # written with the next renewal
        with self._changed:
            self._swept = time.monotonic()
            self._changed.notify_all()  # (renewals that waited for a sweep go on)
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

    def _run(self) -> None:
        """Renew every third of the lease, one renewal at a time, while a sweep ran within
        the last two lease durations (a sweep a lease late, behind a busy Scheduler, is
        no sign of a hung runtime); until stopped, deposed, or the lease is given up."""
        healthy = 2 * self._store.lease_duration
        with self._changed:
            while not self._stopping and self._ctx.lost is None:
                now = time.monotonic()
                if now < self._next:
                    self._changed.wait(self._next - now)
                elif self._renewing or now - self._swept >= healthy:
                    self._changed.wait()  # (the renewal's end, the next sweep, stop())
                elif not self._renew(now):
                    return

    def _renew(self, now: float) -> bool:
        """Ask for a renewal (called holding ``_changed``); False when there is no lease
        left to renew (released, or the store closing)."""
        self._renewing = True
        self._next = now + self._every
        self._asked = now
        try:
            self._store.renew_lease().add_done_callback(self._renewed)
        except StoreError:
            self._renewing = False  # closing: nothing left to renew
            return False
        self._reserve()
        return True

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
        with self._changed:
            self._renewing = False
            self._changed.notify_all()
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
