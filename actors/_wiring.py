"""How the engine's actors and whoever runs them are wired together.

Upward, one object: the :class:`EngineListener` the runtime hands down. The actors call
it, never a callback slot they find in shared state, so what the runtime hears is one
interface with one implementation per runner (the runtime's, the exact simulator's).

Downward, registrations travel as data: the Scheduler copies the agents and definitions
registered so far when it starts (:func:`registered_agents`) and then learns of changes
only from messages (``Define``, ``add_agent(name, AgentEntry)``, ``remove_agent``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from herder.actors._adaptive import Adaptive
from herder.actors._agent import Agent
from herder.actors._limits import CircuitBreaker, RateLimit
from herder.store import LeaseLost, StepRecord, WorkflowRecord

Limits = tuple[CircuitBreaker | None, RateLimit | None, Adaptive | None]
"""An agent's admission gates: circuit breaker, rate limit, adaptive concurrency."""

NO_LIMITS: Limits = (None, None, None)


@dataclass(frozen=True)
class AgentEntry:
    """One agent as registered: what a Scheduler needs to serve it."""

    factory: Callable[[], Agent]
    concurrency: int
    limits: Limits = NO_LIMITS


def registered_agents(
    agents: Mapping[str, tuple[Callable[[], Agent], int]], limits: Mapping[str, Limits]
) -> dict[str, AgentEntry]:
    """The entries of the agents registered so far (from copies: the runtime's thread
    may be registering one meanwhile)."""
    agents, limits = dict(agents), dict(limits)
    return {
        name: AgentEntry(factory, concurrency, limits.get(name, NO_LIMITS))
        for name, (factory, concurrency) in agents.items()
    }


def unregistered(agent: str) -> Callable[[], Agent]:
    """The factory of an agent a job waits for before it is registered: it cannot start."""

    def factory() -> Agent:
        raise RuntimeError(f"agent {agent!r} is not registered")

    return factory


class EngineListener(Protocol):
    """What the engine tells its runner. Each call is made on an actor's thread (the
    Scheduler's, or the writer's for a batch that outlived its Scheduler) and must be
    quick; an exception from ``on_final`` is logged, the others must not raise."""

    def on_final(self, record: WorkflowRecord, steps: list[StepRecord] | None) -> None:
        """A workflow's final state is durable (waiters may now hear of it)."""

    def on_ending(self, workflow_id: str) -> None:
        """The engine decided the workflow's final state; its commit is not written yet
        (it may still fail). Called on the Scheduler's thread, before its next flush."""

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

    def on_sweep(self) -> None:
        """The watchdog finished a sweep that read the store (on its thread): the
        runner's health signal (lease renewal, systemd watchdog)."""


class QuietListener:
    """An :class:`EngineListener` that hears nothing: a base for runners that care about
    only some of it."""

    def on_final(self, record: WorkflowRecord, steps: list[StepRecord] | None) -> None:
        pass

    def on_ending(self, workflow_id: str) -> None:
        pass

    def on_resumed(self) -> None:
        pass

    def on_recovered(self, unfinished: int, *, done: bool) -> None:
        pass

    def on_lease_lost(self, error: LeaseLost) -> None:
        pass

    def on_commit(self) -> None:
        pass

    def on_sweep(self) -> None:
        pass
