"""The calls of one runtime's Ray attempts: mailboxes, a sender and a collector.

Each worker process is a mailbox (``_worker``), served by one call, ``exchange``: it
hands the process a batch of attempts (or none), then waits for answers and returns every
answer finished since the last exchange. The Scheduler's thread only files an attempt
with its process (:meth:`Courier.submit`: a dict entry and a list append, no Ray call,
unless the process has nothing running and no exchange on the way: then it sends that
one attempt itself, so a lone attempt does not wait for another thread); one sender thread per
runtime takes everything filed since it last ran and makes one exchange per process, so
a Scheduler message that dispatches many attempts costs one call per process, not one
per attempt; and one collector thread per runtime waits on
the outstanding exchanges (``ray.wait``) and starts an empty one for a process that has
attempts running and none outstanding. A process releases its waiting exchange when a
newer one arrives, so under load each batch sent is also the call that brings the next
answers back: about one Ray call per batch of attempts, each answering many. An exchange
also brings the running attempts' latest heartbeats in, and takes out the
``superseded``/``cancelled`` flags set since (one returns within
:data:`~herder.actors.ray._worker.POLL` seconds, and the next carries them).

As a local attempt does (``_action.leased``), an attempt starts only while the runtime
surely holds its lease: one filed while it is in doubt (the process was paused past it)
goes through the sender, which waits for a renewal and answers it as not started without.

What an answer becomes:

- an :class:`Outcome`'s fields: told to the Scheduler, as a local instance does;
- the name of an :class:`InstanceCrash`: the attempt's proxy is told (:class:`Ended`) and
  crashes, so its supervisor restarts it and the attempt is lost and retried at once;
- the exchange raised (the process died: killed, OOM, node lost): every attempt filed with it
  is lost so, except one whose process was killed on purpose (it hung past its timeout:
  its proxy is being replaced already; its neighbours are told when it is killed).

Nothing an answer holds reaches the threads' loops as an exception.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import pykka
import ray

from herder.actors._action import LEASE_WAIT, leased, unleased
from herder.actors._agent import StepContext
from herder.actors._messages import Outcome, Run
from herder.actors._results import Results
from herder.actors.ray._worker import pack, unpack, unpacked
from herder.store import describe, get_logger

_log = get_logger("herder.ray")

TICK = 0.02
"""The longest the collector waits on the exchanges it has before it looks for new ones
(one started meanwhile and answered first waits at most this long to be seen)."""
JOIN_WAIT = 2.0

_FIELDS = tuple(n for n in StepContext.__dataclass_fields__ if n != "_port")


class WorkerLost(Exception):
    """The Ray worker process running an instance died or could not be reached: the
    proxy's crash reason (like :class:`InstanceCrash`, never raised to a caller)."""


@dataclass(frozen=True, slots=True)
class Ended:
    """Collector -> proxy: its attempt crashed the instance (``died``: took the process)."""

    reason: str
    died: bool


@dataclass(eq=False, slots=True)
class _Call:
    """An attempt running on Ray."""

    instance: str
    proxy: pykka.ActorRef[Any]
    run: Run
    reply: Callable[[Outcome], None]

    @property
    def port(self) -> Any:
        return self.run.context._port


@dataclass(eq=False)
class Process:
    """One Ray worker process (a Ray actor handle) of an agent, and its mailbox; the
    mailbox fields are the courier's, under its lock."""

    handle: Any
    agent: str
    dead: bool = False
    calls: dict[int, _Call] = field(default_factory=dict)  # token -> attempt filed here
    filed: list[tuple[Any, ...]] = field(default_factory=list)  # not submitted yet
    retiring: dict[int, Callable[[str | None], None]] = field(default_factory=dict)  # token
    # -> told how the attempt of a stopping proxy ended (``after_attempt``)
    polls: int = 0  # its exchanges not answered yet
    exchange: Any = field(init=False)  # the handle's method, looked up once (each lookup
    # builds a new method object)

    def __post_init__(self) -> None:
        self.exchange = self.handle.exchange


class _Workers(Protocol):
    def lost(self, proc: Process) -> None: ...

    def was_replaced(self, token: int) -> bool: ...


