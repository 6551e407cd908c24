"""The resource chosen at run time: a step's agent named by a template over the input.

``Workflow.step(..., agent="device:{device}")`` makes one definition serve every device:
when a workflow starts, each templated agent is formatted from the workflow's input (a
map) and the resolved names are stored with the workflow record (``agents``, step name ->
agent), in the same transaction that creates it. From then on the stored name is the
step's agent: dispatch, retries, probes, compensation and recovery after a crash all go
to it, even if the definition's template changes under a new version.

A template holds ``{key}`` fields only (no indexing, attributes, conversions or format
specs, and no literal brace: an agent name holds none), so resolving one cannot reach
into objects; each key must be a top-level key of the input whose value is a str or an
int (not a bool). A field ``{@name}`` is filled by
the router ``name`` registered with ``rt.add_router(name, fn)``: ``fn(input)`` returns
the str (or int) to put there, e.g. ``agent="{@nearest}"`` or ``"airline:{@region}"``.
A router is user code: whatever it raises fails the start with :class:`InvalidInput`,
and it runs once per start, never again for that workflow, on a thread of its own (in a
copy of the caller's context): one that does not return within the runtime's
``ask_timeout`` fails the start with :class:`TimedOut`, so that a hung one blocks
neither ``start()`` nor the thread that fires every schedule. Until that call returns,
the router is not called again with the same input (such a start fails at once with
:class:`TimedOut`): a schedule retrying every few seconds left one more thread stuck
in it each time.
"""

from __future__ import annotations

import contextvars
import functools
import string
from collections.abc import Callable, Collection, Hashable, Mapping
from typing import Any

from herder.actors import InvalidDefinition, UnknownName
from herder.runtime._bounded import BoundedCalls
from herder.store import (
    InvalidInput,
    Plan,
    StepSpec,
    TimedOut,
    UserCodeFailed,
    contain,
    encode,
    private_copy,
    validate_name,
)

Router = Callable[[Any], str]
"""A function of the workflow input that names (part of) a step's agent."""

_FORMATTER = string.Formatter()

_ROUTERS = BoundedCalls("herder-router")  # the threads routers run on


@functools.lru_cache(maxsize=4096)
def template_fields(agent: str) -> tuple[str, ...]:
    """The input keys (and ``@router`` names) an agent template names; ``()`` for a
    fixed agent name (parsed once per template: every start asks for each step's).

    Raises :class:`InvalidDefinition` for a template that is not plain ``{key}`` or
    ``{@router}`` fields.
    """
    try:
        parts = list(_FORMATTER.parse(agent))
    except ValueError as exc:
        raise InvalidDefinition(
            f"agent {agent!r} is not a valid template ({exc}); write input keys as "
            "{key} (an agent name holds no brace)"
        ) from None
    keys = []
    for literal, field, spec, conversion in parts:
        if "{" in literal or "}" in literal:  # ({{ or }}: no agent may be named so)
            raise InvalidDefinition(
                f"agent {agent!r}: {{{{ and }}}} would name an agent with a brace, which "
                "add_agent refuses; braces in a step's agent only enclose an input key "
                "such as {device} or a router such as {@nearest}"
            )
        if field is None:
            continue
        if not field.removeprefix("@").isidentifier() or spec or conversion:
            raise InvalidDefinition(
                f"agent template {agent!r}: field {{{field}{'!' + conversion if conversion else ''}"
                f"{':' + spec if spec else ''}}} must be a plain input key such as {{device}} "
                "or a router such as {@nearest} (no index, attribute, conversion or format "
                "spec)"
            )
        keys.append(field)
    return tuple(keys)


def agent_name(name: object) -> str:
    """``name`` if it can name an agent, else :class:`InvalidInput`: a usable name
    (``validate_name``) without a brace, which a step's ``agent=`` would read as a
    template field: no step could name such an agent."""
    checked = validate_name("agent", name)
    if "{" in checked or "}" in checked:
        raise InvalidInput(
            f"agent name {checked!r:.120} holds a brace, which a step's agent= reads as a "
            "template field (such as {device}); no step could name it: choose a name "
            "without { or }"
        )
    return checked


def routes(plan: Plan) -> bool:
    """Whether a start of ``plan`` runs a router (a ``{@name}`` field in a template)."""
    return any(f.startswith("@") for spec in plan.steps for f in template_fields(spec.agent))


def resolve_agents(
    plan: Plan, input: Any, routers: Mapping[str, Router] | None = None, *, limit: float
) -> dict[str, str]:
    """Step name -> agent name for every templated step of ``plan``, from ``input``
    (and the ``routers`` its templates name, each given ``limit`` seconds).

    Raises :class:`InvalidInput` when the input is not a map but a template names input
    keys, lacks a key, gives (or a router returns) a value that is not a str or an int,
    a router fails, or the resulting name is not a usable agent name;
    :class:`UnknownName` for a router that is not registered; :class:`TimedOut` for one
    that does not return within ``limit``. Nothing is stored then.
    """
    out: dict[str, str] = {}
    routed: dict[str, Any] = {}  # each router runs once per start
    for spec in plan.steps:
        keys = template_fields(spec.agent)
        if not keys:
            continue
        where = f"workflow {plan.name!r} step {spec.name!r}"
        values: dict[str, str | int] = {}
        for key in keys:
            if key.startswith("@"):
                if key not in routed:
                    routed[key] = _route(where, key[1:], routers or {}, input, limit)
                value = routed[key]
            else:
                value = _input_value(where, spec.agent, key, input)
            kind = type(value)  # (not isinstance: it reads a user object's __class__)
            if kind is bool or not issubclass(kind, str | int):
                raise InvalidInput(
                    f"{where}: {key!r} names its agent, so it must be a str or an int, got "
                    f"{type(value).__name__}"
                )
            # As a plain str or int: a subclass's own __str__ or __format__ (user code)
            # must not run here (nor raise out of start()).
            if issubclass(kind, str):
                values[key] = str.__getitem__(value, slice(None))
            else:
                values[key] = int.__add__(value, 0)
        try:
            agent = _FORMATTER.vformat(spec.agent, (), values)
        except ValueError as exc:  # an int of more digits than Python turns into text
            raise InvalidInput(f"{where}: agent {spec.agent!r} cannot be resolved: {exc}") from None
        try:
            out[spec.name] = agent_name(agent)
        except InvalidInput as exc:
            raise InvalidInput(
                f"{where}: agent {spec.agent!r} resolved to {agent!r:.120}, which is not a "
                f"usable agent name: {exc}"
            ) from None
    return out


