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
stale) and clears a pending handoff request. A holder whose tokens will pass 2**32 raises
the counter ahead of them (``reserve_incarnations``), so the next take starts above them.

A handoff request lives under its own key (``handoff``) so that the holder's renewals
never overwrite it; any process may write it, and the holder reads it when it renews. It
names the incarnation it asks to hand over, and only that holder hears it: one written
just after the lease changed hands (the asker looked before) must not stop the new holder.

This module holds the records and the rules (read, take, guard, renew); a Store's lease
lifecycle built on them is ``_leaseholder.py``.
"""

from __future__ import annotations

import dataclasses
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import lmdb

from herder.store._codec import decode, encode
from herder.store._errors import LeaseLost, StoreCorrupt
from herder.store._locktable import HOST, holder_gone
from herder.store._ops import Expect, Put, Transition

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
    # Its holder's lease duration (renewed every third of it): a standby waits at least
    # this long for a renewal, whatever its own --lease (None: a record from before).
    duration: float | None = None
    # Why its holder could take it (why_takeable: "released" when handed over or stopped,
    # "expired", "holder gone"), what `herder handoff` tells its user (None: from before).
    after: str | None = None

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
            "duration": self.duration,
            "after": self.after,
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
            duration=None if data.get("duration") is None else float(data["duration"]),
            after=data.get("after"),
        )
        if type(lease.owner) is not str or type(lease.incarnation) is not int:
            raise TypeError("owner must be a str and incarnation an int")
        if lease.after is not None and type(lease.after) is not str:
            raise TypeError(f"after must be a str, got {lease.after!r:.40}")
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
    """An operator's request that the lease holder of incarnation ``to`` hand over:
    finish running attempts for up to ``deadline`` seconds, release the lease and exit.
    (``to`` None: a request from before requests named one, to whoever holds the lease.)"""

    requested: float
    deadline: float
    by: str
    to: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """The stored map."""
        return {
            "v": 1,
            "requested": self.requested,
            "deadline": self.deadline,
            "by": self.by,
            "to": self.to,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HandoffRequest:
        """Build from the stored map."""
        request = cls(float(data["requested"]), float(data["deadline"]), str(data["by"]))
        to = data.get("to")
        if to is not None and type(to) is not int:
            raise TypeError(f"to must be an incarnation (an int), got {to!r:.40}")
        return dataclasses.replace(request, to=to)


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
) -> tuple[Lease, str | None, int | None]:
    """Take the lease inside write transaction ``txn`` if it is free to take at ``now``
    (wall-clock seconds, default the time now).

    Returns ``(new lease, reason, before)`` when taken (the incarnation bumped, a pending
    handoff request cleared), ``before`` the incarnation of the lease it replaced (None:
    the store had none), or ``(current lease, None, None)`` when another holder keeps it.
    """
    now = time.time() if now is None else now
    current = read_lease(txn, meta)
    reason = why_takeable(current, now, have_flock=have_flock, lapsed=lapsed)
    if reason is None:
        assert current is not None
        return current, None, None
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
        duration=duration,
        after=reason,
    )
    txn.put(INCARNATION_KEY, encode(lease.incarnation), db=meta)
    txn.put(LEASE_KEY, encode(lease.to_dict()), db=meta)
    txn.delete(HANDOFF_KEY, db=meta)
    return lease, reason, None if current is None else current.incarnation


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
