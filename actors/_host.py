"""The agent host seam: how the Scheduler has attempts run, whatever runs them.

The Scheduler (one thread) drives an :class:`AgentHost`; a host runs each attempt with
:func:`~herder.actors._action.run_attempt` wherever it likes (a pykka actor per instance,
a shared pool, an event loop) and reports back by messages to the Scheduler:

=====================  ===========================================================
Scheduler -> host      meaning
=====================  ===========================================================
``add`` / ``remove``   register (or re-register) / unregister an agent name (``remove``
                       may return the tokens of attempts sent that will not start now,
                       each a :class:`GivenUp`)
``queue``              the agent's queue of jobs waiting for capacity (Scheduler-owned)
``acquire``            capacity: reserve an idle instance for a token, or ask for more
``send``               submit an attempt (a :class:`Run`) to the reserved instance
``release``            the instance's attempt ended: it is idle again
``replace_token``      cancel/replace the attempt holding a fencing token (it hangs)
``replace``            the same, by instance id
``busy_tokens``        tokens of the attempts running for an agent
``on_event``           apply a lifecycle event the host sent itself through the Scheduler
``passivate``          let instances idle since before a time go (memory, threads)
``stats``              per agent: instances, busy, queued
``host_stats``         the host's own gauges (threads, abandoned threads)
``ready_queue``        optional: the agent's deque of durable attempts reserved ahead,
                       which the host's workers pop from themselves (self-feed)
``moved_on``           optional: an instance that answered ``token`` went on with the
                       ready attempt ``next_token`` (the Outcome said so); False: its
                       worker went on with another instance's attempt
``route``              optional: the host that serves every call about an agent (a
                       router's placement; it changes only at ``add``)
``waiting``            optional: whether a sent attempt still waits for a thread (the
                       pool host's line): a cancel gives up its step, as unstarted
``pumped``             optional: the agents touched since an ``on_event`` were pumped
``forget``             optional: drop the record of a name no longer served once nothing
                       of it is left (no queued job, no instance); True if none is left
=====================  ===========================================================

A host without the optional methods gets reserve-ahead attempts handed over by the
Scheduler (``_ahead.py``): :func:`ready_queue` and :func:`moved_on` supply the defaults.

Host -> Scheduler (told, never asked): :class:`Outcome` (an attempt ended: result, error,
probe verdict or hand-off), :class:`Heartbeat` (through the attempt's port),
:class:`InstanceEvent` (an instance started, crashed or was lost; the Scheduler hands it
back to ``on_event``, which returns the tokens of attempts lost with it or raises
:class:`AgentUnavailable` when no instance could be started; a token lost only because
the host gave up on the agent's instances comes as a :class:`GivenUp`). Closing is the
supervision tree's business: a host's actors live under the ``agents`` supervisor.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from herder.actors._agent import Agent
from herder.actors._messages import InstanceEvent, Run
from herder.actors._queue import JobQueue
from herder.store import InvalidInput

HOST_KINDS = ("thread", "pool")
"""The hosts a runtime can run its agents on (``Runtime(agent_host=...)``)."""


def host_kind(name: object) -> str:
    """``name`` if it names a host kind; :class:`InvalidInput` otherwise."""
    if name not in HOST_KINDS:
        raise InvalidInput(f"agent_host must be one of {HOST_KINDS}, got {name!r}")
    return str(name)


class AgentUnavailable(Exception):
    """No instance of an agent could be started (its factory or start-up failed)."""


FAILED_START = "an instance of agent {!r} failed to start"
"""What every host says, before the reason, when an agent's factory or start-up failed."""


class GivenUp(int):
    """The token of an attempt lost because its host gave up on the agent's instances
    (their restart intensity was exceeded, by other attempts' crashes), not because its
    own action crashed its instance: ``on_event`` returns it so, and its step is not
    charged for it (``actors/_lost.py``)."""

    __slots__ = ()


class InstanceCrash(Exception):
    """Raised by an action to crash its agent instance (not just fail the step).

    Used by the testing kit to simulate a host-level crash; the supervision tree restarts
    the instance and the step is retried at once.
    """


class AgentHost(Protocol):
    """What the Scheduler needs of a host (see the module docstring); driven from the
    Scheduler's thread only."""

    def add(self, name: str, factory: Callable[[], Agent], concurrency: int) -> list[int] | None:
        """Serve ``name`` (again); an attempt not started on the host it leaves, if it
        moved to another (the router's), or that would start as registered before (the
        pool host's), is lost as at :meth:`remove`."""

    def remove(self, name: str) -> list[int] | None: ...

    def queue(self, name: str) -> JobQueue[Any] | None: ...

    def acquire(self, name: str, token: int, backlog: int = 1) -> str | None: ...

    def send(self, name: str, instance_id: str, run: Run) -> bool: ...

    def release(self, name: str, instance_id: str, token: int | None, now: float) -> bool: ...

    def busy_tokens(self, name: str) -> list[int]: ...

    def replace_token(self, name: str, token: int) -> None: ...

    def replace(self, name: str, instance_id: str) -> None: ...

    def on_event(self, event: InstanceEvent, now: float) -> list[int]: ...

    def passivate(self, idle_before: float, limit: int = 256) -> int: ...

    def stats(self) -> dict[str, dict[str, int]]: ...

    def host_stats(self) -> dict[str, int]: ...


def ready_queue(host: object, name: str) -> deque[Run] | None:
    """``host.ready_queue(name)``: the deque its workers self-feed from; None when the
    host does not self-feed (the Scheduler then hands ready attempts over itself)."""
    method = getattr(host, "ready_queue", None)
    return None if method is None else method(name)


def pumped(host: object) -> Callable[[], None]:
    """``host.pumped``, called after the pump that follows an ``on_event`` (a host
    holding a worker for an agent whose wake-up landed passes it on if that pump took
    nothing; other pumps have nothing to tell it, and skip the call); a no-op for a host
    without it."""
    method = getattr(host, "pumped", None)
    return _nothing if method is None else method


def _nothing() -> None:
    pass


def forget(host: object, name: str) -> bool:
    """``host.forget(name)``: whether ``host`` dropped (or never held) its record of
    ``name``; always False for a host without it (it keeps every name it served)."""
    method = getattr(host, "forget", None)
    return method is not None and bool(method(name))


def waiting(host: object) -> Callable[[int], bool]:
    """``host.waiting``: whether the attempt sent with a token has not started, waiting
    for a thread; always False for a host without it."""
    method = getattr(host, "waiting", None)
    return _never if method is None else method


def _never(_token: int) -> bool:
    return False


def routed(host: AgentHost, name: str) -> AgentHost:
    """``host.route(name)``: the host behind a router that serves every call about
    ``name`` until ``name`` is added again; ``host`` itself when it routes nothing."""
    method = getattr(host, "route", None)
    return host if method is None else method(name)


def moved_on(host: object, name: str, instance_id: str, token: int, next_token: int) -> bool:
    """``host.moved_on(...)``: the instance that answered ``token`` now runs
    ``next_token`` (only a host that self-feeds sends such answers); False if the worker
    went on with another instance's attempt instead (the pool host's line): the instance
    that answered is free."""
    method = getattr(host, "moved_on", None)
    return method is None or method(name, instance_id, token, next_token) is not False
