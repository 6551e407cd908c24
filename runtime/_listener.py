"""What the engine tells the runtime (its :class:`~herder.actors.EngineListener`).

The Scheduler calls this one object upward: finals resolve waiters and free capacity,
recovery and resumed workflows count as unfinished, a lost lease stops the runtime, and
each commit wakes whoever waits for one (the drain, the testing kit), and each sweep
runs the runtime's sweepers (lease renewal, health, retention, agents' health checks).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from herder.store import LeaseLost, StepRecord, WorkflowRecord, get_logger

if TYPE_CHECKING:
    from herder.runtime._runtime import Runtime

_log = get_logger("herder.runtime")


class RuntimeListener:
    """The runtime's end of the engine's upward line."""

    def __init__(self, rt: Runtime) -> None:
        self._rt = rt
        self._counting = False  # the next recovery's unfinished workflows are counted
        # Woken on the Scheduler's thread after each batch came back from the writer;
        # each must be quick and never wait for the Scheduler.
        self.commit_waiters: list[Callable[[], None]] = []
        # Run on the watchdog's thread after each sweep (set when the lease is taken);
        # one failing does not keep the others from running.
        self.sweepers: list[Callable[[], None]] = []

    def count_next_recovery(self) -> None:
        """Count the unfinished workflows the next recovery finds (called on taking the
        lease, before the Scheduler starts): capacity then needs no scan of its own. A
        Scheduler the tree restarts recovers the same workflows again, uncounted."""
        self._counting = True

    def on_final(self, record: WorkflowRecord, steps: list[StepRecord] | None) -> None:
        self._rt._on_final(record, steps)

    def on_ending(self, workflow_id: str) -> None:
        self._rt._pass_on(workflow_id)

    def on_resumed(self) -> None:
        self._rt._on_resumed()

    def on_recovered(self, unfinished: int, *, done: bool) -> None:
        if self._counting:
            self._rt._on_recovered(unfinished)
            self._counting = not done

    def on_lease_lost(self, error: LeaseLost) -> None:
        self._rt._on_lease_lost(error)

    def on_commit(self) -> None:
        for waiter in list(self.commit_waiters):
            waiter()

    def on_sweep(self) -> None:
        for sweeper in list(self.sweepers):
            try:
                sweeper()
            except Exception:
                _log.exception("a sweep listener failed; the sweep carries on")
