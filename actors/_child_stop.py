"""Stopping a supervisor's children: each may take its ``ChildSpec.shutdown`` seconds to
stop gracefully, then its thread is abandoned (threads cannot be killed).

Shutdown timeouts are real waits on threads, so they use real time even under a
FakeClock (which only drives the restart intensity window and backoff timers).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import pykka

from herder.actors._clock import SystemClock
from herder.actors._restarts import Child
from herder.actors._supervision_specs import ChildEventKind
from herder.store import get_logger

_log = get_logger("herder.supervision")
_REAL_CLOCK = SystemClock()

Emit = Callable[[str, ChildEventKind, "pykka.ActorRef[Any] | None", "BaseException | None"], None]


def stop_children(
    children: Iterable[Child],
    *,
    parallel: bool,
    emit: Emit,
    supervisor: object,
    wait: bool = True,
) -> None:
    """Stop ``children`` in the given order, each within its shutdown timeout: one at a
    time, or all stop messages first when ``parallel``; or, unless ``wait``, with no time
    at all (the agent hosts replace an instance or worker whose attempt was fenced out:
    it may hang, and its shutdown would be waited out in vain). ``emit`` reports each
    child as terminated or abandoned; ``supervisor`` names the stopping one in the log."""
    stopping: list[tuple[Child, pykka.ActorRef[Any], pykka.Future[bool], float, float | None]]
    stopping = []
    for child in children:
        child.pending = None
        ref, child.ref = child.ref, None
        if ref is None:
            continue
        grace = child.spec.shutdown if wait else None
        deadline = _REAL_CLOCK.monotonic() + (grace or 0.0)
        stopping.append((child, ref, ref.stop(block=False), deadline, grace))
        if not parallel:
            _await_stop(*stopping.pop(), emit=emit, supervisor=supervisor)
    for entry in stopping:
        _await_stop(*entry, emit=emit, supervisor=supervisor)


def _await_stop(
    child: Child,
    ref: pykka.ActorRef[Any],
    future: pykka.Future[bool],
    deadline: float,
    grace: float | None,
    *,
    emit: Emit,
    supervisor: object,
) -> None:
    try:
        future.get(timeout=max(0.0, deadline - _REAL_CLOCK.monotonic()))
    except pykka.Timeout:
        if grace is not None:
            _log.warning(
                "%s: child %r did not stop within %s s; abandoning its thread",
                supervisor,
                child.spec.id,
                grace,
            )
        else:  # (not waited for: see stop_children)
            _log.warning(
                "%s: child %r replaced without waiting for it: the attempt it runs was "
                "fenced out (timed out, skipped, or past its workflow's deadline) and may "
                "hang; its thread is abandoned, left to finish that attempt on its own "
                "(its answer is ignored)",
                supervisor,
                child.spec.id,
            )
        emit(child.spec.id, ChildEventKind.ABANDONED, ref, None)
        return
    emit(child.spec.id, ChildEventKind.TERMINATED, ref, None)
