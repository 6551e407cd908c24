"""The daemon side of Ray agents: instance proxies, worker processes, the host.

Each instance of a Ray agent is a local :class:`RayInstance` actor under the agent's own
supervisor, exactly as on the thread host (:class:`RayAgentHost` *is* a thread host that
starts proxies instead of :class:`AgentInstance`); so crashes, restarts, restart backoff
and intensity, passivation and replacement are the supervision tree's, unchanged. A proxy
holds a slot in a Ray worker process (:class:`RayWorkers` hands them out) and, for each
attempt, calls the worker and waits for its answer, collecting heartbeats and passing the
``superseded``/``cancelled`` flags across every :data:`POLL` seconds meanwhile.

- the worker answers an Outcome: the proxy tells the Scheduler, as a local instance does;
- the action raised :class:`InstanceCrash`, or the worker process died (killed, OOM, node
  lost): the proxy crashes, so its supervisor restarts it (a new slot, in a new process if
  needed) and the attempt is lost and retried at once, as a local crash;
- the attempt hangs past its timeout: ``replace`` kills the worker process (a thread
  cannot be stopped, a process can), the proxy returns quietly and is restarted; the
  neighbours' attempts on that process are lost as crashes.

Ray never re-runs anything on its own: workers have ``max_restarts=0`` and
``max_task_retries=0``, and none is detached, so the driver's death takes them along.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pykka
import ray

from herder.actors._agent import Agent
from herder.actors._ask import call_later
from herder.actors._host import InstanceCrash
from herder.actors._messages import Outcome, Run
from herder.actors._supervised import SupervisedActor
from herder.actors._supervision_specs import ChildSpec, Restart
from herder.actors._thread_host import ThreadHost, _Instance, _Pool
from herder.actors.ray import RayHost
from herder.actors.ray._connection import record_cluster
from herder.actors.ray._worker import SlotWorker
from herder.store import describe

POLL = 0.25
"""Seconds between a proxy's syncs (heartbeats in, flags out) while an attempt runs."""
START_WAIT = 60.0
"""Seconds a proxy may take to start: a slot in a (possibly new) worker process and the
agent object built there. A worker process takes a second or more to start, many more on
a loaded machine or with a runtime_env to install; a worker that cannot start (no
resources on the cluster) fails the start as a factory that raises does locally."""
SYNC_WAIT = 5.0

_RemoteWorker = ray.remote(SlotWorker)


class WorkerLost(Exception):
    """The Ray worker process running an instance died or could not be reached: the
    proxy's crash reason (like :class:`InstanceCrash`, never raised to a caller)."""


@dataclass(eq=False)
class _Process:
    """One Ray worker process of an agent and its slots."""

    handle: Any
    slots: int
    used: dict[int, str] = field(default_factory=dict)  # slot -> instance id
    dead: bool = False


class RayWorkers:
    """The Ray worker processes of one runtime, shared by its proxies (thread-safe).

    Kept in the engine context, so a restarted Scheduler finds them and ``stop()`` kills
    what is left (an abandoned proxy's process included)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._processes: dict[str, list[_Process]] = {}  # agent -> its processes
        self._replaced: set[int] = set()  # tokens whose worker was killed on purpose
        self._bound: dict[tuple[str, str], _Process] = {}  # (agent, instance) -> process
        self._closed = False

    def claim(self, agent: str, instance: str, host: RayHost, slots: int, limit: int) -> Any:
        """A (process, slot) for ``instance``: a free slot of a live process of the agent,
        or the first slot of a new one."""
        with self._lock:
            if self._closed:
                raise WorkerLost("the runtime is stopping: no new Ray worker")
            processes = self._processes.setdefault(agent, [])
            for proc in processes:
                free = [s for s in range(proc.slots) if s not in proc.used]
                if not proc.dead and free:
                    proc.used[free[0]] = instance
                    self._bound[(agent, instance)] = proc
                    return proc, free[0]
            options: dict[str, Any] = {
                "max_concurrency": slots + 1,  # the spare thread answers pid/sync
                "max_restarts": 0,
                "max_task_retries": 0,
                "num_cpus": host.num_cpus,
                "num_gpus": host.num_gpus,
            }
            if host.resources:
                options["resources"] = dict(host.resources)
            if host.runtime_env is not None:
                options["runtime_env"] = dict(host.runtime_env)
            proc = _Process(_RemoteWorker.options(**options).remote(agent, limit), slots)
            proc.used[0] = instance
            processes.append(proc)
            self._bound[(agent, instance)] = proc
            return proc, 0

    def release(self, agent: str, proc: _Process, slot: int) -> None:
        """The slot's proxy is gone; a process left with no slot in use is killed."""
        with self._lock:
            instance = proc.used.pop(slot, None)
            if instance is not None and self._bound.get((agent, instance)) is proc:
                del self._bound[(agent, instance)]
            if proc.dead:
                return
            if proc.used:
                proc.handle.drop_slot.remote(slot)
                return
            proc.dead = True
            self._processes[agent].remove(proc)
        _kill(proc.handle)

    def lost(self, agent: str, proc: _Process) -> None:
        """The process died: no slot is handed out on it again."""
        with self._lock:
            if not proc.dead:
                proc.dead = True
                self._processes[agent].remove(proc)

    def kill(self, agent: str, instance: str, token: int | None) -> None:
        """Kill the process of an instance whose attempt ``token`` hangs (its proxy then
        returns quietly and is replaced; its neighbours' attempts are lost)."""
        with self._lock:
            proc = self._bound.get((agent, instance))
            if proc is None:
                return
            if token is not None:
                self._replaced.add(token)
        self.lost(agent, proc)
        _kill(proc.handle)

    def was_replaced(self, token: int) -> bool:
        with self._lock:
            if token in self._replaced:
                self._replaced.discard(token)
                return True
            return False

    def count(self) -> int:
        with self._lock:
            return sum(len(p) for p in self._processes.values())

    def close(self) -> None:
        """Kill every worker process of the runtime; no new one starts."""
        with self._lock:
            self._closed = True
            processes = [p for ps in self._processes.values() for p in ps]
            self._processes.clear()
        for proc in processes:
            proc.dead = True
            _kill(proc.handle)


