"""The Ray side: one worker process hosting up to ``slots`` instances of one agent.

The process is a mailbox with one call, ``exchange``: it starts a batch of attempts
(every attempt the daemon had for the process at once, in one msgpack argument), then
waits until an answer is in (or :data:`POLL` seconds) and returns every answer finished
since the last exchange, with the latest heartbeat of each attempt still running, in one
msgpack reply. Each attempt runs on a thread of the process's own pool (one per slot)
through the shared :func:`~herder.actors._action.run_attempt`, so results are normalised
and size-checked here and nothing of the user's (objects, exceptions) travels back. So
the daemon's Ray calls per step are a share of one exchange, not a call each way per
attempt. An answer is an :class:`Outcome` of plain data (:func:`packed`) or a ``str``
naming why the instance crashed (:class:`InstanceCrash`).

The action's :class:`StepContext` is rebuilt here around a :class:`WorkerPort`: its
heartbeats wait here for the next exchange, and each exchange brings the
``superseded``/``cancelled`` flags the daemon has set on its attempts since.

The Ray actor runs with a few threads of Ray's (``max_concurrency``: two exchanges,
``pid`` and the slots' ``start_slot`` at once), none of them an attempt's, and its calls
are not Ray task events (``enable_task_events=False``): each would cost the driver, the
worker and Ray's GCS a record per call, for a history herder keeps itself.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import msgpack
import ray

from herder.actors._action import run_attempt
from herder.actors._agent import StepContext
from herder.actors._host import InstanceCrash
from herder.actors._messages import Outcome, Run
from herder.store import UserCodeFailed, contain, describe

POLL = 0.25
"""The longest an exchange waits for an answer: heartbeats go out and flags come in at
least this often while an attempt runs."""

_NO_BEAT = object()


def packed(outcome: Outcome) -> tuple[Any, ...]:
    """An attempt's Outcome as plain fields (its agent, instance and token stay with the
    daemon, which knows them)."""
    o = outcome
    return (o.ok, o.result, o.error, o.error_types, o.permanent, o.traceback, o.kind)


def unpacked(fields: Any, agent: str, instance: str, token: int) -> Outcome:
    """The Outcome :func:`packed` made."""
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


def pack(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


def unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False, strict_map_key=True)


def _encodable(token: int, answer: Any) -> Any:
    try:
        pack(answer)
    except Exception as exc:
        return f"the answer of attempt {token} does not encode: {describe(exc)}"
    return answer


class WorkerPort:
    """The attempt's port inside the worker: flags set by an exchange, beats kept for one."""

    __slots__ = ("_last", "cancelled", "superseded")

    def __init__(self, cancelled: bool) -> None:
        self.cancelled = cancelled
        self.superseded = False
        self._last: Any = _NO_BEAT

    def heartbeat(self, details: Any) -> None:
        self._last = details  # only the latest matters; one assignment is atomic

    def take(self) -> Any:
        """The latest beat since the last call, or ``_NO_BEAT``."""
        last, self._last = self._last, _NO_BEAT
        return last


class SlotWorker:
    """One worker process of an agent; see the module docstring."""

    def __init__(self, agent: str, max_result_bytes: int, slots: int) -> None:
        self._agent = agent
        self._max_result_bytes = max_result_bytes
        self._objects: dict[int, tuple[str, Any]] = {}  # slot -> (instance, agent object)
        self._ports: dict[int, WorkerPort] = {}  # token -> port of the running attempt
        self._answers: list[tuple[int, Any]] = []  # (token, answer) not sent back yet
        self._cond = threading.Condition()
        self._turn = 0  # bumped by each exchange: the one waiting with an older turn returns
        self._pool = ThreadPoolExecutor(slots, thread_name_prefix="herder-slot")

    def pid(self) -> int:
        """This worker's process id (tests kill it)."""
        return os.getpid()

    def start_slot(
        self, slot: int, instance: str, factory: Any
    ) -> tuple[str, tuple[str, ...]] | None:
        """Build the slot's agent object for ``instance``; None, or what the factory raised
        (:class:`UserCodeFailed`'s fields)."""
        try:
            agent = contain(factory)
        except UserCodeFailed as failed:
            return failed.error, failed.error_types
        with self._cond:
            self._objects[slot] = (instance, agent)
        return None

    def drop_slot(self, slot: int, instance: str | None) -> None:
        """Forget the slot's agent object if ``instance`` still holds it (its proxy stopped)."""
        with self._cond:
            if self._objects.get(slot, ("",))[0] == instance:
                del self._objects[slot]

    @ray.method(enable_task_events=False)  # see the module docstring
    def exchange(self, batch: bytes | None, flags: list[tuple[int, bool, bool]]) -> bytes:
        """Start each attempt of ``batch`` (``[(slot, instance, action, context fields)]``
        in msgpack, or None), set ``flags`` (token, superseded, cancelled) on the attempts
        still running, and wait up to POLL for an answer; return ``(answers, beats)`` in
        msgpack: every ``(token, answer)`` finished since the last exchange, and ``(token,
        details)`` of each running attempt that beat since.

        One exchange waits at a time: a newer one releases the one waiting (which returns
        what it has), so a process has one Ray thread waiting however often it is fed."""
        if batch is not None:
            for slot, instance, action, fields in unpack(batch):
                port = WorkerPort(bool(fields.pop("cancelled", False)))
                with self._cond:
                    self._ports[fields["token"]] = port
                self._pool.submit(self._run, slot, instance, action, fields, port)
        with self._cond:
            for token, superseded, cancelled in flags:
                flagged = self._ports.get(token)
                if flagged is not None:  # flags only go up: an exchange that left
                    # before another (each its own Ray thread) may arrive after it
                    flagged.superseded |= superseded
                    flagged.cancelled |= cancelled
            self._turn += 1
            turn = self._turn
            self._cond.notify_all()  # the exchange waiting before this one returns
            if not self._answers:
                self._cond.wait_for(lambda: self._answers or self._turn != turn, POLL)
            answers, self._answers = self._answers, []
            beats = [(t, b) for t, p in self._ports.items() if (b := p.take()) is not _NO_BEAT]
        try:
            return pack((answers, beats))
        except Exception:  # run_attempt and heartbeat normalised them: never expected
            return pack(([(t, _encodable(t, a)) for t, a in answers], []))

    def _run(
        self, slot: int, instance: str, action: str, fields: dict[str, Any], port: Any
    ) -> None:
        token = fields["token"]
        try:
            answer = self._attempt(slot, instance, action, fields, port)
        except BaseException as exc:  # nothing may leave an attempt unanswered
            answer = f"attempt {token} of agent {self._agent!r} failed here: {describe(exc)}"
        with self._cond:
            self._ports.pop(token, None)
            self._answers.append((token, answer))
            self._cond.notify_all()  # wakes the waiting exchange (one at most)

    def _attempt(
        self, slot: int, instance: str, action: str, fields: dict[str, Any], port: Any
    ) -> Any:
        with self._cond:
            held = self._objects.get(slot)
        if held is None or held[0] != instance:
            return f"slot {slot} of agent {self._agent!r} holds no object of {instance!r}"
        run = Run(self._agent, instance, action, fields["token"], StepContext(**fields, _port=port))
        try:
            outcome = run_attempt(held[1], self._agent, instance, run, self._max_result_bytes)
        except InstanceCrash as crash:
            with self._cond:
                if self._objects.get(slot) is held:
                    del self._objects[slot]
            return str(crash) or "InstanceCrash"
        return packed(outcome)
