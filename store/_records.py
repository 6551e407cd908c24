"""Record types persisted in the store, and the pure functions that belong to them.

Every record converts to a plain msgpack map with :meth:`to_dict` and back with
``from_dict``; each map carries ``"v": SCHEMA_VERSION``. Records never hold live objects
(exception classes are kept as qualified names), so a store can be read by another
process, another herder version, or the CLI.

Keys and the timer entry's value are laid out in ``_keys``; :class:`RetryPolicy` is in
``_policy``.
"""

from __future__ import annotations

import enum
import operator
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, TypeVar

from herder.store._codec import peek
from herder.store._keys import step_key
from herder.store._slots import evolver

if TYPE_CHECKING:
    from herder.store._plan import Plan

SCHEMA_VERSION = 3
"""2: every stored value ends with a CRC-32 of its msgpack body (see ``_codec``).
3: step and workflow records are compact arrays (``to_stored``), history events too."""

MAP_VERSION = 2
"""The ``v`` of records still stored as maps (plans, resources, schedules): their map
layout has not changed since schema 2, and a plan's fingerprint is a digest of it."""


_R = TypeVar("_R")


class WorkflowState(enum.StrEnum):
    """Where a workflow is in its life. See DESIGN.md, "State machines"."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    COMPENSATING = "COMPENSATING"
    COMPENSATED = "COMPENSATED"
    NEEDS_ATTENTION = "NEEDS_ATTENTION"
    CANCELLED = "CANCELLED"
    ABANDONED = "ABANDONED"  # an operator gave up on it: nothing more runs or is undone

    @property
    def is_final(self) -> bool:
        """True when nothing more will happen without an operator (terminal or parked)."""
        return self in _FINAL_WORKFLOW_STATES


_FINAL_WORKFLOW_STATES = frozenset(
    {
        WorkflowState.SUCCEEDED,
        WorkflowState.COMPENSATED,
        WorkflowState.CANCELLED,
        WorkflowState.NEEDS_ATTENTION,
        WorkflowState.ABANDONED,
    }
)


class StepState(enum.StrEnum):
    """Where one step is. See DESIGN.md, "State machines"."""

    PENDING = "PENDING"
    DISPATCHED = "DISPATCHED"
    WAITING = "WAITING"  # the action returned ctx.complete_later(): awaiting complete_step
    UNKNOWN = "UNKNOWN"  # the attempt lapsed after it may have reached the remote side
    RETRY_WAIT = "RETRY_WAIT"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    COMPENSATING = "COMPENSATING"
    COMPENSATED = "COMPENSATED"

    @property
    def is_compensation(self) -> bool:
        """True for the states of undoing a step (its attempts count in ``comp_attempt``)."""
        return self in (StepState.COMPENSATING, StepState.COMPENSATED)


@dataclass(frozen=True, slots=True)
class WorkflowRecord:
    """The durable state of one workflow."""

    id: str
    name: str
    version: int
    input: Any
    state: WorkflowState = WorkflowState.PENDING
    created: float = 0.0
    updated: float = 0.0
    error: str | None = None
    # True once cancel was requested: compensation then ends in CANCELLED, not COMPENSATED.
    cancelled: bool = False
    # Crashes in a row at which an attempt of it was running (poison work, actors/_poison).
    recoveries: int = 0
    # Higher runs first when its agents are saturated; waiting raises it (actors/_queue.py).
    priority: int = 0
    # Step name -> agent, for steps whose agent the definition templates from the input
    # (runtime/_routing.py): resolved once at the start, the step's agent from then on.
    agents: dict[str, str] = field(default_factory=dict)
    # W3C traceparent of the workflow's span when tracing is on (runtime/_tracing.py): its
    # attempts join that trace in whichever process runs them.
    trace: str | None = None
    # The time (runtime clock) it must end by (actors/engine/_deadline.py), or None. Added
    # after schema 3: an array without it reads as None (see _array_codec).
    deadline: float | None = None
    # Why it compensates (as ``error`` says while it does): kept while an operator
    # resolves a failed compensation, whose NEEDS_ATTENTION ``error`` names that failure
    # instead, so that ``error`` says it again once the workflow compensates on. Added
    # after ``deadline`` (read as None when absent).
    reason: str | None = None

    def evolve(self, **changes: Any) -> WorkflowRecord:
        """A copy with ``changes`` applied (as ``dataclasses.replace``, several times faster).
        Replaced below by the generated method (:func:`~._slots.evolver`), which this describes."""
        raise NotImplementedError

    def to_stored(self) -> list[Any]:
        """The record as stored (schema 3): ``[3, id, name, ...]``, every field in order.
        Replaced below by the generated function (:func:`_array_codec`)."""
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        """The record as a map, the schema 2 layout (``agents``, ``trace``, ``deadline``
        and ``reason`` only when set: records without them keep their stored form, and
        older ones read with defaults)."""
        extra: dict[str, Any] = {"agents": self.agents} if self.agents else {}
        if self.trace is not None:
            extra["trace"] = self.trace
        if self.deadline is not None:
            extra["deadline"] = self.deadline
        if self.reason is not None:
            extra["reason"] = self.reason
        return {
            "v": MAP_VERSION,
            "id": self.id,
            "name": self.name,
            "version": self.version,
            "input": self.input,
            "state": self.state,
            "created": self.created,
            "updated": self.updated,
            "error": self.error,
            "cancelled": self.cancelled,
            "recoveries": self.recoveries,
            "priority": self.priority,
            **extra,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | list[Any]) -> WorkflowRecord:
        """Rebuild a record from :meth:`to_stored` or :meth:`to_dict` output (a schema 2
        map: unknown keys are ignored)."""
        if type(data) is list:
            return _workflow_from_array(data)
        assert not isinstance(data, list)
        return _from_map(cls, data, WorkflowState)


_SUCCEEDED_ONCE = frozenset({StepState.SUCCEEDED, StepState.COMPENSATING, StepState.COMPENSATED})


@dataclass(frozen=True, slots=True)
class StepRecord:
    """The durable state of one step of one workflow.

    ``token`` is the fencing token of the step's latest transition: an agent's answer is
    accepted only if it carries the current one. Two facts about a finished step, one
    field each: ``succeeded`` says its action succeeded, so its ``result`` is what
    ``ctx.results`` shows (kept while the step is compensated); ``done_token`` says it
    is to be undone when its workflow compensates - it is the token of the transition
    to SUCCEEDED, or of a failure that may have taken effect (anything but Permanent) -
    and orders the undoing (reverse).
    ``timer_ms`` is the key time of this step's entry in the timer index, if any.
    """

    workflow_id: str
    name: str
    state: StepState = StepState.PENDING
    attempt: int = 0
    token: int = 0
    deadline: float | None = None
    heartbeat_deadline: float | None = None
    retry_at: float | None = None
    timer_ms: int | None = None
    result: Any = None
    error: str | None = None
    error_type: str | None = None
    done_token: int | None = None
    succeeded: bool = False
    comp_attempt: int = 0
    heartbeat: Any = None
    updated: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> bytes:
        """This step's key in the ``steps`` database."""
        return step_key(self.workflow_id, self.name)

    def evolve(self, **changes: Any) -> StepRecord:
        """A copy with ``changes`` applied (as ``dataclasses.replace``, several times faster).
        Replaced below by the generated method (:func:`~._slots.evolver`), which this describes."""
        raise NotImplementedError

    def to_stored(self) -> list[Any]:
        """The record as stored (schema 3): ``[3, workflow_id, name, state, ...]``.
        Replaced below by the generated function (:func:`_array_codec`)."""
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        """The record as a map, the schema 2 layout."""
        return {
            "v": MAP_VERSION,
            "workflow_id": self.workflow_id,
            "name": self.name,
            "state": self.state,
            "attempt": self.attempt,
            "token": self.token,
            "deadline": self.deadline,
            "heartbeat_deadline": self.heartbeat_deadline,
            "retry_at": self.retry_at,
            "timer_ms": self.timer_ms,
            "result": self.result,
            "error": self.error,
            "error_type": self.error_type,
            "done_token": self.done_token,
            "succeeded": self.succeeded,
            "comp_attempt": self.comp_attempt,
            "heartbeat": self.heartbeat,
            "updated": self.updated,
            "extra": self.extra,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | list[Any]) -> StepRecord:
        """Rebuild a record from :meth:`to_stored` or :meth:`to_dict` output (a schema 2
        map: unknown keys are ignored)."""
        if type(data) is list:
            return _step_from_array(data)
        assert not isinstance(data, list)
        record = _from_map(cls, data, StepState)
        if "succeeded" not in data and record.done_token is not None:
            # Written before ``succeeded`` existed, when ``done_token`` marked success too
            # (and, since failures may be undone, failures too): a step being undone is
            # taken as succeeded, as it was then; a FAILED one, or one restarted, did not.
            return record.evolve(succeeded=record.state in _SUCCEEDED_ONCE)
        return record


