"""The resource chosen at run time: a step's agent named by a template over the input.

``Workflow.step(..., agent="device:{device}")`` makes one definition serve every device:
when a workflow starts, each templated agent is formatted from the workflow's input (a
map) and the resolved names are stored with the workflow record (``agents``, step name ->
agent), in the same transaction that creates it. From then on the stored name is the
step's agent: dispatch, retries, probes, compensation and recovery after a crash all go
to it, even if the definition's template changes under a new version.

A template holds ``{key}`` fields only (no indexing, attributes, conversions or format
specs), so resolving one cannot run user code or reach into objects; each key must be
a top-level key of the input whose value is a str or an int (not a bool).
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from typing import Any

from herder.actors import InvalidDefinition, UnknownName
from herder.store import InvalidInput, Plan, validate_name

_FORMATTER = string.Formatter()


def template_fields(agent: str) -> tuple[str, ...]:
    """The input keys an agent template names; ``()`` for a fixed agent name.

    Raises :class:`InvalidDefinition` for a template that is not plain ``{key}`` fields.
    """
    try:
        parts = list(_FORMATTER.parse(agent))
    except ValueError as exc:
        raise InvalidDefinition(
            f"agent {agent!r} is not a valid template ({exc}); write input keys as "
            "{key} and a literal brace as {{ or }}"
        ) from None
    keys = []
    for _literal, field, spec, conversion in parts:
        if field is None:
            continue
        if not field.isidentifier() or spec or conversion:
            raise InvalidDefinition(
                f"agent template {agent!r}: field {{{field}{'!' + conversion if conversion else ''}"
                f"{':' + spec if spec else ''}}} must be a plain input key such as {{device}} "
                "(no index, attribute, conversion or format spec)"
            )
        keys.append(field)
    return tuple(keys)


def resolve_agents(plan: Plan, input: Any) -> dict[str, str]:
    """Step name -> agent name for every templated step of ``plan``, from ``input``.

    Raises :class:`InvalidInput` when the input is not a map, lacks a key a template
    names, or gives it a value that is not a str or a number, or when the resulting
    name is not a usable agent name. Nothing is stored when this raises.
    """
    out: dict[str, str] = {}
    for spec in plan.steps:
        keys = template_fields(spec.agent)
        if not keys:
            continue
        if not isinstance(input, Mapping):
            raise InvalidInput(
                f"workflow {plan.name!r} step {spec.name!r} takes its agent from the input "
                f"({spec.agent!r}), so the input must be a map with {list(keys)}; got "
                f"{type(input).__name__}"
            )
        values = {}
        for key in keys:
            if key not in input:
                raise InvalidInput(
                    f"workflow {plan.name!r} step {spec.name!r}: its agent {spec.agent!r} "
                    f"needs input key {key!r}, which the input lacks (it has: "
                    f"{', '.join(sorted(map(str, input))) or 'no keys'})"
                )
            value = input[key]
            if isinstance(value, bool) or not isinstance(value, str | int):
                raise InvalidInput(
                    f"workflow {plan.name!r} step {spec.name!r}: input key {key!r} names its "
                    f"agent, so it must be a str or an int, got {type(value).__name__}"
                )
            values[key] = value
        agent = spec.agent.format_map(values)
        try:
            out[spec.name] = validate_name("agent", agent)
        except InvalidInput as exc:
            raise InvalidInput(
                f"workflow {plan.name!r} step {spec.name!r}: agent {spec.agent!r} resolved "
                f"to {agent!r:.120}, which is not a usable agent name: {exc}"
            ) from None
    return out


def check_registered(
    plan: Plan,
    agents: Mapping[str, str],
    registered: Mapping[str, object],
    actions: Mapping[str, frozenset[str] | None],
) -> None:
    """Raise :class:`UnknownName` unless every step's agent (resolved where ``agents``
    says) is registered and has the step's action and compensation."""
    for spec in plan.steps:
        agent = agents.get(spec.name, spec.agent)
        via = f" (from {spec.agent!r})" if spec.name in agents else ""
        if agent not in registered:
            known = ", ".join(sorted(registered)[:20]) or "none"
            raise UnknownName(
                f"workflow {plan.name!r} step {spec.name!r} needs agent {agent!r}{via}, "
                f"which is not registered (registered: {known}); call add_agent first"
            )
        names = actions.get(agent)
        if names is None:
            continue
        for action in (spec.action, spec.compensate):
            if action is not None and action not in names:
                raise UnknownName(
                    f"workflow {plan.name!r} step {spec.name!r}: agent {agent!r}{via} "
                    f"has no action {action!r} (it has: {', '.join(sorted(names))})"
                )
