"""Agent names as data: the agent state every agent host keeps, and the crash rules.

A host keeps one :class:`Hosted` record per registered agent name: the factory, the
concurrency (how many instances may serve at once), the Scheduler's queue of jobs waiting
for capacity, and the instances by id, each serving at most one attempt (its
``busy_token``) at a time. :class:`HostedAgents` implements the parts of the
:class:`~herder.actors._host.AgentHost` protocol that only read or register that state
(``add``, ``queue``, ``owns``, ``busy_tokens``, ``replace_token``, ``stats``) and drops a
name's record once it was removed and nothing of it is left (``forget``); a host
subclasses it with how instances run (a pykka actor each, a shared worker pool, an event
loop).

:func:`request_agent_supervisor` starts the supervisor the pykka hosts keep their actors
under (one per agent name on the thread host, one for the worker pool). A host that
restarts crashed instances itself (the pool host) paces them with
:data:`INSTANCE_BACKOFF` and a :class:`RestartWindow` per agent, as the per-agent
supervisors of the thread host do, so an agent that keeps crashing trips the same
backoff and intensity rules on every host.
"""

from __future__ import annotations

import itertools
import os
import queue
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import pykka

from herder.actors._agent import Agent
from herder.actors._ask import call_later
from herder.actors._clock import Clock
from herder.actors._errors import SupervisorStartError
from herder.actors._messages import InstanceEvent
from herder.actors._queue import DEFAULT_AGING, JobQueue
from herder.actors._supervision_specs import (
    Backoff,
    ChildEvent,
    ChildEventKind,
    ChildSpec,
    Restart,
    Strategy,
)
from herder.actors._supervision_start import start_supervisor
from herder.store import explain

INSTANCE_BACKOFF = Backoff(initial=0.001, factor=2.0, max=1.0)
"""How long a crashed agent instance waits before it serves again, by its agent's number
of restarts within the intensity window. Crashing instances are an agent's business as
usual (a flaky remote resource): back off instead of giving up early."""


_LETTING_GO: queue.SimpleQueue[list[object]] = queue.SimpleQueue()
# The threads dropping let-go objects: their number -> when the drop each is in began
# (time.monotonic(); 0.0: waiting for one).
_droppers: dict[int, float] = {}
_dropper_ids = itertools.count()
_let_go_guard = threading.RLock()
os.register_at_fork(after_in_child=_droppers.clear)  # (a child has no such thread)

STUCK = 1.0
"""Seconds a ``__del__`` may take before the objects let go after it are dropped on
another thread (:func:`let_go`)."""


def let_go(box: list[object]) -> None:
    """Drop the agent object in ``box`` (a one-item list) on a thread of its own, not the
    caller's: its ``__del__`` (closing a connection, say) is user code, and one that took
    seconds on the Scheduler's thread stalled every workflow meanwhile. The box must hold
    the caller's only reference (``let_go([self._built.pop(key)])``; not a local it
    keeps), or the object would go wherever the last one goes. A daemon thread, started
    on first use, drops them in turn; while every such thread is in a ``__del__`` that
    has taken :data:`STUCK` seconds, the next object let go starts another (one agent's
    ``__del__`` that never returns held every object let go after it, of every agent,
    and their connections, for good), which ends once it finds none to drop and another
    waits for one."""
    if not box or box[0] is None or sys.is_finalizing():  # (no thread starts then)
        return
    _LETTING_GO.put(box)
    if _dropping():
        return
    # An RLock: a collection in here may run a __del__ that lets go of an object too
    # (it finds a dropper that started just now and returns).
    with _let_go_guard:
        if _dropping():
            return
        number = next(_dropper_ids)
        _droppers[number] = 0.0
        thread = threading.Thread(
            target=_drop_let_go, args=(number,), name="herder-let-go", daemon=True
        )
        try:
            thread.start()
        except RuntimeError:  # (no thread to be had: the next call tries again)
            del _droppers[number]


def _dropping() -> bool:
    """Whether a dropper waits for an object, or is in a drop it began less than
    :data:`STUCK` seconds ago."""
    now = time.monotonic()
    return any(not began or now - began < STUCK for began in tuple(_droppers.values()))


def _drop_let_go(number: int) -> None:
    while True:
        box = _LETTING_GO.get()
        _droppers[number] = time.monotonic()
        agent = box.pop()
        del agent  # its __del__ runs here; what it raises Python reports and ignores
        with _let_go_guard:
            _droppers[number] = 0.0
            if _LETTING_GO.empty() and any(not b for n, b in _droppers.items() if n != number):
                del _droppers[number]  # another waits: this one is spare (it was stuck)
                return


