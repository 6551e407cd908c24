"""The calls of one runtime's Ray attempts: submitted by the caller, collected by one thread.

The Scheduler's thread submits each attempt itself (``.remote()`` only queues it), and one
collector thread per runtime takes every answer with ``ray.wait`` over all outstanding
calls, so an attempt's work falls on the same two threads however many instances run
(the instances' proxies wait idle), and costs the daemon one submit and a share of one
wait. Every :data:`POLL` seconds the
collector also syncs each attempt running longer than that (its ``superseded``/
``cancelled`` flags out, its latest heartbeat in), by a call on its worker's spare thread
collected the same way.

What an answer becomes:

- an :class:`Outcome` (in msgpack): told to the Scheduler, as a local instance does;
- the name of an :class:`InstanceCrash`, or the worker process died: the attempt's proxy
  is told (:class:`Ended`) and crashes, so its supervisor restarts it and the attempt is
  lost and retried at once, as a local crash;
- the process was killed on purpose (its attempt hung past its timeout): dropped, the
  proxy is being replaced already.

Nothing an answer holds reaches the collector's loop as an exception: a result that does
not load here (its class is missing) is a crash of that instance.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import msgpack
import pykka
import ray

from herder.actors._agent import StepContext
from herder.actors._messages import Outcome, Run
from herder.actors.ray._worker import unpacked
from herder.store import describe

_log = logging.getLogger("herder.ray")

POLL = 0.25
"""Seconds between syncs (heartbeats in, flags out) of an attempt that still runs."""
TICK = 0.02
"""The longest the collector waits on the calls it has before it looks for new ones (a
call submitted meanwhile and answered first waits at most this long to be seen)."""
JOIN_WAIT = 2.0

_UNKNOWN = object()  # an answer not fetched yet
_FIELDS = tuple(n for n in StepContext.__dataclass_fields__ if n != "_port")


class WorkerLost(Exception):
    """The Ray worker process running an instance died or could not be reached: the
    proxy's crash reason (like :class:`InstanceCrash`, never raised to a caller)."""


@dataclass(eq=False)
class Process:
    """One Ray worker process (a Ray actor handle) of an agent."""

    handle: Any
    agent: str
    dead: bool = False
    run: Any = field(init=False)  # the handle's methods, looked up once (each lookup
    sync: Any = field(init=False)  # builds a new method object: a third of a call's cost)

    def __post_init__(self) -> None:
        self.run = self.handle.run
        self.sync = self.handle.sync


class _Workers(Protocol):
    def lost(self, proc: Process) -> None: ...

    def was_replaced(self, token: int) -> bool: ...


@dataclass(frozen=True, slots=True)
class Ended:
    """Collector -> proxy: its attempt crashed the instance (``died``: took the process)."""

    reason: str
    died: bool


@dataclass(eq=False, slots=True)
class _Call:
    """An attempt running on Ray."""

    token: int
    proc: Process
    instance: str
    proxy: pykka.ActorRef[Any]
    port: Any
    reply: Callable[[Outcome], None]
    since: float
    syncing: bool = False


@dataclass(eq=False, slots=True)
class _Sync:
    """A sync of a running attempt (answered by its worker's spare thread)."""

    call: _Call


