"""The workflow builder: a readable chain of ``.step(...)`` calls compiled to a stored Plan."""

from __future__ import annotations

from collections.abc import Iterable, Set

from herder.actors import InvalidDefinition
from herder.runtime._anyof import AnyOf
from herder.runtime._deadlines import deadline_seconds
from herder.runtime._routing import template_fields
from herder.store import (
    MAX_SECONDS,
    InvalidInput,
    Plan,
    RetryPolicy,
    StepSpec,
    real_number,
    safe_repr,
    validate_name,
)

_FOREVER = MAX_SECONDS  # ten years: longer timeouts and delays are surely mistakes


MAX_VERSION = 2**32 - 1
"""The highest workflow version: the store keys a definition by a 4-byte version."""


class Workflow:
    """A named, versioned workflow definition: a DAG of steps run by agents.

    >>> trip = (Workflow("trip", version=1)
    ...         .step("flight", agent="airline", action="book", compensate="cancel")
    ...         .step("hotel", agent="hotels", action="book", after=["flight"]))

    Steps without ``after`` run as soon as the workflow starts; independent steps run in
    parallel. Change ``version`` whenever the steps change: workflows already stored keep
    running under the version they started with.
    """

    def __init__(self, name: str, version: int = 1, *, deadline: float | None = None) -> None:
        self.name = validate_name("workflow", name)
        if (
            not isinstance(version, int)
            or isinstance(version, bool)
            or not 1 <= version <= MAX_VERSION
        ):
            raise InvalidInput(
                f"workflow version must be an int in 1..{MAX_VERSION}, got {version!r}"
            )
        self.version = version
        # Seconds from each start by which the workflow must end (start(deadline=) wins).
        self.deadline = (
            None
            if deadline is None
            else deadline_seconds(deadline, "Workflow deadline", per_start=False)
        )
        self._steps: dict[str, StepSpec] = {}

    def step(
        self,
        name: str,
        *,
        agent: str | AnyOf,
        action: str,
        compensate: str | None = None,
        after: Iterable[str] = (),
        timeout: float | None = None,
        heartbeat_timeout: float | None = None,
        retry: RetryPolicy | None = None,
        compensate_retry: RetryPolicy | None = None,
        delay: float | None = None,
    ) -> Workflow:
        """Add a step and return the builder.

        ``timeout`` bounds each attempt from dispatch to answer (None: the runtime's
        ``default_timeout``, 300 s unless set); ``heartbeat_timeout`` bounds the gap
        between ``ctx.heartbeat()`` calls. ``retry`` defaults to the runtime's policy;
        ``compensate_retry`` defaults to ``retry``. ``delay`` makes the step wait that
        many seconds after its dependencies succeeded (a step without dependencies: after
        the workflow's start) before it is dispatched; the wait is a timer in the store,
        so it survives restarts.

        ``agent`` is an agent name, or a template such as ``"device:{device}"`` whose
        ``{key}`` fields are filled from the workflow's input when it starts; the resolved
        agent is stored with the workflow and serves every attempt, probe and
        compensation of the step (see ``_routing``). ``AnyOf("a", "b")`` names agents
        able to do the step: each attempt goes to a healthy one, a retry prefers another,
        and compensation goes to the one that did the work (docs/failover.md).
        """
        validate_name("step", name)
        if name in self._steps:
            raise InvalidDefinition(f"workflow {self.name!r} already has a step named {name!r}")
        if isinstance(after, str):
            deps: tuple[str, ...] = (after,)
        elif isinstance(after, Iterable) and not isinstance(after, bytes | bytearray):
            deps = tuple(after)
        else:  # (bytes iterate as ints: "dependency name ... got 97" said nothing useful)
            raise InvalidDefinition(
                f"step {name!r}: after must be a step name or a list of them, got {after!r}"
            )
        for dep in deps:
            validate_name("dependency", dep)
        if isinstance(after, Set):  # (in hash order: sorted, the same plan in every process)
            deps = tuple(sorted(deps))
        if len(set(deps)) != len(deps):
            raise InvalidDefinition(f"step {name!r} lists a dependency twice: {list(deps)}")
        seconds: dict[str, float | None] = {}  # each one read once (real_number)
        for field, value in (
            ("timeout", timeout),
            ("heartbeat_timeout", heartbeat_timeout),
            ("delay", delay),
        ):
            number = seconds[field] = None if value is None else real_number(value)
            if value is not None and not 0 < (number or 0) < _FOREVER:
                raise InvalidDefinition(
                    f"step {name!r}: {field} must be > 0 seconds (and under ten years) or "
                    f"None, got {safe_repr(value):.80}"
                )
        for field, policy in (("retry", retry), ("compensate_retry", compensate_retry)):
            if policy is not None and not isinstance(policy, RetryPolicy):
                raise InvalidDefinition(
                    f"step {name!r}: {field} must be a RetryPolicy, got {type(policy).__name__}"
                )
        self._steps[name] = StepSpec(
            name=name,
            agent=agent.members[0] if isinstance(agent, AnyOf) else _agent_name(agent),
            members=agent.members if isinstance(agent, AnyOf) else (),
            action=validate_name("action", action),
            after=deps,
            compensate=None if compensate is None else validate_name("compensate", compensate),
            timeout=seconds["timeout"],
            heartbeat_timeout=seconds["heartbeat_timeout"],
            retry=retry,
            compensate_retry=compensate_retry,
            delay=seconds["delay"],
        )
        return self

    def compile(self) -> Plan:
        """Validate the step graph and return it as a :class:`Plan`.

        Raises :class:`InvalidDefinition` for an empty workflow, a dependency on a step
        that does not exist, or a cycle (the message spells the cycle out).
        """
        if not self._steps:
            raise InvalidDefinition(f"workflow {self.name!r} has no steps")
        for spec in self._steps.values():
            for dep in spec.after:
                if dep not in self._steps:
                    raise InvalidDefinition(
                        f"step {spec.name!r} depends on {dep!r}, which workflow "
                        f"{self.name!r} does not define"
                    )
        cycle = _find_cycle({s.name: s.after for s in self._steps.values()})
        if cycle:
            raise InvalidDefinition(
                f"workflow {self.name!r} has a dependency cycle: {' -> '.join(cycle)}"
            )
        return Plan(
            name=self.name,
            version=self.version,
            steps=tuple(self._steps.values()),
            deadline=self.deadline,
        )

    def __repr__(self) -> str:
        return f"Workflow({self.name!r}, version={self.version}, steps={list(self._steps)})"


def _agent_name(agent: object) -> str:
    """A fixed agent name, or a template such as ``"device:{device}"`` (see ``_routing``)."""
    name = validate_name("agent", agent)
    template_fields(name)
    return name


def _find_cycle(graph: dict[str, tuple[str, ...]]) -> list[str] | None:
    """A cycle in ``graph`` (node -> dependencies) as a closed path, or None.

    An iterative depth-first search: a chain of thousands of steps must not exhaust
    Python's recursion limit.
    """
    white, grey, black = 0, 1, 2
    colour = dict.fromkeys(graph, white)
    for root, deps in graph.items():
        if colour[root] != white:
            continue
        colour[root] = grey
        path = [root]
        pending = [iter(deps)]  # the unvisited dependencies of each node on the path
        while pending:
            dep = next(pending[-1], None)
            if dep is None:
                colour[path.pop()] = black
                pending.pop()
            elif colour[dep] == grey:
                return [*path[path.index(dep) :], dep]
            elif colour[dep] == white:
                colour[dep] = grey
                path.append(dep)
                pending.append(iter(graph[dep]))
    return None
