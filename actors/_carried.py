"""Attempts a Scheduler left running when it ended, carried over to the next one.

When the supervision tree restarts a Scheduler (it crashed, or a sibling did), it stops
the agents' actors first, but an attempt in the user's action cannot be stopped: its
thread is abandoned and runs on, and its answer, when it comes, reaches the next
Scheduler (``ctx.answers``), which ignores it (its token is stale). That Scheduler's
recovery runs the step again at once; without this, beside the old attempt, and the
agent ran more than ``concurrency`` attempts at once (the step twice).

So a Scheduler that ends notes the attempts it had handed to an agent host, with what
runs each (the actor, its thread, on the thread hosts; the task on the asyncio host):
:func:`left_running`, into ``ctx.carried``, with those it carried itself. The next one,
once attached to its new host, has each that still runs (a stopped actor, alive, is
still in the action) hold a slot of its agent (:func:`carry_over`; the host's
``carry``): on the thread hosts until its stale answer frees it, or, should it hang,
until its deadline passes, when its slot is freed as a timed-out hung attempt's is
(``Dispatcher.loose``); on the asyncio host, whose start cancelled it, as a replaced
attempt's, until its task ends or ``shutdown`` seconds on. Attempts on Ray run in
processes of their own. Their steps are held back by recovery until then
(``Machine.carried``: the stale answer, the asyncio host's news that the slot serves
again, or the step's timer at its deadline lets it go on), so that a step never runs
twice at once, nor a cancelled workflow's step again (it is given up once it ended).

Imports: the engine's in-flight attempts and the agent host seam.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pykka

from herder.actors._host import waiting

if TYPE_CHECKING:
    from herder.actors._dispatch import Dispatcher
    from herder.actors._engine import EngineContext
    from herder.actors.engine import Engine


def left_running(ctx: EngineContext, engine: Engine, dispatch: Dispatcher) -> None:
    """Note in ``ctx.carried`` (agent, instance, token, deadline, actor) of each attempt
    handed to an instance of a thread host, sent and not waiting in the pool host's line
    (those never start), of each fenced that its instance still runs (``loose``), and of
    each this Scheduler carried whose actor still lives."""
    host: Any = getattr(dispatch, "host", None)  # (None: it never attached)
    runner = getattr(host, "runner", None)
    if runner is None:
        return
    lined, holding = waiting(host), getattr(host, "holding", None)
    kept = [entry for entry in ctx.carried if entry[4].is_alive()]
    carried = {entry[2] for entry in kept}  # (watched in ``loose`` too)
    running = [
        (a.agent, a.instance, a.token, a.deadline)
        for a in engine.inflight.values()
        if a.sent and a.instance and not lined(a.token)
    ]
    for token, (agent, deadline) in dispatch.loose.watched.items():  # fenced, running on
        instance = None if holding is None or token in carried else holding(agent, token)
        if instance is not None:
            running.append((agent, instance, token, deadline))
    ctx.carried = kept + [(*attempt, runner(attempt[0], attempt[1])) for attempt in running]


def carry_over(ctx: EngineContext, dispatch: Dispatcher) -> dict[int, str | None]:
    """Hold a slot on ``dispatch``'s (new) host for each attempt the last Scheduler left
    in the action (its actor alive), watched until its deadline; on the new one's start.
    Returns their tokens (for ``Machine.carried``: recovery holds their steps back until
    each ends: its stale answer, or on the asyncio host its task's end)."""
    carry = getattr(dispatch.host, "carry", None)
    alive = [entry for entry in ctx.carried if entry[4] is not None and entry[4].is_alive()]
    ctx.carried = []
    held: dict[int, str | None] = {}
    for agent, instance, token, deadline, actor in alive:
        if carry is not None and carry(agent, instance, token, actor):
            ctx.carried.append((agent, instance, token, deadline, actor))
            if deadline is not None:
                dispatch.loose.watch(agent, token, deadline)
            held[token] = None
    return held


def count_left(ctx: EngineContext, host: dict[str, Any]) -> None:
    """Count in ``host["abandoned_threads"]`` the threads still in an attempt a Scheduler
    left running: the tree's news of their abandon came while no Scheduler ran."""
    left = sum(1 for e in ctx.carried if isinstance(e[4], pykka.ActorRef) and e[4].is_alive())
    host["abandoned_threads"] = host.get("abandoned_threads", 0) + left
