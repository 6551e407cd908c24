"""Running one attempt of an action: the part every agent host shares.

:func:`run_attempt` looks the action up on the agent object, calls it with the attempt's
:class:`StepContext`, and turns whatever happens into an :class:`Outcome` of plain data
(:func:`run_attempt_async` likewise on an event loop, the asyncio host's):

- a result is normalised (msgpack-able, within ``max_result_bytes``); ``COMPLETE_LATER``
  becomes a hand-off (``kind="later"``) and a :class:`ProbeResult` a verdict; a
  compensation's value is dropped unread (nothing stores it: it returned, so it undid);
- :class:`Permanent`, a missing or private action, a coroutine (an ``async def`` the
  thread host cannot run) and a generator (a ``def`` or ``async def`` with a ``yield``,
  none of whose body ran) fail the step for good, as having taken no effect, on every
  host (:func:`refuse_unrun`);
- a result (or heartbeat details) that cannot be stored fails it too, but as having
  taken effect (:data:`UNSTORABLE_ERROR`: no retry, and its compensation runs);
- anything else raised, ``BaseException`` included, fails it transiently, described
  without running more of the user's code than ``store/_untrusted.py`` allows;
- :class:`InstanceCrash` is re-raised (as a fresh one, without the user's object) so the
  host can crash the instance that ran it.
"""

from __future__ import annotations

import asyncio
import inspect
import types
from collections.abc import Callable
from typing import Any

from herder.actors._agent import action_names, own_input
from herder.actors._errors import Permanent
from herder.actors._host import InstanceCrash
from herder.actors._messages import UNSTARTED, Outcome, Run
from herder.actors._outcomes import COMPLETE_LATER, DONE, NOT_DONE, RUNNING, ProbeResult
from herder.actors.engine import UNSTORABLE_ERROR, OutcomeKind
from herder.store import (
    EncodeError,
    bounded_traceback,
    describe,
    error_types,
    normalize,
    type_name,
)

_PLAIN, _LATER = OutcomeKind.PLAIN.value, OutcomeKind.LATER.value  # (an enum's .value is 2 calls)


def run_attempt(
    agent: Any, agent_name: str, instance_id: str, run: Run, max_result_bytes: int
) -> Outcome:
    """Run ``run`` on the agent object ``agent``; see the module docstring."""
    if not leased(run, LEASE_WAIT):
        return unleased(agent_name, instance_id, run)

    def call() -> Any:
        return refuse_unrun(call_action(agent, agent_name, run), agent_name, run)

    return settle(call, agent_name, instance_id, run, max_result_bytes)


async def run_attempt_async(
    agent: Any, agent_name: str, instance_id: str, run: Run, max_result_bytes: int
) -> Outcome:
    """:func:`~herder.actors._action.run_attempt` for the loop: the action's coroutine (or
    a coroutine a plain ``def`` returned) is awaited first; then the outcome is settled."""
    if not leased(run, 0.0) and not await renewed(run):  # (waited for off the loop)
        return unleased(agent_name, instance_id, run)
    try:
        value = call_action(agent, agent_name, run)
        if inspect.iscoroutine(value) or isinstance(value, asyncio.Future):
            value = await value
        else:  # (a generator: it ran nothing, as on the thread hosts)
            refuse_unrun(value, agent_name, run)
    except BaseException as exc:  # user code may raise anything at all
        error: BaseException | None = exc
    else:
        error = None

    def replay() -> Any:
        if error is not None:
            raise error
        return value

    try:
        return settle(replay, agent_name, instance_id, run, max_result_bytes)
    finally:  # (raised again, it holds replay's frame, which holds it: not a cycle now)
        error = None


def refuse_unrun(value: Any, agent_name: str, run: Run) -> Any:
    """``value``, unless it is what an action returns without having run at all (its
    body never ran, so it took no effect): then :class:`Permanent`, saying why. The
    asyncio host awaits a coroutine first: only generators reach it here."""
    unrun = _UNRUN.get(type(value))
    if unrun is None:
        return value
    if type(value) is not types.AsyncGeneratorType:  # (one never started holds nothing)
        value.close()  # never started: no user code runs
    raise Permanent(f"action {run.action!r} of agent {agent_name!r} returned {unrun}")


_UNRUN: dict[type, str] = {
    types.CoroutineType: (  # an async def the class did not show
        "a coroutine (async def); the thread host cannot run it: make it a plain def, or "
        "register the agent with add_agent(..., asyncio=True)"
    ),
    types.GeneratorType: (  # a def with a yield: calling it runs none of its body
        "a generator (its def has a yield), so none of its body ran: return the "
        "values (a list, say) instead of yielding them"
    ),
    types.AsyncGeneratorType: (  # an async def with a yield: none of its body runs either
        "an async generator (its async def has a yield), so none of its body ran: "
        "return the values (a list, say) instead of yielding them"
    ),
}
"""What an action may return without having run at all, and what to tell its author."""


LEASE_WAIT = 5.0
"""Seconds an attempt about to start waits for the lease to be renewed (AttemptPort.leased)."""


def leased(run: Run, wait: float) -> bool:
    """Whether ``run`` may start as far as the lease goes (its port's ``leased``; a port
    without one, a remote worker's or a test's, knows of no lease)."""
    check = getattr(run.context._port, "leased", None)
    return check is None or bool(check(wait))


async def renewed(run: Run) -> bool:
    """Whether the lease was renewed within ``LEASE_WAIT`` (a runtime paused past it), as
    a thread host waits: waited for on a thread of the loop's executor, never on the loop.
    Answered unstarted at once instead, the step ran again at once, and again, until the
    renewal came. False when cancelled meanwhile (its answer is fenced out then)."""
    try:
        return await asyncio.to_thread(leased, run, LEASE_WAIT)
    except BaseException:  # (cancelled, or the loop's executor shut down: not started)
        return False


