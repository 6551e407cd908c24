"""One thread of the pooled host: a pykka worker actor that runs attempts of any agent.

The host tells a worker a :class:`Work` (an attempt, the agent object that serves it or
None, and the agent's factory); the worker builds the object when there is none yet
(``contain``-ed: the factory is user code), runs the attempt with the shared
:func:`~herder.actors._action.run_attempt`, and reports back to the Scheduler: the
:class:`Outcome`, or an :class:`InstanceEvent` ``crashed`` when the factory failed or the
action raised :class:`InstanceCrash` (the agent object broke, not the worker). The host's
``build`` calls the factory (counting a worker abandoned in it) and takes the object it
built before the outcome is sent.

When the attempt ends the worker goes on, without a message, with (in this order):

- **self-feed:** the agent's next ready attempt (``Work.source.ready``, actors/_ahead.py),
  on the same agent object, unless the host has since let the instance go (``Work.stop``),
  or it fed itself :data:`SELF_FEEDS` in a row and the line has work;
- **the line:** else the oldest :class:`Work` in the pool's line (:func:`take_lined`):
  attempts of any agent, durable and holding an instance slot, that found no free worker.
  An attempt fenced while it waited there (its port superseded) does not start: its
  outcome says so and the Scheduler, which fenced it, ignores it.

The bound on self-feed is what keeps the line moving when one agent's backlog has every
worker: with workers enough to fill the pool (its ``concurrency`` at least the pool's)
they fed themselves its attempts for as long as it had any, and another agent's attempt
in the line waited for the whole backlog.

The outcome it reports says which one (``next_token``), in the same message.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from time import perf_counter
from typing import Any, Protocol

from herder.actors._action import run_attempt
from herder.actors._agent import Agent
from herder.actors._ahead import next_ready
from herder.actors._host import FAILED_START, InstanceCrash
from herder.actors._messages import UNSTARTED, InstanceEvent, Outcome, Run
from herder.actors._supervised import SupervisedActor
from herder.actors._supervision_specs import ChildEventKind
from herder.store import UserCodeFailed, contain

SUPERSEDED = "superseded before it started (it waited for a worker or its agent object)"
"""The error of an attempt fenced in the pool's line, or while its agent object was built
(an answer the Scheduler ignores)."""


DECAY = 0.75
"""An agent's recorded action time decays by this factor per action that took less."""

QUICK = 0.0002
"""Seconds under which an agent's recent actions (the slowest, decaying) are quick."""


SELF_FEEDS = 8
"""Attempts of its agent a worker feeds itself in a row before it takes the line's work,
if some waits there (each one after that goes to the line first, until it took one)."""


class ReadySource(Protocol):
    """What a worker self-feeds from: the agent's ready deque, once it has one."""

    ready: deque[Run] | None
    took: float

    @property
    def quick(self) -> bool: ...


@dataclass(slots=True)
class Work:
    """Host -> worker: run ``run`` on ``agent`` (built with ``factory`` when None)."""

    run: Run
    agent: Any
    factory: Callable[[], Agent]
    # The agent, whose ``ready`` deque (made once an attempt of it is reserved ahead,
    # maybe while this one runs) holds the attempts to self-feed from.
    source: ReadySource | None = None
    # The hand-shake with the host, under ``lock``: the host sets ``stop`` (take no
    # further attempt), the worker notes in ``fed`` the token of each one it takes, so
    # the host letting the instance go knows whether the worker had gone on already. A
    # work waiting in the pool's line is taken when ``fed`` becomes its own token, unless
    # the host ``withdrew`` it first.
    stop: bool = False
    fed: int = 0
    withdrawn: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)
    # When it joined the pool's line (perf_counter), if it did (held: _worker_pool.py).
    lined_at: float = 0.0