def _input_value(where: str, template: str, key: str, input: Any) -> Any:
    if not isinstance(input, Mapping):
        raise InvalidInput(
            f"{where} takes its agent from the input ({template!r}), so the input must be a "
            f"map with {key!r}; got {type(input).__name__}"
        )
    if key not in input:
        raise InvalidInput(
            f"{where}: its agent {template!r} needs input key {key!r}, which the input "
            f"lacks (it has: {', '.join(sorted(map(str, input))) or 'no keys'})"
        )
    return input[key]


def _route(where: str, name: str, routers: Mapping[str, Router], input: Any, limit: float) -> Any:
    router = routers.get(name)
    if router is None:
        known = ", ".join(sorted(routers)) or "none"
        raise UnknownName(
            f"{where} routes its agent with {name!r}, which is not registered (registered: "
            f"{known}); call rt.add_router({name!r}, fn) first"
        )

    def key() -> Hashable:  # (a late call holds the router: its id is not reused)
        return (name, id(router), encode(input))

    if _ROUTERS.late(key):
        raise TimedOut(
            f"{where}: router {name!r} was not called: its call with this same input "
            f"outlived ask_timeout ({limit:g} s) and has not returned yet, and each call "
            "made meanwhile would leave one more thread stuck; nothing was written: try "
            "again once it returns (give what it waits for a timeout), or register a "
            f"router that returns with add_router({name!r}, fn) (adding the same function "
            "again changes nothing)"
        )
    own = private_copy(input)  # (its changes are not the input's)
    call = functools.partial(contextvars.copy_context().run, contain, router, own)
    try:
        return _ROUTERS.call(call, limit, key)
    except UserCodeFailed as exc:
        raise InvalidInput(f"{where}: router {name!r} failed: {exc}") from None
    except TimedOut:
        raise TimedOut(
            f"{where}: router {name!r} did not return within {limit:g} s (ask_timeout), so "
            "this was refused and nothing was written (the call goes on, on its own "
            "thread): make the router return sooner, or give it longer with ask_timeout"
        ) from None


def check_registered(
    plan: Plan,
    agents: Mapping[str, str],
    registered: Mapping[str, object],
    actions: Mapping[str, frozenset[str] | None],
) -> None:
    """Raise :class:`UnknownName` unless every step's agent (resolved where ``agents``
    says) is registered and has the step's action and compensation. Of an AnyOf group,
    one registered member is enough (the others are passed over as unwell: one removed
    does not stop failover); every registered one must have the actions."""
    for spec, agent, via in _step_agents(plan, agents):
        if spec.members:
            if agent not in registered:
                if not any(m in registered for m in spec.members):
                    raise UnknownName(
                        f"workflow {plan.name!r} step {spec.name!r}: none of its members "
                        f"({', '.join(spec.members)}) is registered; call add_agent with "
                        "at least one of them first"
                    )
                continue
        elif agent not in registered:
            shown = sorted(registered)[:20]
            more = len(registered) - len(shown)
            known = ", ".join(shown) + (f" and {more:,} more" if more else "") or "none"
            raise UnknownName(
                f"workflow {plan.name!r} step {spec.name!r} needs agent {agent!r}{via}, "
                f"which is not registered (registered: {known}); call add_agent first"
            )
        names = actions.get(agent)
        if names is not None:
            check_actions(plan, spec, agent, names, via)


_NONE = "it has none: its actions are the public methods of its class, and it defines none"


def check_actions(
    plan: Plan, spec: StepSpec, agent: str, names: Collection[str], via: str = ""
) -> None:
    """Refuse (:class:`UnknownName`) a step whose action or compensation ``agent`` (whose
    actions are ``names``; ``via``: how the step came to it) does not have."""
    for action in (spec.action, spec.compensate):
        if action is not None and action not in names:
            has = f"it has: {', '.join(sorted(names))}" if names else _NONE
            raise UnknownName(
                f"workflow {plan.name!r} step {spec.name!r}: agent {agent!r}{via} "
                f"has no action {action!r} ({has})"
            )


def _step_agents(plan: Plan, agents: Mapping[str, str]) -> list[tuple[StepSpec, str, str]]:
    """(step, agent, where it came from) for every agent a step of ``plan`` may use: its
    resolved template, or each member of its AnyOf group."""
    out = []
    for spec in plan.steps:
        if spec.members:
            out += [(spec, m, f" (of {len(spec.members)} in AnyOf)") for m in spec.members]
        elif spec.name in agents:
            out.append((spec, agents[spec.name], f" (from {spec.agent!r})"))
        else:
            out.append((spec, spec.agent, ""))
    return out
