"""The pooled host: agents as data, attempts run on one elastic pool of worker actors.

An agent name is data here: its factory, concurrency, queue, and up to ``concurrency``
agent objects (instances), each serving one attempt at a time and kept between attempts
(they hold connections). Attempts of every agent run on a shared pool of pykka worker
actors (daemon threads) under one ``simple_one_for_one`` supervisor, so ten thousand
idle agent names hold no thread and only a few hundred bytes each.

- **Elastic.** A worker is started when an attempt finds none free, up to ``max_workers``;
  workers idle past the passivation time stop, down to ``min_workers``. Agents waiting
  for a worker are woken (an :class:`InstanceEvent` without instance) when one frees.
- **Instances.** An instance's object is built by the worker that runs its first attempt
  (``contain``-ed: the factory is user code). A factory that fails, or an action that
  raises :class:`InstanceCrash`, loses the instance and its attempt (reported as a crash,
  so the breaker and the retry policy apply as on the thread host); the next attempt
  builds a fresh object.
- **Hung attempts.** ``replace_token`` abandons the worker running it (the supervisor
  restarts it on a fresh thread; the blocked thread's late answer is fenced out) and
  drops the instance; ``stats()`` counts abandoned threads.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pykka

from herder.actors._action import run_attempt
from herder.actors._agent import Agent
from herder.actors._ask import call_later
from herder.actors._clock import SystemClock
from herder.actors._host import InstanceCrash
from herder.actors._messages import InstanceEvent, Outcome, Run
from herder.actors._queue import DEFAULT_AGING, JobQueue
from herder.actors._supervised import SupervisedActor
from herder.actors._supervision import start_supervisor
from herder.actors._supervision_specs import (
    Backoff,
    ChildEvent,
    ChildEventKind,
    ChildSpec,
    Restart,
    Strategy,
)
from herder.store import UserCodeFailed, contain, safe_repr

POOL = "*pool"
"""The pool's pseudo agent name in events (no registered agent can be named so)."""


@dataclass(slots=True)
class _Work:
    """Host -> worker: run ``run`` on ``agent`` (built with ``factory`` when None)."""

    run: Run
    agent: Any
    factory: Callable[[], Agent]


class PoolWorker(SupervisedActor):
    """One pooled thread: runs attempts of any agent, one at a time."""

    use_daemon_thread = True

    def __init__(
        self,
        reply: Callable[[Outcome], None],
        events: Callable[[InstanceEvent], None],
        built: Callable[[str, str, Any], None],
        max_result_bytes: int,
    ) -> None:
        super().__init__()
        self._reply = reply
        self._events = events
        self._built = built
        self._max_result_bytes = max_result_bytes

    def on_receive(self, message: Any) -> Any:
        """Run one attempt (building its agent object first if needed)."""
        if not isinstance(message, _Work):
            return super().on_receive(message)
        run = message.run
        agent = message.agent
        if agent is None:
            try:
                agent = contain(message.factory)
            except UserCodeFailed as failed:
                reason = f"agent {run.agent!r} could not start: {failed.error}"
                crashed = ChildEventKind.CRASHED
                self._events(InstanceEvent(run.agent, run.instance, crashed, None, reason))
                return None
            self._built(run.agent, run.instance, agent)
        try:
            outcome = run_attempt(agent, run.agent, run.instance, run, self._max_result_bytes)
        except InstanceCrash as crash:  # the agent object broke, not this worker
            crashed = ChildEventKind.CRASHED
            self._events(InstanceEvent(run.agent, run.instance, crashed, None, str(crash)))
            return None
        self._reply(outcome)
        return None


@dataclass(slots=True)
class _Instance:
    agent: Any = None  # the agent object, once built
    busy_token: int | None = None
    worker: str | None = None
    idle_since: float = 0.0


@dataclass(slots=True)
class _Agent:
    name: str
    factory: Callable[[], Agent]
    concurrency: int
    queue: JobQueue[Any]
    instances: dict[str, _Instance] = field(default_factory=dict)
    ids: itertools.count[int] = field(default_factory=itertools.count)


