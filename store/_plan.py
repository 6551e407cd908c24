"""Workflow definitions compiled to data: :class:`Plan` and its :class:`StepSpec` steps.

Stored in the ``definitions`` database as msgpack maps (``"v": 2``: the map layout has
not changed since, and the plan's fingerprint is a digest of this map).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from herder.store._policy import RetryPolicy
from herder.store._records import MAP_VERSION


@dataclass(frozen=True, slots=True)
class StepSpec:
    """One step of a compiled plan."""

    name: str
    agent: str
    action: str
    after: tuple[str, ...] = ()
    compensate: str | None = None
    timeout: float | None = None
    heartbeat_timeout: float | None = None
    retry: RetryPolicy | None = None
    compensate_retry: RetryPolicy | None = None
    delay: float | None = None  # seconds to wait after the dependencies (or the start)
    # AnyOf: the agents able to do the step, in order of preference (``agent`` is the
    # first); each attempt goes to one of them, recorded as the step record's
    # ``extra["agent"]``. Empty for a step with one agent.
    members: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """The step as a msgpack-ready map (``delay`` and ``members`` only when set: older
        plans keep their stored form and fingerprint)."""
        extra: dict[str, Any] = {} if self.delay is None else {"delay": self.delay}
        if self.members:
            extra["members"] = list(self.members)
        return {
            "name": self.name,
            "agent": self.agent,
            "action": self.action,
            "after": list(self.after),
            "compensate": self.compensate,
            "timeout": self.timeout,
            "heartbeat_timeout": self.heartbeat_timeout,
            "retry": self.retry.to_dict() if self.retry else None,
            "compensate_retry": self.compensate_retry.to_dict() if self.compensate_retry else None,
            **extra,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StepSpec:
        """Rebuild a step from :meth:`to_dict` output."""
        return cls(
            name=data["name"],
            agent=data["agent"],
            action=data["action"],
            after=tuple(data["after"]),
            compensate=data["compensate"],
            timeout=data["timeout"],
            heartbeat_timeout=data["heartbeat_timeout"],
            retry=RetryPolicy.from_dict(data["retry"]) if data["retry"] else None,
            compensate_retry=(
                RetryPolicy.from_dict(data["compensate_retry"])
                if data["compensate_retry"]
                else None
            ),
            delay=data.get("delay"),
            members=tuple(data.get("members", ())),
        )


@dataclass(frozen=True, slots=True)
class Plan:
    """A workflow definition compiled to data: its name, version and steps in order,
    and the default deadline of its workflows (seconds from their start), if any."""

    name: str
    version: int
    steps: tuple[StepSpec, ...]
    deadline: float | None = None

    def step(self, name: str) -> StepSpec:
        """The step called ``name``; KeyError if there is none."""
        for spec in self.steps:
            if spec.name == name:
                return spec
        raise KeyError(name)

    def fingerprint(self) -> str:
        """A short digest of the plan, to notice a definition changed under the same version."""
        from herder.store._codec import encode

        return hashlib.blake2b(encode(self.to_dict()), digest_size=8).hexdigest()

    def to_dict(self) -> dict[str, Any]:
        """The plan as a msgpack-ready map (``deadline`` only when set: older plans keep
        their stored form and fingerprint)."""
        extra = {} if self.deadline is None else {"deadline": self.deadline}
        return {
            "v": MAP_VERSION,
            "name": self.name,
            "version": self.version,
            "steps": [s.to_dict() for s in self.steps],
            **extra,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Plan:
        """Rebuild a plan from :meth:`to_dict` output."""
        return cls(
            name=data["name"],
            version=data["version"],
            steps=tuple(StepSpec.from_dict(s) for s in data["steps"]),
            deadline=data.get("deadline"),
        )
