"""The runtime's supervision tree: one-for-all over the agents' supervisor, the
Scheduler and the workflow Supervisor (the watchdog that sweeps the timer index).

The agents' supervisor starts first (the Scheduler hands attempts to it), the Scheduler
second (it recovers the store), the watchdog last; if any of them keeps crashing past the
root's restart intensity, ``on_fatal`` is told and the runtime stops for good.

The agents' supervisor is given ``instance_shutdown`` (and a margin, at least ChildSpec's
default) to stop: its instances are each promised that long to end an attempt.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import pykka

from herder.actors._clock import Clock
from herder.actors._engine import EngineContext
from herder.actors._errors import ROOT
from herder.actors._hosted import agents_listener
from herder.actors._scheduler import Scheduler
from herder.actors._supervision_specs import ChildSpec, Restart, Strategy
from herder.actors._supervision_start import start_supervisor
from herder.actors._supervisor import WorkflowSupervisor

_MARGIN = 1.0
"""Seconds the agents' supervisor is given beyond ``instance_shutdown`` to stop: its
agents' supervisors end after their instances."""


def start_tree(
    ctx: EngineContext,
    clock: Clock,
    sweep_interval: float,
    *,
    local_commands: Mapping[str, Callable[[dict[str, Any]], None]],
    on_fatal: Callable[[BaseException], None],
) -> pykka.ActorRef[Any]:
    """Start the tree over ``ctx``; returns its root. ``local_commands`` are the command
    channel's kinds the watchdog hands to the runtime (``purge``)."""

    def start_agents() -> pykka.ActorRef[Any]:
        listener = agents_listener(ctx.tell_scheduler)
        ref = start_supervisor("agents", Strategy.ONE_FOR_ONE, listener=listener, clock=clock)
        ctx.agents_supervisor = ref
        return ref

    # (ChildSpec's 5 s default cut the stop of an instance promised instance_shutdown=9)
    shutdown = max(ChildSpec.shutdown, ctx.config.instance_shutdown + _MARGIN)
    children = [
        ChildSpec(id="agents", start=start_agents, restart=Restart.PERMANENT, shutdown=shutdown),
        ChildSpec(id="scheduler", start=lambda: Scheduler.start(ctx)),
        ChildSpec(
            id="supervisor",
            start=lambda: WorkflowSupervisor.start(
                ctx, sweep_interval, local_commands=local_commands
            ),
        ),
    ]
    return start_supervisor(ROOT, Strategy.ONE_FOR_ALL, children, clock=clock, on_fatal=on_fatal)