class Builds:
    """The agent factories a host's threads are running, so that a thread the host gave
    up on while its factory hung (the attempt it built for was replaced, or its
    instance's start timed out) is counted in ``abandoned`` until the factory returns,
    as a hung action's thread is. Thread-safe: factories run on the host's threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: dict[tuple[str, str], list[bool]] = {}  # (agent, instance) -> [given up]
        self.abandoned = 0

    def call(self, key: tuple[str, str], factory: Callable[[], Any]) -> Any:
        """``factory()`` for instance ``key`` (agent, instance id), on this thread."""
        mine = [False]
        with self._lock:
            self._running[key] = mine
        try:
            return factory()
        finally:
            with self._lock:
                if self._running.get(key) is mine:
                    del self._running[key]
                self.abandoned -= mine[0]

    def abandon(self, key: tuple[str, str]) -> bool:
        """The host gives up on the thread building ``key``: True if it is in the factory
        still (then counted until the factory returns)."""
        with self._lock:
            running = self._running.get(key)
            if running is None or running[0]:
                return False
            running[0] = True
            self.abandoned += 1
            return True


@dataclass(slots=True)
class Instance:
    """One agent instance as its host sees it."""

    busy_token: int | None = None  # the attempt it serves, if any
    idle_since: float = 0.0


InstanceT = TypeVar("InstanceT", bound=Instance)


@dataclass(slots=True)
class Hosted(Generic[InstanceT]):
    """One registered agent name."""

    name: str
    factory: Callable[[], Agent]
    concurrency: int
    queue: JobQueue[Any]
    instances: dict[str, InstanceT] = field(default_factory=dict)
    ids: itertools.count[int] = field(default_factory=itertools.count)

    def new_instance_id(self) -> str:
        return f"{self.name}#{next(self.ids)}"

    def busy(self) -> list[int]:
        """Tokens of the attempts its instances serve."""
        return [i.busy_token for i in self.instances.values() if i.busy_token is not None]


HostedT = TypeVar("HostedT", bound=Hosted[Any])


class HostedAgents(Generic[HostedT]):
    """The agent-state half of a host; see the module docstring."""

    def __init__(self, make: Callable[..., HostedT], queue_aging: float = DEFAULT_AGING) -> None:
        self._make = make
        self._queue_aging = queue_aging
        self._agents: dict[str, HostedT] = {}
        # Instance ids a new record counts from: past every id of a forgotten record, so
        # late news of an instance of the name's last life never names a new instance.
        self._next_id = 0

    def add(self, name: str, factory: Callable[[], Agent], concurrency: int) -> list[int] | None:
        """Register (or re-register with a new factory/concurrency) an agent name; the
        attempts that will not start as registered before are lost (``_readded``)."""
        agent = self._agents.get(name)
        if agent is None:
            agent = self._make(name, factory, concurrency, JobQueue(self._queue_aging))
            agent.ids = itertools.count(self._next_id)
            self._agents[name] = agent
            return None
        agent.factory, agent.concurrency = factory, concurrency
        return self._readded(agent)

    def _readded(self, agent: HostedT) -> list[int] | None:
        """Hook: ``agent`` was registered again (its factory may have changed); the
        attempts not started that now never will (as :meth:`remove`'s answer)."""
        return None

    def forget(self, name: str) -> bool:
        """Drop the record of ``name`` (with its factory and whatever that captured) if it
        serves no more (removed, or made for a job queued before any add) and nothing of it
        is left: no queued job, no instance; True if this host holds no record of it now."""
        agent = self._agents.get(name)
        if agent is not None and not (agent.concurrency or agent.queue or agent.instances):
            if self._left_over(agent):
                return False
            del self._agents[name]
            self._next_id = max(self._next_id, next(agent.ids))
        return name not in self._agents

    def _left_over(self, agent: HostedT) -> bool:
        """Hook: whether ``agent``, with no queued job and no instance, still has something
        on this host that needs its record (the host forgets nothing of it then)."""
        return False

    def carry(self, name: str, instance_id: str, token: int, _actor: Any = None) -> bool:
        """Hold a slot of ``name`` for attempt ``token``, which a previous Scheduler's host
        left running on instance ``instance_id`` (actors/_carried.py): busy, with no
        thread of this host's, until its answer releases it or a replace drops it. A name
        not served (removed while it ran) is held as ``remove`` leaves one, so that it
        counts against the concurrency of its next add. Ids of new instances count on
        past its id."""
        if name not in self._agents:
            self.add(name, _unserved, 0)
        agent = self._agents[name]
        if instance_id in agent.instances:
            return False
        agent.instances[instance_id] = self._carried(token)
        number = instance_id.rpartition("#")[2]
        if number.isdigit():
            agent.ids = itertools.count(max(next(agent.ids), int(number) + 1))
        return True

    def _carried(self, token: int) -> Any:
        """Hook: the instance :meth:`carry` holds for attempt ``token``."""
        raise NotImplementedError

    def runner(self, name: str, instance_id: str) -> pykka.ActorRef | None:
        """The actor (its thread) running the attempt of ``instance_id``, if known: once
        the tree stopped it, alive only while that attempt is still in the action."""
        _, inst = self._instance(name, instance_id)
        return None if inst is None else self._runner(inst)

    def _runner(self, inst: Any) -> pykka.ActorRef | None:
        """Hook: ``inst``'s actor (the thread host's instance is one)."""
        return getattr(inst, "ref", None)

    def queue(self, name: str) -> JobQueue[Any] | None:
        """The queue of work waiting for agent ``name``, or None if it is not registered."""
        agent = self._agents.get(name)
        return None if agent is None else agent.queue

    def owns(self, name: str, instance_id: str) -> bool:
        """Whether ``instance_id`` is an instance of this host's agent ``name``."""
        agent = self._agents.get(name)
        return agent is not None and instance_id in agent.instances

    def busy_tokens(self, name: str) -> list[int]:
        """Tokens of every attempt running on the instances of ``name``."""
        agent = self._agents.get(name)
        return [] if agent is None else agent.busy()

    def replace_token(self, name: str, token: int) -> None:
        """Replace the instance (if any) still running the attempt with ``token``."""
        instance_id = self.holding(name, token)
        if instance_id is not None:
            self.replace(name, instance_id)

    def holding(self, name: str, token: int) -> str | None:
        """The instance of ``name`` serving the attempt with ``token``, if any."""
        agent = self._agents.get(name)
        for instance_id, inst in ({} if agent is None else agent.instances).items():
            if inst.busy_token == token:
                return instance_id
        return None

    def replace(self, name: str, instance_id: str) -> None:
        raise NotImplementedError

    def stats(self) -> dict[str, dict[str, int]]:
        """Per agent: instances, busy instances, queued work."""
        return {
            name: {
                "instances": len(agent.instances),
                "busy": len(agent.busy()),
                "queued": len(agent.queue),
            }
            for name, agent in self._agents.items()
        }

    def _instance(self, name: str, instance_id: str) -> tuple[HostedT | None, Any]:
        """The agent ``name`` and its instance ``instance_id`` (None where unknown)."""
        agent = self._agents.get(name)
        return agent, None if agent is None else agent.instances.get(instance_id)


def _unserved() -> Agent:
    """The factory of a name held only for an attempt carried over (concurrency 0: never
    called; its next add brings the real one)."""
    raise AssertionError("an agent not served builds no instance")


def request_agent_supervisor(
    agents_supervisor: pykka.ActorRef,
    name: str,
    events: Callable[[InstanceEvent], None],
    *,
    clock: Clock,
    max_restarts: int,
    restart_period: float,
    shutdown: float,
    start_timeout: float = 10.0,
) -> None:
    """Ask the agents supervisor, without waiting, for a ``simple_one_for_one`` supervisor
    ``agent:<name>`` (an agent's instances, or the pool's workers) restarting its children
    after :data:`INSTANCE_BACKOFF`; each :class:`ChildEvent` of a child reaches ``events``
    as an :class:`InstanceEvent` of agent ``name``. If it gives up, it is not restarted:
    the host asks for a fresh one when it next needs it."""

    def listener(event: ChildEvent) -> None:
        cause = event.reason
        if isinstance(cause, SupervisorStartError) and cause.__cause__ is not None:
            cause = cause.__cause__  # (the host says "failed to start" itself: FAILED_START)
        reason = None if cause is None else explain(cause)
        events(InstanceEvent(name, event.child_id, event.kind, event.ref, reason))

    spec = ChildSpec(
        id=f"agent:{name}",
        start=lambda: start_supervisor(
            f"agent:{name}",
            Strategy.SIMPLE_ONE_FOR_ONE,
            listener=listener,
            clock=clock,
            max_restarts=max_restarts,
            period=restart_period,
            start_timeout=start_timeout,
            backoff=INSTANCE_BACKOFF,
        ),
        restart=Restart.TEMPORARY,
        shutdown=shutdown,
    )
    call_later(agents_supervisor, "start_child", spec)


def agents_listener(tell: Callable[[InstanceEvent], None]) -> Callable[[ChildEvent], None]:
    """The listener of the ``agents`` supervisor: news of a per-agent supervisor (started,
    crashed, gone) reaches the Scheduler as an :class:`InstanceEvent` without instance."""

    def listener(event: ChildEvent) -> None:
        if event.kind in (
            ChildEventKind.STARTED,
            ChildEventKind.CRASHED,
            ChildEventKind.EXITED,
            ChildEventKind.TERMINATED,
            ChildEventKind.ABANDONED,
        ):
            agent = event.child_id.removeprefix("agent:")
            reason = None if event.reason is None else explain(event.reason)
            tell(InstanceEvent(agent, None, event.kind, event.ref, reason))

    return listener
