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
    time, or all stop messages first when ``parallel``; or, unless ``wait`` (the caller
    knows they are stuck), with no time at all. ``emit`` reports each child as
    terminated or abandoned; ``supervisor`` names the stopping one in the log."""
    stopping: list[tuple[Child, pykka.ActorRef[Any], pykka.Future[bool], float, float]] = []
    for child in children:
        child.pending = None
        ref, child.ref = child.ref, None
        if ref is None:
            continue
        grace = child.spec.shutdown if wait else 0.0
        deadline = _REAL_CLOCK.monotonic() + grace
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
    grace: float,
    *,
    emit: Emit,
    supervisor: object,
) -> None:
    try:
        future.get(timeout=max(0.0, deadline - _REAL_CLOCK.monotonic()))
    except pykka.Timeout:
        _log.warning(
            "%s: child %r did not stop within %s s; abandoning its thread",
            supervisor,
            child.spec.id,
            grace,
        )
        emit(child.spec.id, ChildEventKind.ABANDONED, ref, None)
        return
    emit(child.spec.id, ChildEventKind.TERMINATED, ref, None)
