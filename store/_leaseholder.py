"""A Store's lease lifecycle (:class:`LeaseHolder`, a base class of it): take the lease
as a standby, renew it through the writer, release it, ask another holder to hand over.
The lease record and the rules it follows are ``_lease.py``.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import TYPE_CHECKING

import lmdb

from herder.store._access import Access
from herder.store._codec import encode
from herder.store._errors import StoreError
from herder.store._lease import (
    HANDOFF_KEY,
    INCARNATION_KEY,
    LEASE_KEY,
    HandoffRequest,
    Lease,
    read_handoff,
    read_lease,
    renewal,
    take,
    why_takeable,
)
from herder.store._ops import Put, Transition

if TYPE_CHECKING:
    from herder.store._writer import Writer

HELD_UP = 0.1
"""Seconds a standby's take of an expired lease may wait for LMDB's writer lock and still
take it (a commit of the holder's takes milliseconds)."""


def _unexpired(_lease: Lease) -> bool:
    return False


class LeaseHolder(Access):
    """The lease lifecycle of a Store (a base class of it): take, renew, release, hand off.

    Wall-clock time comes in as ``now`` (default: ``time.time()``); the Store provides the
    environment, the writer and the flock.
    """

    standby: bool
    incarnation: int
    lease_duration: float
    releasing: bool
    _lease: Lease | None
    # time.monotonic() just before this store took its lease: a standby takes it no
    # earlier than a lease duration after (-inf: not taken).
    lease_taken_at: float = float("-inf")
    # The incarnation of the lease this store's take replaced (None: the store had none,
    # or it took none): its holder's fencing tokens ran from it up to ours (they pass
    # into the incarnations it reserved, ``reserve_incarnations``).
    taken_from: int | None = None
    _clock_note: float | None
    _lock_fd: int | None
    _have_flock: bool
    _closed: bool
    _taking: threading.Lock  # the Store's: a take and close() exclude each other

    def _try_flock(self) -> bool:
        raise NotImplementedError  # the Store's flock

    def _start_writer(self, lease: Lease) -> None:
        raise NotImplementedError  # the Store starts its writer

    def _upgrade(self, txn: lmdb.Transaction, incarnation: int, before: int | None) -> None:
        raise NotImplementedError  # the Store marks the schema it writes

    def _held_writer(self) -> Writer | None:
        raise NotImplementedError  # the Store's writer, None if it has none

    @property
    def lease(self) -> Lease | None:
        """The lease this store holds (as last written by it), or None."""
        return self._lease

    def read_lease(self) -> Lease | None:
        """The lease record as stored now (whoever holds it), or None."""
        return self._read(lambda txn: read_lease(txn, self._handles["meta"]))

    def try_take_lease(
        self, lapsed: Callable[[Lease], bool] | None = None, *, now: float | None = None
    ) -> str | None:
        """Standby: take the lease if its holder released it, let it lapse or is gone.

        Returns why it was taken ("free", "released", "expired", "holder gone"), or None
        while another runtime holds it. Taking bumps the incarnation (in the same write
        transaction as the lease, so of racing standbys exactly one wins) and starts the
        writer. Call it from one thread at a time. ``lapsed`` judges expiry instead of
        the wall clock ``now`` (see :func:`why_takeable`).
        """
        with self._taking:  # (close() waits for the take and the writer it starts)
            if self._closed:
                return None
            return self._take_lease(lapsed, now)

    def _take_lease(self, lapsed: Callable[[Lease], bool] | None, now: float | None) -> str | None:
        if self._lease is not None:
            return "held"
        if not self.standby or self._env is None:
            raise StoreError(f"store {self.path} is not an open standby store")
        self._try_flock()
        # A look first, in a read: only a lease that may be taken is worth LMDB's writer
        # lock. Taken at every poll, a standby stopped (SIGSTOP, a debugger, a frozen
        # container) inside that write stopped every commit of the healthy holder.
        when, seen = time.time() if now is None else now, self.read_lease()
        if why_takeable(seen, when, have_flock=self._have_flock, lapsed=lapsed) is None:
            return None

        def take_it(txn: lmdb.Transaction) -> tuple[Lease, str | None, int | None]:
            # Kept waiting for the lock, it judges no expiry: a write held the lock, and
            # the holder's renewal may be queued behind it (its own long commit, such as a
            # start_many of 100,000 workflows); the next poll looks again. One that died
            # or was fenced meanwhile is gone, and taken over now.
            held_up = time.monotonic() - asked > HELD_UP
            lease, reason, before = take(
                txn,
                self._handles["meta"],
                duration=self.lease_duration,
                have_flock=self._have_flock,
                lapsed=_unexpired if held_up else lapsed,
                now=now,
            )
            if reason is not None:
                self._upgrade(txn, lease.incarnation, before)
            return lease, reason, before

        asked = time.monotonic()
        lease, reason, before = self._write_direct(take_it, "cannot take the lease of store")
        if reason is None:
            return None
        self._lease, self.incarnation, self.taken_from = lease, lease.incarnation, before
        self.lease_taken_at = asked
        self._start_writer(lease)
        return reason

    def note_clock(self, now: float) -> None:
        """The engine's time now (see :class:`Lease`), written with the lease at its next
        renewal or release so that the next holder's clock starts no earlier."""
        self._clock_note = now

    def renew_lease(self, *, now: float | None = None) -> Future[None]:
        """Renew our lease for another ``lease_duration`` seconds from ``now`` through the
        writer.

        The future fails with :class:`LeaseLost` if the lease is no longer ours (the
        writer's check), or with :class:`ConditionFailed` if it changed since we last
        wrote it (we released it meanwhile): a renewal never revives a released lease.
        A holder that took the lease without the flock (its old holder was paused, not
        dead) picks the flock up here once that holder is gone.
        """
        lease = self._lease
        writer = self._held_writer()
        if lease is None or self.releasing or writer is None:
            raise StoreError(f"store {self.path} holds no lease to renew")
        flock = lease.flock or (self._lock_fd is not None and self._try_flock())
        expires = (time.time() if now is None else now) + self.lease_duration
        clock = self._clock_note if self._clock_note is not None else lease.clock
        renewed = dataclasses.replace(lease, expires=expires, flock=flock, clock=clock)
        done = writer.submit(renewal(lease, renewed))

        def adopt(result: Future[None]) -> None:
            if result.exception() is None and self._lease is lease:
                self._lease = renewed

        done.add_done_callback(adopt)
        return done

    def reserve_incarnations(self, upto: int) -> Future[None]:
        """Count the incarnations up to ``upto`` as used (through the writer): the next
        take of the lease starts above them. Our fencing tokens are ``(incarnation <<
        32) + n``; past 2**32 of them (days at full speed) their high bits pass our
        incarnation, and the next holder's tokens must still start above every one."""
        writer = self._held_writer()
        if self._lease is None or self.releasing or writer is None:
            raise StoreError(f"store {self.path} holds no lease to reserve incarnations under")
        return writer.submit(Transition(ops=(Put("meta", INCARNATION_KEY, encode(upto)),)))

    def release_lease(self, timeout: float = 10.0) -> bool:
        """Give the lease up now (a standby takes over at once); True if it was ours.

        After this every write of this store fails with :class:`LeaseLost`, and
        :attr:`releasing` is True from the start, so callers can tell that from a lease
        taken by another runtime.
        """
        lease = self._lease
        writer = self._held_writer()
        if lease is None or writer is None or writer.closed:
            return False
        self.releasing = True
        clock = self._clock_note if self._clock_note is not None else lease.clock
        released = dataclasses.replace(lease, expires=0.0, clock=clock)
        done = writer.submit(Transition(ops=(Put("meta", LEASE_KEY, encode(released.to_dict())),)))
        try:
            done.result(timeout=timeout)
        except (StoreError, TimeoutError):  # (not written in time: it lapses instead)
            return False
        self._lease = released
        return True

    def handoff_request(self) -> HandoffRequest | None:
        """A pending handoff request to us, or None: one to another incarnation is not
        ours (written after our take, by an asker who looked at the lease before it).
        Its time is not compared with when we took the lease (a wall clock stepped back
        between the two made ``herder handoff`` go unheard)."""
        lease = self._lease
        request = self._read(lambda txn: read_handoff(txn, self._handles["meta"]))
        if request is None or lease is None or request.to not in (None, lease.incarnation):
            return None
        return request

    def request_handoff(
        self, deadline: float, by: str = "", *, to: int | None = None, now: float | None = None
    ) -> HandoffRequest:
        """Ask the lease holder of incarnation ``to`` (another process; default: whoever
        holds the lease as this is written) to hand over: it lets running attempts finish
        for up to ``deadline`` seconds, releases the lease and exits. Any other holder
        ignores the request.

        Written directly (this store has no writer, or a writer that may not write this
        key on another holder's behalf); the holder reads it at its next renewal.
        """
        if self.readonly or self._env is None:
            raise StoreError(f"store {self.path} must be open with standby=True to ask a handoff")
        when = time.time() if now is None else now
        meta = self._handles["meta"]

        def write(txn: lmdb.Transaction) -> HandoffRequest:
            holder = read_lease(txn, meta) if to is None else None
            to_ = to if holder is None else holder.incarnation
            request = HandoffRequest(when, float(deadline), by or f"pid {os.getpid()}", to_)
            txn.put(HANDOFF_KEY, encode(request.to_dict()), db=meta)
            return request

        return self._write_direct(write, "cannot write a handoff request to")
