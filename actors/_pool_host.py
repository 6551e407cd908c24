"""The pooled host (the default): agents as data, attempts on one elastic worker pool.

An agent name is data here (a :class:`~herder.actors._hosted.Hosted` record): its
factory, concurrency, queue, and up to ``concurrency`` agent objects (instances), each
serving one attempt at a time and kept between attempts (they hold connections).
Attempts of every agent run on a shared pool of pykka worker actors
(:class:`~herder.actors._pool_worker.PoolWorker`, daemon threads) under one
``simple_one_for_one`` supervisor, so ten thousand idle agent names hold no thread and
only a few hundred bytes each.

- **Elastic.** Workers are started when attempts find none free, and one spare when an
  attempt takes the last free one, up to ``max_workers``; workers idle past the
  passivation time stop, down to ``min_workers``. Agents waiting for a worker are woken
  (an :class:`InstanceEvent` without instance), oldest first, as workers free.
- **Crash rules.** The worker that runs an instance's first attempt builds its object. A
  failing factory, or an action raising :class:`InstanceCrash`, crashes the instance: its
  attempt is lost (breaker and retry policy apply) and its slot waits out
  :data:`~herder.actors._hosted.INSTANCE_BACKOFF` (then ``InstanceEvent("restarted")``),
  as on the thread host. Past ``max_restarts`` crashes of one agent within
  ``restart_period`` the host gives up on its instances, as a supervisor would: every
  attempt they run is lost and the next one starts afresh.
- **Workers.** The pool supervisor restarts a crashed worker (its attempt is lost, the
  agent is not charged); if the pool supervisor gives up, every running attempt is lost
  and the next one starts a new pool.
- **Hung attempts.** ``replace_token`` abandons the worker running it (the supervisor
  restarts it on a fresh thread; the blocked thread's late answer is fenced out) and
  drops the instance; ``host_stats()`` counts abandoned threads.
- **Self-feed.** A worker that finishes an attempt pops its agent's next ready attempt
  (``ready_queue``: durable attempts reserved ahead, actors/_ahead.py) and runs it on the
  same instance, saying so in ``Outcome.next_token`` (``moved_on`` follows it). A worker
  whose instance the host let go of stops self-feeding; the two agree under the
  :class:`Work`'s lock, so a replaced instance whose worker already went on keeps that
  attempt rather than abandoning a worker that no longer runs the one it meant to stop.

The threads themselves (which exist, which run what, which are free) are a
:class:`~herder.actors._worker_pool.WorkerPool`; this module decides what runs on them.
"""

from __future__ import annotations

import itertools
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pykka

from herder.actors._clock import Clock, SystemClock
from herder.actors._errors import RestartIntensityExceeded
from herder.actors._hosted import INSTANCE_BACKOFF, Hosted, HostedAgents, Instance
from herder.actors._messages import InstanceEvent, Outcome, Run
from herder.actors._pool_worker import Work
from herder.actors._queue import DEFAULT_AGING
from herder.actors._restarts import RestartWindow
from herder.actors._supervision_specs import ChildEventKind
from herder.actors._worker_pool import POOL, WorkerPool
from herder.store import crash_point

_log = logging.getLogger("herder.agents")


@dataclass(slots=True)
class _Slot(Instance):
    agent: Any = None  # the agent object, once built
    worker: str | None = None  # the worker running its attempt
    restarting: bool = False  # crashed: waits out its backoff, then the slot frees
    work: Work | None = None  # what its worker was told last (its self-feed flag)


@dataclass(slots=True)
class _Agent(Hosted[_Slot]):
    window: RestartWindow | None = None  # its crashes, from the first one on
    # Instances released since, most recent last: where acquire looks first (an entry
    # whose instance went or is busy again is skipped when met).
    idle: list[str] = field(default_factory=list)
    # Its workers self-feed from it; made when first asked for (ready_queue): an empty
    # deque is 760 bytes, and most of 10,000 names never reserve ahead.
    ready: deque[Run] | None = None