def take_lined(line: deque[Work]) -> Work | None:
    """The oldest work in the pool's ``line`` that the host did not withdraw, now taken
    (None if there is none). Safe on any thread."""
    while True:
        try:
            work = line.popleft()
        except IndexError:
            return None
        with work.lock:
            if not work.withdrawn:
                work.fed = work.run.token
                return work


def withdraw(work: Work) -> bool:
    """The host's half of :func:`take_lined`: ``work``, waiting in the line, will not be
    taken (True), unless a worker took it already (False). No further attempt is fed
    after it either way."""
    with work.lock:
        work.stop = True
        work.withdrawn = not work.fed
        return work.withdrawn


class PoolWorker(SupervisedActor):
    """One pooled thread: runs attempts of any agent, one at a time."""

    use_daemon_thread = True

    def __init__(
        self,
        reply: Callable[[Outcome], None],
        events: Callable[[InstanceEvent], None],
        build: Callable[[str, str, Callable[[], Agent]], Any],
        max_result_bytes: int,
        line: deque[Work],
    ) -> None:
        super().__init__()
        self._reply = reply
        self._events = events
        self._build = build
        self._max_result_bytes = max_result_bytes
        self._line = line

    def on_receive(self, message: Any) -> Any:
        """Run one attempt (building its agent object first if needed), then what
        follows it (the module docstring)."""
        if not isinstance(message, Work):
            return super().on_receive(message)
        work, run, agent, lined = message, message.run, message.agent, False
        fed = 0  # attempts it fed itself in a row (SELF_FEEDS)
        while True:
            built = agent is None and not (lined and run.context.superseded)
            if built:
                try:
                    agent = contain(self._build, run.agent, run.instance, work.factory)
                except UserCodeFailed as failed:
                    why = f"{FAILED_START.format(run.agent)}: {failed.error}"
                    self._crashed(run, why, unbuilt=True)
                    return None
            if (lined or built) and run.context.superseded:  # (replaced as its factory hung)
                outcome = Outcome(
                    run.agent, run.instance, run.token, ok=False, error=SUPERSEDED, kind=UNSTARTED
                )
            else:
                began = perf_counter()
                try:
                    outcome = run_attempt(
                        agent, run.agent, run.instance, run, self._max_result_bytes
                    )
                except InstanceCrash as crash:
                    agent = work.agent = None  # (the host lets it go, on a thread of its own)
                    self._crashed(run, str(crash))
                    return None
                source = work.source
                if source is not None:  # (a decaying max: one slow action counts a while)
                    took, recent = perf_counter() - began, source.took * DECAY
                    source.took = took if took > recent else recent
            follow, taken = self._next(work, fed >= SELF_FEEDS)
            if follow is not None:
                follow.instance = run.instance
                outcome.next_token, run, lined, fed = follow.token, follow, False, fed + 1
            elif taken is not None:
                outcome.next_token, work, lined, fed = taken.run.token, taken, True, 0
                run, agent = taken.run, taken.agent
            self._reply(outcome)
            if follow is None and taken is None:
                return None

    def _next(self, work: Work, fed_enough: bool) -> tuple[Run | None, Work | None]:
        """What this worker goes on with after ``work``'s attempt: its agent's next
        ready attempt (unless it ``fed_enough`` and the line has work), else a work from
        the line, else nothing (the host let go of it)."""
        source = work.source
        ready = None if source is None else source.ready
        line = self._line
        with work.lock:
            if work.stop:
                return None, None
            taken = take_lined(line) if fed_enough and line else None
            follow = None if ready is None or taken is not None else next_ready(ready)
            if follow is not None:
                work.fed = follow.token
                return follow, None
            if taken is None and line:
                taken = take_lined(line)
            if taken is not None:
                work.fed = taken.run.token  # (the host letting the instance go reads it)
            return None, taken

    def _crashed(self, run: Run, reason: str, *, unbuilt: bool = False) -> None:
        crashed = ChildEventKind.CRASHED
        self._events(InstanceEvent(run.agent, run.instance, crashed, None, reason, unbuilt))
