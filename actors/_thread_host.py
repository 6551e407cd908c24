"""The thread host: agent instance actors and the per-agent pools that own them.

Each registered agent name has a pool. Instances start lazily when a step arrives (up to
the pool's ``concurrency``), under a per-agent supervisor (simple_one_for_one) that the
agents supervisor starts on first use; idle instances are passivated, and a pool with no
instances left stops its supervisor, so ten thousand mostly idle agents hold no threads.
Work waiting for a busy agent waits in the pool's queue, in the Scheduler's memory, never
in an unbounded actor inbox.

It implements the :class:`~herder.actors._host.AgentHost` protocol; attempts run through
the shared :func:`~herder.actors._action.run_attempt`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field

import pykka

from herder.actors._agent_instance import AgentInstance
from herder.actors._ask import call_later
from herder.actors._clock import SystemClock
from herder.actors._host import FAILED_START, AgentUnavailable, GivenUp
from herder.actors._hosted import (
    Builds,
    Hosted,
    HostedAgents,
    Instance,
    request_agent_supervisor,
)
from herder.actors._messages import InstanceEvent, Outcome, Run
from herder.actors._queue import DEFAULT_AGING
from herder.actors._supervision_specs import ChildEventKind, ChildSpec, Restart
from herder.store import crash_point, get_logger

_log = get_logger("herder.agents")


@dataclass(slots=True)
class _Instance(Instance):
    ref: pykka.ActorRef | None = None
    lost: bool = False  # replaced or crashed: waiting for the supervisor to bring it back
    starting: bool = False  # asked for, not yet reported started
    stale: bool = False  # its agent was added again: stopped once it is idle
    sent: bool = False  # its attempt was told to it (reserved only, it runs none yet)
    orphan: bool = False  # its supervisor went while it ran: it goes once its attempt ends
    carried: bool = False  # a crashed Scheduler's host left it running (actors/_carried.py)

    @property
    def free(self) -> bool:
        """Started, running no attempt, and not lost: it may take one (or be stopped)."""
        return self.busy_token is None and not self.lost and not self.starting


@dataclass(slots=True)
class _Pool(Hosted[_Instance]):
    """An agent name, its per-agent supervisor and its instances."""

    supervisor: pykka.ActorRef | None = None
    supervisor_pending: bool = False  # asked the agents supervisor for it, no answer yet
    idle: list[str] = field(default_factory=list)


class ThreadHost(HostedAgents[_Pool]):
    """The :class:`AgentHost` that runs each agent instance as a pykka actor thread: the
    agent pools of one runtime, driven from the Scheduler's thread. ``events`` receives
    every supervision event that concerns an instance (crashes, restarts) as an
    :class:`InstanceEvent`; the Scheduler passes its own ``tell``."""

    instance_start_timeout = 10.0
    """Seconds an instance may take to start (its factory); a subclass whose instances
    start elsewhere (a Ray worker process) allows more."""

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
    ) -> None:
        super().__init__(_Pool, queue_aging)
        # Restart pacing protects real CPU from a crash loop, so it runs on real time
        # even when the engine runs on a FakeClock.
        self._restart_clock = SystemClock()
        self._max_restarts, self._restart_period = max_restarts, restart_period
        self._agents_sup = agents_supervisor
        self._reply = reply
        self._events = events
        self._max_result_bytes = max_result_bytes
        self._shutdown = shutdown
        self._abandoned = 0  # threads left running: replaced, or not stopped in time
        self._replaced: set[str] = set()  # not counted at their ABANDONED: replace() did, or idle
        self._builds = Builds()  # factories running (one whose start timed out is counted)

    # -- registration ------------------------------------------------------------------

    def remove(self, name: str) -> list[int]:
        """Stop serving ``name``: its instances stop (a busy one once its attempt ends, and
        counts against its concurrency until then), its queue waits for a new add(); an
        attempt not sent yet never starts: lost, as a :class:`GivenUp` (not charged)."""
        pool = self._agents.get(name)
        if pool is None:
            return []
        pool.concurrency = 0
        held = [i.busy_token for i in pool.instances.values() if not i.sent]
        if pool.supervisor is not None:
            self._stop_pool_supervisor(pool)
        return [GivenUp(token) for token in held if token is not None]

    def _left_over(self, pool: _Pool) -> bool:
        """Its supervisor is being started (stopped once its start is heard)."""
        return pool.supervisor is not None or pool.supervisor_pending

    def _readded(self, pool: _Pool) -> None:
        """Its instances hold the old factory's objects (and a restart would build the old
        one again): the idle ones stop now, the others once idle (:meth:`_retire`)."""
        for instance_id, inst in list(pool.instances.items()):
            inst.stale = True
            if inst.free:
                self._retire(pool, instance_id)

    def _carried(self, token: int) -> _Instance:  # (its thread runs on, as _let_go's orphans)
        return _Instance(busy_token=token, sent=True, orphan=True, carried=True)

    def _retire(self, pool: _Pool, instance_id: str) -> None:
        """Stop an idle instance its agent no longer wants (stale, or over concurrency; an
        orphan, its supervisor gone, stops by itself); idle, it is no abandoned thread."""
        inst = pool.instances.pop(instance_id)
        if pool.supervisor is not None and not inst.orphan:
            self._replaced.add(instance_id)
            call_later(pool.supervisor, "delete_child", instance_id)

    def _idled(self, pool: _Pool, instance_id: str, inst: _Instance) -> None:
        """An instance is free: it serves on, or stops if stale or over concurrency."""
        if inst.stale or inst.orphan or len(pool.instances) > pool.concurrency:
            self._retire(pool, instance_id)
        else:
            pool.idle.append(instance_id)

    # -- capacity ----------------------------------------------------------------------

    def acquire(self, name: str, token: int, backlog: int = 1) -> str | None:
        """An idle instance of ``name`` reserved for attempt ``token``, or None.

        Never waits for a start: when no instance is idle it asks the tree for up to
        ``backlog`` more (within ``concurrency``) and returns None; each new instance is
        announced by an ``InstanceEvent("started")`` and then handed out here.
        """
        pool = self._agents[name]
        while pool.idle:
            candidate = pool.idle.pop()
            inst = pool.instances.get(candidate)
            if inst is not None and inst.free:
                inst.busy_token, inst.sent = token, False
                return candidate
        if pool.supervisor is None:
            if not pool.supervisor_pending and pool.concurrency > 0:
                self._request_pool_supervisor(pool)
            return None
        starting = sum(1 for i in pool.instances.values() if i.starting)
        wanted = min(pool.concurrency - len(pool.instances), max(1, backlog) - starting)
        for _ in range(wanted):
            self._request_instance(pool)
        return None

    def send(self, name: str, instance_id: str, run: Run) -> bool:
        """Hand an attempt to the instance reserved for it; False if that instance is gone."""
        _, inst = self._instance(name, instance_id)
        if inst is None or inst.lost or inst.ref is None or inst.busy_token != run.token:
            return False
        try:
            inst.ref.tell(run)
        except pykka.ActorDeadError:
            inst.lost = True  # its supervisor's news of the exit is on the way
            inst.busy_token = None
            return False
        inst.sent = True
        return True

    def release(self, name: str, instance_id: str, token: int | None, now: float) -> bool:
        """Mark an instance idle after an attempt; True if capacity was freed."""
        pool, inst = self._instance(name, instance_id)
        if pool is None or inst is None or inst.lost or inst.busy_token is None:
            return False
        if token is not None and inst.busy_token != token:
            return False  # a stale answer from an attempt this instance no longer runs
        inst.busy_token = None
        inst.idle_since = now
        self._idled(pool, instance_id, inst)  # (a retired one frees its slot all the same)
        return True

    def replace(self, name: str, instance_id: str) -> None:
        """Have the tree replace an instance that hangs; its late answer is fenced out."""
        pool, inst = self._instance(name, instance_id)
        if pool is not None and inst is not None and inst.orphan:
            del pool.instances[instance_id]  # (its thread was counted when abandoned)
            return
        if pool is None or inst is None or pool.supervisor is None:
            return
        inst.lost = True
        inst.busy_token = None
        self._abandoned += 1
        self._replaced.add(instance_id)
        # Not waited for: restart_child abandons the blocked thread at once (``stuck``: its
        # shutdown would be waited out in vain, one hung instance after another) and the
        # tree reports the replacement through on_event("restarted").
        call_later(pool.supervisor, "restart_child", instance_id, True)

    def on_event(self, event: InstanceEvent, now: float) -> list[int]:
        """Apply a supervision event; return tokens of attempts lost with a crashed instance.

        Raises :class:`AgentUnavailable` when the event says a requested start failed.
        """
        hung = event.instance is not None and self._count_abandoned(event)
        pool = self._agents.get(event.agent)
        if pool is None:
            return []
        if event.instance is None:
            return self._on_supervisor_event(pool, event)
        inst = pool.instances.get(event.instance)
        if inst is None:
            return []
        abandoned = event.kind is ChildEventKind.ABANDONED and not inst.lost
        if abandoned and inst.busy_token is not None:  # removed, or given up on: no crash
            inst.orphan = True  # it runs on: its answer is awaited, its slot held
            return []
        if inst.starting:
            if event.kind is ChildEventKind.STARTED and event.ref is not None:
                inst.starting = False
                inst.ref = event.ref
                inst.idle_since = now
                self._idled(pool, event.instance, inst)  # (stale: asked for before a change)
                return []
            if event.kind is ChildEventKind.CRASHED:  # its factory or on_start failed
                del pool.instances[event.instance]
                if pool.concurrency == 0:
                    return []  # removed meanwhile: its queue waits for a new add()
                limit = f"{self.instance_start_timeout:g}"
                why = f"its factory did not return within {limit} s" if hung else event.reason
                raise AgentUnavailable(f"{FAILED_START.format(pool.name)}: {why}")
            return []
        unexpected_exit = not inst.lost and event.kind in (
            ChildEventKind.EXITED,
            ChildEventKind.TERMINATED,
            ChildEventKind.ABANDONED,
        )
        if event.kind is ChildEventKind.CRASHED or unexpected_exit:
            mark: type[int] = GivenUp if unexpected_exit else int  # stopped unasked: given up
            lost = [] if inst.busy_token is None else [mark(inst.busy_token)]
            inst.busy_token = None
            inst.lost = True
            inst.ref = None
            if inst.orphan:  # nothing restarts it
                del pool.instances[event.instance]
            return lost
        if not inst.lost:
            # "started" of an instance we started ourselves, or the end of one we stopped:
            # the pool already knows.
            return []
        if (
            event.kind in (ChildEventKind.RESTARTED, ChildEventKind.STARTED)
            and event.ref is not None
        ):
            crash_point("agents.restart")
            inst.ref = event.ref
            inst.lost = False
            inst.busy_token = None
            inst.idle_since = now
            self._idled(pool, event.instance, inst)  # (stale: the old factory's again)
        return []

    def _count_abandoned(self, event: InstanceEvent) -> bool:
        """Count an instance's thread left running, once: at its ABANDONED news, even if
        its pool let go of it first (its attempt's answer, from another thread, may come
        before the news); a replace() counted its own already, and the next news of that
        instance (its stop's, whatever it says) ends the wait for it. One whose start
        timed out in its factory counts until the factory returns (True: this one)."""
        assert event.instance is not None
        hung, (_, inst) = False, self._instance(event.agent, event.instance)
        if event.kind is ChildEventKind.CRASHED and (inst is None or inst.starting):
            hung = self._builds.abandon((event.agent, event.instance))  # (counted if it hung)
        if event.instance in self._replaced:
            self._replaced.discard(event.instance)
        elif event.kind is ChildEventKind.ABANDONED and not (inst and inst.carried):
            self._abandoned += 1  # (one carried is counted while it runs: _carried.py)
        return hung

    def _on_supervisor_event(self, pool: _Pool, event: InstanceEvent) -> list[int]:
        """News of the agent's supervisor: started, could not start, or gone (gave up)."""
        if event.kind is ChildEventKind.STARTED:
            if pool.supervisor_pending and event.ref is not None:
                pool.supervisor_pending = False
                pool.supervisor = event.ref
                if pool.concurrency == 0:  # removed while it was starting
                    self._stop_pool_supervisor(pool)
            return []
        if event.ref is None and event.kind is ChildEventKind.CRASHED:
            if pool.supervisor_pending:  # the per-agent supervisor could not start
                pool.supervisor_pending = False
                if pool.concurrency > 0:
                    raise AgentUnavailable(f"agent {pool.name!r} could not start: {event.reason}")
            return []
        current = pool.supervisor
        if current is None or event.ref is None or event.ref.actor_urn != current.actor_urn:
            return []  # about a supervisor this pool already let go of
        # It gave up, having stopped its instances: those still running an attempt run
        # on, abandoned; an attempt reserved but not sent is lost (it never started).
        busy = [i.busy_token for i in pool.instances.values() if not i.sent]
        self._let_go(pool)
        return [GivenUp(token) for token in busy if token is not None]

    # -- passivation and shutdown -----------------------------------------------------

    def passivate(self, idle_before: float, limit: int = 256) -> int:
        """Stop up to ``limit`` instances idle since ``idle_before`` or earlier; return how many.

        Bounded per call so that thousands of agents going idle together are stopped over
        a few ticks instead of in one storm of thread exits.
        """
        stopped = 0
        for pool in self._agents.values():
            if stopped >= limit:
                break
            if pool.supervisor is None:
                continue
            for instance_id in dict.fromkeys(i for i in pool.idle if i in pool.instances):
                inst = pool.instances.get(instance_id)
                if inst is None:
                    continue
                if inst.free and inst.idle_since <= idle_before and stopped < limit:
                    self._retire(pool, instance_id)
                    stopped += 1
            pool.idle = [i for i in pool.idle if i in pool.instances]
            if not pool.instances:
                self._stop_pool_supervisor(pool)
        return stopped

    def host_stats(self) -> dict[str, int]:
        """Instance threads, and threads abandoned to hung actions."""
        threads = sum(len(p.instances) for p in self._agents.values())
        abandoned = self._abandoned + self._builds.abandoned
        return {"workers": threads, "abandoned_threads": abandoned}

    # -- internals ---------------------------------------------------------------------

    def _request_instance(self, pool: _Pool) -> None:
        """Ask the agent's supervisor for one more instance, without waiting."""
        assert pool.supervisor is not None
        instance_id = pool.new_instance_id()
        name = pool.name
        factory = functools.partial(self._builds.call, (name, instance_id), pool.factory)
        spec = ChildSpec(
            id=instance_id,
            start=lambda: AgentInstance.start(
                name, instance_id, factory, self._reply, self._max_result_bytes, events=self._events
            ),
            restart=Restart.PERMANENT,
            shutdown=self._shutdown,
        )
        pool.instances[instance_id] = _Instance(starting=True)
        call_later(pool.supervisor, "start_child", spec)

    def _request_pool_supervisor(self, pool: _Pool) -> None:
        """Ask the agents supervisor for this agent's supervisor, without waiting."""
        request_agent_supervisor(
            self._agents_sup,
            pool.name,
            self._events,
            clock=self._restart_clock,
            max_restarts=self._max_restarts,
            restart_period=self._restart_period,
            shutdown=self._shutdown,
            start_timeout=self.instance_start_timeout,
        )
        pool.supervisor_pending = True

    def _stop_pool_supervisor(self, pool: _Pool) -> None:
        self._let_go(pool)
        call_later(self._agents_sup, "delete_child", f"agent:{pool.name}")

    def _let_go(self, pool: _Pool) -> None:
        """The agent's supervisor goes: its instances with it, but for those running an
        attempt, which run on (a thread cannot be stopped) and hold their slots until their
        attempt ends."""
        pool.supervisor = None
        pool.supervisor_pending = False
        pool.idle.clear()
        for instance_id, inst in list(pool.instances.items()):
            if inst.busy_token is not None and inst.sent:
                inst.orphan = True
            else:  # (one reserved only is not sent its attempt: that attempt fails)
                del pool.instances[instance_id]
