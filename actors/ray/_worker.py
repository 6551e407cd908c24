"""The Ray side: one worker process hosting up to ``slots`` instances of one agent.

Created as a Ray actor with ``max_concurrency = slots + 1``: each slot's attempt runs on
its own thread of Ray's pool, and the extra thread answers ``pid``/``sync`` while every
slot is busy or hung. Attempts run through the shared
:func:`~herder.actors._action.run_attempt`, so results are normalised and size-checked
here and nothing of the user's (objects, exceptions) travels back: a run returns an
:class:`Outcome` of plain data (as msgpack bytes, :func:`packed`: Ray runs an object through
its general serializer, slowly, and copies bytes), or a ``str`` naming why the instance crashed
(:class:`InstanceCrash`).

The action's :class:`StepContext` is rebuilt here around a :class:`WorkerPort`: its
heartbeats wait here until the daemon's proxy collects them with ``sync``, which also
brings the attempt's ``superseded``/``cancelled`` flags across.

Attempts and syncs are not Ray task events (``enable_task_events=False``): each would cost
the driver, the worker and Ray's GCS a record per step, on the same cores, for a history
herder keeps itself (the step's record and history).
"""

from __future__ import annotations

import os
import threading
from typing import Any

import msgpack
import ray

from herder.actors._action import run_attempt
from herder.actors._agent import StepContext
from herder.actors._host import InstanceCrash
from herder.actors._messages import Outcome, Run
from herder.store import UserCodeFailed, contain

_NO_BEAT = object()


def packed(outcome: Outcome) -> bytes:
    """An attempt's Outcome as msgpack (its agent, instance and token stay with the daemon,
    which knows them)."""
    o = outcome
    fields = (o.ok, o.result, o.error, o.error_types, o.permanent, o.traceback, o.kind)
    return msgpack.packb(fields, use_bin_type=True)


def unpacked(data: bytes, agent: str, instance: str, token: int) -> Outcome:
    """The Outcome :func:`packed` made."""
    fields = msgpack.unpackb(data, raw=False, strict_map_key=True)
    ok, result, error, types, permanent, traceback, kind = fields
    return Outcome(
        agent,
        instance,
        token,
        ok=ok,
        result=result,
        error=error,
        error_types=tuple(types),
        permanent=permanent,
        traceback=traceback,
        kind=kind,
    )


class WorkerPort:
    """The attempt's port inside the worker: flags set by ``sync``, beats kept for it."""

    __slots__ = ("_last", "cancelled", "superseded")

    def __init__(self, cancelled: bool) -> None:
        self.cancelled = cancelled
        self.superseded = False
        self._last: Any = _NO_BEAT

    def heartbeat(self, details: Any) -> None:
        self._last = details  # only the latest matters; one assignment is atomic

    def take(self) -> list[Any]:
        """The latest beat since the last call, if any (as a list of zero or one)."""
        last, self._last = self._last, _NO_BEAT
        return [] if last is _NO_BEAT else [last]


class SlotWorker:
    """One worker process of an agent; see the module docstring."""

    def __init__(self, agent: str, max_result_bytes: int) -> None:
        self._agent = agent
        self._max_result_bytes = max_result_bytes
        self._objects: dict[int, Any] = {}  # slot -> agent object
        self._ports: dict[int, WorkerPort] = {}  # token -> port of the running attempt
        self._lock = threading.Lock()

    def pid(self) -> int:
        """This worker's process id (tests kill it; answered by the spare thread)."""
        return os.getpid()

    def start_slot(self, slot: int, factory: Any) -> str | None:
        """Build the slot's agent object; None, or why the factory failed."""
        try:
            agent = contain(factory)
        except UserCodeFailed as failed:
            return f"agent {self._agent!r} could not start: {failed.error}"
        with self._lock:
            self._objects[slot] = agent
        return None

    def drop_slot(self, slot: int) -> None:
        """Forget the slot's agent object (its proxy stopped)."""
        with self._lock:
            self._objects.pop(slot, None)

    @ray.method(enable_task_events=False)  # see the module docstring
    def run(self, call: bytes) -> bytes | str:
        """Run one attempt on the slot's object; its Outcome :func:`packed`, or why the
        instance crashed.

        ``call`` is ``(slot, instance, action, context fields)`` in msgpack."""
        slot, instance, action, fields = msgpack.unpackb(call, raw=False, strict_map_key=True)
        token = fields["token"]
        port = WorkerPort(bool(fields.pop("cancelled", False)))
        with self._lock:
            agent = self._objects.get(slot)
            self._ports[token] = port
        try:
            if agent is None:
                return f"slot {slot} of agent {self._agent!r} has no agent object"
            ctx = StepContext(**fields, _port=port)
            run = Run(self._agent, instance, action, token, ctx)
            try:
                outcome = run_attempt(agent, self._agent, instance, run, self._max_result_bytes)
                return packed(outcome)
            except InstanceCrash as crash:
                with self._lock:
                    self._objects.pop(slot, None)
                return str(crash) or "InstanceCrash"
        finally:
            with self._lock:
                self._ports.pop(token, None)

    @ray.method(enable_task_events=False)  # see the module docstring
    def sync(self, token: int, superseded: bool, cancelled: bool) -> list[Any]:
        """Hand the attempt its flags; return its latest heartbeat since the last sync."""
        with self._lock:
            port = self._ports.get(token)
        if port is None:
            return []
        port.superseded, port.cancelled = superseded, cancelled
        return port.take()
