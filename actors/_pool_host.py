"""The pooled host (the default): agents as data, attempts on one elastic worker pool.

Agent names, their instance slots and their crash rules are data
(:class:`~herder.actors._pool_agents.PoolAgents`): ten thousand idle agent names hold no
thread and only a few hundred bytes each. Attempts of every agent run on a shared pool of
pykka worker actors (:class:`~herder.actors._pool_worker.PoolWorker`, daemon threads)
under one ``simple_one_for_one`` supervisor; this module decides what runs on them.

- **Elastic.** Workers are started when attempts find none free, and one spare when an
  attempt takes the last free one, up to ``max_workers``; workers idle past the
  passivation time stop, down to ``min_workers``.
- **The line.** An attempt whose agent has a free instance slot but finds no free worker
  still takes the slot (at most ``concurrency`` attempts per agent, as ever), is recorded
  like any other, and once durable waits in the pool's line, oldest first. A worker that
  finishes an attempt and has no ready attempt of its own agent takes the line's next one
  itself, saying so in ``Outcome.next_token`` (``moved_on``): no wake-up message, no pump,
  no hand-off (with 10,000 names each of those was a Scheduler message per attempt). A
  worker that frees with work in the line is handed it here. Its deadline counts from when
  it starts (``on_lined_start``, ``Engine.restamp``); one fenced while it waited never
  starts. A quick attempt may also wait there with workers free, held for a busy one
  rather than wake one, if it has a place in it (actors/_worker_pool.py). At most ``line``
  attempts wait (default :data:`LINE_PER_WORKER` per worker of the cap); past that, agents
  wait un-recorded and are woken (an :class:`InstanceEvent` without instance), oldest
  first, as workers or places in the line free; a worker is held for a woken agent until
  its pump is over (``pumped``), then passed on if that pump took nothing.
- **Workers.** The pool supervisor restarts a crashed worker (its attempt is lost, the
  agent is not charged); if the pool supervisor gives up, every running attempt is lost
  and the next one starts a new pool.
- **Hung attempts.** ``replace_token`` abandons the worker running it (restarted on a
  fresh thread at once; the blocked one's late answer is fenced out), drops the instance
  and counts its agent slow again; ``host_stats()`` counts abandoned threads. One in the
  line is withdrawn; one a worker took unheard of is replaced once its taking is heard.
- **Self-feed.** A worker that finishes an attempt pops its agent's next ready attempt
  (``ready_queue``: durable attempts reserved ahead, actors/_ahead.py) and runs it on the
  same instance, saying so in ``Outcome.next_token``. A worker whose instance the host
  let go of stops feeding itself; the two agree under the :class:`Work`'s lock, so a
  replaced instance whose worker already went on keeps that attempt rather than
  abandoning a worker that no longer runs the one it meant to stop.

The threads themselves (which exist, which run what, which are free) are a
:class:`~herder.actors._worker_pool.WorkerPool`.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable
from time import perf_counter

import pykka

from herder.actors._clock import Clock
from herder.actors._hosted import let_go
from herder.actors._messages import InstanceEvent, Outcome, Run
from herder.actors._pool_agents import PoolAgents, Slot, halt, next_idle
from herder.actors._pool_worker import Work, take_lined, withdraw
from herder.actors._queue import DEFAULT_AGING
from herder.actors._supervision_specs import ChildEventKind
from herder.actors._worker_pool import POOL, WorkerPool

LINE_PER_WORKER = 8
"""Attempts that may wait in the line, per worker of the pool's cap (``max_workers``)."""