@dataclass(slots=True)
class _Worker:
    ref: pykka.ActorRef | None = None  # None while starting or restarting
    job: tuple[str, str, int] | None = None  # (agent, instance, token) it runs
    idle_since: float = 0.0
    starting: bool = True  # asked for, not yet started (a restarting one is not)


class PoolHost:
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
    ) -> None:
        self._agents_sup = agents_supervisor
        self._reply = reply
        self._events = events
        self._max_result_bytes = max_result_bytes
        self._shutdown = shutdown
        self._max_restarts = max_restarts
        self._restart_period = restart_period
        self._queue_aging = queue_aging
        self._max_workers = max_workers
        self._min_workers = min_workers
        self._agents: dict[str, _Agent] = {}
        self._workers: dict[str, _Worker] = {}
        self._worker_ids = itertools.count()
        self._pool: pykka.ActorRef | None = None
        self._pool_pending = False
        self._waiting: set[str] = set()  # agents that found no free worker
        self._abandoned = 0
        self._built: dict[tuple[str, str], Any] = {}  # objects workers built, not yet seen

    # -- registration ------------------------------------------------------------------

    def add(self, name: str, factory: Callable[[], Agent], concurrency: int) -> None:
        agent = self._agents.get(name)
        if agent is None:
            self._agents[name] = _Agent(name, factory, concurrency, JobQueue(self._queue_aging))
        else:
            agent.factory, agent.concurrency = factory, concurrency
            for instance_id in [
                i for i, inst in agent.instances.items() if inst.busy_token is None
            ]:
                del agent.instances[instance_id]  # rebuilt with the new factory

    def remove(self, name: str) -> None:
        agent = self._agents.get(name)
        if agent is not None:
            agent.concurrency = 0
            agent.instances = {i: x for i, x in agent.instances.items() if x.busy_token is not None}

    def queue(self, name: str) -> JobQueue[Any] | None:
        agent = self._agents.get(name)
        return None if agent is None else agent.queue

    # -- capacity ----------------------------------------------------------------------

    def acquire(self, name: str, token: int, backlog: int = 1) -> str | None:
        agent = self._agents[name]
        instance_id = next((i for i, x in agent.instances.items() if x.busy_token is None), None)
        if instance_id is None and len(agent.instances) >= agent.concurrency:
            return None  # every instance is busy: its release pumps this agent again
        worker_id = next(
            (w for w, x in self._workers.items() if x.ref is not None and x.job is None), None
        )
        if worker_id is None:
            self._waiting.add(name)
            self._grow(backlog)
            return None
        if instance_id is None:
            instance_id = f"{name}#{next(agent.ids)}"
            agent.instances[instance_id] = _Instance()
        inst = agent.instances[instance_id]
        inst.busy_token, inst.worker = token, worker_id
        self._workers[worker_id].job = (name, instance_id, token)
        return instance_id

    def send(self, name: str, instance_id: str, run: Run) -> bool:
        agent = self._agents.get(name)
        inst = None if agent is None else agent.instances.get(instance_id)
        if agent is None or inst is None or inst.busy_token != run.token or inst.worker is None:
            return False
        worker = self._workers.get(inst.worker)
        if worker is None or worker.ref is None:  # replaced or crashed since acquire
            agent.instances.pop(instance_id, None)
            return False
        self._take_built(name, instance_id, inst)
        try:
            worker.ref.tell(_Work(run, inst.agent, agent.factory))
        except pykka.ActorDeadError:
            # Its supervisor's news of the exit is on the way; the instance is free again
            # (the Scheduler fails this attempt itself).
            inst.busy_token, inst.worker = None, None
            worker.job = None
            return False
        return True

    def release(self, name: str, instance_id: str, token: int | None, now: float) -> bool:
        agent = self._agents.get(name)
        inst = None if agent is None else agent.instances.get(instance_id)
        if agent is None or inst is None or inst.busy_token is None:
            return False
        if token is not None and inst.busy_token != token:
            return False
        self._take_built(name, instance_id, inst)
        self._free_worker(inst.worker, now)
        inst.busy_token, inst.worker, inst.idle_since = None, None, now
        if agent.concurrency < len(agent.instances) or inst.agent is None:
            del agent.instances[instance_id]  # removed or shrunk meanwhile; or never built
        return True

    def busy_tokens(self, name: str) -> list[int]:
        agent = self._agents.get(name)
        instances = {} if agent is None else agent.instances
        return [i.busy_token for i in instances.values() if i.busy_token is not None]

    def replace_token(self, name: str, token: int) -> None:
        agent = self._agents.get(name)
        for instance_id, inst in ({} if agent is None else agent.instances).items():
            if inst.busy_token == token:
                self.replace(name, instance_id)
                return

    def replace(self, name: str, instance_id: str) -> None:
        """Abandon the worker running this instance's attempt; the object goes with it."""
        agent = self._agents.get(name)
        inst = None if agent is None else agent.instances.pop(instance_id, None)
        if inst is None or inst.worker is None or self._pool is None:
            return
        self._waiting.add(name)  # its instance slot is free: pumped once a worker is
        worker = self._workers.get(inst.worker)
        if worker is not None:
            worker.ref, worker.job = None, None  # back once the supervisor restarted it
            worker.starting = False
            self._abandoned += 1
            call_later(self._pool, "restart_child", inst.worker)
        if any(w.ref is not None and w.job is None for w in self._workers.values()):
            self._wake_waiting()

    # -- events ------------------------------------------------------------------------

    def on_event(self, event: InstanceEvent, now: float) -> list[int]:
        if event.agent != POOL:
            return self._on_agent_event(event)
        if event.instance is None:  # the pool supervisor itself
            if event.kind is ChildEventKind.STARTED and event.ref is not None:
                self._pool, self._pool_pending = event.ref, False
                self._grow(len(self._waiting))
                return []
            if (
                self._pool is not None
                and event.ref is not None
                and (event.ref.actor_urn != self._pool.actor_urn)
            ):
                return []
            self._pool, self._pool_pending = None, False  # it gave up: all workers went
            lost = [w.job[2] for w in self._workers.values() if w.job is not None]
            for name, instance_id, _ in (w.job for w in self._workers.values() if w.job):
                self._agents[name].instances.pop(instance_id, None)
            self._workers.clear()
            self._wake_waiting()  # they ask again, which starts a new pool
            return lost
        worker = self._workers.get(event.instance)
        if worker is None:
            return []
        if event.kind in (ChildEventKind.STARTED, ChildEventKind.RESTARTED) and event.ref:
            worker.ref, worker.job, worker.idle_since = event.ref, None, now
            worker.starting = False
            self._wake_waiting()
            return []
        if event.kind is ChildEventKind.CRASHED or (
            event.kind in (ChildEventKind.EXITED, ChildEventKind.TERMINATED) and worker.ref
        ):
            job, worker.ref, worker.job, worker.starting = worker.job, None, None, False
            if event.kind is not ChildEventKind.CRASHED:
                del self._workers[event.instance]  # gone for good: another may start
            self._grow(len(self._waiting))
            if job is None:
                return []
            name, instance_id, token = job
            self._agents[name].instances.pop(instance_id, None)
            self._built.pop((name, instance_id), None)
            return [token]
        return []

    def _on_agent_event(self, event: InstanceEvent) -> list[int]:
        """A worker could not build an instance's object: that instance and its attempt
        are lost (a crash, for the breaker and the retry policy)."""
        agent = self._agents.get(event.agent)
        instance_id = event.instance
        inst = None if agent is None or instance_id is None else agent.instances.get(instance_id)
        if agent is None or instance_id is None or inst is None:
            return []
        if event.kind is not ChildEventKind.CRASHED:
            return []
        del agent.instances[instance_id]
        if inst.worker is not None and inst.worker in self._workers:
            self._free_worker(inst.worker, 0.0)
        return [] if inst.busy_token is None else [inst.busy_token]

    # -- passivation and stats ---------------------------------------------------------

    def passivate(self, idle_before: float, limit: int = 256) -> int:
        """Drop instances idle since ``idle_before`` or earlier and stop idle workers beyond
        ``min_workers``; return how many instances went (at most ``limit``)."""
        dropped = 0
        for agent in self._agents.values():
            for instance_id, inst in list(agent.instances.items()):
                if dropped < limit and inst.busy_token is None and inst.idle_since <= idle_before:
                    del agent.instances[instance_id]
                    dropped += 1
        idle = [w for w, x in self._workers.items() if x.job is None and x.ref is not None]
        for worker_id in idle[self._min_workers :]:
            if self._workers[worker_id].idle_since <= idle_before and self._pool is not None:
                del self._workers[worker_id]
                call_later(self._pool, "delete_child", worker_id)
        return dropped

    def stats(self) -> dict[str, dict[str, int]]:
        return {
            name: {
                "instances": len(agent.instances),
                "busy": sum(1 for i in agent.instances.values() if i.busy_token is not None),
                "queued": len(agent.queue),
            }
            for name, agent in self._agents.items()
        }

    def host_stats(self) -> dict[str, int]:
        """The pool: worker threads, busy ones, and threads abandoned to hung actions."""
        return {
            "workers": len(self._workers),
            "busy_workers": sum(1 for w in self._workers.values() if w.job is not None),
            "abandoned_threads": self._abandoned,
        }

    # -- internals ---------------------------------------------------------------------

    def _free_worker(self, worker_id: str | None, now: float) -> None:
        worker = None if worker_id is None else self._workers.get(worker_id)
        if worker is not None and worker.ref is not None:
            worker.job, worker.idle_since = None, now
            self._wake_waiting()

    def _wake_waiting(self) -> None:
        waiting, self._waiting = self._waiting, set()
        for name in waiting:  # the Scheduler pumps each again
            self._events(InstanceEvent(name, None, ChildEventKind.STARTED))

    def _take_built(self, name: str, instance_id: str, inst: _Instance) -> None:
        built = self._built.pop((name, instance_id), None)
        if built is not None and inst.agent is None:
            inst.agent = built

    def _on_built(self, name: str, instance_id: str, agent: Any) -> None:
        """Worker thread: an instance's object was built (taken on the host's thread)."""
        self._built[(name, instance_id)] = agent

    def _grow(self, wanted: int) -> None:
        """Start workers until ``wanted`` are starting (within ``max_workers``)."""
        if self._pool is None:
            if not self._pool_pending:
                self._start_pool()
            return
        starting = sum(1 for w in self._workers.values() if w.starting)
        for _ in range(min(wanted - starting, self._max_workers - len(self._workers))):
            self._start_worker(self._pool)

    def _start_worker(self, pool: pykka.ActorRef) -> None:
        worker_id = f"worker-{next(self._worker_ids)}"
        reply, events, built = self._reply, self._events, self._on_built
        limit = self._max_result_bytes
        spec = ChildSpec(
            id=worker_id,
            start=lambda: PoolWorker.start(reply, events, built, limit),
            restart=Restart.PERMANENT,
            shutdown=self._shutdown,
        )
        self._workers[worker_id] = _Worker()
        call_later(pool, "start_child", spec)

    def _start_pool(self) -> None:
        events = self._events

        def listener(event: ChildEvent) -> None:
            reason = None if event.reason is None else safe_repr(event.reason)
            events(InstanceEvent(POOL, event.child_id, event.kind, event.ref, reason))

        spec = ChildSpec(
            id=f"agent:{POOL}",
            start=lambda: start_supervisor(
                f"agent:{POOL}",
                Strategy.SIMPLE_ONE_FOR_ONE,
                listener=listener,
                clock=SystemClock(),
                max_restarts=self._max_restarts,
                period=self._restart_period,
                backoff=Backoff(initial=0.001, factor=2.0, max=1.0),
            ),
            restart=Restart.TEMPORARY,
            shutdown=self._shutdown,
        )
        self._pool_pending = True
        call_later(self._agents_sup, "start_child", spec)