def plan_steps(record: WorkflowRecord, stored: list[StepRecord], plan: Plan) -> list[StepRecord]:
    """A workflow's steps in plan order, with a PENDING record for each step that has
    none in the store: a step's record is first written when it leaves PENDING (or when
    a delayed start gives it a timer), so a missing record means PENDING. Stored steps
    the plan does not name come last."""
    by_name: dict[str, StepRecord | None] = {st.name: st for st in stored}
    steps = [
        by_name.pop(spec.name, None) or StepRecord(record.id, spec.name, updated=record.created)
        for spec in plan.steps
    ]
    return steps + [st for st in by_name.values() if st is not None]


# The records' own evolve methods: one call, not a method calling a function (the
# Scheduler evolves a step twice per step).
setattr(WorkflowRecord, "evolve", evolver(WorkflowRecord))  # noqa: B010 (a method)
setattr(StepRecord, "evolve", evolver(StepRecord))  # noqa: B010


def _array_codec(
    cls: type[_R], states: type[enum.StrEnum], added: tuple[str, ...] = ()
) -> tuple[Callable[[_R], list[Any]], Callable[[list[Any]], _R]]:
    """The schema 3 layout of a record class: ``[SCHEMA_VERSION, field, field, ...]`` in
    field order, and its reader. Generated like :func:`~._slots.evolver`: one slot read or store
    per field. A longer array (fields a later minor version appended) reads; so does one
    that lacks the trailing fields named in ``added`` (appended since, each read as its
    default); a shorter one, another version or an unknown state is a ValueError
    (StoreCorrupt to readers).
    """
    names = [f.name for f in fields(cls)]  # type: ignore[arg-type]
    assert tuple(names[len(names) - len(added) :]) == added, "added fields go last"
    n = len(names) - len(added)  # the fields every array has
    by_value = {s.value: s for s in states}
    env: dict[str, Any] = {
        "new": object.__new__,
        "cls": cls,
        "states": by_value,
        "V": SCHEMA_VERSION,
    }
    out = ["def to_stored(self):", "    return [V, " + ", ".join(f"self.{f}" for f in names) + "]"]
    read = [
        "def from_array(data):",
        f"    if len(data) <= {n} or data[0] != V:",
        f"        raise ValueError(f'a schema 3 {cls.__name__} is [3, ...{n} fields], got "
        "{len(data)} items starting {data[:1]!r:.20}')",
        "    out = new(cls)",
    ]
    for i, name in enumerate(names):
        env[f"set{i}"] = cls.__dict__[name].__set__
        value = f"data[{i + 1}]"
        if name in added:
            env[f"default{i}"] = next(f.default for f in fields(cls) if f.name == name)  # type: ignore[arg-type]
            value = f"data[{i + 1}] if len(data) > {i + 1} else default{i}"
        if name == "state":  # an unknown (or unhashable) state value is a ValueError
            read += [
                "    try:",
                f"        set{i}(out, states[data[{i + 1}]])",
                "    except (KeyError, TypeError) as exc:",
                f"        raise ValueError(f'{cls.__name__} has no state {{exc}}') from None",
            ]
            continue
        read.append(f"    set{i}(out, {value})")
    read.append("    return out")
    exec("\n".join(out) + "\n" + "\n".join(read), env)  # the class's own field names
    to_stored = env["to_stored"]
    to_stored.__doc__ = cls.to_stored.__doc__  # type: ignore[attr-defined]
    to_stored.__qualname__ = f"{cls.__name__}.to_stored"
    return to_stored, env["from_array"]


