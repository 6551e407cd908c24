"""The Ray worker processes of one runtime (thread-safe), kept in its engine context.

:class:`RayWorkers` hands out slots in worker processes (one Ray actor each, hosting
``slots`` instances of one agent), starts a process when none of the agent's has a free
slot, kills one left without slots, one whose attempt hangs (``kill``) and all of them at
``close``; its :class:`~herder.actors.ray._courier.Courier` carries the attempts' calls.
Kept in the engine context, so a restarted Scheduler finds them and ``stop()`` kills what
is left (an abandoned proxy's process included).
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass, field
from typing import Any

import ray

from herder.actors.ray import RayHost
from herder.actors.ray._courier import Courier, Process, WorkerLost
from herder.actors.ray._worker import SlotWorker
from herder.store import InvalidInput, describe

_RemoteWorker = ray.remote(SlotWorker)


@dataclass(eq=False)
class _Process(Process):
    """One Ray worker process of an agent and its slots."""

    slots: int = 1
    used: dict[int, str] = field(default_factory=dict)  # slot -> instance id


class RayWorkers:
    """The Ray worker processes of one runtime; see the module docstring."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._processes: dict[str, list[_Process]] = {}  # agent -> its processes
        self._replaced: set[int] = set()  # tokens whose worker was killed on purpose
        # (agent, instance) -> its process and slot; read without the lock by ``bound``
        self._bound: dict[tuple[str, str], tuple[_Process, int]] = {}
        self._closed = False
        self.killed = 0  # processes killed for a hung attempt
        self.courier = Courier(self)

    def claim(
        self, agent: str, instance: str, host: RayHost, slots: int, limit: int
    ) -> tuple[_Process, int]:
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
                    self._bound[(agent, instance)] = (proc, free[0])
                    return proc, free[0]
            handle = _RemoteWorker.options(**_options(host, slots)).remote(agent, limit, slots)
            proc = _Process(handle, agent, slots=slots)
            proc.used[0] = instance
            processes.append(proc)
            self._bound[(agent, instance)] = (proc, 0)
            return proc, 0

    def bound(self, agent: str, instance: str) -> tuple[_Process, int] | None:
        """The live process and slot of ``instance``, or None (its process died, or it has
        none yet). Called on the Scheduler's thread for every attempt, so no lock: one
        dict lookup is atomic, and a process dying just after is noticed by the call."""
        binding = self._bound.get((agent, instance))
        return None if binding is None or binding[0].dead else binding

    def release(self, agent: str, proc: _Process, slot: int) -> None:
        """The slot's proxy is gone; a process left with no slot in use is killed."""
        with self._lock:
            instance = proc.used.pop(slot, None)
            if instance is not None and self._bound.get((agent, instance), (None, 0))[0] is proc:
                del self._bound[(agent, instance)]
            if proc.dead:
                return
            if proc.used:
                proc.handle.drop_slot.remote(slot, instance)
                return
            proc.dead = True
            self._processes[agent].remove(proc)
        _kill(proc.handle)

    def lost(self, proc: Process) -> None:
        """The process died: no slot is handed out on it again."""
        with self._lock:
            if not proc.dead:
                proc.dead = True
                self._processes[proc.agent].remove(proc)  # type: ignore[arg-type]

    def kill(self, agent: str, instance: str, token: int | None) -> None:
        """Kill the process of an instance whose attempt ``token`` hangs (its answer is
        dropped and its proxy replaced; its neighbours' attempts are lost)."""
        with self._lock:
            binding = self._bound.get((agent, instance))
            if binding is None:
                return
            if token is not None:
                self._replaced.add(token)
            self.killed += 1
        self.lost(binding[0])
        _kill(binding[0].handle)
        self.courier.died(binding[0], "killed, as an attempt of it hung past its timeout")

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
        self.courier.close()
        for proc in processes:
            proc.dead = True
            _kill(proc.handle)
            self.courier.let_go(proc)


def _options(host: RayHost, slots: int) -> dict[str, Any]:
    """The Ray actor options of a worker process of ``slots`` instances placed by ``host``."""
    options: dict[str, Any] = {
        # two exchanges and pid or drop_slot beside each slot's start_slot
        # (attempts run on the process's own threads, not Ray's)
        "max_concurrency": slots + 3,
        "max_restarts": 0,
        "max_task_retries": 0,
        "num_cpus": host.num_cpus,
        "num_gpus": host.num_gpus,
    }
    if host.resources:
        options["resources"] = dict(host.resources)
    if host.runtime_env is not None:
        options["runtime_env"] = dict(host.runtime_env)
    return options


RESERVED = ("memory", "object_store_memory", "bundle")
"""Names Ray refuses in an actor's ``resources`` (when it is created, not in ``options``)."""


def check_placement(host: RayHost, agent: str) -> None:
    """Refuse (:class:`InvalidInput`) a placement Ray would refuse each time a worker
    process of the agent starts (``resources={"GPU": 1}`` instead of ``num_gpus=1``, say)."""
    try:
        _RemoteWorker.options(**_options(host, 1))  # Ray checks them here; nothing starts
        # Ray checks these two only as a process is created (ray.actor's resources and
        # its core worker's), so each of the agent's instances would fail to start.
        reserved = [name for name in RESERVED if name in host.resources]
        if reserved:
            raise ValueError(f"resources must not name {reserved[0]!r}, which Ray reserves")
        if host.num_gpus > 1 and host.num_gpus % 1:
            raise ValueError(f"num_gpus above 1 must be a whole number, got {host.num_gpus}")
    except Exception as exc:
        raise InvalidInput(
            f"agent {agent!r}: Ray refuses the placement {host!r}: {describe(exc)}"
        ) from None


def _kill(handle: Any) -> None:
    # Already gone, or Ray is shutting down: nothing is left to kill.
    with contextlib.suppress(Exception):
        ray.kill(handle, no_restart=True)
