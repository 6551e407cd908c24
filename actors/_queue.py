"""The queue of work waiting for one agent: highest effective priority first, no starvation.

A job's effective priority grows while it waits::

    effective(now) = priority + (now - enqueued) / aging

so every ``aging`` seconds of waiting are worth one priority level. Comparing two jobs at
the same ``now``, the ``now`` terms cancel: job A goes first exactly when
``enqueued_A - aging * priority_A`` is smaller. That key never changes while a job
waits, so the queue is a plain heap (O(log n) per push and pop) ordered by it, ties in
arrival order. Equal priorities are served first come, first served; a job of priority
``p`` overtakes a lower one of priority ``q`` only if it arrived less than
``aging * (p - q)`` seconds after it, so nothing waits forever behind a stream of
higher-priority work.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

_T = TypeVar("_T")

DEFAULT_AGING = 10.0
"""Seconds of waiting worth one priority level (``Runtime(priority_aging=...)``)."""


class JobQueue(Generic[_T]):
    """A priority queue with aging (see the module docstring for the rule)."""

    __slots__ = ("_aging", "_seq", "heap")

    def __init__(self, aging: float = DEFAULT_AGING) -> None:
        self._aging = aging
        # (key, arrival, job), a heap: ``heap[0][2]`` runs next. Its owner may read it and
        # ``heapq.heappop`` it directly (the dispatcher's pump, once per step: no calls);
        # it is always this list (changed in place, never rebound).
        self.heap: list[tuple[float, int, _T]] = []
        self._seq = itertools.count()

    def push(self, item: _T, priority: int, now: float) -> None:
        """Add ``item`` with ``priority`` (higher runs sooner), enqueued at ``now``."""
        heapq.heappush(self.heap, (now - self._aging * priority, next(self._seq), item))

    def pop(self) -> _T:
        """Remove and return the job that runs next (IndexError when empty)."""
        return heapq.heappop(self.heap)[2]

    def take(self, other: JobQueue[_T], which: Callable[[_T], bool] = lambda item: True) -> int:
        """Move the jobs of ``other`` that ``which`` accepts (all by default) here, keeping
        their priority and order (keys are comparable: both queues count time on the same
        clock); how many moved."""
        moving = [entry for entry in other.heap if which(entry[2])]
        if not moving:
            return 0
        for key, _, item in sorted(moving, key=lambda entry: entry[:2]):
            heapq.heappush(self.heap, (key, next(self._seq), item))
        if len(moving) == len(other.heap):
            other.heap.clear()
        else:
            gone = {id(entry) for entry in moving}
            other.heap[:] = [entry for entry in other.heap if id(entry) not in gone]  # (same list)
            heapq.heapify(other.heap)
        return len(moving)

    def __len__(self) -> int:
        return len(self.heap)

    def __bool__(self) -> bool:
        return bool(self.heap)

    def __iter__(self) -> Iterator[_T]:
        """The waiting jobs, in no particular order."""
        return (entry[2] for entry in self.heap)
