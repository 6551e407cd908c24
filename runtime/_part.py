"""The Runtime facade is built from parts (its bases, one job each: lifecycle, starts,
registration, operations...); a part reaches the whole facade through :func:`whole`."""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

if TYPE_CHECKING:
    from herder.runtime._runtime import Runtime


def whole(part: object) -> Runtime:
    """``part``, a base of Runtime only, as the Runtime it is part of (for the type checker)."""
    return cast("Runtime", part)
