"""The ``resources`` database: per agent name, what protects the remote resource it wraps.

Key: the agent name (UTF-8). Value: a :class:`ResourceRecord` map. The Scheduler writes a
record only when something changes that must outlive the process: the circuit breaker's
state or its count of consecutive failures, and the counters of agent instance crashes
and of attempts lost to a restart. A healthy agent's successful steps never write here,
so the hot path stays one commit per transition.

Because these records survive restarts, a daemon restarted in a crash loop still sees
the loop (``lost`` grows at every recovery that finds attempts in flight) and an open
breaker stays open across the restart until its cool-down has passed.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from herder.store._errors import StoreCorrupt
from herder.store._records import MAP_VERSION
from herder.store._validate import record_checker


class BreakerState(enum.StrEnum):
    """A circuit breaker's state: CLOSED lets work through, OPEN holds it, HALF_OPEN
    lets one probe attempt through to find out whether the resource is back."""

    CLOSED = "CLOSED"
    OPEN = "OPEN"
    HALF_OPEN = "HALF_OPEN"


@dataclass(frozen=True, slots=True)
class ResourceRecord:
    """The durable protection state of one agent name.

    ``failures`` counts consecutive failed attempts (transient errors, timeouts, crashed
    instances, attempts lost to a restart); a success resets it. ``opened_at`` is the
    wall-clock time the breaker last opened; ``opens`` how often it did. ``crashes``
    counts agent instance crashes, ``lost`` attempts found in flight when a runtime
    recovered the store (the process died under them). ``limit`` is an adaptive agent's
    concurrency limit as last stored (None for other agents).
    """

    agent: str
    breaker: BreakerState = BreakerState.CLOSED
    failures: int = 0
    opened_at: float | None = None
    opens: int = 0
    crashes: int = 0
    lost: int = 0
    limit: int | None = None
    updated: float = 0.0

    def evolve(self, **changes: Any) -> ResourceRecord:
        """A copy with ``changes`` applied."""
        return replace(self, **changes)

    def holds_nothing(self) -> bool:
        """Whether it says no more than a new record of its agent (whatever its ``updated``):
        nothing to keep."""
        return replace(self, updated=0.0) == ResourceRecord(self.agent)

    def to_dict(self) -> dict[str, Any]:
        """The record as a msgpack-ready map."""
        return {"v": MAP_VERSION, **{f.name: getattr(self, f.name) for f in fields(self)}}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ResourceRecord:
        """Rebuild a record from :meth:`to_dict` output (unknown keys are ignored);
        ``TypeError``/``ValueError`` for anything else: a field of another type, or a
        negative count (served as it was, a counter of ``'many'`` failed every scrape)."""
        if not isinstance(data, dict):
            raise TypeError(f"a resources record is a map, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["breaker"] = BreakerState(values.get("breaker", BreakerState.CLOSED))
        record = cls(**values)
        _check_types(record)
        for name in ("failures", "opens", "crashes", "lost"):
            if getattr(record, name) < 0:
                raise ValueError(f"field {name!r} is {getattr(record, name)}: a count is >= 0")
        return record


_check_types = record_checker(ResourceRecord)


def read_resources(
    scan: Iterable[tuple[bytes, Any]], corrupt: list[StoreCorrupt]
) -> dict[str, ResourceRecord]:
    """The records of ``scan`` (``store.scan("resources", corrupt=corrupt)``) by agent
    name; a value that is no record is left out and added to ``corrupt``."""
    out = {}
    for key, value in scan:
        try:
            out[key.decode("utf-8", "replace")] = ResourceRecord.from_dict(value)
        except (KeyError, TypeError, ValueError) as exc:
            corrupt.append(StoreCorrupt("resources", key, str(exc)))
    return out


def resource_key(agent: str) -> bytes:
    """The ``resources`` key of an agent name."""
    return agent.encode("utf-8")
