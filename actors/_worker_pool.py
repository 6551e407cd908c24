"""The pooled host's threads: an elastic pool of :class:`PoolWorker` actors.

:class:`WorkerPool` keeps the worker threads the pool host
(:class:`~herder.actors._pool_host.PoolHost`) runs attempts on, and nothing about agents:
which workers exist, which one runs which attempt (its ``job``), and which are free (each
worker is handed the host's line of work waiting for a worker, which it takes from). The
workers live under one ``simple_one_for_one`` supervisor (``agent:*pool``), requested
from the agents supervisor on first need; its child events reach the host as
:class:`InstanceEvent` of the pseudo agent :data:`POOL`.

Workers are started when attempts find none free, up to ``max_workers``; the most
recently freed worker is taken first (a warm thread), and those idle longest stop at
passivation, down to ``min_workers``. A worker whose attempt hangs is abandoned: the
supervisor restarts it on a fresh thread and the blocked one is counted in ``abandoned``.

**The carrier.** Waking a sleeping worker (a futex wake, then a wait for the GIL the
Scheduler holds for the rest of its turn) cost more than a quick attempt itself: at 16
in flight nearly every step was told to a sleeping worker, about four per durable batch.
So the last quick attempt told is the *carrier* (:meth:`WorkerPool.tell`, ``quick``):
until its worker begins (``Work.begun``) it is sure to look at the line once that
attempt, and what it self-feeds, is over, so up to :data:`CHAIN` quick attempts sent
meanwhile wait in the line for it (:meth:`WorkerPool.carries`) instead of waking a
worker each. Quick is the agent's own measure (``PooledAgent.took``, under
:data:`QUICK`): a slow action never holds another attempt up, and a quick one that hangs
holds those behind it only until the host next hands the line out (a worker frees, the
hung one is replaced, a tick).
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pykka

from herder.actors._ask import call_later
from herder.actors._clock import SystemClock
from herder.actors._hosted import request_agent_supervisor
from herder.actors._messages import InstanceEvent, Outcome
from herder.actors._pool_worker import PoolWorker, Work
from herder.actors._supervision_specs import ChildEventKind, ChildSpec, Restart

POOL = "*pool"
"""The pool's pseudo agent name in events (no registered agent can be named so)."""

RESERVED_AGENT_NAMES = frozenset({POOL})
"""Names the hosts use for themselves in events and supervisor ids: ``add_agent`` refuses
them, so an agent's news is never taken for the pool's."""

Job = tuple[str, str, int]
"""What a worker runs: (agent, instance, token)."""

QUICK = 0.0002
"""Seconds under which an agent's recent actions (the slowest, decaying) are quick."""

CHAIN = 4
"""Quick attempts that may wait in the line behind one carrier (module docstring)."""


@dataclass(slots=True)
class _Worker:
    ref: pykka.ActorRef | None = None  # None while starting or restarting
    job: Job | None = None
    idle_since: float = 0.0
    starting: bool = True  # asked for, not yet started (a restarting one is not)


