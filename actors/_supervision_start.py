"""Starting a supervisor: its flags checked, then started alone (the root of a tree) or
as the child of the supervisor whose ``ChildSpec.start`` is running (its failures then
escalate there). The actor itself is in ``_supervision``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pykka

from herder.actors._clock import Clock, SystemClock
from herder.actors._supervised import _await_birth, _current_context, _start_confirmed
from herder.actors._supervision import Listener, _Supervisor
from herder.actors._supervision_specs import (
    Backoff,
    ChildSpec,
    Strategy,
    _coerce,
    check_flags,
    check_new_specs,
)
from herder.store import InvalidInput


def start_supervisor(
    name: str,
    strategy: Strategy = Strategy.ONE_FOR_ONE,
    children: Sequence[ChildSpec] = (),
    *,
    max_restarts: int = 3,
    period: float = 5.0,
    backoff: Backoff | None = None,
    clock: Clock | None = None,
    listener: Listener | None = None,
    on_fatal: Callable[[BaseException], None] | None = None,
    start_timeout: float = 10.0,
) -> pykka.ActorRef[Any]:
    """Start a supervisor and its children (in order) and return its ref.

    Returns only after every child finished ``on_start``; if one fails, the ones already
    started are stopped and :class:`SupervisorStartError` is raised. Called inside another
    supervisor's ``ChildSpec.start``, the new supervisor is that supervisor's child and
    its failures escalate to it. ``listener`` runs on the supervisor thread for every
    :class:`ChildEvent` and must be quick; its exceptions are logged. ``on_fatal`` is
    called once with the :class:`RestartIntensityExceeded` when this supervisor gives up,
    or with the exception of a bug that crashed the supervisor itself (give it to the
    root: nobody above hears of it). The supervisor's methods (``which_children``,
    ``count_children``, ``start_child``, ``start_children``, ``terminate_child``,
    ``restart_child``, ``delete_child``) are called through ``ref.proxy()`` or
    ``ref.ask``; ``ref.stop()``
    stops the children in reverse start order, then the supervisor.
    """
    if not isinstance(name, str) or not name:
        raise InvalidInput(f"start_supervisor: name must be a non-empty string, got {name!r}")
    owner = f"supervisor {name!r}"
    strategy = _coerce(Strategy, "strategy", strategy, owner)
    specs = check_new_specs(children, f"start_supervisor({name!r})")
    check_flags(
        owner,
        max_restarts=max_restarts,
        period=period,
        start_timeout=start_timeout,
        backoff=backoff,
        callbacks={"listener": listener, "on_fatal": on_fatal},
    )

    def make() -> pykka.ActorRef[Any]:
        return _Supervisor.start(
            name=name,
            strategy=strategy,
            children=specs,
            max_restarts=max_restarts,
            period=period,
            backoff=backoff,
            clock=SystemClock() if clock is None else clock,
            listener=listener,
            on_fatal=on_fatal,
            start_timeout=start_timeout,
        )

    ctx = _current_context()
    if ctx is None:
        return _start_confirmed(make, parent=None, child_id=name, timeout=start_timeout)
    return _await_birth(ctx, make(), name, start_timeout)