class PoolHost(PoolAgents):
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
        line: int | None = None,
        clock: Clock | None = None,
    ) -> None:
        super().__init__(
            events,
            max_restarts=max_restarts,
            restart_period=restart_period,
            queue_aging=queue_aging,
            clock=clock,
        )
        self._line: deque[Work] = deque()  # the line (module docstring), oldest first
        self._line_cap = LINE_PER_WORKER * max_workers if line is None else line
        self._fed_from_line = 0  # lined attempts a worker went on with by itself
        # Told (on the Scheduler's thread) the token of a lined attempt this host handed
        # to a worker itself: its deadline counts from then (set by actors/_ahead.py).
        self.on_lined_start: Callable[[int], None] = lambda _token: None
        self._pool = WorkerPool(
            agents_supervisor,
            reply,
            events,
            self._build,
            self._line,
            max_result_bytes=max_result_bytes,
            shutdown=shutdown,
            max_restarts=max_restarts,
            restart_period=restart_period,
            max_workers=max_workers,
            min_workers=min_workers,
        )
        self._waiting: dict[str, None] = {}  # agents that found no room, oldest first
        # Agents woken for a free worker, wake-up on its way: each holds one free worker, so
        # no agent arriving meanwhile takes it (10,000 names: ~4 wake-ups per attempt else).
        self._woken: dict[str, None] = {}
        self._pumping: list[str] = []  # woken agents whose wake-up landed: pumped next

    def moved_on(self, name: str, instance_id: str, token: int, next_token: int) -> bool:
        """The worker that ran ``token`` on ``instance_id`` went on with ``next_token``:
        True if on the same instance (it stays busy), False if with work from the line
        (the instance is free once ``token``'s answer is handled)."""
        if self._line and not self._pool.held(self._line):
            self._wake()  # work held past LINGER (actors/_worker_pool.py)
        agent, inst = self._instance(name, instance_id)
        if agent is not None and inst is not None and inst.busy_token == token:
            lined = self._lined.pop(next_token, None)
            if lined is None:
                if inst.worker is None:
                    return False  # it went on with lined work: heard of already (replace)
                inst.busy_token = next_token
                self._pool.retarget(inst.worker, (name, instance_id, next_token), agent.quick)
                return True
            worker_id, inst.worker = inst.worker, None
            self._fed_from_line += 1
            self._bind(*lined, next_token, worker_id)
            return False
        worker_id = self._orphans.pop(token, None)  # an instance given up on
        lined = self._lined.pop(next_token, None)
        if lined is not None:
            self._fed_from_line += 1
            self._bind(*lined, next_token, worker_id)
            return False
        if worker_id is not None:
            self._orphans[next_token] = worker_id
        return True

    # -- capacity ----------------------------------------------------------------------

    def acquire(self, name: str, token: int, backlog: int = 1) -> str | None:
        agent = self._agents[name]
        instance_id = next_idle(agent)
        if instance_id is None and len(agent.instances) >= agent.concurrency:
            return None  # every slot is busy or restarting: its release pumps this agent
        self._woken.pop(name, None)  # here before its wake-up: it takes the worker held for it
        free = self._pool.free_count()
        lined = free <= len(self._woken)  # none free, or each held for a woken agent
        quick = agent.quick
        held = quick and not lined and self._pool.holds_quick() and self._unstarted < self._line_cap
        if lined and free + self._line_cap - self._unstarted <= len(self._woken):
            self._waiting[name] = None  # and the line is full
            self._pool.grow(self._wanted())
            return None
        if instance_id is None:
            instance_id = agent.new_instance_id()
            agent.instances[instance_id] = Slot()
        else:
            agent.idle.pop()
        inst = agent.instances[instance_id]
        inst.busy_token = token
        if lined or held:  # (held: for a busy worker, actors/_worker_pool.py)
            inst.lined = True
            self._unstarted += 1
            if lined:
                self._pool.grow(self._wanted())
        else:
            inst.worker = self._pool.take((name, instance_id, token), quick)
            if not self._pool.free_count():
                self._pool.grow(1)  # a spare: the next attempt need not wait for a thread
        return instance_id

    def send(self, name: str, instance_id: str, run: Run) -> bool:
        agent, inst = self._instance(name, instance_id)
        if agent is None or inst is None or inst.busy_token != run.token:
            return False
        if inst.worker is None and not inst.lined:
            return False
        self._take_built(name, instance_id, inst)
        inst.work = Work(run, inst.agent, agent.factory, agent)
        if inst.worker is None:  # it waits in the line
            self._lined[run.token] = (name, instance_id)
            inst.work.lined_at = perf_counter()
            self._line.append(inst.work)
            self._wake()  # (unless a worker freed meanwhile, or it is held)
            return True
        told = self._pool.tell(inst.worker, inst.work)
        if told is None:  # its worker was replaced or crashed since acquire
            agent.instances.pop(instance_id, None)
        elif not told:
            # News of the exit is on its way; the slot goes (the Scheduler fails the attempt).
            agent.instances.pop(instance_id, None)
        return bool(told)

    def release(self, name: str, instance_id: str, token: int | None, now: float) -> bool:
        agent, inst = self._instance(name, instance_id)
        if agent is None or inst is None or inst.busy_token is None:
            if token is not None:  # the answer of an instance given up on while it ran
                self._free_worker(self._orphans.pop(token, None), now)
                let_go([self._built.pop((name, instance_id), None)])  # (if it built one)
            return False
        if token is not None and inst.busy_token != token:
            return False
        if inst.lined:  # never sent (fenced before its commit), or never taken
            if inst.work is not None and not withdraw(inst.work):
                return False  # a worker took it: its answer, on its way, frees the slot
            self._lined.pop(inst.busy_token, None)
            self._unline(inst)
        self._take_built(name, instance_id, inst)
        self._free_worker(inst.worker, now)
        self._idled(agent, instance_id, inst, now)
        return True

    def replace(self, name: str, instance_id: str) -> None:
        """Abandon the worker running this instance's attempt; the object goes with it.
        (Unless the attempt had ended and the worker gone on with a ready one: the
        instance then runs that one, and its answer, on its way, says so.)"""
        agent, inst = self._instance(name, instance_id)
        if agent is None or inst is None:
            return
        if inst.lined:  # withdrawn from the line, or replaced once a worker's taking it is heard
            token = inst.busy_token or 0
            if inst.work is not None and not withdraw(inst.work):
                self._doomed.add(token)
                return
            self._lined.pop(token, None)
            self._unline(inst)
            del agent.instances[instance_id]
            return
        if inst.worker is None:
            return
        fed = halt(inst)
        if fed and fed != inst.busy_token:
            self.moved_on(name, instance_id, inst.busy_token or 0, fed)
            return
        del agent.instances[instance_id]
        agent.took = 1.0  # its action hung: slow (unknown) until it is timed again
        if self._pool.abandon(inst.worker, counted=not self._builds.abandon((name, instance_id))):
            self._waiting[name] = None  # its instance slot is free: pumped once a worker is
            self._wake()

    # -- events ------------------------------------------------------------------------

    def on_event(self, event: InstanceEvent, now: float) -> list[int]:
        if event.agent != POOL:
            return self._on_agent_event(event, now)
        if event.instance is None:
            return self._on_pool_event(event)
        what, job = self._pool.on_worker_event(event, now)
        if what in ("free", "check"):  # (check: the line check a hold armed)
            self._wake()
        elif what == "gone":
            self._pool.grow(self._wanted())
            if job is not None:
                return self._lost_with(*job)
        return []

    def _on_pool_event(self, event: InstanceEvent) -> list[int]:
        """News of the pool supervisor itself: started, or gone with every worker."""
        if event.kind is ChildEventKind.STARTED and event.ref is not None:
            self._pool.pool_started(event.ref)
            self._pool.grow(self._wanted())
            return []
        jobs = self._pool.pool_gone(event.ref)
        if jobs is None:
            return []  # about a pool this host already let go of
        lost = [token for job in jobs for token in self._lost_with(*job)]
        self._orphans.clear()
        self._woken.clear()
        waiting, self._waiting = self._waiting, {}
        for name in waiting:  # they ask again, which starts a new pool
            self._events(InstanceEvent(name, None, ChildEventKind.STARTED))
        if self._unstarted:
            self._pool.grow(self._wanted())  # a new pool, for the line
        return lost

    def _on_agent_event(self, event: InstanceEvent, now: float) -> list[int]:
        """News of an agent: woken for a worker (pass it on if it has no work), or of one
        of its instances (the crash rules, actors/_pool_agents.py)."""
        if event.instance is not None:
            return self._on_crash_news(event, now)
        agent = self._agents.get(event.agent)
        if agent is None or not (agent.queue or agent.ready):  # (ready: durable, ahead)
            self._woken.pop(event.agent, None)
            self._wake()
        else:  # it keeps its worker for the pump that follows (see pumped)
            self._pumping.append(event.agent)
        return []

    def waiting(self, token: int) -> bool:
        """Whether attempt ``token``, sent, waits in the line (or was taken from it, not
        yet heard of: it may have started; a cancel gives it up either way, as one that
        may have taken effect)."""
        return token in self._lined

    def pumped(self) -> None:
        """The Scheduler pumped the agents it touched: an agent woken for a worker that its
        pump did not take (its gate closed, its jobs went stale) passes it on now, rather
        than hold it, idle, until the next tick."""
        if self._pumping:
            idle = [name for name in self._pumping if name in self._woken]
            self._pumping.clear()
            for name in idle:
                del self._woken[name]
            if idle:
                self._wake()

    # -- passivation and stats ---------------------------------------------------------

    def passivate(self, idle_before: float, limit: int = 256) -> int:
        """Drop instances idle since ``idle_before`` or earlier and stop idle workers beyond
        ``min_workers``; return how many instances went (at most ``limit``)."""
        dropped = self._drop_idle(idle_before, limit)
        self._pool.passivate(idle_before)
        self._woken.clear()  # a wake-up lost on its way holds no worker past a tick
        self._pumping.clear()
        self._wake(hold=False)  # a woken agent did not take its worker, or work is held
        return dropped

    def host_stats(self) -> dict[str, int]:
        """The pool's threads (busy, abandoned), the line, and what workers took from it."""
        stats = self._pool.stats()  # (a thread in a hung factory: counted until it returns)
        stats["abandoned_threads"] += self._builds.abandoned
        return {**stats, "line": self._unstarted, "fed_from_line": self._fed_from_line}

    # -- internals ---------------------------------------------------------------------

    def _free_worker(self, worker_id: str | None, now: float) -> None:
        if self._pool.release(worker_id, now):  # (the line's work came after it looked)
            self._wake(hold=False)

    def _wanted(self) -> int:
        """Workers wanted: one per waiting or woken agent and per attempt in the line."""
        return len(self._waiting) + len(self._woken) + self._unstarted

    def _wake(self, *, hold: bool = True) -> None:
        """Hand the line's work to free workers (unless ``hold``-ing quick work for a busy
        one); then wake the agents waiting longest, one per free worker or place in the
        line (the Scheduler pumps each again; waking all: a pump of each per release)."""
        while self._line and self._pool.free_count() > len(self._woken):
            if hold and self._pool.held(self._line):
                self._pool.check_later()  # (in case no worker comes for it)
                break
            work = take_lined(self._line)
            if work is None:
                break
            self._hand(work)
        if not self._waiting:
            return
        free = self._pool.free_count()
        spare = free + self._line_cap - self._unstarted - len(self._woken)
        if spare <= 0:
            return
        for name in list(itertools.islice(self._waiting, spare)):
            del self._waiting[name]
            self._woken[name] = None
            self._events(InstanceEvent(name, None, ChildEventKind.STARTED))

    def _hand(self, work: Work) -> None:
        """Start ``work``, taken from the line, on a free worker (a worker freed, or
        started, after the line had work: no worker took it)."""
        token = work.run.token
        name, instance_id = self._lined.pop(token)
        worker_id = self._pool.take((name, instance_id, token), False)  # (_bind says)
        assert worker_id is not None
        if not self._pool.tell(worker_id, work):  # it died just now: the work waits on
            with work.lock:
                work.fed = 0
            self._line.appendleft(work)
            self._lined[token] = (name, instance_id)
            return
        self._bind(name, instance_id, token, worker_id, wake=False)
        self.on_lined_start(token)

    def _bind(
        self, name: str, instance_id: str, token: int, worker_id: str | None, *, wake: bool = True
    ) -> None:
        """The lined attempt ``token`` of ``instance_id`` runs on ``worker_id`` now
        (``wake``: wake an agent waiting for its place in the line)."""
        agent, inst = self._instance(name, instance_id)
        if agent is None or inst is None or inst.busy_token != token:  # given up on meanwhile
            self._doomed.discard(token)
            if worker_id is not None:
                self._orphans[token] = worker_id  # its answer frees the worker
            return
        inst.worker = worker_id
        self._unline(inst)
        self._pool.retarget(worker_id, (name, instance_id, token), agent.quick)
        if token in self._doomed:  # replaced while a worker was taking it
            self._doomed.discard(token)
            self.replace(name, instance_id)
        elif wake and self._waiting:
            self._wake()
