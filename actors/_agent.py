"""What user code sees of an agent: the :class:`Agent` base class and :class:`StepContext`.

An agent wraps one remote resource; its public methods are actions. An action receives a
:class:`StepContext` and returns a msgpack-serialisable result. Raising
:class:`~herder.actors._errors.Permanent` fails the step for good; any other exception is
transient and retried under the step's policy.

``StepContext`` is plain data plus a small port back to the runtime (``heartbeat`` and the
``cancelled``/``superseded`` flags), so an action could later run somewhere other than a
thread of this process.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from herder.actors._outcomes import COMPLETE_LATER, task_token
from herder.store import normalize, private_copy

MAX_HEARTBEAT_BYTES = 64 * 1024
"""Largest heartbeat details (encoded): they are rewritten into the step on every beat."""


class Agent:
    """Base class for agents. Subclass it; each public method taking a ctx is an action.

    One instance serves one step at a time, so an instance may keep a connection to its
    remote resource. The runtime creates instances through the factory given to
    ``Runtime.add_agent`` and may create several (``concurrency``) or discard idle ones.
    """


def action_names(agent_type: type) -> frozenset[str]:
    """The public callable attributes of an agent class: the actions it offers."""
    return frozenset(
        name
        for name, value in inspect.getmembers(agent_type)
        if not name.startswith("_") and callable(value) and not isinstance(value, type)
    )


_PARTIAL_FUNC = functools.partial.__dict__["func"]


def agent_class_of(factory: Callable[[], object]) -> type | None:
    """The Agent subclass a factory builds, when it can be told without calling it.

    Told from types alone: no attribute of the user's factory is looked up (its
    ``__getattr__`` might raise anything, and this runs on the Scheduler's thread too).
    """
    target: Any = factory
    while issubclass(type(target), functools.partial):  # possibly nested
        target = _PARTIAL_FUNC.__get__(target)
    return target if issubclass(type(target), type) else None


class AttemptPort(Protocol):
    """How a running action talks back to the runtime."""

    cancelled: bool
    superseded: bool

    def heartbeat(self, details: Any) -> None:
        """Report liveness (and optional progress details) for the running attempt."""
        ...


def own_input(context: StepContext) -> StepContext:
    """``context`` with an input of the action's own, copied on its thread just before
    the action runs (the runtime hands the attempt the input as kept)."""
    object.__setattr__(context, "input", private_copy(context.input))  # (once per attempt)
    return context


@dataclass(frozen=True, slots=True)
class StepContext:
    """Everything an action knows about the step it runs.

    ``results`` holds the results of every step of this workflow that has succeeded so
    far. ``input`` and ``results`` are the attempt's own copies: changing them changes
    neither the workflow's stored input nor what another step sees.
    ``idempotency_key`` is stable across retries and crashes: pass it to the remote
    side so a repeated request is recognised. ``token`` is the attempt's fencing token:
    it grows with every new attempt, so a remote service that supports conditional
    writes can refuse a write carrying a lower token than one it already saw.
    ``compensating`` is true when the action is a compensation undoing this step.
    ``trace_context`` is the W3C ``traceparent`` of this attempt's span when the runtime
    traces (``herder[otel]``, docs/tracing.md), for the action to pass to its remote
    calls; None otherwise. ``deadline`` is the time by which the workflow must have ended
    (``start(deadline=)``; seconds since the epoch on the runtime's clock, compare it with
    ``time.time()``), or None: past it the attempt is superseded and the workflow is
    compensated, so a long action may stop early or pass it on as a remote timeout.
    """

    workflow_id: str
    step: str
    action: str
    attempt: int
    input: Any
    results: Mapping[str, Any]
    idempotency_key: str
    token: int
    compensating: bool
    _port: AttemptPort
    trace_context: str | None = None
    deadline: float | None = None

    def heartbeat(self, details: Any = None) -> None:
        """Tell the runtime this attempt is alive; resets its heartbeat timeout.

        Only a step with a ``heartbeat_timeout`` records beats (a probe's are ignored):
        elsewhere the call checks ``details`` and nothing more. A beat within a quarter of
        that timeout of the last one sent is dropped, its details too: the step keeps
        (and the inbox shows) the details of the last beat sent. ``details`` must be
        plain data of at most :data:`MAX_HEARTBEAT_BYTES` encoded; otherwise
        :class:`EncodeError` is raised here, in the action, which fails the step for good
        unless the action handles it.
        """
        if details is not None:
            details = normalize(details, limit=MAX_HEARTBEAT_BYTES, what="heartbeat details")
        self._port.heartbeat(details)

    @property
    def cancelled(self) -> bool:
        """True once the workflow is being cancelled or compensated (a step failed for
        good, or an operator's cancel or compensate): what the action does will be
        undone, so a long action should stop early (past a deadline it is superseded).
        Compensations and probes are never told: they are what the undoing needs."""
        return self._port.cancelled

    @property
    def superseded(self) -> bool:
        """True once this attempt was replaced (timed out, retried) or its workflow ended.

        Its answer will be ignored, so a long action should stop early. To fence the
        remote side too, pass :attr:`token` along with a conditional write.
        """
        return self._port.superseded

    @property
    def task_token(self) -> str:
        """An opaque string naming this attempt, for ``Runtime.complete_step``/``fail_step``."""
        return task_token(self.workflow_id, self.step, self.token)

    def complete_later(self) -> Any:
        """Return this from an action to complete the step later, from anywhere in the process.

        The step then waits (under its timeout and heartbeat timeout) until
        ``rt.complete_step(ctx.task_token, result)`` or ``rt.fail_step(...)`` is called.
        """
        return COMPLETE_LATER