def unleased(agent_name: str, instance_id: str, run: Run) -> Outcome:
    """The outcome of an attempt not started because the lease may be another's."""
    error = "not started: this runtime may no longer hold the lease (it was paused past it)"
    return Outcome(agent_name, instance_id, run.token, ok=False, error=error, kind=UNSTARTED)


def call_action(agent: Any, agent_name: str, run: Run) -> Any:
    """Look ``run``'s action up on ``agent`` and call it (:class:`Permanent` if there is
    no such public action); what it returns is the caller's to settle."""
    method = getattr(agent, run.action, None)
    if run.action.startswith("_") or not callable(method):
        made = type_name(type(agent))  # (a factory that returned None, say)
        hint = ": does the factory return the agent it builds?" if agent is None else ""
        if type(agent) is types.CoroutineType:  # an async def factory the thread host got
            agent.close()  # never started: no user code runs
            hint = (
                ": an async def factory, which only the asyncio host awaits; register the "
                "agent with add_agent(..., asyncio=True)"
            )
        raise Permanent(
            f"agent {agent_name!r} has no action {run.action!r} (its factory made a {made}{hint})"
        )
    return method(own_input(run.context))


def settle(
    produce: Callable[[], Any], agent_name: str, instance_id: str, run: Run, max_result_bytes: int
) -> Outcome:
    """The :class:`Outcome` of what ``produce()`` returns or raises (see the module
    docstring); an asyncio host passes a ``produce`` that replays an awaited result."""
    try:
        value = produce()
        kind = _PLAIN
        if value is COMPLETE_LATER:
            value, kind = None, _LATER
        elif isinstance(value, ProbeResult):
            value, kind = value.result, _verdict(value.status)
    except InstanceCrash as exc:
        crash = describe(exc)  # raised below, without the user's object
    except Permanent as exc:
        return _failed(agent_name, instance_id, run, exc, permanent=True)
    except EncodeError as exc:  # heartbeat details (say) that herder refused
        return _failed(agent_name, instance_id, run, exc, permanent=False, unstorable=True)
    except BaseException as exc:  # user code may raise anything at all
        return _failed(agent_name, instance_id, run, exc, permanent=False)
    else:
        if run.context.compensating:  # its value is never stored: it returned, it undid
            if type(value) is not types.CoroutineType:  # (one is an undo never run)
                return Outcome(agent_name, instance_id, run.token, ok=True, kind=kind)
            never = _unawaited(value, f"compensation {run.action!r}")
            return _failed(agent_name, instance_id, run, never, permanent=False, unstorable=True)
        what = f"result of action {run.action!r}"
        try:
            result = normalize(value, limit=max_result_bytes, what=what)
        except BaseException as exc:  # an EncodeError (normalize reads the user's object)
            forgot = type(value) is types.CoroutineType  # (looked at once refused: no cost)
            error = _unawaited(value, what) if forgot else exc
            return _failed(agent_name, instance_id, run, error, permanent=False, unstorable=True)
        return Outcome(agent_name, instance_id, run.token, ok=True, result=result, kind=kind)
    # (Never bound here: this frame, which holds ``produce`` and through it the agent
    # object, would be in a cycle with the exception's traceback, and the object dropped
    # only by the garbage collector, on whichever thread it runs: the Scheduler's, say.)
    raise InstanceCrash(crash)


def _unawaited(coroutine: types.CoroutineType[Any, Any, Any], what: str) -> EncodeError:
    """The error of an action that returned a coroutine nobody awaited (an ``await``
    forgotten, in an ``async def`` or in what a plain ``def`` on the asyncio host returned),
    closed first if it never started: its body never ran, and closing it runs none of it
    (nor is it left to warn, at the garbage collector's, "never awaited" from herder's code).
    A coroutine the user had started is left as it is: closing it would run its code."""
    if inspect.getcoroutinestate(coroutine) == inspect.CORO_CREATED:
        coroutine.close()
    return EncodeError(
        f"{what} is a coroutine that was never awaited (did you forget await?): await it in "
        "the action and return what it gives"
    )


def _failed(
    agent_name: str,
    instance_id: str,
    run: Run,
    exc: BaseException,
    *,
    permanent: bool,
    unstorable: bool = False,
) -> Outcome:
    types = error_types(exc)
    return Outcome(
        agent_name,
        instance_id,
        run.token,
        ok=False,
        error=describe(exc),
        error_types=(UNSTORABLE_ERROR, *types) if unstorable else types,
        permanent=permanent,
        traceback=bounded_traceback(exc),
    )


def _verdict(status: object) -> str:
    """A probe's verdict as plain text the Scheduler knows, or ``"?"``, which it refuses
    (never the user's object: the Scheduler would compare it on its own thread)."""
    return status if type(status) is str and status in (DONE, NOT_DONE, RUNNING) else "?"


def coroutine_actions(agent_type: type) -> tuple[str, ...]:
    """The actions (probes and compensations included) of an agent class that are
    ``async def``: calling one returns a coroutine, which a thread host cannot run.
    ``health`` is none: its check runs on a thread of its own, which runs an ``async def
    health`` to its end (actors/_health.py), so it places the agent on no host."""
    return tuple(
        name
        for name in sorted(action_names(agent_type) - {"health"})
        if inspect.iscoroutinefunction(getattr(agent_type, name))
        or inspect.isasyncgenfunction(getattr(agent_type, name))
    )
