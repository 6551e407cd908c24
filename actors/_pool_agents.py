"""The pooled host's agents: names as data, their instance slots, and their crash rules.

:class:`PoolAgents` is the agent half of :class:`~herder.actors._pool_host.PoolHost`
(which adds the workers, the line and the wake-ups): per agent name a
:class:`PooledAgent` record (factory, concurrency, queue, and up to ``concurrency``
:class:`Slot` instances, each serving one attempt at a time and keeping its agent object
between attempts, since they hold connections), registration, the objects workers
built, the passivation of idle instances, which slots wait in the host's line, what is
lost with an instance (its attempt, and one its worker took from the line unheard of),
and the crash rules:

- a failing factory, or an action raising :class:`InstanceCrash`, crashes the instance:
  its attempt is lost (breaker and retry policy apply) and its slot waits out
  :data:`~herder.actors._hosted.INSTANCE_BACKOFF` (then ``InstanceEvent("restarted")``),
  as on the thread host;
- past ``max_restarts`` crashes of one agent within ``restart_period`` the host gives up
  on its instances, as a supervisor would, and the next one starts afresh: an attempt
  another instance runs runs on (a worker is not stopped) and holds its slot until it
  ends; one not started yet is lost (:meth:`PoolAgents._let_go`), as a
  :class:`~herder.actors._host.GivenUp` (not its own crash: not charged).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pykka

from herder.actors._clock import Clock, SystemClock
from herder.actors._errors import RestartIntensityExceeded
from herder.actors._host import GivenUp
from herder.actors._hosted import (
    INSTANCE_BACKOFF,
    Builds,
    Hosted,
    HostedAgents,
    Instance,
    let_go,
)
from herder.actors._messages import InstanceEvent, Run
from herder.actors._pool_worker import QUICK, Work, withdraw
from herder.actors._restarts import RestartWindow
from herder.actors._supervision_specs import ChildEventKind
from herder.store import crash_point, get_logger

if TYPE_CHECKING:
    from herder.actors._worker_pool import WorkerPool

_log = get_logger("herder.agents")

CARRIED = "carried"
"""The worker of a carried slot (:meth:`PoolAgents._carried`): no worker has that id."""


@dataclass(slots=True)
class Slot(Instance):
    """One instance of a pooled agent."""

    agent: Any = None  # the agent object, once built
    worker: str | None = None  # the worker running its attempt
    restarting: bool = False  # crashed: waits out its backoff, then the slot frees
    work: Work | None = None  # what its worker was told last (its self-feed flag)
    lined: bool = False  # acquired with no worker free: its attempt waits in the line
    stale: bool = False  # its agent was added again while it ran: dropped once it ends

    def __del__(self) -> None:
        box, self.agent = [self.agent], None  # (a slot goes on the Scheduler's thread:
        let_go(box)  # its object, and the user's __del__, go elsewhere)


@dataclass(slots=True)
class PooledAgent(Hosted[Slot]):
    """One agent name on the pool."""

    window: RestartWindow | None = None  # its crashes, from the first one on
    # Instances released since, most recent last: where acquire looks first (an entry
    # whose instance went or is busy again is skipped when met).
    idle: list[str] = field(default_factory=list)
    # Its workers self-feed from it; made when first asked for (ready_queue): an empty
    # deque is 760 bytes, and most of 10,000 names never reserve ahead.
    ready: deque[Run] | None = None
    # Seconds its last actions took, on the worker (a decaying max, written by any of
    # its workers): whether its attempts may wait behind another's. Unknown is slow.
    took: float = 1.0

    @property
    def quick(self) -> bool:
        """Its recent actions took less than :data:`QUICK` (the one test of it)."""
        return self.took < QUICK


class PoolAgents(HostedAgents[PooledAgent]):
    """The agent half of the pool host; see the module docstring."""

    _pool: WorkerPool  # (the host's threads, set by the host)

    def __init__(
        self,
        events: Callable[[InstanceEvent], None],
        *,
        max_restarts: int,
        restart_period: float,
        queue_aging: float,
        clock: Clock | None,
    ) -> None:
        super().__init__(PooledAgent, queue_aging)
        self._events = events
        self._max_restarts = max_restarts
        self._restart_period = restart_period
        # Restart pacing protects real CPU from a crash loop, so it runs on real time
        # even when the engine runs on a FakeClock (as the thread host's supervisors do).
        self._clock = SystemClock() if clock is None else clock
        self._built: dict[tuple[str, str], Any] = {}  # objects workers built, not yet seen
        self._builds = Builds()  # factories workers run (one whose attempt was replaced counts)
        # Slots waiting in the host's line (lined), and the workers of slots let go of.
        self._unstarted = 0  # slots acquired lined whose attempt is on no worker yet
        self._lined: dict[int, tuple[str, str]] = {}  # token -> slot, of work in the line
        self._doomed: set[int] = set()  # lined attempts replaced after a worker took them
        self._orphans: dict[int, str] = {}  # token -> worker, of instances given up on
        # Instance ids by release, oldest first (passivate reads from the front; an entry
        # whose instance went or serves again is dropped when met).
        self._released: dict[str, None] = {}

    # -- the host's part ---------------------------------------------------------------

    def _free_worker(self, worker_id: str | None, now: float) -> None:
        """The worker ran an attempt of an instance that crashed: it is free."""
        raise NotImplementedError

    # -- registration ------------------------------------------------------------------

    def _readded(self, agent: PooledAgent) -> list[int]:
        """An attempt not started yet (waiting in the line, or not sent: its DISPATCHED on
        its way to disk) never starts: lost, as a :class:`GivenUp` (not charged; the
        caller releases its slot), it runs again on the agent as now registered. It held
        a slot of the old concurrency, and would have run on the old factory's object:
        an agent added again with its concurrency lowered from 4 to 1 started all 4 of
        its attempts waiting in the line at once, on the old objects."""
        lost: list[int] = []
        for instance_id, inst in list(agent.instances.items()):
            halt(inst)  # the next attempt goes through send, with the new factory
            if idle(inst):
                del agent.instances[instance_id]  # rebuilt with the new factory
                continue
            inst.stale = True  # its object is the old factory's: not kept once idle
            if inst.busy_token and inst.worker != CARRIED and unstarted(inst):
                lost.append(GivenUp(inst.busy_token))
        return lost

    def remove(self, name: str) -> list[int]:
        """Serve ``name`` no more: an attempt running runs on; one not sent yet (its
        DISPATCHED on its way to disk) or waiting in the line never starts: it is lost,
        as a :class:`GivenUp` (not charged; the caller releases its slot)."""
        agent = self._agents.get(name)
        if agent is None:
            return []
        agent.concurrency = 0
        lost: list[int] = []
        for instance_id, inst in list(agent.instances.items()):
            if idle(inst):
                del agent.instances[instance_id]
            elif inst.busy_token and unstarted(inst):
                lost.append(GivenUp(inst.busy_token))
            else:
                halt(inst)  # (a worker took it from the line just now: it runs on)
        return lost

    def _runner(self, inst: Slot) -> pykka.ActorRef | None:
        return self._pool.ref(inst.worker)  # (a carried slot's: None)

    def _carried(self, token: int) -> Slot:
        """A slot whose attempt runs on a thread of another pool's (no worker of this one:
        release frees none, replace abandons none)."""
        return Slot(busy_token=token, worker=CARRIED)

    def _left_over(self, agent: PooledAgent) -> bool:
        """Attempts reserved ahead wait in its ready deque (those superseded are dead)."""
        return agent.ready is not None and any(not r.context.superseded for r in list(agent.ready))

    def forget(self, name: str) -> bool:
        forgotten = super().forget(name)
        if forgotten and self._built:  # objects built for instances given up on (hung)
            for key in [key for key in list(self._built) if key[0] == name]:
                let_go([self._built.pop(key, None)])
        return forgotten

    def ready_queue(self, name: str) -> deque[Run] | None:
        """The deque ``name``'s workers self-feed from (actors/_ahead.py)."""
        agent = self._agents.get(name)
        if agent is not None and agent.ready is None:
            agent.ready = deque()
        return None if agent is None else agent.ready

    # -- idle instances ----------------------------------------------------------------

    def _idled(self, agent: PooledAgent, instance_id: str, inst: Slot, now: float) -> None:
        """``inst`` finished its attempt at ``now``: kept idle, or dropped if its agent
        was removed, shrunk or added again meanwhile, or its object was never built."""
        inst.busy_token, inst.worker, inst.idle_since, inst.work = None, None, now, None
        if agent.concurrency < len(agent.instances) or inst.agent is None or inst.stale:
            del agent.instances[instance_id]
            return
        agent.idle.append(instance_id)
        self._released.pop(instance_id, None)
        self._released[instance_id] = None

    def _drop_idle(self, idle_before: float, limit: int) -> int:
        """Drop instances idle since ``idle_before`` or earlier (at most ``limit``), those
        released longest ago first; how many went. Costs the instances it looks at, not
        the agents registered."""
        dropped = 0
        released = self._released
        while released and dropped < limit:
            instance_id = next(iter(released))
            agent, inst = self._instance(instance_id.rpartition("#")[0], instance_id)
            if agent is not None and inst is not None and idle(inst):
                if inst.idle_since > idle_before:
                    break
                del agent.instances[instance_id]
                if instance_id in agent.idle:
                    agent.idle.remove(instance_id)
                dropped += 1
            del released[instance_id]
        return dropped

    def _take_built(self, name: str, instance_id: str, inst: Slot) -> None:
        if inst.agent is None:
            inst.agent = self._built.pop((name, instance_id), None)
        elif self._built:
            let_go([self._built.pop((name, instance_id), None)])

    def _build(self, name: str, instance_id: str, factory: Callable[[], Any]) -> Any:
        """Worker thread: build an instance's object (taken on the host's thread)."""
        agent = self._built[(name, instance_id)] = self._builds.call((name, instance_id), factory)
        return agent

    # -- crash rules -------------------------------------------------------------------

    def _on_crash_news(self, event: InstanceEvent, now: float) -> list[int]:
        """An instance crashed (its factory failed or it raised InstanceCrash), or its
        backoff is over; see the module docstring."""
        agent = self._agents.get(event.agent)
        instance_id = event.instance
        inst = None if agent is None or instance_id is None else agent.instances.get(instance_id)
        if agent is None or instance_id is None or inst is None:
            return []
        if event.kind is ChildEventKind.RESTARTED and inst.restarting:
            crash_point("agents.restart")
            del agent.instances[instance_id]  # the slot serves again, with a fresh object
            return []
        if event.kind is not ChildEventKind.CRASHED or inst.restarting:
            return []
        del agent.instances[instance_id]
        let_go([self._built.pop((agent.name, instance_id), None)])
        self._free_worker(inst.worker, now)
        lost = [] if inst.busy_token is None else [inst.busy_token]
        if agent.window is None:
            agent.window = RestartWindow(self._max_restarts, self._restart_period, self._clock)
        if agent.window.record():
            return lost + self._give_up(agent, instance_id, now)
        agent.instances[instance_id] = Slot(restarting=True)
        events, name = self._events, agent.name
        self._clock.call_later(
            INSTANCE_BACKOFF.delay(len(agent.window)),
            lambda: events(InstanceEvent(name, instance_id, ChildEventKind.RESTARTED)),
        )
        return lost

    def _give_up(self, agent: PooledAgent, instance_id: str, now: float) -> list[int]:
        """The restart intensity of ``agent`` is exceeded: drop every instance and start
        afresh. An attempt one still runs runs on (a worker is not stopped) and holds its
        slot until it ends, its answer taken; one not started yet is lost (and the worker
        taken for it, if not sent yet, freed)."""
        assert agent.window is not None
        window, period = len(agent.window), self._restart_period
        _log.error(
            "%s", RestartIntensityExceeded(f"agent:{agent.name}", instance_id, window, period)
        )
        lost: list[int] = []
        for key, inst in list(agent.instances.items()):
            tokens = self._let_go(inst)
            if tokens is None:
                inst.stale = True  # it runs on, its slot held; dropped once it ends
            else:
                lost += (GivenUp(token) for token in tokens)
                self._free_worker(inst.worker, now)
                del agent.instances[key]
        agent.window = None
        return lost

    # -- attempts lost with their instances ----------------------------------------------

    def _unline(self, inst: Slot) -> None:
        """``inst`` leaves the line (its attempt started, or it went)."""
        if inst.lined:
            inst.lined = False
            self._unstarted -= 1

    def _lost_with(self, name: str, instance_id: str, token: int) -> list[int]:
        """A worker went (crashed, or with the pool: its thread may live on, blocked in an
        action) while it ran ``token`` on ``instance_id``: that attempt is lost with the
        instance, and so are those the worker took from the line since, unheard of (their
        slots free). It takes nothing more: a thread its pool left behind would run the
        line's work beside the next pool's workers, counted by none of them."""
        lost = [token]
        inst = self._agents[name].instances.pop(instance_id, None)
        let_go([self._built.pop((name, instance_id), None)])
        while inst is not None:
            fed = halt(inst)  # what its worker took last (0: nothing)
            lined = self._lined.pop(fed, None) if fed else None
            if lined is None:
                break
            lost.append(fed)
            self._doomed.discard(fed)
            agent, inst = self._instance(*lined)
            if agent is None or inst is None or inst.busy_token != fed:
                break
            self._unline(inst)
            del agent.instances[lined[1]]
        return lost

    def _let_go(self, inst: Slot) -> list[int] | None:
        """The agent of ``inst`` is given up on: the attempts lost with it, none started
        (withdrawn from the line, or not sent yet), or None if it runs one on."""
        halt(inst)  # its worker takes no further ready attempt for it
        token = inst.busy_token
        if token is None or inst.restarting:
            return []
        if inst.lined and (inst.work is None or withdraw(inst.work)):
            self._lined.pop(token, None)
            self._unline(inst)
            return [token]
        if inst.worker == CARRIED:  # (another pool's thread runs it on)
            return None
        return [token] if inst.work is None else None  # (a worker took it from the line)


def idle(inst: Slot) -> bool:
    """Free to serve: neither busy nor waiting out a crash's backoff."""
    return inst.busy_token is None and not inst.restarting


def unstarted(inst: Slot) -> bool:
    """Whether the attempt of busy ``inst`` has not started and never will: not sent yet,
    or waiting in the line (withdrawn from it now, unless a worker took it just now)."""
    return inst.work is None or (inst.lined and withdraw(inst.work))


def halt(inst: Slot) -> int:
    """Its worker takes no further ready attempt for it (the host let it go); the token
    of the last one it took (0: none)."""
    work = inst.work
    if work is None:
        return 0
    with work.lock:
        work.stop = True
        return work.fed


def next_idle(agent: PooledAgent) -> str | None:
    """The idle instance ``agent`` released last (left on its list), dropping the
    entries met on the way whose instance went or serves again."""
    idle_ids, instances = agent.idle, agent.instances
    while idle_ids:
        inst = instances.get(idle_ids[-1])
        if inst is not None and idle(inst):
            return idle_ids[-1]
        idle_ids.pop()
    return None
