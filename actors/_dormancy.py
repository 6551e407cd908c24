"""Workflows out of memory until their next timer: passivation of long waits.

Each Tick (every 5 s of the Supervisor's sweeps) looks at a bounded share of the
workflows in memory, so a pass over 100k takes under a minute and costs each Tick the
same; one that is :func:`~herder.actors.engine.dormant`, with nothing of it on its way
to disk, leaves memory (``Absent.dormant``). It comes back, read from the store, when
its timer fires (:meth:`Dormancy.wake`, from the due timers: a handed-off step's
deadline is in a batch entry) and before an operator's action or a completion applies
to it (``Recovery.take_back`` reads back any unfinished
workflow not in memory). ``Runtime(passivate_after=...)``: how far off the next timer
must be (None keeps every workflow in memory).
"""

from __future__ import annotations

from collections.abc import Callable

from herder.actors._absent import Absent
from herder.actors._commits import CommitPipeline
from herder.actors._messages import EarlyStart
from herder.actors.engine import Engine, WorkflowRun, dormant
from herder.store import StoreCorrupt, WorkflowRecord, ms

CHECKED_PER_TICK = 10_000
"""Workflows in memory looked at per Tick (every 5 s; a check is a few attribute reads)."""


class Dormancy:
    """Sends dormant workflows out of memory, and wakes them; see the module docstring."""

    def __init__(
        self,
        engine: Engine,
        commits: CommitPipeline,
        absent: Absent,
        early: dict[str, tuple[WorkflowRecord, EarlyStart]],
        *,
        after: float | None,
        take_back: Callable[[str], tuple[WorkflowRun, bool, bool] | None],
        resume: Callable[[tuple[WorkflowRun, bool, bool] | None], None],
    ) -> None:
        self._engine = engine
        self._commits = commits
        self._absent = absent
        self._early = early  # Recovery's starts taken up early (not yet settled)
        self._after = after
        self._take_back = take_back
        self._resume = resume
        self._left: list[str] = []  # the rest of this pass over the workflows in memory

    def on_tick(self, now: float) -> int:
        """Look at the next share of the workflows in memory; how many left it."""
        if self._after is None:
            return 0
        if not self._left:
            self._left = list(self._engine.runs)
        left = self._left
        return self.look_at([left.pop() for _ in range(min(CHECKED_PER_TICK, len(left)))], now)

    def look_at(self, workflow_ids: list[str], now: float) -> int:
        """Send those of ``workflow_ids`` that are dormant out of memory (recovery, each
        chunk: a restart among a million delayed starts does not hold them all at once);
        how many left it."""
        if self._after is None:
            return 0
        runs, until, gone = self._engine.runs, ms(now + self._after), 0
        for workflow_id in workflow_ids:
            run = runs.get(workflow_id)
            if run is not None and dormant(run, until) and self._durable(workflow_id):
                self._early.pop(workflow_id, None)  # (settled: no Admit follows)
                self._engine.forget(workflow_id)
                self._absent.dormant.add(workflow_id)
                gone += 1
        return gone

    def _durable(self, workflow_id: str) -> bool:
        """Whether all that memory holds of the workflow is in the store: nothing of it is
        on its way to disk, its creation included (a start taken up early)."""
        if self._commits.pending(workflow_id):
            return False
        early = self._early.get(workflow_id)
        return early is None or (early[1].settled and early[1].error is None)

    def wake(self, workflow_id: str) -> None:
        """Read a dormant workflow back into memory (its timer fired), if it is one."""
        if workflow_id not in self._absent.dormant:
            return
        try:
            fresh = self._take_back(workflow_id)
        except StoreCorrupt as exc:  # as recovery: that one stays where it is, logged
            self._absent.note_corrupt(exc)
            fresh = None
        self._absent.dormant.discard(workflow_id)  # (read back, or gone from the store)
        self._resume(fresh)