class PoolHost(HostedAgents[_Agent]):
    """The :class:`AgentHost` of agents as data on one elastic worker pool."""

    def __init__(
        self,
        agents_supervisor: pykka.ActorRef,
        reply: Callable[[Outcome], None],
        events: Callable[[InstanceEvent], None],
        *,
        max_result_bytes: int,
        shutdown: float,
        max_restarts: int = 20,
        restart_period: float = 10.0,
        queue_aging: float = DEFAULT_AGING,
        max_workers: int = 32,
        min_workers: int = 2,
        clock: Clock | None = None,
    ) -> None:
        super().__init__(_Agent, queue_aging)
        self._events = events
        self._max_restarts = max_restarts
        self._restart_period = restart_period
        # Restart pacing protects real CPU from a crash loop, so it runs on real time
        # even when the engine runs on a FakeClock (as the thread host's supervisors do).
        self._clock = SystemClock() if clock is None else clock
        self._pool = WorkerPool(
            agents_supervisor,
            reply,
            events,
            self._on_built,
            max_result_bytes=max_result_bytes,
            shutdown=shutdown,
            max_restarts=max_restarts,
            restart_period=restart_period,
            max_workers=max_workers,
            min_workers=min_workers,
        )
        self._waiting: dict[str, None] = {}  # agents that found no free worker, oldest first
        # Agents woken for a free worker, wake-up on its way: each holds one free worker, so
        # no agent arriving meanwhile takes it (10,000 names: ~4 wake-ups per attempt else).
        self._woken: dict[str, None] = {}
        self._orphans: dict[int, str] = {}  # token -> worker, of instances given up on
        self._built: dict[tuple[str, str], Any] = {}  # objects workers built, not yet seen

    # -- registration ------------------------------------------------------------------

    def _readded(self, agent: _Agent) -> None:
        for instance_id, inst in list(agent.instances.items()):
            _halt(inst)  # the next attempt goes through send, with the new factory
            if _idle(inst):
                del agent.instances[instance_id]  # rebuilt with the new factory

    def remove(self, name: str) -> None:
        agent = self._agents.get(name)
        if agent is not None:
            agent.concurrency = 0
            agent.instances = {i: x for i, x in agent.instances.items() if not _idle(x)}
            for inst in agent.instances.values():
                _halt(inst)

    def ready_queue(self, name: str) -> deque[Run] | None:
        """The deque ``name``'s workers self-feed from (see the module docstring)."""
        agent = self._agents.get(name)
        if agent is not None and agent.ready is None:
            agent.ready = deque()
        return None if agent is None else agent.ready

    def moved_on(self, name: str, instance_id: str, token: int, next_token: int) -> None:
        """The worker that ran ``token`` on ``instance_id`` went on with ``next_token``."""
        _, inst = self._instance(name, instance_id)
        if inst is not None and inst.busy_token == token:
            inst.busy_token = next_token
            self._pool.retarget(inst.worker, (name, instance_id, next_token))
            return
        worker_id = self._orphans.pop(token, None)  # an instance given up on
        if worker_id is not None:
            self._orphans[next_token] = worker_id

    # -- capacity ----------------------------------------------------------------------

    def acquire(self, name: str, token: int, backlog: int = 1) -> str | None:
        agent = self._agents[name]
        instance_id = _next_idle(agent)
        if instance_id is None and len(agent.instances) >= agent.concurrency:
            return None  # every slot is busy or restarting: its release pumps this agent
        self._woken.pop(name, None)  # here before its wake-up: it takes the worker held for it
        if self._pool.free_count() <= len(self._woken):  # none, or held for woken agents
            self._waiting[name] = None
            self._pool.grow(len(self._waiting) + len(self._woken))
            return None
        if instance_id is None:
            instance_id = agent.new_instance_id()
            agent.instances[instance_id] = _Slot()
        else:
            agent.idle.pop()
        inst = agent.instances[instance_id]
        inst.busy_token = token
        inst.worker = self._pool.take((name, instance_id, token))
        if not self._pool.free_count():
            self._pool.grow(1)  # a spare: the next attempt need not wait for a thread to start
        return instance_id

    def send(self, name: str, instance_id: str, run: Run) -> bool:
        agent, inst = self._instance(name, instance_id)
        if agent is None or inst is None or inst.busy_token != run.token or inst.worker is None:
            return False
        self._take_built(name, instance_id, inst)
        inst.work = Work(run, inst.agent, agent.factory, agent)
        told = self._pool.tell(inst.worker, inst.work)
        if told is None:  # its worker was replaced or crashed since acquire
            agent.instances.pop(instance_id, None)
        elif not told:
            # News of the exit is on its way; the slot is free (the Scheduler fails the attempt).
            inst.busy_token, inst.worker = None, None
        return bool(told)

    def release(self, name: str, instance_id: str, token: int | None, now: float) -> bool:
        agent, inst = self._instance(name, instance_id)
        if agent is None or inst is None or inst.busy_token is None:
            if token is not None:  # the answer of an instance given up on while it ran
                self._free_worker(self._orphans.pop(token, None), now)
            return False
        if token is not None and inst.busy_token != token:
            return False
        self._take_built(name, instance_id, inst)
        self._free_worker(inst.worker, now)
        inst.busy_token, inst.worker, inst.idle_since, inst.work = None, None, now, None
        if agent.concurrency < len(agent.instances) or inst.agent is None:
            del agent.instances[instance_id]  # removed or shrunk meanwhile; or never built
        else:
            agent.idle.append(instance_id)
        return True

    def replace(self, name: str, instance_id: str) -> None:
        """Abandon the worker running this instance's attempt; the object goes with it.
        (Unless the attempt had ended and the worker gone on with a ready one: the
        instance then runs that one, and its answer, on its way, says so.)"""
        agent, inst = self._instance(name, instance_id)
        if agent is None or inst is None or inst.worker is None:
            return
        fed = _halt(inst)
        if fed and fed != inst.busy_token:
            self.moved_on(name, instance_id, inst.busy_token or 0, fed)
            return
        del agent.instances[instance_id]
        if self._pool.abandon(inst.worker):
            self._waiting[name] = None  # its instance slot is free: pumped once a worker is
            self._wake()

    # -- events ------------------------------------------------------------------------

    def on_event(self, event: InstanceEvent, now: float) -> list[int]:
        if event.agent != POOL:
            return self._on_agent_event(event, now)
        if event.instance is None:
            return self._on_pool_event(event)
        what, job = self._pool.on_worker_event(event, now)
        if what == "free":
            self._wake()
        elif what == "gone":
            self._pool.grow(len(self._waiting))
            if job is not None:
                name, instance_id, token = job
                self._agents[name].instances.pop(instance_id, None)
                self._built.pop((name, instance_id), None)
                return [token]
        return []

    def _on_pool_event(self, event: InstanceEvent) -> list[int]:
        """News of the pool supervisor itself: started, or gone with every worker."""
        if event.kind is ChildEventKind.STARTED and event.ref is not None:
            self._pool.pool_started(event.ref)
            self._pool.grow(len(self._waiting))
            return []
        jobs = self._pool.pool_gone(event.ref)
        if jobs is None:
            return []  # about a pool this host already let go of
        for name, instance_id, _ in jobs:
            self._agents[name].instances.pop(instance_id, None)
        lost = [token for _, _, token in jobs]
        self._orphans.clear()
        self._woken.clear()
        waiting, self._waiting = self._waiting, {}
        for name in waiting:  # they ask again, which starts a new pool
            self._events(InstanceEvent(name, None, ChildEventKind.STARTED))
        return lost

    def _on_agent_event(self, event: InstanceEvent, now: float) -> list[int]:
        """An instance crashed (its factory failed or it raised InstanceCrash), or its
        backoff is over, or the agent was woken for a worker; see the module docstring."""
        agent = self._agents.get(event.agent)
        instance_id = event.instance
        if instance_id is None:  # woken for a free worker: pass it on if it has no work
            self._woken.pop(event.agent, None)  # (it takes the worker in the pump that follows)
            if agent is None or not (agent.queue or agent.ready):  # (ready: durable, ahead)
                self._wake()
            return []
        inst = None if agent is None else agent.instances.get(instance_id)
        if agent is None or inst is None:
            return []
        if event.kind is ChildEventKind.RESTARTED and inst.restarting:
            crash_point("agents.restart")
            del agent.instances[instance_id]  # the slot serves again, with a fresh object
            return []
        if event.kind is not ChildEventKind.CRASHED or inst.restarting:
            return []
        del agent.instances[instance_id]
        self._built.pop((agent.name, instance_id), None)
        self._free_worker(inst.worker, now)
        lost = [] if inst.busy_token is None else [inst.busy_token]
        if agent.window is None:
            agent.window = RestartWindow(self._max_restarts, self._restart_period, self._clock)
        if agent.window.record():
            return lost + self._give_up(agent, instance_id)
        agent.instances[instance_id] = _Slot(restarting=True)
        events, name = self._events, agent.name
        self._clock.call_later(
            INSTANCE_BACKOFF.delay(len(agent.window)),
            lambda: events(InstanceEvent(name, instance_id, ChildEventKind.RESTARTED)),
        )
        return lost

    def _give_up(self, agent: _Agent, instance_id: str) -> list[int]:
        """The restart intensity of ``agent`` is exceeded: drop every instance (the
        attempts they run are lost; their workers free once they answer) and start afresh."""
        assert agent.window is not None
        window, period = len(agent.window), self._restart_period
        _log.error(
            "%s", RestartIntensityExceeded(f"agent:{agent.name}", instance_id, window, period)
        )
        lost: list[int] = []
        for inst in agent.instances.values():
            fed = _halt(inst)
            if inst.busy_token is None or inst.restarting:
                continue
            lost.append(inst.busy_token)
            if fed and fed != inst.busy_token:  # its worker went on with it, unheard of yet
                lost.append(fed)
            if inst.worker is not None:
                self._orphans[lost[-1]] = inst.worker
        agent.instances.clear()
        agent.window = None
        return lost

    # -- passivation and stats ---------------------------------------------------------

    def passivate(self, idle_before: float, limit: int = 256) -> int:
        """Drop instances idle since ``idle_before`` or earlier and stop idle workers beyond
        ``min_workers``; return how many instances went (at most ``limit``)."""
        dropped = 0
        for agent in self._agents.values():
            for instance_id, inst in list(agent.instances.items()):
                if dropped < limit and _idle(inst) and inst.idle_since <= idle_before:
                    del agent.instances[instance_id]
                    dropped += 1
            agent.idle = [i for i in agent.idle if i in agent.instances]
        self._pool.passivate(idle_before)
        self._woken.clear()  # a wake-up lost on its way holds no worker past a tick
        self._wake()  # in case a woken agent did not take the worker it was woken for
        return dropped

    def host_stats(self) -> dict[str, int]:
        """The pool: worker threads, busy ones, and threads abandoned to hung actions."""
        return self._pool.stats()

    # -- internals ---------------------------------------------------------------------

    def _free_worker(self, worker_id: str | None, now: float) -> None:
        if self._pool.release(worker_id, now):
            self._wake()

    def _wake(self) -> None:
        """Wake the agents waiting longest, one per free worker (the Scheduler pumps each
        again): waking them all would cost a pump of every waiting agent per release."""
        spare = self._pool.free_count() - len(self._woken)
        if not self._waiting or spare <= 0:
            return
        for name in list(itertools.islice(self._waiting, spare)):
            del self._waiting[name]
            self._woken[name] = None
            self._events(InstanceEvent(name, None, ChildEventKind.STARTED))

    def _take_built(self, name: str, instance_id: str, inst: _Slot) -> None:
        built = self._built.pop((name, instance_id), None)
        if built is not None and inst.agent is None:
            inst.agent = built

    def _on_built(self, name: str, instance_id: str, agent: Any) -> None:
        """Worker thread: an instance's object was built (taken on the host's thread)."""
        self._built[(name, instance_id)] = agent


def _idle(inst: _Slot) -> bool:
    """Free to serve: neither busy nor waiting out a crash's backoff."""
    return inst.busy_token is None and not inst.restarting


def _halt(inst: _Slot) -> int:
    """Its worker takes no further ready attempt for it (the host let it go); the token
    of the last one it took (0: none)."""
    work = inst.work
    if work is None:
        return 0
    with work.lock:
        work.stop = True
        return work.fed


def _next_idle(agent: _Agent) -> str | None:
    """The idle instance ``agent`` released last (left on its list), dropping the
    entries met on the way whose instance went or serves again."""
    idle, instances = agent.idle, agent.instances
    while idle:
        inst = instances.get(idle[-1])
        if inst is not None and _idle(inst):
            return idle[-1]
        idle.pop()
    return None