_stored_workflow, _workflow_from_array = _array_codec(
    WorkflowRecord, WorkflowState, added=("deadline", "reason")
)
_stored_step, _step_from_array = _array_codec(StepRecord, StepState)
# The generated functions are the records' own to_stored methods: one call, not a method
# calling a function (the Scheduler stores a step twice per step).
setattr(WorkflowRecord, "to_stored", _stored_workflow)  # noqa: B010 (a method)
setattr(StepRecord, "to_stored", _stored_step)  # noqa: B010


_Rec = TypeVar("_Rec", WorkflowRecord, StepRecord)


_FIELD_NAMES: dict[type, frozenset[str]] = {}


def _field_names(cls: type) -> frozenset[str]:
    names = _FIELD_NAMES.get(cls)
    if names is None:
        names = _FIELD_NAMES[cls] = frozenset(f.name for f in fields(cls))
    return names


def _from_map(cls: type[_Rec], data: Mapping[str, Any], state: type[enum.StrEnum]) -> _Rec:
    """Build a record from a stored map: unknown keys (a newer minor schema) are ignored,
    missing ones take their defaults, and ``state`` is parsed into its enum."""
    known = _field_names(cls)
    values = {k: v for k, v in data.items() if k in known}
    values["state"] = state(values["state"])
    return cls(**values)