class WorkerPool:
    """The worker threads of a pool host; see the module docstring."""

    def __init__(
        self,
        agents_supervisor: pykka.ActorRef,
        reply: Callable[[Outcome], None],
        events: Callable[[InstanceEvent], None],
        built: Callable[[str, str, Any], None],
        line: deque[Work],
        *,
        max_result_bytes: int,
        shutdown: float,
        max_restarts: int,
        restart_period: float,
        max_workers: int,
        min_workers: int,
    ) -> None:
        self._agents_sup = agents_supervisor
        self._start_args = (reply, events, built, max_result_bytes, line)
        self._events = events
        self._shutdown = shutdown
        self._max_restarts = max_restarts
        self._restart_period = restart_period
        self._max = max_workers
        self._min = min(min_workers, max_workers)
        self._workers: dict[str, _Worker] = {}
        # Started and without work, least recently freed first.
        self._free: dict[str, None] = {}
        self._ids = itertools.count()
        self._sup: pykka.ActorRef | None = None
        self._sup_pending = False
        self.abandoned = 0  # threads left to hung actions
        self._carrier: Work | None = None  # (module docstring)
        self._carried = 0  # attempts that wait in the line behind it

    def free_count(self) -> int:
        return len(self._free)

    def take(self, job: Job) -> str | None:
        """A free worker, now running ``job`` (the most recently freed); None if none."""
        if not self._free:
            return None
        worker_id = self._free.popitem()[0]
        self._workers[worker_id].job = job
        return worker_id

    def retarget(self, worker_id: str | None, job: Job) -> None:
        """The worker went on with ``job`` (it self-fed the next attempt)."""
        worker = None if worker_id is None else self._workers.get(worker_id)
        if worker is not None and worker.job is not None:
            worker.job = job

    def tell(self, worker_id: str, work: Work, *, quick: bool = False) -> bool | None:
        """Hand ``work`` to the worker: True; None if it is gone since it was taken
        (replaced or crashed); False if it died just now (its exit's news is on the way,
        and it no longer counts as running anything). A ``quick`` one is the carrier."""
        worker = self._workers.get(worker_id)
        if worker is None or worker.ref is None:
            return None
        try:
            worker.ref.tell(work)
        except pykka.ActorDeadError:
            worker.job = None
            return False
        if quick:
            self._carrier, self._carried = work, 0
        return True

    def carries(self, worker_id: str) -> bool:
        """Whether a quick attempt, for which ``worker_id`` was taken, may wait in the
        line for the carrier instead (then ``worker_id`` is free again, as it was)."""
        carrier = self._carrier
        if carrier is None or carrier.begun or carrier.stop or self._carried >= CHAIN:
            return False
        source = carrier.source
        if source is not None and source.ready:
            return False  # its worker self-feeds those first
        worker = self._workers.get(worker_id)
        if worker is None or worker.ref is None:
            return False
        worker.job = None
        self._free[worker_id] = None
        self._carried += 1
        return True

    def release(self, worker_id: str | None, now: float) -> bool:
        """The worker's attempt ended: it is free again (True) unless it is gone."""
        worker = None if worker_id is None else self._workers.get(worker_id)
        if worker_id is None or worker is None or worker.ref is None:
            return False
        worker.job, worker.idle_since = None, now
        self._free[worker_id] = None
        return True

    def abandon(self, worker_id: str) -> bool:
        """Leave the worker's thread to its hung attempt; the supervisor starts a fresh
        one in its place. False if there is no pool to do that."""
        if self._sup is None:
            return False
        worker = self._workers.get(worker_id)
        if worker is not None:
            self._free.pop(worker_id, None)
            worker.ref, worker.job = None, None  # back once the supervisor restarted it
            self._carrier = None  # (it may have been the carrier's)
            worker.starting = False
            self.abandoned += 1
            call_later(self._sup, "restart_child", worker_id)
        return True

    # -- events ------------------------------------------------------------------------

    def on_worker_event(self, event: InstanceEvent, now: float) -> tuple[str, Job | None]:
        """A worker's child event: ``"free"`` (it started), ``"gone"`` (it crashed or
        exited, with the job it lost, if any) or ``""`` (nothing changed)."""
        assert event.instance is not None
        worker = self._workers.get(event.instance)
        if worker is None:
            return "", None
        if event.kind in (ChildEventKind.STARTED, ChildEventKind.RESTARTED) and event.ref:
            worker.ref, worker.job, worker.idle_since = event.ref, None, now
            worker.starting = False
            self._free[event.instance] = None
            return "free", None
        if event.kind is ChildEventKind.CRASHED or (
            event.kind in (ChildEventKind.EXITED, ChildEventKind.TERMINATED) and worker.ref
        ):
            job, worker.ref, worker.job, worker.starting = worker.job, None, None, False
            self._carrier = None  # (it may have been the carrier's)
            self._free.pop(event.instance, None)
            if event.kind is not ChildEventKind.CRASHED:
                del self._workers[event.instance]  # gone for good: another may start
            return "gone", job
        return "", None

    def pool_started(self, ref: pykka.ActorRef) -> None:
        """The pool supervisor started."""
        self._sup, self._sup_pending = ref, False

    def pool_gone(self, ref: pykka.ActorRef | None) -> list[Job] | None:
        """The pool supervisor is gone, with every worker: the jobs they ran (None if
        ``ref`` names a pool already let go of). The next ``grow`` starts a new one."""
        current = self._sup
        if current is not None and ref and ref.actor_urn != current.actor_urn:
            return None
        self._sup, self._sup_pending, self._carrier = None, False, None
        jobs = [w.job for w in self._workers.values() if w.job is not None]
        self._workers.clear()
        self._free.clear()
        return jobs

    # -- size --------------------------------------------------------------------------

    def grow(self, wanted: int) -> None:
        """Start workers until ``wanted`` are starting (within ``max_workers``)."""
        if self._sup is None:
            if not self._sup_pending:
                request_agent_supervisor(
                    self._agents_sup,
                    POOL,
                    self._events,
                    clock=SystemClock(),
                    max_restarts=self._max_restarts,
                    restart_period=self._restart_period,
                    shutdown=self._shutdown,
                )
                self._sup_pending = True
            return
        room = self._max - len(self._workers)
        if room <= 0:
            return
        starting = sum(1 for w in self._workers.values() if w.starting)
        for _ in range(min(wanted - starting, room)):
            worker_id = f"worker-{next(self._ids)}"
            spec = ChildSpec(
                id=worker_id,
                start=self._start_worker,
                restart=Restart.PERMANENT,
                shutdown=self._shutdown,
            )
            self._workers[worker_id] = _Worker()
            call_later(self._sup, "start_child", spec)

    def _start_worker(self) -> pykka.ActorRef:
        return PoolWorker.start(*self._start_args)

    def passivate(self, idle_before: float) -> None:
        """Stop the workers idle since ``idle_before`` or earlier, beyond ``min_workers``."""
        longest_idle = list(self._free)[: max(0, len(self._free) - self._min)]
        for worker_id in longest_idle:
            if self._workers[worker_id].idle_since <= idle_before and self._sup is not None:
                del self._workers[worker_id], self._free[worker_id]
                call_later(self._sup, "delete_child", worker_id)

    def stats(self) -> dict[str, int]:
        """Worker threads, busy ones, and threads abandoned to hung actions."""
        return {
            "workers": len(self._workers),
            "busy_workers": sum(1 for w in self._workers.values() if w.job is not None),
            "abandoned_threads": self.abandoned,
        }