@dataclass(eq=False)
class Courier:
    """See the module docstring; thread-safe, closed with its runtime's workers."""

    workers: _Workers
    _calls: dict[Any, _Call | _Sync] = field(default_factory=dict)  # ObjectRef -> its call
    _cond: threading.Condition = field(default_factory=threading.Condition)
    _thread: threading.Thread | None = None
    _closed: bool = False

    def submit(
        self,
        proc: Process,
        slot: int,
        instance: str,
        proxy: pykka.ActorRef[Any],
        run: Run,
        *,
        reply: Callable[[Outcome], None],
    ) -> None:
        """Start ``run`` on ``slot`` of ``proc``; its answer goes to ``reply``, or its
        crash to ``proxy``. Never raises."""
        ctx = run.context
        fields = {name: getattr(ctx, name) for name in _FIELDS}
        fields["cancelled"] = ctx.cancelled
        try:
            # One msgpack argument (the step's data is plain already) halves the cost
            # of ``.remote()``: Ray encodes each argument on its own, and slowly.
            call = msgpack.packb((slot, instance, run.action, fields), use_bin_type=True)
            ref = proc.run.remote(call)
        except Exception as exc:
            _tell(proxy, Ended(f"could not reach Ray worker: {describe(exc)}", died=True))
            return
        running = _Call(run.token, proc, instance, proxy, ctx._port, reply, time.monotonic())
        with self._cond:
            if self._closed:
                return  # the runtime is stopping: its processes are being killed
            self._calls[ref] = running
            if self._thread is None:
                self._thread = threading.Thread(target=self._collect, name="herder-ray-collect")
                self._thread.daemon = True
                self._thread.start()
            elif len(self._calls) == 1:
                self._cond.notify()

    def close(self) -> None:
        """Stop collecting (the processes are killed next); waits for the collector to
        leave ``ray.wait``, so Ray can be shut down under it."""
        with self._cond:
            self._closed = True
            self._cond.notify()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(JOIN_WAIT)

    def _collect(self) -> None:
        next_sync = time.monotonic() + POLL
        while True:
            with self._cond:
                while not self._calls and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                refs = list(self._calls)
            try:
                ready, _ = ray.wait(refs, num_returns=1, timeout=TICK, fetch_local=True)
                if ready and len(refs) > 1:  # take every answer that is in, in one go
                    ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
            except Exception:  # Ray is shutting down under a closing runtime
                if self._closed:
                    return
                _log.exception("ray.wait failed; trying again")
                time.sleep(TICK)
                continue
            with self._cond:
                done = [(ref, self._calls.pop(ref)) for ref in ready if ref in self._calls]
            try:  # one get for them all costs half as much a call as one get each
                answers = ray.get([ref for ref, _ in done])
            except BaseException:  # one of them lost its process: take them one by one
                answers = [_UNKNOWN] * len(done)
            for (ref, call), answer in zip(done, answers, strict=True):
                self._answer(ref, call, answer)
            now = time.monotonic()
            if now >= next_sync:
                next_sync = now + POLL
                self._sync(now)

    def _answer(self, ref: Any, call: _Call | _Sync, answer: Any) -> None:
        if answer is _UNKNOWN:
            try:
                answer = ray.get(ref)
            except BaseException as exc:  # the process died or was killed
                if isinstance(call, _Call):
                    self._died(call, exc)
                else:
                    call.call.syncing = False
                return
        try:
            if isinstance(call, _Sync):
                call.call.syncing = False
                for details in answer:
                    call.call.port.heartbeat(details)
            elif isinstance(answer, bytes):
                call.reply(unpacked(answer, call.proc.agent, call.instance, call.token))
            else:
                _tell(call.proxy, Ended(str(answer), died=False))
        except BaseException as exc:  # the collector outlives whatever an answer holds
            _log.error("dropped a Ray answer for token %s: %s", _token(call), describe(exc))

    def _died(self, call: _Call, exc: BaseException) -> None:
        self.workers.lost(call.proc)
        if self.workers.was_replaced(call.token):
            return  # killed because it hung: its proxy is being replaced already
        reason = f"Ray worker of agent {call.proc.agent!r} died: {describe(exc)}"
        _tell(call.proxy, Ended(reason, died=True))

    def _sync(self, now: float) -> None:
        """Sync each attempt running for a POLL or more with no sync on the way."""
        with self._cond:
            due = [
                c
                for c in self._calls.values()
                if isinstance(c, _Call) and not c.syncing and now - c.since >= POLL
            ]
        for call in due:
            port = call.port
            try:
                ref = call.proc.sync.remote(call.token, port.superseded, port.cancelled)
            except Exception:  # a dying worker: the attempt's own answer tells
                continue
            call.syncing = True
            with self._cond:
                self._calls[ref] = _Sync(call)


def _token(call: _Call | _Sync) -> int:
    return call.call.token if isinstance(call, _Sync) else call.token


def _tell(proxy: pykka.ActorRef[Any], message: Any) -> None:
    # A proxy already gone (replaced, stopped) needs no news of its old attempt.
    with contextlib.suppress(pykka.ActorDeadError):
        proxy.tell(message)
