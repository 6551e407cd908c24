"""The Runtime facade is built from parts (its bases, one job each: lifecycle, starts,
registration, operations...); a part reaches the whole facade through :func:`whole`."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from herder.runtime._runtime import Runtime


def whole(part: object) -> Runtime:
    """``part``, a base of Runtime only, as the Runtime it is part of (for the type checker;
    no ``typing.cast``: that is one more Python call, and a start makes six of these)."""
    return part  # type: ignore[return-value]
