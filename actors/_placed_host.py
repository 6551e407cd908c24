"""Where each agent runs: one router in front of the runtime's agent hosts.

:class:`HostRouter` is the :class:`AgentHost` the Scheduler drives. Each agent name is
placed on one host when it is added: the Ray host when ``add_agent(host=)`` placed it
there, the asyncio host when its actions are ``async def`` (or ``asyncio=True``),
otherwise the runtime's own host (thread or pool, as configured). The placement is a
dict filled at ``add``, so while every agent is on one host a call costs one dict lookup.
The asyncio and Ray hosts are built on first use: a runtime without asyncio agents
starts no loop, and Ray is imported only by a runtime that places an agent on it.
:func:`build_host` builds the router a runtime's configuration asks for.

An agent added again on another host (it became ``async def``) takes its waiting jobs
along, and ``add`` returns the attempts the old host had not started (waiting in the
pool's line, or not yet sent), which it gave up as at ``remove``: the Dispatcher runs
them again, uncharged. Calls about an attempt it still runs on the old host go to the
host holding that instance (``owns``), which is asked only for the names that moved.
Those attempts count against its concurrency on the new host until they end, and
``stats`` sums a name's rows over its hosts.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from herder.actors._agent import Agent
from herder.actors._async_host import AsyncHost
from herder.actors._engine import EngineContext
from herder.actors._host import AgentHost, forget, moved_on, pumped, ready_queue, waiting
from herder.actors._messages import InstanceEvent, Run
from herder.actors._pool_host import PoolHost
from herder.actors._queue import JobQueue
from herder.actors._thread_host import ThreadHost


class RoutedHost(AgentHost, Protocol):
    """A host behind the router: it can tell which instances it holds."""

    def owns(self, name: str, instance_id: str) -> bool: ...


class HostRouter:
    """Routes the :class:`AgentHost` calls by agent name; see the module docstring."""

    def __init__(
        self,
        local: RoutedHost,
        *,
        make_async: Callable[[], RoutedHost],
        make_remote: Callable[[], RoutedHost],
        is_async: Callable[[str], bool],
        is_remote: Callable[[str], bool],
    ) -> None:
        self._local = local
        self._makers = {"async": make_async, "remote": make_remote}
        self._built: dict[str, RoutedHost] = {}
        self._is_async = is_async
        self._is_remote = is_remote
        self._hosts: list[RoutedHost] = [local]
        self._by_name: dict[str, RoutedHost] = {}  # where each added name runs now
        self._moved: dict[str, int] = {}  # names that ran on another host before: concurrency

    def _place(self, name: str) -> RoutedHost:
        kind = "remote" if self._is_remote(name) else "async" if self._is_async(name) else ""
        if not kind:
            return self._local
        host = self._built.get(kind)
        if host is None:
            host = self._built[kind] = self._makers[kind]()
            self._hosts.append(host)
        return host

    def _route(self, name: str) -> RoutedHost:
        return self._by_name.get(name, self._local)

    def route(self, name: str) -> AgentHost:
        """The host serving every call about ``name`` until it is added again (the
        Dispatcher keeps it instead of routing each call): its host, or this router for
        a name that moved (its instances may still run on the host it left)."""
        return self if name in self._moved else self._route(name)

    def _holder(self, name: str, instance_id: str) -> RoutedHost:
        """The host running ``instance_id`` (another one, if ``name`` moved since)."""
        host = self._by_name.get(name, self._local)
        if name in self._moved and not host.owns(name, instance_id):
            return next((h for h in self._hosts if h.owns(name, instance_id)), host)
        return host

    # -- registration ------------------------------------------------------------------

    def add(self, name: str, factory: Callable[[], Agent], concurrency: int) -> list[int] | None:
        """Serve ``name`` (again) where it is placed now; moved, its old host lets it go:
        what that one had not started is lost (``remove``'s answer, returned; not moved,
        the host's own answer)."""
        before = self._by_name.get(name)
        after = self._by_name[name] = self._place(name)
        readded = after.add(name, factory, concurrency)
        if name in self._moved or (before is not None and after is not before):
            self._moved[name] = concurrency
        if before is None or after is before:
            return readded
        waiting, moved = before.queue(name), after.queue(name)
        lost = before.remove(name)
        if waiting is not None and moved is not None:
            moved.take(waiting)
        return lost

    def remove(self, name: str) -> list[int] | None:
        return self._route(name).remove(name)

    def forget(self, name: str) -> bool:
        """Every host that served ``name`` forgets it (its current one last, and only
        once the others did: its queue is the one that waits); then so does the router."""
        current = self._route(name)
        hosts = [h for h in self._hosts if h is not current] if name in self._moved else []
        if not all(forget(host, name) for host in [*hosts, current]):
            return False
        self._by_name.pop(name, None)
        self._moved.pop(name, None)
        return True

    def queue(self, name: str) -> JobQueue[Any] | None:
        return self._route(name).queue(name)

    def holding(self, name: str, token: int) -> str | None:
        """``holding`` of the host serving ``name``, if it has one (thread hosts)."""
        holding = getattr(self._route(name), "holding", None)
        return None if holding is None else holding(name, token)

    def runner(self, name: str, instance_id: str) -> Any:
        """``runner`` of the host running ``instance_id``, if it has one (thread hosts)."""
        runner = getattr(self._holder(name, instance_id), "runner", None)
        return None if runner is None else runner(name, instance_id)

    def carry(self, name: str, instance_id: str, token: int, actor: Any) -> bool:
        """``carry`` on the host serving ``name``, if it carries (not Ray's: its attempts
        run in processes of their own)."""
        carry = getattr(self._route(name), "carry", None)
        if carry is None or self._is_remote(name):
            return False
        return bool(carry(name, instance_id, token, actor))

    # -- capacity ----------------------------------------------------------------------

    def acquire(self, name: str, token: int, backlog: int = 1) -> str | None:
        limit = self._moved.get(name)
        if limit is not None and len(self.busy_tokens(name)) >= limit:
            return None  # (with what its old host runs still: a release pumps it again)
        return self._route(name).acquire(name, token, backlog)

    def send(self, name: str, instance_id: str, run: Run) -> bool:
        return self._holder(name, instance_id).send(name, instance_id, run)

    def release(self, name: str, instance_id: str, token: int | None, now: float) -> bool:
        return self._holder(name, instance_id).release(name, instance_id, token, now)

    def ready_queue(self, name: str) -> deque[Run] | None:
        return ready_queue(self._route(name), name)

    def moved_on(self, name: str, instance_id: str, token: int, next_token: int) -> bool:
        return moved_on(self._holder(name, instance_id), name, instance_id, token, next_token)

    def waiting(self, token: int) -> bool:
        return any(waiting(host)(token) for host in self._hosts)

    def pumped(self) -> None:
        for host in self._hosts:
            pumped(host)()

    def busy_tokens(self, name: str) -> list[int]:
        if name not in self._moved:
            return self._route(name).busy_tokens(name)
        return [token for host in self._hosts for token in host.busy_tokens(name)]

    def replace_token(self, name: str, token: int) -> None:
        for host in self._hosts if name in self._moved else [self._route(name)]:
            host.replace_token(name, token)

    def replace(self, name: str, instance_id: str) -> None:
        self._holder(name, instance_id).replace(name, instance_id)

    def on_event(self, event: InstanceEvent, now: float) -> list[int]:
        name = event.agent
        if event.instance is not None:
            return self._holder(name, event.instance).on_event(event, now)
        if name not in self._moved:
            return self._route(name).on_event(event, now)
        # News of a moved agent's supervision (not of one instance): every host that
        # served it hears it, the current one last (it alone may raise AgentUnavailable).
        current = self._route(name)
        lost = [t for h in self._hosts if h is not current for t in h.on_event(event, now)]
        return lost + current.on_event(event, now)

    # -- passivation and stats ---------------------------------------------------------

    def passivate(self, idle_before: float, limit: int = 256) -> int:
        done = 0
        for host in self._hosts:
            done += host.passivate(idle_before, max(0, limit - done))
        return done

    def stats(self) -> dict[str, dict[str, int]]:
        """Per agent, its counts on every host: one that moved has instances on both."""
        merged: dict[str, dict[str, int]] = {}
        for host in self._hosts:
            for name, row in host.stats().items():
                had = merged.get(name)
                merged[name] = row if had is None else _summed(had, row)
        return merged

    def host_stats(self) -> dict[str, int]:
        merged: dict[str, int] = {}
        for host in self._hosts:
            merged.update(host.host_stats())
        return merged


def _summed(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
    return {k: a.get(k, 0) + b.get(k, 0) for k in {**a, **b}}


def build_host(ctx: EngineContext) -> AgentHost:
    """The agent host the runtime's configuration asks for: the pykka host (a shared
    pool, or a thread per instance) under the agents supervisor, the asyncio host beside
    it for the agents registered as ``async def``, and the Ray host for agents placed
    there."""
    config = ctx.config
    assert ctx.agents_supervisor is not None, "agents supervisor starts first"
    host = PoolHost if config.agent_host == "pool" else ThreadHost
    options: dict[str, Any] = {
        "reply": ctx.answers.put,
        "events": ctx.tell_scheduler,
        "max_result_bytes": config.max_result_bytes,
        "shutdown": config.instance_shutdown,
        "max_restarts": config.agent_max_restarts,
        "restart_period": config.agent_restart_period,
        "queue_aging": config.priority_aging,
    }
    pool: dict[str, Any] = {"max_workers": config.pool_workers} if host is PoolHost else {}
    threads = host(ctx.agents_supervisor, **options, **pool)
    return HostRouter(
        threads,
        make_async=lambda: AsyncHost(
            ctx.event_loop,
            ctx.answers.put,
            ctx.tell_scheduler,
            max_result_bytes=config.max_result_bytes,
            queue_aging=config.priority_aging,
            max_restarts=config.agent_max_restarts,
            restart_period=config.agent_restart_period,
            shutdown=config.instance_shutdown,
        ),
        # Agents placed on Ray (add_agent(host=RayHost(...))) go to its host, built on
        # first use so that Ray is imported only by a runtime that uses it.
        make_remote=lambda: remote_host(ctx, options),
        is_async=ctx.async_agents.__contains__,
        is_remote=ctx.placements.__contains__,
    )


def remote_host(ctx: Any, options: dict[str, Any]) -> Any:
    """The Ray host of a runtime (engine context ``ctx``), built with the local host's
    ``options``; its worker processes are kept in ``ctx.remote`` (they outlive one
    Scheduler and are killed by the runtime's ``stop()``)."""
    from herder.actors.ray._host import RayAgentHost, RayWorkers

    if ctx.remote is None:
        ctx.remote = RayWorkers()
    return RayAgentHost(ctx.agents_supervisor, ctx.placements, ctx.remote, **options)
