"""Running one attempt of an action, the same way on every agent host.

(The host-independent part of running an attempt; the hosts call it.)
"""

from __future__ import annotations

import inspect

from herder.actors._agent import action_names


def coroutine_actions(agent_type: type) -> tuple[str, ...]:
    """The actions (probes and compensations included) of an agent class that are
    ``async def``: calling one returns a coroutine, which a thread host cannot run."""
    return tuple(
        name
        for name in sorted(action_names(agent_type))
        if inspect.iscoroutinefunction(getattr(agent_type, name))
        or inspect.isasyncgenfunction(getattr(agent_type, name))
    )
