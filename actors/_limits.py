"""What a user configures to protect a remote resource: a circuit breaker and a rate limit
(and :func:`resource_stats`, how the protection's stored state is shown).

Both are plain, validated data given to ``Runtime.add_agent(..., breaker=, rate_limit=)``;
:mod:`herder.actors._admission` enforces them. The agent's ``concurrency`` is its
concurrency limit (at most that many attempts run at once).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from herder.store import InvalidInput, ResourceRecord, real_number, safe_repr


def _require(ok: bool, owner: str, name: str, expected: str, actual: object) -> None:
    if not ok:
        raise InvalidInput(f"{owner}: {name} must be {expected}, got {safe_repr(actual):.80}")


def _number(value: object) -> bool:
    """A finite int or float (not a bool); an int too large for a float is not one."""
    number = real_number(value) if isinstance(value, int | float) else None
    return number is not None and math.isfinite(number)


MAX_COUNT = 2**53
"""The largest count a limit takes (where floats stop counting in ones)."""


def _count(value: object) -> bool:
    """An int from 1 to :data:`MAX_COUNT` (not a bool)."""
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_COUNT


@dataclass(frozen=True, slots=True)
class CircuitBreaker:
    """Stop sending work to a resource that keeps failing, then probe it.

    The breaker opens after ``failures`` consecutive failed attempts, or (if
    ``failure_rate`` is given) at a failure after which at least ``min_calls`` attempts
    ended within the last ``window`` seconds and that fraction of them failed (a success
    never opens it). A failed attempt is one that raised a transient error, timed out,
    crashed its agent instance, or was lost because the process died under it; a
    success (even a result herder cannot store) or a ``Permanent`` answer (the resource
    answered) resets the count. While
    open, the agent's steps wait in its queue without spending attempts and without
    timing out. After ``cooldown`` seconds it is half-open: one probe attempt is let
    through; its success closes the breaker, its failure opens it for another cool-down.
    The state is kept in the store and survives restarts.
    """

    failures: int | None = 5
    failure_rate: float | None = None
    window: float = 60.0
    min_calls: int = 10
    cooldown: float = 30.0

    def __post_init__(self) -> None:
        owner = "CircuitBreaker"
        if self.failures is not None:
            _require(
                _count(self.failures),
                owner,
                "failures",
                "an int from 1 to 2**53, or None",
                self.failures,
            )
        if self.failure_rate is not None:
            _require(
                _number(self.failure_rate) and 0 < self.failure_rate <= 1,
                owner,
                "failure_rate",
                "in (0, 1] or None",
                self.failure_rate,
            )
        _require(
            self.failures is not None or self.failure_rate is not None,
            owner,
            "failures or failure_rate",
            "given (one of them opens the breaker)",
            None,
        )
        _require(_number(self.window) and self.window > 0, owner, "window", "> 0", self.window)
        _require(
            _count(self.min_calls), owner, "min_calls", "an int from 1 to 2**53", self.min_calls
        )
        _require(
            _number(self.cooldown) and self.cooldown > 0, owner, "cooldown", "> 0", self.cooldown
        )


@dataclass(frozen=True, slots=True)
class RateLimit:
    """At most ``per_second`` attempts per second on average, in bursts of up to ``burst``.

    A token bucket: it holds up to ``burst`` tokens (default: ``per_second`` rounded up,
    at least 1), refills at ``per_second``, and each dispatched attempt (including
    compensations and retries) takes one. Work that finds it empty waits in the agent's
    queue, highest priority first.
    """

    per_second: float
    burst: int | None = None

    def __post_init__(self) -> None:
        owner = "RateLimit"
        _require(
            _number(self.per_second) and self.per_second > 0,
            owner,
            "per_second",
            "> 0",
            self.per_second,
        )
        if self.burst is not None:
            _require(
                _count(self.burst), owner, "burst", "an int from 1 to 2**53, or None", self.burst
            )

    @property
    def capacity(self) -> int:
        """The bucket's size: ``burst``, or ``per_second`` rounded up (at least 1)."""
        return self.burst if self.burst is not None else max(1, math.ceil(self.per_second))


def resource_stats(rec: ResourceRecord) -> dict[str, Any]:
    """The user-facing view of a resource record (``rt.stats()``, ``herder stats``)."""
    out: dict[str, Any] = {
        "breaker": str(rec.breaker),
        "failures": rec.failures,
        "opens": rec.opens,
        "opened_at": rec.opened_at,
        "crashes": rec.crashes,
        "lost": rec.lost,
    }
    if rec.limit is not None:
        out["limit"] = rec.limit  # an adaptive agent's (live in stats(), stored in the CLI)
    return out