_POSITIONS: dict[type, dict[str, int]] = {
    cls: {f.name: i + 1 for i, f in enumerate(fields(cls))} for cls in (WorkflowRecord, StepRecord)
}


def stored_field(data: Any, kind: type[WorkflowRecord | StepRecord], name: str) -> Any:
    """Field ``name`` of a decoded stored record of class ``kind``, either layout (a
    schema 3 array or a schema 2 map), without building the record; KeyError if the
    value holds no such field."""
    if type(data) is list:
        i = _POSITIONS[kind][name]
        if i >= len(data):
            raise KeyError(name)
        return data[i]
    if not isinstance(data, dict):
        raise KeyError(name)
    return data[name]


def fields_getter(
    kind: type[WorkflowRecord | StepRecord], names: Iterable[str]
) -> Callable[[list[Any]], tuple[Any, ...]]:
    """A function reading ``names``' values, in order, out of a decoded schema 3 array of
    ``kind`` at once (:func:`stored_field` of each, for a scan; IndexError if too short)."""
    return operator.itemgetter(*(_POSITIONS[kind][name] for name in names))


def peek_field(data: bytes, kind: type[WorkflowRecord | StepRecord], name: str) -> Any:
    """Field ``name`` of a stored record's bytes, as :func:`stored_field` reads it from the
    decoded record, but decoding only the fields before it (see :func:`~._codec.peek`)."""
    return peek_fields(data, kind, (name,))[name]


def peek_fields(
    data: bytes, kind: type[WorkflowRecord | StepRecord], names: Iterable[str]
) -> dict[str, Any]:
    """:func:`peek_field` of each of ``names`` in one pass over the bytes (a field after a
    large input skipped it once per field); a field the record lacks is left out."""
    return peek(data, {_POSITIONS[kind][name]: name for name in names})
