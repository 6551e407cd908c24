"""A wide run's compensation order, kept as its steps change (as ``_results`` keeps its
results): which step a compensating workflow undoes next, and whether anything of it is
busy, without a pass over every step per undo.

:func:`~._workflow.advance` without it looks at every step twice for each step it
undoes: O(N^2) in all, 3.3 s of the Scheduler's time to compensate 4,000 steps, minutes
for 20,000. A run builds its :class:`UndoOrder` the first time it advances while
compensating (one pass), then every step change updates it in O(log N) and each undo
reads it in O(log N) amortized; a run that never compensates holds none.

Imports: herder.store records and this package's tables.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping

from herder.actors.engine._states import BUSY, to_undo
from herder.store import StepRecord, StepSpec


class UndoOrder:
    """The steps to undo of one run, latest completion first, and how many are busy.

    ``heap`` holds ``(-done_token, position in the plan, name)`` for each step that
    became one to undo; an entry whose step has moved on since is dropped when it comes
    to the top (so the answer is :func:`~._workflow.advance`'s scan's, ties included).
    """

    __slots__ = ("busy", "heap", "order")

    def __init__(self, steps: Mapping[str, StepRecord]) -> None:
        self.order = {name: i for i, name in enumerate(steps)}
        self.busy = 0
        self.heap: list[tuple[int, int, str]] = []
        for st in steps.values():
            self.changed(None, st)

    def changed(self, old: StepRecord | None, new: StepRecord) -> None:
        """Step ``new.name`` was ``old`` (None: not counted yet) and is now ``new``."""
        self.busy += (new.state in BUSY) - (old is not None and old.state in BUSY)
        if to_undo(new) and not (
            old is not None and to_undo(old) and old.done_token == new.done_token
        ):
            heapq.heappush(self.heap, (-(new.done_token or 0), self.order[new.name], new.name))

    def next(self, steps: Mapping[str, StepRecord], specs: Mapping[str, StepSpec]) -> str | None:
        """The step to undo next: of those to undo that have a compensation, the one
        that completed last; None if there is none."""
        heap = self.heap
        while heap:
            key, _, name = heap[0]
            st = steps[name]
            if to_undo(st) and -(st.done_token or 0) == key and specs[name].compensate:
                return name
            heapq.heappop(heap)
        return None
