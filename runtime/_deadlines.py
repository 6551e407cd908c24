"""``start(..., deadline=)`` and ``Workflow(..., deadline=)``: checking what the user gave.

A deadline is seconds from the start (a number > 0) or an aware ``datetime``; the
workflow stores it as an absolute time on the runtime's clock. The rules of what happens
when it passes live in ``herder.actors.engine._deadline``.
"""

from __future__ import annotations

import datetime
import math

from herder.store import InvalidInput, real_number

MAX_DEADLINE = 100 * 365.25 * 86400.0
"""Longest deadline accepted, in seconds (its timer key, in ms, must fit)."""


def deadline_seconds(value: object, what: str = "deadline", *, per_start: bool = True) -> float:
    """``value`` if it is a finite number of seconds > 0 (and under 100 years), else raise
    :class:`InvalidInput` naming ``what``. ``per_start`` (``start(deadline=)``) also takes
    an aware datetime (:func:`deadline_at`), a definition's default (``Workflow``) never:
    it counts from each start, so the message says where an absolute time goes."""
    number = real_number(value)  # (a bool, a str: None)
    if number is None or not math.isfinite(number) or number <= 0 or number > MAX_DEADLINE:
        if per_start:
            raise InvalidInput(
                f"{what} must be a number of seconds > 0 (under 100 years) or an aware "
                f"datetime, got {value!r}"
            )
        raise InvalidInput(
            f"{what} must be a number of seconds > 0 (under 100 years), counted from each "
            f"start, got {value!r}; for an absolute time pass start(deadline=) an aware "
            "datetime"
        )
    return number


def deadline_at(now: float, deadline: object, *, wall: float | None = None) -> float | None:
    """The runtime-clock time a workflow started ``now`` must end by, or None for none.

    ``deadline`` is seconds from ``now`` or an aware :class:`datetime.datetime` (a wall
    time, converted by the difference between ``wall`` and ``now``, as ``start_at``).
    Raises :class:`InvalidInput` for a naive datetime, a time already past, a number that
    is not > 0, or any other type.
    """
    if deadline is None:
        return None
    if isinstance(deadline, datetime.datetime):
        try:  # (its tzinfo is user code: whatever it raises says the time is unusable)
            naive = deadline.tzinfo is None or deadline.utcoffset() is None
            at = None if naive else deadline.timestamp() - ((now if wall is None else wall) - now)
        except Exception as exc:
            raise InvalidInput(f"deadline {deadline!r} is not a usable time: {exc}") from None
        if at is None:
            raise InvalidInput(
                f"deadline {deadline!r} is a naive datetime; give it a timezone, e.g. "
                "datetime.now(timezone.utc) + timedelta(minutes=5), or pass seconds"
            )
        if at <= now:
            raise InvalidInput(
                f"deadline {deadline.isoformat()} is already past; nothing could run"
            )
        if at - now > MAX_DEADLINE:
            raise InvalidInput(
                f"deadline {deadline.isoformat()} is more than 100 years away; give an "
                "earlier one, or none"
            )
        return at
    return now + deadline_seconds(deadline)
