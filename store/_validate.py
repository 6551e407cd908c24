"""Type checks for records read back from the store.

A record that decodes as msgpack can still be wrong: a flipped bit turns an attempt
counter into a string, a foreign tool writes a map of its own. Built unchecked, such a
record fails far away (``st.attempt + 1`` inside the Scheduler). :func:`check_record`
compares every field of a freshly built record with its dataclass annotation and raises
``TypeError``, which the reading code turns into :class:`StoreCorrupt` naming the key.

The tables are derived from the annotations, so a field added to a record is checked
without touching this module.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Callable
from dataclasses import fields
from typing import Any

from herder.store._plan import Plan, StepSpec
from herder.store._records import StepRecord, WorkflowRecord

_Check = tuple[str, tuple[type, ...]]


def _runtime_types(hint: Any) -> tuple[type, ...] | None:
    """The classes a value annotated ``hint`` may be; None when anything goes."""
    if hint is Any:
        return None
    origin = typing.get_origin(hint)
    if origin is typing.Union or origin is types.UnionType:
        out: list[type] = []
        for arg in typing.get_args(hint):
            allowed = _runtime_types(arg)
            if allowed is None:
                return None
            out.extend(allowed)
        return tuple(out)
    if hint is float:
        return (float, int)  # msgpack keeps 3.0 a float, but hand-written data may not
    if origin is not None:
        return (origin,)  # dict[str, Any] -> dict, tuple[str, ...] -> tuple
    if isinstance(hint, type):
        return (hint,)
    return None


def _table(cls: type) -> list[_Check]:
    hints = typing.get_type_hints(cls)
    table = []
    for f in fields(cls):
        allowed = _runtime_types(hints[f.name])
        if allowed is not None:
            table.append((f.name, allowed))
    return table


def record_checker(cls: type) -> Callable[[Any], None]:
    """``cls``'s field checks as one generated function (as ``_records`` generates its
    readers): one ``isinstance`` per field, no loop over a table and no ``getattr``.
    Every record read from the store goes through it (recovery reads 100k of them)."""
    env: dict[str, Any] = {"bad": _bad}
    lines = ["def check(record):"]
    for i, (name, allowed) in enumerate(_table(cls)):
        env[f"t{i}"] = allowed
        lines.append(f"    if not isinstance(record.{name}, t{i}):")
        lines.append(f"        bad({name!r}, record.{name}, t{i})")
    lines.append("    return None")
    exec("\n".join(lines), env)  # the class's own field names
    check: Callable[[Any], None] = env["check"]
    return check


def _bad(name: str, value: Any, allowed: tuple[type, ...]) -> None:
    raise TypeError(
        f"field {name!r} is {type(value).__name__} {value!r:.60}, expected "
        + " or ".join(t.__name__ for t in allowed)
    )


_CHECKS: dict[type, Callable[[Any], None]] = {
    cls: record_checker(cls) for cls in (WorkflowRecord, StepRecord, StepSpec, Plan)
}


def check_record(record: object) -> None:
    """Raise ``TypeError`` naming the first field of ``record`` whose type is wrong."""
    _CHECKS[type(record)](record)
    if isinstance(record, WorkflowRecord | Plan) and not 0 <= record.version < 2**32:
        # (a definition's key holds 4 bytes of it: no definition could be looked up)
        raise TypeError(f"field 'version' is {record.version}, expected 0..{2**32 - 1}")
    if type(record) is WorkflowRecord and record.agents:
        for step, agent in record.agents.items():
            if not isinstance(step, str) or not isinstance(agent, str):
                raise TypeError(f"field 'agents' maps {step!r:.60} to {agent!r:.60}, expected str")


def check_plan(plan: Plan) -> None:
    """Raise ``TypeError`` if a stored plan is not one the Workflow builder could make."""
    check_record(plan)
    for spec in plan.steps:
        if not isinstance(spec, StepSpec):
            raise TypeError(f"a step is {type(spec).__name__}, expected a map")
        check_record(spec)
    names = {spec.name for spec in plan.steps}
    for spec in plan.steps:
        for dep in spec.after:
            if not isinstance(dep, str) or dep not in names:
                raise TypeError(f"step {spec.name!r} depends on unknown step {dep!r:.60}")