def _kill(handle: Any) -> None:
    # Already gone, or Ray is shutting down: nothing is left to kill.
    with contextlib.suppress(Exception):
        ray.kill(handle, no_restart=True)


def _context_fields(ctx: Any) -> dict[str, Any]:
    """The StepContext as plain fields for the worker (its port stays here)."""
    fields = {f.name: getattr(ctx, f.name) for f in dataclasses.fields(ctx) if f.name != "_port"}
    fields["cancelled"] = ctx.cancelled
    return fields


@dataclass(frozen=True)
class _Agent:
    """What every proxy of one agent shares."""

    name: str
    factory: Callable[[], Agent]
    reply: Callable[[Outcome], None]
    workers: RayWorkers
    host: RayHost
    slots: int
    max_result_bytes: int


class RayInstance(SupervisedActor):
    """The local proxy of one instance whose agent object lives in a Ray worker."""

    use_daemon_thread = True

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
        self._unbind()

    def on_failure(self, *_exc_info: object) -> None:
        self._unbind()

    def on_receive(self, message: Any) -> Any:
        """Run one attempt on the worker and report its outcome (or crash)."""
        if not isinstance(message, Run):
            return super().on_receive(message)
        if self._proc is None or self._proc.dead:  # its process died while it was idle
            self._unbind()
            self._bind()
        assert self._proc is not None
        handle = self._proc.handle
        try:
            ref = handle.run.remote(
                self._slot, self._instance, message.action, _context_fields(message.context)
            )
        except Exception as exc:
            raise WorkerLost(f"could not reach Ray worker: {describe(exc)}") from None
        answer = self._await(ref, message)
        if answer is None:
            return None  # replaced while it hung: its successor takes over
        if isinstance(answer, str):
            raise InstanceCrash(answer)
        self._spec.reply(answer)
        return None

    def _await(self, ref: Any, run: Run) -> Outcome | str | None:
        port = run.context._port
        assert self._proc is not None
        proc = self._proc
        while True:
            try:
                answer: Outcome | str = ray.get(ref, timeout=POLL)
            except ray.exceptions.GetTimeoutError:
                self._sync(proc, run.token, port)
                continue
            except Exception as exc:  # the process died or was killed
                self._workers.lost(self._agent, proc)
                if self._workers.was_replaced(run.token):
                    return None
                raise WorkerLost(
                    f"Ray worker of agent {self._agent!r} died: {describe(exc)}"
                ) from None
            return answer

    def _sync(self, proc: _Process, token: int, port: Any) -> None:
        """Flags out, the latest heartbeat in (skipped if the worker does not answer)."""
        try:
            beats = ray.get(
                proc.handle.sync.remote(token, port.superseded, port.cancelled),
                timeout=SYNC_WAIT,
            )
        except Exception:  # a dying or stuck worker: the answer's wait notices
            return
        for details in beats:
            port.heartbeat(details)

    def _bind(self) -> None:
        """Take a slot and build the agent object there, waiting up to START_WAIT (so
        that an attempt's timeout never pays for a process start)."""
        spec = self._spec
        self._proc, self._slot = self._workers.claim(
            spec.name, self._instance, spec.host, spec.slots, spec.max_result_bytes
        )
        try:
            failed = ray.get(
                self._proc.handle.start_slot.remote(self._slot, spec.factory), timeout=START_WAIT
            )
        except ray.exceptions.GetTimeoutError:
            failed = f"no Ray worker process started within {START_WAIT} s (cluster busy?)"
        except Exception as exc:  # its code did not load there, or the process died
            failed = describe(exc)
        if failed is not None:
            self._unbind()
            raise WorkerLost(f"agent {self._agent!r} could not start on Ray: {failed}")
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

    def replace(self, name: str, instance_id: str) -> None:
        """Kill the worker process running the instance's attempt, then replace it."""
        _, inst = self._instance(name, instance_id)
        if inst is not None and not inst.lost:
            self._workers.kill(name, instance_id, inst.busy_token)
        super().replace(name, instance_id)

    def host_stats(self) -> dict[str, int]:
        """Instances on Ray, their worker processes, and processes killed for hung attempts."""
        stats = super().host_stats()
        return {
            "ray_instances": stats["workers"],
            "ray_workers": self._workers.count(),
            "ray_killed": stats["abandoned_threads"],
        }

    def _request_instance(self, pool: _Pool) -> None:
        assert pool.supervisor is not None
        instance_id = f"{pool.name}#{next(pool.ids)}"
        host = self._placements[pool.name]
        agent = _Agent(
            pool.name,
            pool.factory,
            self._reply,
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
