"""The in-memory side of one agent's limits (:class:`Gate`): rate-limit tokens, the
breaker's recent outcomes and half-open probe, the adaptive limit's running attempts.

:class:`herder.actors._admission.Admission` keeps one per agent with limits and decides
with it; what must survive a restart is in the agent's ``ResourceRecord`` instead.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import Any

from herder.actors._adaptive import AdaptiveLimit
from herder.actors._limits import CircuitBreaker, RateLimit
from herder.store import ResourceRecord


@dataclass(slots=True)
class Gate:
    """The in-memory side of one agent's limits."""

    breaker: CircuitBreaker | None
    rate: RateLimit | None
    adaptive: AdaptiveLimit | None = None
    started: dict[int, float] = field(default_factory=dict)  # token -> monotonic start
    tokens: float = 0.0
    refilled: float = 0.0  # monotonic time of the last refill
    probe: int | None = None  # token of the half-open probe in flight
    samples: collections.deque[tuple[float, bool]] = field(default_factory=collections.deque)
    failed: int = 0  # how many of the samples are failures (counted, never summed)
    throttled: int = 0  # times a job found the gate shut

    def carry(self, old: Gate | None, now: float, removed: Gate | None = None) -> None:
        """Take over what the agent's gate before this one (``old``: it was added again)
        holds: its probe, its throttled count, its bucket's tokens (up to a changed limit's
        burst: a limit lowered under load starts no new burst) and, where the breaker is
        the same, its samples; a first rate limit starts full. The gate of an agent
        ``removed`` before it was added again passes on its bucket only."""
        if self.rate is not None:
            bucket = old if old is not None else removed
            if bucket is not None and bucket.rate is not None:
                bucket.refill(bucket.rate, now)  # (earned at the rate it had until now)
                self.tokens, self.refilled = min(bucket.tokens, float(self.rate.capacity)), now
            else:
                self.tokens, self.refilled = float(self.rate.capacity), now
        if old is not None:
            self.probe, self.throttled = old.probe, old.throttled
            if old.breaker == self.breaker:
                self.samples, self.failed = old.samples, old.failed

    def stats(self, now: float, wake_at: float | None) -> dict[str, Any]:
        """What ``rt.stats()`` shows of it (``now``: monotonic; ``wake_at``: when the work
        it holds back is tried again, if it holds any back)."""
        out: dict[str, Any] = {"throttled": self.throttled}
        if wake_at is not None:
            out["wake_in"] = round(max(0.0, wake_at - now), 3)
        if self.rate is not None:
            self.refill(self.rate, now)
            out["rate_tokens"] = round(self.tokens, 3)
        if self.adaptive is not None:
            out["limit"] = self.adaptive.limit
            out["limit_drops"] = self.adaptive.drops
        return out

    def running(self, busy: list[int]) -> int:
        """How many attempts run now (``busy``: their tokens); forgets the start times of
        attempts that ended without an answer (instance replaced, or lost)."""
        if len(self.started) > len(busy):
            running = set(busy)
            self.started = {t: at for t, at in self.started.items() if t in running}
        return len(busy)

    def refilled_by(self, now: float) -> bool:
        """Whether its bucket would be full by ``now`` (monotonic): kept for an agent
        removed, it then holds back nothing a fresh one would not."""
        rate = self.rate
        if rate is None:
            return True
        return self.tokens + (now - self.refilled) * rate.per_second >= rate.capacity

    def refill(self, rate: RateLimit, now: float) -> None:
        """Add the rate-limit tokens earned since the last refill (``now``: monotonic)."""
        gained = (now - self.refilled) * rate.per_second
        if gained > 0:
            self.tokens = min(float(rate.capacity), self.tokens + gained)
        self.refilled = now

    def sample(self, ok: bool, now: float) -> None:
        """Remember an outcome for a breaker with a failure rate (within its window)."""
        breaker = self.breaker
        if breaker is None or breaker.failure_rate is None:
            return
        self.samples.append((now, ok))
        if not ok:
            self.failed += 1
        self._forget(breaker.window, now)

    def trips(self, rec: ResourceRecord, now: float) -> bool:
        """Whether the breaker opens: enough consecutive failures, or a failure rate
        reached over enough calls in its window up to ``now`` (monotonic)."""
        breaker = self.breaker
        assert breaker is not None
        if breaker.failures is not None and rec.failures >= breaker.failures:
            return True
        if breaker.failure_rate is None:
            return False
        self._forget(breaker.window, now)  # (an agent added again: its samples may be old)
        calls = len(self.samples)
        return calls >= breaker.min_calls and self.failed >= breaker.failure_rate * calls

    def clear_samples(self) -> None:
        """Forget every sample (the breaker opened: its window starts afresh)."""
        self.samples.clear()
        self.failed = 0

    def _forget(self, window: float, now: float) -> None:
        """Drop the samples older than ``window`` seconds before ``now``."""
        samples = self.samples
        while samples and samples[0][0] < now - window:
            _, ok = samples.popleft()
            if not ok:
                self.failed -= 1
