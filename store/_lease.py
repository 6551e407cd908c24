"""The leader lease: which runtime may write a store, and until when.

Only one process writes a store. That process holds the lease, a record in the ``meta``
database (key ``lease``): owner id, incarnation, expiry (wall-clock seconds), the
holder's pid and host, and whether it also holds the ``herder.lock`` flock. The holder
renews it well before it expires; a standby process on the same directory takes it once
it expired, was released, or its holder is known to be gone.

How the lease and the flock combine:

- The lease is the exclusion. Every write batch checks, inside its own LMDB write
  transaction, that the lease is still ours (:func:`guard`); LMDB serialises write
  transactions across processes, so a runtime that lost the lease (it was SIGSTOPped past
  its expiry and a standby took over) fails its next commit with :class:`LeaseLost` and
  writes nothing.
- The flock is a liveness signal and the fast refusal. The kernel drops it when its holder
  dies but *not* when the holder is stopped. A plain (non-standby) open must get the flock
  (else :class:`StoreLocked`, as before) and then the lease; a standby tries the flock on
  every poll. Whoever gets the flock while the lease says its holder held it knows that
  holder is dead and takes over at once instead of waiting for expiry. A holder on this
  host whose pid no longer exists is gone too.
- Read-only opens take neither.

Taking the lease bumps the store's incarnation counter in the same transaction (fencing
tokens are ``(incarnation << 32) + n``, so answers from the old holder's attempts are
stale) and clears a pending handoff request.

A handoff request lives under its own key (``handoff``) so that the holder's renewals
never overwrite it; any process may write it, and the holder reads it when it renews.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar, cast

import lmdb

from herder.store._codec import decode, encode
from herder.store._errors import LeaseLost, StoreCorrupt, StoreError
from herder.store._locktable import HOST, holder_gone
from herder.store._ops import Expect, Put, Transition

if TYPE_CHECKING:
    from herder.store._writer import Writer

_T = TypeVar("_T")

LEASE_KEY = b"lease"
HANDOFF_KEY = b"handoff"
INCARNATION_KEY = b"incarnation"

DEFAULT_LEASE = 5.0
"""Seconds a lease lasts unless renewed; a standby takes over at most this long after the
holder stopped renewing (at once if the holder is known dead)."""


@dataclass(frozen=True, slots=True)
class Lease:
    """The leader lease record. ``expires`` is wall-clock seconds; 0 means released.

    ``clock`` is the holder's engine time at its last renewal (its steady clock, see
    ``herder.actors._clock``), carried over when the lease changes hands: the next holder
    starts its clock no earlier, so a wall clock stepped back between two holders does
    not postpone every persisted deadline.
    """

    owner: str
    incarnation: int
    expires: float
    pid: int
    host: str
    flock: bool
    taken: float
    clock: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """The stored map."""
        return {
            "v": 1,
            "owner": self.owner,
            "incarnation": self.incarnation,
            "expires": self.expires,
            "pid": self.pid,
            "host": self.host,
            "flock": self.flock,
            "taken": self.taken,
            "clock": self.clock,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Lease:
        """Build from the stored map (KeyError/TypeError on a malformed one)."""
        lease = cls(
            owner=data["owner"],
            incarnation=data["incarnation"],
            expires=float(data["expires"]),
            pid=data["pid"],
            host=data["host"],
            flock=bool(data["flock"]),
            taken=float(data["taken"]),
            clock=None if data.get("clock") is None else float(data["clock"]),
        )
        if type(lease.owner) is not str or type(lease.incarnation) is not int:
            raise TypeError("owner must be a str and incarnation an int")
        return lease

    @property
    def released(self) -> bool:
        """True once its holder gave it up (clean stop or handoff)."""
        return self.expires == 0.0

    def describe(self, now: float | None = None) -> str:
        """A one-line account for error messages and the CLI."""
        now = time.time() if now is None else now
        if self.released:
            return f"released by pid {self.pid} on {self.host} (incarnation {self.incarnation})"
        left = self.expires - now
        when = f"expires in {left:.1f} s" if left > 0 else f"expired {-left:.1f} s ago"
        return f"held by pid {self.pid} on {self.host} (incarnation {self.incarnation}), {when}"


@dataclass(frozen=True, slots=True)
class HandoffRequest:
    """An operator's request that the lease holder hand over: finish running attempts
    for up to ``deadline`` seconds, release the lease and exit."""

    requested: float
    deadline: float
    by: str

    def to_dict(self) -> dict[str, Any]:
        """The stored map."""
        return {"v": 1, "requested": self.requested, "deadline": self.deadline, "by": self.by}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HandoffRequest:
        """Build from the stored map."""
        return cls(float(data["requested"]), float(data["deadline"]), str(data["by"]))


def _get(txn: lmdb.Transaction, meta: Any, key: bytes, build: Callable[[Any], Any]) -> Any:
    raw = cast("bytes | None", txn.get(key, db=meta))
    return None if raw is None else _parse(raw, key, build)


def _parse(raw: bytes, key: bytes, build: Callable[[Any], Any]) -> Any:
    data = decode(raw, db="meta", key=key)
    if not isinstance(data, dict):
        raise StoreCorrupt("meta", key, f"expected a map, got {type(data).__name__}")
    try:
        return build(data)
    except (KeyError, TypeError, ValueError) as exc:
        raise StoreCorrupt("meta", key, f"bad record: {type(exc).__name__}: {exc}") from exc


def read_lease(txn: lmdb.Transaction, meta: Any) -> Lease | None:
    """The lease record in ``txn``, or None if no runtime ever held one."""
    return cast("Lease | None", _get(txn, meta, LEASE_KEY, Lease.from_dict))


def read_handoff(txn: lmdb.Transaction, meta: Any) -> HandoffRequest | None:
    """The pending handoff request in ``txn``, or None."""
    return cast("HandoffRequest | None", _get(txn, meta, HANDOFF_KEY, HandoffRequest.from_dict))


def why_takeable(
    lease: Lease | None,
    now: float,
    *,
    have_flock: bool,
    lapsed: Callable[[Lease], bool] | None = None,
) -> str | None:
    """Why the lease may be taken now ("free", "released", "expired", "holder gone"),
    or None while its holder may still be alive and within its lease.

    ``lapsed(lease)`` judges expiry when given (a standby's own observation, see
    ``herder.runtime._ha``); otherwise ``expires`` is compared with the wall clock ``now``.
    """
    if lease is None:
        return "free"
    if lease.released:
        return "released"
    if (lease.expires <= now) if lapsed is None else lapsed(lease):
        return "expired"
    if holder_gone(lease, have_flock=have_flock):
        return "holder gone"
    return None


def take(
    txn: lmdb.Transaction,
    meta: Any,
    *,
    duration: float,
    have_flock: bool,
    lapsed: Callable[[Lease], bool] | None = None,
    now: float | None = None,
) -> tuple[Lease, str | None]:
    """Take the lease inside write transaction ``txn`` if it is free to take at ``now``
    (wall-clock seconds, default the time now).

    Returns ``(new lease, reason)`` when taken (the incarnation bumped, a pending handoff
    request cleared) or ``(current lease, None)`` when another holder keeps it.
    """
    now = time.time() if now is None else now
    current = read_lease(txn, meta)
    reason = why_takeable(current, now, have_flock=have_flock, lapsed=lapsed)
    if reason is None:
        assert current is not None
        return current, None
    raw = cast("bytes | None", txn.get(INCARNATION_KEY, db=meta))
    previous = 0 if raw is None else decode(raw, db="meta", key=INCARNATION_KEY)
    if type(previous) is not int:
        raise StoreCorrupt("meta", INCARNATION_KEY, f"expected an int, got {previous!r:.40}")
    if current is not None:
        previous = max(previous, current.incarnation)
    lease = Lease(
        owner=uuid.uuid4().hex,
        incarnation=previous + 1,
        expires=now + duration,
        pid=os.getpid(),
        host=HOST,
        flock=have_flock,
        taken=now,
        clock=None if current is None else current.clock,
    )
    txn.put(INCARNATION_KEY, encode(lease.incarnation), db=meta)
    txn.put(LEASE_KEY, encode(lease.to_dict()), db=meta)
    txn.delete(HANDOFF_KEY, db=meta)
    return lease, reason


def guard(meta: Any, owner: str) -> Callable[[lmdb.Transaction], BaseException | None]:
    """The writer's per-batch check: None while ``owner`` holds the lease, else the error
    that fails the batch (nothing of it is written).

    The lease is read in every write transaction; only bytes that differ from the last
    value found to be ours (a renewal, a takeover) are decoded and checked again: the
    verdict depends on nothing but those bytes.
    """
    ours: bytes | None = None

    def check(txn: lmdb.Transaction) -> BaseException | None:
        nonlocal ours
        raw = cast("bytes | None", txn.get(LEASE_KEY, db=meta))
        if raw is not None and raw == ours:
            return None
        try:
            lease = None if raw is None else _parse(raw, LEASE_KEY, Lease.from_dict)
        except StoreCorrupt as exc:
            return exc
        if lease is not None and lease.owner == owner and not lease.released:
            ours = raw
            return None
        now = "no runtime" if lease is None else lease.describe()
        return LeaseLost(
            f"this runtime no longer holds the store's lease (now {now}); nothing of this "
            "batch was written. It stops dispatching: restart it with standby=True to wait "
            "for the lease again"
        )

    return check


def renewal(lease: Lease, renewed: Lease) -> Transition:
    """Write ``renewed`` only if the stored lease is still exactly ``lease``."""
    return Transition(
        ops=(Put("meta", LEASE_KEY, encode(renewed.to_dict())),),
        expect=(Expect("meta", LEASE_KEY, field="expires", value=lease.expires),),
    )


class LeaseHolder:
    """The lease lifecycle of a Store (a base class of it): take, renew, release, hand off.

    Wall-clock time comes in as ``now`` (default: ``time.time()``); the Store provides the
    environment, the writer and the flock.
    """

    path: pathlib.Path
    readonly: bool
    standby: bool
    incarnation: int
    lease_duration: float
    releasing: bool
    _lease: Lease | None
    _clock_note: float | None
    _env: lmdb.Environment | None
    _handles: dict[str, Any]
    _lock_fd: int | None
    _have_flock: bool

    def _read(self, fn: Callable[[lmdb.Transaction], _T]) -> _T:
        raise NotImplementedError  # the Store's reader gate

    def _try_flock(self) -> bool:
        raise NotImplementedError  # the Store's flock

    def _start_writer(self, lease: Lease) -> None:
        raise NotImplementedError  # the Store starts its writer

    def _upgrade(self, txn: lmdb.Transaction) -> None:
        raise NotImplementedError  # the Store marks the schema it writes

    def _held_writer(self) -> Writer | None:
        raise NotImplementedError  # the Store's writer, None if it has none

    def _write_direct(self, fn: Callable[[lmdb.Transaction], _T], what: str) -> _T:
        raise NotImplementedError  # one write transaction outside the writer

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
        if self._lease is not None:
            return "held"
        if not self.standby or self._env is None:
            raise StoreError(f"store {self.path} is not an open standby store")
        self._try_flock()

        def take_it(txn: lmdb.Transaction) -> tuple[Lease, str | None]:
            lease, reason = take(
                txn,
                self._handles["meta"],
                duration=self.lease_duration,
                have_flock=self._have_flock,
                lapsed=lapsed,
                now=now,
            )
            if reason is not None:
                self._upgrade(txn)
            return lease, reason

        lease, reason = self._write_direct(take_it, "cannot take the lease of store")
        if reason is None:
            return None
        self._lease, self.incarnation = lease, lease.incarnation
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
        except StoreError:
            return False
        self._lease = released
        return True

    def handoff_request(self) -> HandoffRequest | None:
        """A pending handoff request made since our lease was taken, or None."""
        request = self._read(lambda txn: read_handoff(txn, self._handles["meta"]))
        if request is None or self._lease is None or request.requested < self._lease.taken:
            return None
        return request

    def request_handoff(
        self, deadline: float, by: str = "", *, now: float | None = None
    ) -> HandoffRequest:
        """Ask the lease holder (another process) to hand over: it lets running attempts
        finish for up to ``deadline`` seconds, releases the lease and exits.

        Written directly (this store has no writer, or a writer that may not write this
        key on another holder's behalf); the holder reads it at its next renewal.
        """
        if self.readonly or self._env is None:
            raise StoreError(f"store {self.path} must be open with standby=True to ask a handoff")
        when = time.time() if now is None else now
        request = HandoffRequest(when, float(deadline), by or f"pid {os.getpid()}")
        self._write_direct(
            lambda txn: txn.put(HANDOFF_KEY, encode(request.to_dict()), db=self._handles["meta"]),
            "cannot write a handoff request to",
        )
        return request
