"""The daemon side of Ray agents: instance proxies and the host.

Each instance of a Ray agent is a local :class:`RayInstance` actor under the agent's own
supervisor, exactly as on the thread host (:class:`RayAgentHost` *is* a thread host that
starts proxies instead of :class:`AgentInstance`); so crashes, restarts, restart backoff
and intensity, passivation and replacement are the supervision tree's, unchanged. A proxy
only holds a slot in a Ray worker process (``_workers.RayWorkers`` hands them out): it
takes it when it starts, gives it back when it stops, and crashes when the courier says
its attempt crashed the instance or lost the process. Attempts do not pass through it:
the host files each one with its worker process from the Scheduler's thread, and the
courier's two threads per runtime carry them in batches and bring the answers back
(``_courier``), so the proxies' threads sit idle.

- the worker answers an Outcome: the courier tells the Scheduler, as a local instance does;
- the action raised :class:`InstanceCrash`, or the worker process died (killed, OOM, node
  lost): the proxy crashes, so its supervisor restarts it (a new slot, in a new process if
  needed) and the attempt is lost and retried at once, as a local crash;
- the attempt hangs past its timeout: ``replace`` kills the worker process (a thread
  cannot be stopped, a process can), its answer is dropped and the proxy is restarted;
  the neighbours' attempts on that process are lost as crashes.

Ray never re-runs anything on its own: workers have ``max_restarts=0`` and
``max_task_retries=0``, and none is detached, so the driver's death takes them along.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import pykka
import ray

from herder.actors._agent import Agent
from herder.actors._ask import call_later
from herder.actors._host import InstanceCrash
from herder.actors._messages import InstanceEvent, Outcome, Run
from herder.actors._supervised import SupervisedActor
from herder.actors._supervision_specs import ChildEventKind, ChildSpec, Restart
from herder.actors._thread_host import ThreadHost, _Instance, _Pool
from herder.actors.ray import RayHost
from herder.actors.ray._connection import record_cluster
from herder.actors.ray._courier import Ended, WorkerLost
from herder.actors.ray._workers import RayWorkers, _Process
from herder.store import UserCodeFailed, describe

START_WAIT = 60.0
"""Seconds a proxy may take to start: a slot in a (possibly new) worker process and the
agent object built there. A worker process takes a second or more to start, many more on
a loaded machine or with a runtime_env to install; a worker that cannot start (no
resources on the cluster) fails the start as a factory that raises does locally."""


@dataclass(frozen=True)
class _Agent:
    """What every proxy of one agent shares."""

    name: str
    factory: Callable[[], Agent]
    reply: Callable[[Outcome], None]
    events: Callable[[InstanceEvent], None]
    workers: RayWorkers
    host: RayHost
    slots: int
    max_result_bytes: int


class RayInstance(SupervisedActor):
    """The local proxy of one instance whose agent object lives in a Ray worker."""

    use_daemon_thread = True
    reported_failures = (InstanceCrash, UserCodeFailed, WorkerLost)  # (as AgentInstance's:
    # its crashes are the supervisor's to log, without pykka's traceback of the proxy)

    def __init__(self, instance: str, agent: _Agent) -> None:
        super().__init__()
        self._instance = instance
        self._agent = agent.name
        self._spec = agent
        self._workers = agent.workers
        self._proc: _Process | None = None
        self._slot = 0

    def on_start(self) -> None:
        """Take a slot and build the agent object there (a failing factory fails the start)."""
        super().on_start()
        self._bind()

    def on_stop(self) -> None:
        """Give its slot back; first wait for an attempt it still runs (its agent was
        removed, or its supervisor gave up), as a busy thread host instance stops once its
        attempt ends (past the shutdown time its thread is abandoned, the attempt runs on
        and is answered); a crash of that attempt is reported here, as the supervisor
        has let go of this instance."""
        ended: list[str | None] = []
        done = threading.Event()

        def then(crash: str | None) -> None:
            ended.append(crash)
            done.set()

        proc = self._proc
        if proc is not None and self._workers.courier.after_attempt(proc, self._instance, then):
            done.wait()
            if ended[0] is not None:
                crashed = ChildEventKind.CRASHED
                self._spec.events(
                    InstanceEvent(self._agent, self._instance, crashed, None, ended[0])
                )
        self._unbind()

    def on_failure(self, *_exc_info: object) -> None:
        self._unbind()

    def on_receive(self, message: Any) -> Any:
        """Crash when told its attempt crashed the instance; run an attempt the host could
        not submit (this proxy had no live process then): take a new slot first."""
        if isinstance(message, Ended):
            if message.died:
                raise WorkerLost(message.reason)
            raise InstanceCrash(message.reason)
        if not isinstance(message, Run):
            return super().on_receive(message)
        if self._proc is None or self._proc.dead:  # its process died while it was idle
            self._unbind()
            self._bind()
        assert self._proc is not None
        self._workers.courier.submit(
            self._proc, self._slot, self._instance, self.actor_ref, message, reply=self._spec.reply
        )
        return None

    def _bind(self) -> None:
        """Take a slot and build the agent object there, waiting up to START_WAIT (so
        that an attempt's timeout never pays for a process start)."""
        spec = self._spec
        self._proc, self._slot = self._workers.claim(
            spec.name, self._instance, spec.host, spec.slots, spec.max_result_bytes
        )
        try:
            raised = ray.get(
                self._proc.handle.start_slot.remote(self._slot, self._instance, spec.factory),
                timeout=START_WAIT,
            )
        except ray.exceptions.GetTimeoutError:
            lost: str | None = (
                f"no Ray worker process started, or the agent's factory did not return, "
                f"within {START_WAIT} s (cluster busy?)"
            )
        except Exception as exc:  # its code did not load there, or the process died
            lost = describe(exc)
        else:
            lost = None
            if raised is not None:  # the factory raised: said as a local instance says it
                self._unbind()
                raise UserCodeFailed(*raised)
        if lost is not None:
            self._unbind()
            raise WorkerLost(f"agent {self._agent!r} could not start on Ray: {lost}")
        if self._slot == 0:  # a new worker process: a cluster herder started records it
            record_cluster()

    def _unbind(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            self._workers.release(self._agent, proc, self._slot)


class RayAgentHost(ThreadHost):
    """The thread host, with Ray proxies for instances; see the module docstring."""

    instance_start_timeout = START_WAIT + 5.0

    def __init__(
        self,
        agents_supervisor: pykka.ActorRef,
        placements: Mapping[str, RayHost],
        workers: RayWorkers,
        **kwargs: Any,
    ) -> None:
        super().__init__(agents_supervisor, **kwargs)
        self._placements = placements
        self._workers = workers

    def send(self, name: str, instance_id: str, run: Run) -> bool:
        """File the attempt with the instance's worker from this (the Scheduler's) thread;
        an instance with no live process gets it as a message and takes a new slot first."""
        _, inst = self._instance(name, instance_id)
        if inst is None or inst.lost or inst.ref is None or inst.busy_token != run.token:
            return False
        binding = self._workers.bound(name, instance_id)
        if binding is None:
            return super().send(name, instance_id, run)
        self._workers.courier.submit(
            binding[0], binding[1], instance_id, inst.ref, run, reply=self._reply
        )
        inst.sent = True  # (as the thread host's send: it runs, not merely reserved)
        return True

    def replace(self, name: str, instance_id: str) -> None:
        """Kill the worker process running the instance's attempt, then replace it."""
        _, inst = self._instance(name, instance_id)
        if inst is not None and not inst.lost:
            self._workers.kill(name, instance_id, inst.busy_token)
        super().replace(name, instance_id)

    def host_stats(self) -> dict[str, int]:
        """Instances on Ray, their worker processes, processes killed for hung attempts,
        and the Ray calls carrying attempts and answers."""
        stats = super().host_stats()
        return {
            "ray_instances": stats["workers"],
            "ray_workers": self._workers.count(),
            "ray_killed": self._workers.killed,
            **self._workers.courier.counts,
        }

    def _request_instance(self, pool: _Pool) -> None:
        assert pool.supervisor is not None
        instance_id = f"{pool.name}#{next(pool.ids)}"
        host = self._placements[pool.name]
        agent = _Agent(
            pool.name,
            pool.factory,
            self._reply,
            self._events,
            self._workers,
            host,
            host.slots_for(pool.concurrency),
            self._max_result_bytes,
        )
        spec = ChildSpec(
            id=instance_id,
            start=lambda: RayInstance.start(instance_id, agent),
            restart=Restart.PERMANENT,
            shutdown=self._shutdown,
        )
        pool.instances[instance_id] = _Instance(ref=None, starting=True)
        call_later(pool.supervisor, "start_child", spec)