class Courier:
    """See the module docstring; thread-safe, closed with its runtime's workers."""

    def __init__(self, workers: _Workers) -> None:
        self.workers = workers
        self._lock = threading.Lock()
        self._mail = threading.Condition(self._lock)  # the sender waits for filed attempts
        self._news = threading.Condition(self._lock)  # the collector waits for exchanges
        self._outbox: list[Process] = []  # processes with attempts filed
        self._polls: dict[Any, Process] = {}  # ObjectRef of an outstanding exchange -> process
        self._threads: list[threading.Thread] = []
        self._closed = False
        self.counts = {"ray_calls": 0, "ray_answers": 0}

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
        """File ``run`` for ``slot`` of ``proc``; its answer goes to ``reply``, or its
        crash to ``proxy``. Never raises. A process with nothing running and no exchange
        on the way gets it at once, in an exchange from this thread (a lone attempt does
        not wait for the sender); otherwise the sender batches it with the others filed
        meanwhile (so under load the Scheduler's thread makes no Ray call)."""
        ctx = run.context
        fields = {name: getattr(ctx, name) for name in _FIELDS}
        if isinstance(ctx.results, Results):  # (as kept: the process gets its own anyway)
            fields["results"] = ctx.results.kept()
        fields["cancelled"] = ctx.cancelled
        item = (slot, instance, run.action, fields)
        doubt = not leased(run, 0)  # the sender waits for a renewal: this thread must not
        with self._lock:
            if self._closed:
                return  # the runtime is stopping: its processes are being killed
            if proc.dead:
                flags = None
            else:
                idle = not proc.calls
                proc.calls[run.token] = _Call(instance, proxy, run, reply)
                if not self._threads:
                    self._start()
                if doubt or not idle or proc.polls or proc.filed:
                    proc.filed.append(item)
                    if len(proc.filed) == 1:
                        self._outbox.append(proc)
                        if len(self._outbox) == 1:
                            self._mail.notify()
                    return
                flags = self._open(proc)
        if flags is None:
            _tell(proxy, Ended(f"Ray worker of agent {proc.agent!r} died", died=True))
        else:
            self._call(proc, pack([item]), flags)

    def after_attempt(
        self, proc: Process, instance: str, then: Callable[[str | None], None]
    ) -> bool:
        """Tell ``then`` how the attempt ``instance`` runs on ``proc`` ends: None (it was
        answered) or why it crashed the instance; False (``then`` dropped) if it runs none."""
        with self._lock:
            running = [t for t, call in proc.calls.items() if call.instance == instance]
            if self._closed or proc.dead or not running:
                return False
            proc.retiring[running[0]] = then
            return True

    def let_go(self, proc: Process) -> None:
        """The runtime stopped: the proxies still waiting for ``proc``'s attempts wait no more."""
        with self._lock:
            ended, proc.retiring = list(proc.retiring.values()), {}
        _ended(ended, None)

    def close(self) -> None:
        """Stop sending and collecting (the processes are killed next); waits for the
        threads to leave Ray's calls, so Ray can be shut down under them."""
        with self._lock:
            self._closed = True
            self._mail.notify()
            self._news.notify()
            threads = list(self._threads)
        for thread in threads:
            if thread is not threading.current_thread():
                thread.join(JOIN_WAIT)

    def _start(self) -> None:
        for target, name in (
            (self._send, "herder-ray-send"),
            (self._collect, "herder-ray-collect"),
        ):
            thread = threading.Thread(target=target, name=name, daemon=True)
            self._threads.append(thread)
            thread.start()

    # -- the sender --------------------------------------------------------------------

    def _send(self) -> None:
        while True:
            with self._lock:
                while not self._outbox and not self._closed:
                    self._mail.wait()
                if self._closed:
                    return
                outbox, self._outbox = self._outbox, []
                batches = [(proc, proc.filed) for proc in outbox if proc.filed]
                for proc in outbox:
                    proc.filed = []
            for proc, batch in batches:
                startable = self._leased(proc, batch)
                if startable:
                    self._exchange(proc, pack(startable))

    def _leased(self, proc: Process, batch: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
        """The attempts of ``batch`` that may start as far as the lease goes (as a local
        attempt: ``_action.leased``; a runtime paused past its lease starts nothing it
        had queued, a standby may run those steps); each other one is answered as not
        started, after a wait of up to LEASE_WAIT for a renewal (once for the batch)."""
        with self._lock:
            calls = [proc.calls.get(item[3]["token"]) for item in batch]
        if all(call is None or leased(call.run, 0) for call in calls):
            return batch
        kept, wait = [], LEASE_WAIT
        for item, call in zip(batch, calls, strict=True):
            if call is None or leased(call.run, wait):
                kept.append(item)
                continue
            wait = 0.0
            with self._lock:
                proc.calls.pop(call.run.token, None)
                ended = proc.retiring.pop(call.run.token, None)
            try:
                call.reply(unleased(proc.agent, call.instance, call.run))
            except Exception as exc:  # (as _answer: the sender outlives a reply)
                _log.error("dropped an unstarted Ray attempt: %s", describe(exc))
            _ended([] if ended is None else [ended], None)
        return kept

    def _exchange(self, proc: Process, batch: bytes | None) -> None:
        """Call ``exchange`` on ``proc``: hand it ``batch`` (if any) and the flags its
        attempts have up, and have the collector wait for its answers."""
        with self._lock:
            flags = self._open(proc)
        self._call(proc, batch, flags)

    def _open(self, proc: Process) -> list[tuple[int, bool, bool]]:
        """Count an exchange of ``proc`` as on its way (under the lock); the flags it carries."""
        self.counts["ray_calls"] += 1
        proc.polls += 1
        return [
            (token, call.port.superseded, call.port.cancelled)
            for token, call in proc.calls.items()
            if call.port.superseded or call.port.cancelled
        ]

    def _call(self, proc: Process, batch: bytes | None, flags: list[Any]) -> None:
        try:
            ref = proc.exchange.remote(batch, flags)
        except Exception as exc:  # Ray cannot reach it: its attempts are lost
            with self._lock:
                proc.polls -= 1
            self._died(proc, exc)
            return
        with self._lock:
            self._polls[ref] = proc
            if len(self._polls) == 1:
                self._news.notify()

    # -- the collector -----------------------------------------------------------------

    def _collect(self) -> None:
        while True:
            with self._lock:
                while not self._polls and not self._closed:
                    self._news.wait()
                if self._closed:
                    return
                refs = list(self._polls)
            try:
                ready, _ = ray.wait(refs, num_returns=1, timeout=TICK, fetch_local=True)
                if ready and len(refs) > 1:  # take every exchange that is in, in one go
                    ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
            except Exception:  # Ray is shutting down under a closing runtime
                if self._closed:
                    return
                _log.exception("ray.wait failed; trying again")
                time.sleep(TICK)
                continue
            for ref in ready:
                with self._lock:
                    proc = self._polls.pop(ref)
                    proc.polls -= 1
                try:
                    answers, beats = unpack(ray.get(ref))
                except BaseException as exc:  # the process died or was killed
                    self._died(proc, exc)
                    continue
                self._answer(proc, answers, beats)
                with self._lock:  # attempts still run there, and no exchange waits for them
                    again = bool(proc.calls) and not proc.polls and not proc.dead
                if again:
                    self._exchange(proc, None)

    def _answer(self, proc: Process, answers: list[Any], beats: list[Any]) -> None:
        with self._lock:
            done = [(token, proc.calls.pop(token, None), answer) for token, answer in answers]
            self.counts["ray_answers"] += len(done)
            beating = [(proc.calls.get(token), details) for token, details in beats]
            ended = [(proc.retiring.pop(t), a) for t, _, a in done if t in proc.retiring]
        for token, call, answer in done:
            if call is None:
                continue  # its process was given up on meanwhile
            try:
                if isinstance(answer, str):
                    _tell(call.proxy, Ended(answer, died=False))
                else:
                    call.reply(unpacked(answer, proc.agent, call.instance, token))
            except BaseException as exc:  # the collector outlives whatever an answer holds
                _log.error("dropped a Ray answer for token %s: %s", token, describe(exc))
        for running, details in beating:
            if running is not None:
                with contextlib.suppress(Exception):
                    running.port.heartbeat(details)
        for then, answer in ended:
            _ended([then], answer if isinstance(answer, str) else None)

    def _died(self, proc: Process, exc: BaseException) -> None:
        self.died(proc, describe(exc))

    def died(self, proc: Process, cause: str) -> None:
        """``proc`` died (``cause``), or was killed: each attempt filed with it is its
        instance's crash. Said at once, not left to a failing exchange: none may be out
        (the collector is between two, and does not start one for a dead process)."""
        self.workers.lost(proc)
        with self._lock:
            calls, proc.calls = proc.calls, {}
            proc.filed = []
            ended, proc.retiring = list(proc.retiring.values()), {}
        reason = f"Ray worker of agent {proc.agent!r} died: {cause}"
        for token, call in calls.items():
            if not self.workers.was_replaced(token):  # else it hung: being replaced already
                _tell(call.proxy, Ended(reason, died=True))
        _ended(ended, reason)


def _ended(waiting: list[Callable[[str | None], None]], crash: str | None) -> None:
    for then in waiting:
        try:
            then(crash)
        except Exception as exc:  # (the courier's threads outlive a stopping proxy)
            _log.error("a stopping Ray instance was not told its attempt ended: %s", describe(exc))


def _tell(proxy: pykka.ActorRef[Any], message: Any) -> None:
    # A proxy already gone (replaced, stopped) needs no news of its old attempt.
    with contextlib.suppress(pykka.ActorDeadError):
        proxy.tell(message)
