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
supervisor restarts it on a fresh thread at once (not after its shutdown: it cannot stop)
and the blocked one is counted in ``abandoned``.

**Holding quick attempts.** Waking a sleeping worker (a futex wake, then a wait for the
GIL the Scheduler holds for the rest of its turn) costs more than a quick attempt itself,
and under the GIL a second thread running quick Python gains nothing. So the pool counts
the busy workers running a quick agent's attempt (:attr:`WorkerPool.quick_busy`; quick is
the agent's own measure, ``PooledAgent.quick``), and a quick attempt that finds
:data:`QUICK_WORKERS` of them waits in the line even with a worker free, if the line has
a place for it (:meth:`WorkerPool.held`): a busy one takes it when its own attempt is
over. It is held for at most :data:`LINGER` while the Scheduler hears from the workers,
and :data:`CHECK` if none answers (a quick action that suddenly blocks): holding arms a
timer, on real time whatever the runtime's clock, whose event has the host hand the line
out again.
"""

from __future__ import annotations

import itertools
import time
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

QUICK_WORKERS = 1
"""Busy workers running quick attempts that hold another quick one in the line."""

LINGER = 0.001
"""Seconds a quick attempt is held in the line at most, with workers free (module
docstring)."""

CHECK = 0.01
"""Seconds after holding work that the host hands the line out again, if nothing else
had it do so (module docstring)."""

LINE = "*line"
"""The instance named by the pool's line check (an event of :data:`POOL`)."""

_TIMERS = SystemClock()  # (real time: holding is about threads, not the engine's clock)


@dataclass(slots=True)
class _Worker:
    ref: pykka.ActorRef | None = None  # None while starting or restarting
    job: Job | None = None
    idle_since: float = 0.0
    starting: bool = True  # asked for, not yet started (a restarting one is not)
    quick: bool = False  # its job is a quick agent's (counted in quick_busy)


class WorkerPool:
    """The worker threads of a pool host; see the module docstring."""

    def __init__(
        self,
        agents_supervisor: pykka.ActorRef,
        reply: Callable[[Outcome], None],
        events: Callable[[InstanceEvent], None],
        build: Callable[[str, str, Callable[[], Any]], Any],
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
        self._start_args = (reply, events, build, max_result_bytes, line)
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
        self.quick_busy = 0  # workers running a quick agent's attempt (module docstring)
        self._checking = False  # a line check is on its way (check_later)

    def ref(self, worker_id: str | None) -> pykka.ActorRef | None:
        """The actor of worker ``worker_id`` (None: none known)."""
        worker = None if worker_id is None else self._workers.get(worker_id)
        return None if worker is None else worker.ref

    def free_count(self) -> int:
        return len(self._free)

    def holds_quick(self) -> bool:
        """Whether a quick attempt waits in the line for a busy worker now, rather than
        take a free one (:data:`QUICK_WORKERS` of them run quick attempts)."""
        return self.quick_busy >= QUICK_WORKERS

    def held(self, line: deque[Work]) -> bool:
        """Whether the line's first work is a quick attempt to hold for a busy worker
        (held for less than :data:`LINGER` so far)."""
        if not self.holds_quick():
            return False
        try:
            work = line[0]
        except IndexError:  # (a worker took it just now)
            return False
        source = work.source
        return source is not None and source.quick and time.perf_counter() - work.lined_at < LINGER

    def check_later(self) -> None:
        """Have the host hand the line out again in :data:`CHECK` seconds (an event of
        instance :data:`LINE`; one on its way at a time)."""
        if not self._checking:
            self._checking = True
            event = InstanceEvent(POOL, LINE, ChildEventKind.STARTED)
            _TIMERS.call_later(CHECK, lambda: self._events(event))

    def _assign(self, worker: _Worker, job: Job | None, quick: bool = False) -> None:
        """Set the worker's job (None: none), keeping :attr:`quick_busy` up to date."""
        quick = quick and job is not None
        self.quick_busy += quick - (worker.job is not None and worker.quick)
        worker.job, worker.quick = job, quick

    def take(self, job: Job, quick: bool) -> str | None:
        """A free worker, now running ``job`` (the most recently freed; ``quick``: a
        quick agent's); None if none is free."""
        if not self._free:
            return None
        worker_id = self._free.popitem()[0]
        self._assign(self._workers[worker_id], job, quick)
        return worker_id

    def retarget(self, worker_id: str | None, job: Job, quick: bool) -> None:
        """The worker went on with ``job`` (it self-fed the next attempt)."""
        worker = None if worker_id is None else self._workers.get(worker_id)
        if worker is not None and worker.job is not None:
            self._assign(worker, job, quick)

    def tell(self, worker_id: str, work: Work) -> bool | None:
        """Hand ``work`` to the worker: True; None if it is gone since it was taken
        (replaced or crashed); False if it died just now (its exit's news is on the way,
        and it no longer counts as running anything)."""
        worker = self._workers.get(worker_id)
        if worker is None or worker.ref is None:
            return None
        try:
            worker.ref.tell(work)
        except pykka.ActorDeadError:
            self._assign(worker, None)
            return False
        return True

    def release(self, worker_id: str | None, now: float) -> bool:
        """The worker's attempt ended: it is free again (True) unless it is gone."""
        worker = None if worker_id is None else self._workers.get(worker_id)
        if worker_id is None or worker is None or worker.ref is None:
            return False
        self._assign(worker, None)
        worker.idle_since = now
        self._free[worker_id] = None
        return True

    def abandon(self, worker_id: str, *, counted: bool = True) -> bool:
        """Leave the worker's thread to its hung attempt; the supervisor starts a fresh
        one in its place (``counted``: in ``abandoned``; one in a factory is counted
        elsewhere). False if there is no pool to do that."""
        if self._sup is None:
            return False
        worker = self._workers.get(worker_id)
        if worker is not None:
            self._free.pop(worker_id, None)
            self._assign(worker, None)
            worker.ref = None  # back once the supervisor restarted it
            worker.starting = False
            self.abandoned += counted
            # Stuck: its thread takes the stop message only once the action returns, and
            # takes nothing more then (Work.stop). Waiting out its shutdown would hold every
            # other restart and start of the pool's one supervisor: N hung, N x shutdown.
            call_later(self._sup, "restart_child", worker_id, True)
        return True

    # -- events ------------------------------------------------------------------------

    def on_worker_event(self, event: InstanceEvent, now: float) -> tuple[str, Job | None]:
        """A worker's child event: ``"free"`` (it started), ``"gone"`` (it crashed or
        exited, with the job it lost, if any), ``"check"`` (the line check of
        :meth:`check_later`) or ``""`` (nothing changed)."""
        assert event.instance is not None
        if event.instance == LINE:
            self._checking = False
            return "check", None
        worker = self._workers.get(event.instance)
        if worker is None:
            return "", None
        if event.kind in (ChildEventKind.STARTED, ChildEventKind.RESTARTED) and event.ref:
            self._assign(worker, None)
            worker.ref, worker.idle_since, worker.starting = event.ref, now, False
            self._free[event.instance] = None
            return "free", None
        if event.kind is ChildEventKind.CRASHED or (
            event.kind in (ChildEventKind.EXITED, ChildEventKind.TERMINATED) and worker.ref
        ):
            job = worker.job
            self._assign(worker, None)
            worker.ref, worker.starting = None, False
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
        self._sup, self._sup_pending = None, False
        jobs = [w.job for w in self._workers.values() if w.job is not None]
        self._workers.clear()
        self._free.clear()
        self.quick_busy = 0
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
