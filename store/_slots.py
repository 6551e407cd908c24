"""Generated slot stores for frozen, slotted dataclasses (the store's records, a step's
context): copies and constructors that run several times per workflow step.

A frozen dataclass sets each field through ``object.__setattr__`` and ``dataclasses.replace``
walks ``fields()`` and calls ``__init__`` by keyword; the functions here are generated (as
dataclasses generates ``__init__``) so that each field is one call of its slot's own
setter, with no loop: :func:`evolver` (``evolve(**changes)``), :func:`replacer` (a copy with
a fixed set of fields changed, positional) and :func:`builder` (every field, positional).
They suit classes with no validation in ``__init__``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields
from typing import Any, TypeVar

_R = TypeVar("_R")


def evolver(cls: type[_R]) -> Callable[..., _R]:
    """A fast ``dataclasses.replace`` for a frozen, slotted record class without validation
    in ``__init__``: the Scheduler evolves a record several times per step.

    The function is generated (as dataclasses generates ``__init__``) so that each field is
    one slot store with no loop, no ``fields()`` walk and no keyword-argument ``__init__``.
    """
    known = frozenset(_names(cls))
    head = [
        "def make(self, /, **changes):",
        "    if not known.issuperset(changes):",
        "        raise TypeError(f'{cls.__name__} has no field(s) {sorted(set(changes) - known)}')",
    ]
    evolve = _compile(
        cls, head, lambda name: f"changes[{name!r}] if {name!r} in changes else self.{name}", known
    )
    evolve.__doc__, evolve.__qualname__ = cls.evolve.__doc__, f"{cls.__name__}.evolve"  # type: ignore[attr-defined]
    return evolve


def replacer(cls: type[_R], *names: str) -> Callable[..., _R]:
    """A fast :meth:`evolve` for one fixed set of fields: ``replace(record, *values)`` is a
    copy of ``record`` with fields ``names`` set to ``values`` (in that order), every other
    field kept. For the engine's transitions that run on every step: about 3x faster than
    ``evolve(**changes)`` (no keyword dict, no test per field). Generated as :func:`evolver`.
    """
    return _positional(cls, names, copy=True)


def builder(cls: type[_R]) -> Callable[..., _R]:
    """``cls(*values)`` (every field, in order) for a frozen, slotted dataclass without
    validation in ``__init__``, at half the cost: one slot store per field instead of
    ``object.__setattr__`` (for objects made once per step, e.g. a step's context)."""
    return _positional(cls, tuple(_names(cls)), copy=False)


def _positional(cls: type[_R], names: tuple[str, ...], *, copy: bool) -> Callable[..., _R]:
    if not set(names) <= set(_names(cls)) or len(set(names)) != len(names):
        raise TypeError(f"{cls.__name__} fields must be named once each, got {names!r}")
    values = ", ".join(["self"] * copy + [f"v{i}" for i in range(len(names))])
    make = _compile(
        cls,
        [f"def make({values}, /):"],
        lambda name: f"v{names.index(name)}" if name in names else f"self.{name}",
    )
    make.__qualname__ = f"{cls.__name__}.{'replace' if copy else '__init__'}"
    return make


def _names(cls: type) -> list[str]:
    return [f.name for f in fields(cls)]


def _compile(
    cls: type[_R],
    head: list[str],
    value: Callable[[str], str],
    known: frozenset[str] = frozenset(),
) -> Callable[..., _R]:
    """The function ``make`` of ``head`` (its ``def`` line and any checks), then a new
    ``cls`` with each field set through its slot's own setter (frozen-safe) to the
    expression ``value(name)``."""
    env: dict[str, Any] = {"new": object.__new__, "cls": cls, "known": known}
    lines = [*head, "    out = new(cls)"]
    for i, name in enumerate(_names(cls)):
        env[f"set{i}"] = cls.__dict__[name].__set__
        lines.append(f"    set{i}(out, {value(name)})")
    lines.append("    return out")
    exec("\n".join(lines), env)  # names are the class's own field names
    make: Callable[..., _R] = env["make"]
    return make
