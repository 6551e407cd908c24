"""Sync and asyncio agents in one runtime: each agent name on the host that can run it.

The Scheduler drives one :class:`AgentHost`; this one routes every call by agent name to
the runtime's thread host (``"thread"`` or ``"pool"``) or, for the names ``is_async``
picks (agents with ``async def`` actions, or registered with ``asyncio=True``), to an
:class:`~herder.actors._async_host.AsyncHost`, created when the first such agent is
added (a runtime without asyncio agents starts no loop). Calls about an attempt go to
the host holding it, so an agent registered again on the other host still settles the
attempts it had running; its waiting jobs move with it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from herder.actors._agent import Agent
from herder.actors._async_host import AsyncHost
from herder.actors._host import AgentHost
from herder.actors._messages import InstanceEvent, Run
from herder.actors._queue import JobQueue


class MixedHost:
    """The :class:`AgentHost` that routes each agent to a thread or the asyncio host."""

    def __init__(
        self,
        threads: AgentHost,
        make_async: Callable[[], AsyncHost],
        is_async: Callable[[str], bool],
    ) -> None:
        self._threads = threads
        self._make_async = make_async
        self._is_async = is_async
        self._async: AsyncHost | None = None
        self._async_names: set[str] = set()

    def _host(self, name: str) -> AgentHost:
        if self._async is not None and name in self._async_names:
            return self._async
        return self._threads

    def _holder(self, name: str, instance_id: str) -> AgentHost:
        """The host running ``instance_id`` (the other one, if ``name`` moved since)."""
        if self._async is not None and self._async.owns(name, instance_id):
            return self._async
        return self._threads

    # -- registration ------------------------------------------------------------------

    def add(self, name: str, factory: Callable[[], Agent], concurrency: int) -> None:
        before = self._host(name)
        if self._is_async(name):
            if self._async is None:
                self._async = self._make_async()
            self._async_names.add(name)
        else:
            self._async_names.discard(name)
        after = self._host(name)
        after.add(name, factory, concurrency)
        if after is not before:
            waiting, moved = before.queue(name), after.queue(name)
            before.remove(name)
            if waiting is not None and moved is not None:
                moved.take(waiting)

    def remove(self, name: str) -> None:
        self._host(name).remove(name)

    def queue(self, name: str) -> JobQueue[Any] | None:
        return self._host(name).queue(name)

    # -- capacity ----------------------------------------------------------------------

    def acquire(self, name: str, token: int, backlog: int = 1) -> str | None:
        return self._host(name).acquire(name, token, backlog)

    def send(self, name: str, instance_id: str, run: Run) -> bool:
        return self._holder(name, instance_id).send(name, instance_id, run)

    def release(self, name: str, instance_id: str, token: int | None, now: float) -> bool:
        return self._holder(name, instance_id).release(name, instance_id, token, now)

    def busy_tokens(self, name: str) -> list[int]:
        busy = self._threads.busy_tokens(name)
        return busy if self._async is None else busy + self._async.busy_tokens(name)

    def replace_token(self, name: str, token: int) -> None:
        for host in self._hosts():
            host.replace_token(name, token)

    def replace(self, name: str, instance_id: str) -> None:
        self._holder(name, instance_id).replace(name, instance_id)

    def on_event(self, event: InstanceEvent, now: float) -> list[int]:
        # News without an instance is the thread host's (its supervisors); the asyncio
        # host's own wake-ups without one need no handling beyond the Scheduler's pump.
        if event.instance is None:
            return self._threads.on_event(event, now)
        return self._holder(event.agent, event.instance).on_event(event, now)

    # -- passivation and stats ---------------------------------------------------------

    def passivate(self, idle_before: float, limit: int = 256) -> int:
        return sum(host.passivate(idle_before, limit) for host in self._hosts())

    def stats(self) -> dict[str, dict[str, int]]:
        merged = {}
        for host in self._hosts():
            merged.update(host.stats())
        return merged

    def host_stats(self) -> dict[str, int]:
        merged = {}
        for host in self._hosts():
            merged.update(host.host_stats())
        return merged

    def _hosts(self) -> list[AgentHost]:
        return [self._threads] if self._async is None else [self._threads, self._async]
