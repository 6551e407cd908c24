"""``AnyOf``: a step that several agents can do, each attempt going to a healthy one.

``Workflow.step("flight", agent=AnyOf("airline-eu", "airline-us"), ...)`` compiles to a
step whose ``members`` are the group, in order of preference. The rule that picks the
member of each attempt lives in ``herder.actors.engine._members``; the member used is
recorded with the step (history, ``herder show``), so compensation, probes and recovery
go to the member that did the work.
"""

from __future__ import annotations

from dataclasses import dataclass

from herder.actors import InvalidDefinition
from herder.runtime._routing import template_fields
from herder.store import validate_name


@dataclass(frozen=True, slots=True, init=False)
class AnyOf:
    """Agents able to do a step, in order of preference: each attempt goes to a healthy
    one (see docs/failover.md)."""

    members: tuple[str, ...]

    def __init__(self, *members: str) -> None:
        names = tuple(validate_name("agent", m) for m in members)
        if len(names) < 2:
            raise InvalidDefinition(
                f"AnyOf needs at least two agents, got {list(names)}; name a single agent "
                "as agent='name'"
            )
        if len(set(names)) != len(names):
            raise InvalidDefinition(f"AnyOf names an agent twice: {list(names)}")
        for name in names:
            if template_fields(name):
                raise InvalidDefinition(
                    f"AnyOf({', '.join(map(repr, names))}): member {name!r} is a template; "
                    "AnyOf takes fixed agent names only (route to one agent with a "
                    "template, or name the members)"
                )
        object.__setattr__(self, "members", names)

    def __repr__(self) -> str:
        return f"AnyOf({', '.join(map(repr, self.members))})"
