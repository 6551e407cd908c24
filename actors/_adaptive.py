"""An agent's concurrency limit that follows the load: :class:`Adaptive` and its algorithm.

``Runtime.add_agent(..., concurrency=Adaptive(min=1, max=64))`` lets up to ``max``
instances exist, but admits only ``limit`` attempts at once; :class:`AdaptiveLimit`
moves ``limit`` with what the attempts report. It is AIMD (as Netflix's
concurrency-limits ``AIMDLimit``) with a latency signal borrowed from its gradient
limits: an attempt that failed, timed out, crashed its instance, or took more than
``tolerance`` times the recent baseline latency is a *drop* and multiplies the limit by
``backoff``; any other attempt, while the limit is actually being used, adds
``1 / limit`` (about one per round of attempts). Latency within ``slack`` seconds of
the threshold is jitter, not a signal (an unloaded resource answering in microseconds
would otherwise see every hiccup as overload). The baseline is the smallest latency of
the last ``window`` answered attempts, so a resource that becomes uniformly slower gets
a new baseline instead of being starved.

The class is pure (no clock, no threads): :mod:`herder.actors._admission` feeds it
samples and consults :attr:`AdaptiveLimit.limit` before each dispatch.
"""

from __future__ import annotations

import collections
import math
from dataclasses import dataclass

from herder.actors._limits import _count, _number, _require


@dataclass(frozen=True, slots=True)
class Adaptive:
    """A concurrency limit between ``min`` and ``max`` that follows the resource.

    It starts at ``initial`` (default ``min``), grows while attempts succeed within
    ``tolerance`` times the baseline latency (plus ``slack`` seconds), and shrinks (times
    ``backoff``) on each failure, timeout, crash or slow attempt (see the module docs).
    """

    min: int = 1
    max: int = 64
    initial: int | None = None
    backoff: float = 0.9
    tolerance: float = 2.0
    slack: float = 0.005
    window: int = 100

    def __post_init__(self) -> None:
        owner = "Adaptive"
        _require(_count(self.min), owner, "min", "an int from 1 to 2**53", self.min)
        _require(_count(self.max), owner, "max", "an int from 1 to 2**53", self.max)
        _require(self.min <= self.max, owner, "min", f"<= max ({self.max})", self.min)
        if self.initial is not None:
            _require(
                _count(self.initial) and self.min <= self.initial <= self.max,
                owner,
                "initial",
                f"an int in [{self.min}, {self.max}] or None",
                self.initial,
            )
        _require(
            _number(self.backoff) and 0 < self.backoff < 1,
            owner,
            "backoff",
            "in (0, 1)",
            self.backoff,
        )
        _require(
            _number(self.tolerance) and self.tolerance > 1,
            owner,
            "tolerance",
            "> 1",
            self.tolerance,
        )
        _require(_number(self.slack) and self.slack >= 0, owner, "slack", ">= 0", self.slack)
        _require(_count(self.window), owner, "window", "an int from 1 to 2**53", self.window)


class AdaptiveLimit:
    """The state of one agent's adaptive limit; fed one sample per ended attempt."""

    __slots__ = ("_limit", "_recent", "_samples", "config", "drops")

    def __init__(self, config: Adaptive, resume: int | None = None) -> None:
        """Start at ``resume`` (a limit learned before, kept within bounds) or at the
        configured ``initial``."""
        self.config = config
        start = resume if resume is not None else config.initial or config.min
        self._limit = float(max(config.min, min(config.max, start)))
        # The window's minimum and each later latency smaller than all after it, with its
        # sample number, oldest first: the baseline is the first, read in O(1) (a min()
        # over the window cost 0.2 ms per attempt at window=10,000).
        self._recent: collections.deque[tuple[int, float]] = collections.deque()
        self._samples = 0
        self.drops = 0

    @property
    def limit(self) -> int:
        """Attempts that may run at once now (between ``min`` and ``max``)."""
        return max(self.config.min, min(self.config.max, math.floor(self._limit)))

    @property
    def baseline(self) -> float | None:
        """The latency an unloaded resource answers in (None before a good sample)."""
        return self._recent[0][1] if self._recent else None

    def sample(self, latency: float, ok: bool, inflight: int) -> int:
        """An attempt ended after ``latency`` seconds (``ok``: the resource answered) while
        ``inflight`` attempts ran, itself included; returns the new limit."""
        if not ok:
            return self.drop()
        baseline = self.baseline
        self._remember(latency)
        if baseline is not None and latency > self.config.tolerance * baseline + self.config.slack:
            return self.drop()
        if 2 * inflight >= self._limit:  # only a limit in use has earned a raise
            self._limit = min(float(self.config.max), self._limit + 1.0 / self._limit)
        return self.limit

    def _remember(self, latency: float) -> None:
        """Add ``latency`` to the window, whose oldest sample leaves it once it is full."""
        recent, self._samples = self._recent, self._samples + 1
        while recent and not recent[-1][1] < latency:  # (never the window's minimum again)
            recent.pop()
        recent.append((self._samples, latency))
        if recent[0][0] <= self._samples - self.config.window:  # (one at most: one came)
            recent.popleft()

    def drop(self) -> int:
        """An attempt failed, timed out or crashed: back off; returns the new limit."""
        self.drops += 1
        self._limit = max(float(self.config.min), self._limit * self.config.backoff)
        return self.limit
