"""How the engine's actors and whoever runs them are wired together.

Upward, one object: the :class:`EngineListener` the runtime hands down. The actors call
it, never a callback slot they find in shared state, so what the runtime hears is one
interface with one implementation per runner (the runtime's, the exact simulator's).
"""

from __future__ import annotations

from typing import Protocol

from herder.store import LeaseLost, StepRecord, WorkflowRecord


class EngineListener(Protocol):
    """What the engine tells its runner. Each call is made on an actor's thread (the
    Scheduler's, or the writer's for a batch that outlived its Scheduler) and must be
    quick; an exception from ``on_final`` is logged, the others must not raise."""

    def on_final(self, record: WorkflowRecord, steps: list[StepRecord] | None) -> None:
        """A workflow's final state is durable (waiters may now hear of it)."""

    def on_resumed(self) -> None:
        """An operator action took a parked workflow out of NEEDS_ATTENTION: it is
        unfinished again."""

    def on_recovered(self, unfinished: int, *, done: bool) -> None:
        """A Scheduler's recovery found ``unfinished`` more workflows (one call per chunk,
        before any of them can finish; ``done`` on the last). Every Scheduler recovers,
        including one the tree restarted: a runner that counts decides which to count."""

    def on_lease_lost(self, error: LeaseLost) -> None:
        """Another runtime holds the store's lease; nothing more will be dispatched.
        Called at most once."""

    def on_commit(self) -> None:
        """A batch of transitions came back from the writer (durable or failed)."""


class QuietListener:
    """An :class:`EngineListener` that hears nothing: a base for runners that care about
    only some of it."""

    def on_final(self, record: WorkflowRecord, steps: list[StepRecord] | None) -> None:
        pass

    def on_resumed(self) -> None:
        pass

    def on_recovered(self, unfinished: int, *, done: bool) -> None:
        pass

    def on_lease_lost(self, error: LeaseLost) -> None:
        pass

    def on_commit(self) -> None:
        pass
