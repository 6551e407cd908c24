"""Where each agent runs: the runtime's own host, or the one named at ``add_agent(host=)``.

:class:`PlacedHost` is the :class:`AgentHost` the Scheduler drives. It sends each call to
the host its agent is placed on: the local one (thread or pool, as the runtime was
configured) unless ``placements`` names a remote placement for the agent. The remote
host (Ray: ``herder.actors.ray``) is built on first use, so Ray is imported only by a
runtime that places an agent on it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from herder.actors._agent import Agent
from herder.actors._host import AgentHost
from herder.actors._messages import InstanceEvent, Run
from herder.actors._queue import JobQueue


class PlacedHost:
    """Routes the :class:`AgentHost` calls by agent name; see the module docstring."""

    def __init__(
        self,
        local: AgentHost,
        placements: Mapping[str, object],
        remote: Callable[[], AgentHost],
    ) -> None:
        self._local = local
        self._placements = placements
        self._make_remote = remote
        self._remote: AgentHost | None = None

    def _of(self, name: str) -> AgentHost:
        if name not in self._placements:
            return self._local
        if self._remote is None:
            self._remote = self._make_remote()
        return self._remote

    def add(self, name: str, factory: Callable[[], Agent], concurrency: int) -> None:
        self._of(name).add(name, factory, concurrency)

    def remove(self, name: str) -> None:
        self._of(name).remove(name)

    def queue(self, name: str) -> JobQueue[Any] | None:
        return self._of(name).queue(name)

    def acquire(self, name: str, token: int, backlog: int = 1) -> str | None:
        return self._of(name).acquire(name, token, backlog)

    def send(self, name: str, instance_id: str, run: Run) -> bool:
        return self._of(name).send(name, instance_id, run)

    def release(self, name: str, instance_id: str, token: int | None, now: float) -> bool:
        return self._of(name).release(name, instance_id, token, now)

    def busy_tokens(self, name: str) -> list[int]:
        return self._of(name).busy_tokens(name)

    def replace_token(self, name: str, token: int) -> None:
        self._of(name).replace_token(name, token)

    def replace(self, name: str, instance_id: str) -> None:
        self._of(name).replace(name, instance_id)

    def on_event(self, event: InstanceEvent, now: float) -> list[int]:
        return self._of(event.agent).on_event(event, now)

    def passivate(self, idle_before: float, limit: int = 256) -> int:
        done = self._local.passivate(idle_before, limit)
        if self._remote is not None:
            done += self._remote.passivate(idle_before, max(0, limit - done))
        return done

    def stats(self) -> dict[str, dict[str, int]]:
        remote = {} if self._remote is None else self._remote.stats()
        return {**self._local.stats(), **remote}

    def host_stats(self) -> dict[str, int]:
        remote = {} if self._remote is None else self._remote.host_stats()
        return {**self._local.host_stats(), **remote}


def remote_host(ctx: Any, options: dict[str, Any]) -> AgentHost:
    """The Ray host of a runtime (engine context ``ctx``), built with the local host's
    ``options``; its worker processes are kept in ``ctx.remote`` (they outlive one
    Scheduler and are killed by the runtime's ``stop()``)."""
    from herder.actors.ray._host import RayAgentHost, RayWorkers

    if ctx.remote is None:
        ctx.remote = RayWorkers()
    return RayAgentHost(ctx.agents_supervisor, ctx.placements, ctx.remote, **options)
