"""One thread of the pooled host: a pykka worker actor that runs attempts of any agent.

The host tells a worker a :class:`Work` (an attempt, the agent object that serves it or
None, and the agent's factory); the worker builds the object when there is none yet
(``contain``-ed: the factory is user code), runs the attempt with the shared
:func:`~herder.actors._action.run_attempt`, and reports back to the Scheduler: the
:class:`Outcome`, or an :class:`InstanceEvent` ``crashed`` when the factory failed or the
action raised :class:`InstanceCrash` (the agent object broke, not the worker). An object
it built reaches the host through ``built`` before the outcome is sent.

Self-feed: when the attempt ends, the worker pops the agent's next ready attempt
(``Work.source.ready``, actors/_ahead.py), unless the host has since let the instance go
(``Work.stop``), and runs it on the same agent object; the outcome it reports says so
(``next_token``), in the same message.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from herder.actors._action import run_attempt
from herder.actors._agent import Agent
from herder.actors._ahead import next_ready
from herder.actors._host import InstanceCrash
from herder.actors._messages import InstanceEvent, Outcome, Run
from herder.actors._supervised import SupervisedActor
from herder.actors._supervision_specs import ChildEventKind
from herder.store import UserCodeFailed, contain


class ReadySource(Protocol):
    """What a worker self-feeds from: the agent's ready deque, once it has one."""

    ready: deque[Run] | None


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
    # the host letting the instance go knows whether the worker had gone on already.
    stop: bool = False
    fed: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


class PoolWorker(SupervisedActor):
    """One pooled thread: runs attempts of any agent, one at a time."""

    use_daemon_thread = True

    def __init__(
        self,
        reply: Callable[[Outcome], None],
        events: Callable[[InstanceEvent], None],
        built: Callable[[str, str, Any], None],
        max_result_bytes: int,
    ) -> None:
        super().__init__()
        self._reply = reply
        self._events = events
        self._built = built
        self._max_result_bytes = max_result_bytes

    def on_receive(self, message: Any) -> Any:
        """Run one attempt (building its agent object first if needed)."""
        if not isinstance(message, Work):
            return super().on_receive(message)
        run = message.run
        agent = message.agent
        if agent is None:
            try:
                agent = contain(message.factory)
            except UserCodeFailed as failed:
                self._crashed(run, f"agent {run.agent!r} failed to start: {failed.error}")
                return None
            self._built(run.agent, run.instance, agent)
        source = message.source
        while True:
            try:
                outcome = run_attempt(agent, run.agent, run.instance, run, self._max_result_bytes)
            except InstanceCrash as crash:
                self._crashed(run, str(crash))
                return None
            follow = None
            ready = None if source is None else source.ready
            if ready is not None:
                with message.lock:
                    follow = None if message.stop else next_ready(ready)
                    if follow is not None:
                        message.fed = follow.token
            if follow is not None:
                follow.instance = run.instance
                outcome.next_token = follow.token
            self._reply(outcome)
            if follow is None:
                return None
            run = follow

    def _crashed(self, run: Run, reason: str) -> None:
        self._events(InstanceEvent(run.agent, run.instance, ChildEventKind.CRASHED, None, reason))
