"""Retry policy as data: how often a failed attempt is retried, and how long after.

:class:`RetryPolicy` is stored with each step of a plan and read back by the Scheduler;
its backoff is a pure function of the failed attempt and an injected random number, so
tests pass a fixed one.
"""

from __future__ import annotations

import builtins
import difflib
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, cast

from herder.store._errors import InvalidInput
from herder.store._untrusted import exception_name, safe_repr

MAX_ATTEMPTS = 2**63 - 1
"""The most ``max_attempts`` a stored record can hold (msgpack's signed 64 bits)."""
MAX_SECONDS = 10 * 365 * 86400.0
"""The longest time any setting may give, in seconds (ten years: a timeout, a delay, an
interval or a wait between attempts longer than that is surely a mistake, and every
wait must stay a time the store's timers and the threads' waits can hold)."""


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How a failed attempt is retried: exponential backoff with jitter, as data.

    ``max_attempts`` counts every attempt including the first (1 means never retry).
    ``non_retryable`` holds exception types (or their stored names), kept sorted (their
    order says nothing); an error whose type or any base type is listed fails the step at
    once.
    """

    max_attempts: int = 3
    initial_interval: float = 1.0
    backoff_coefficient: float = 2.0
    max_interval: float = 60.0
    jitter: float = 0.1
    non_retryable: tuple[str, ...] = ()

    def __init__(
        self,
        *,
        max_attempts: int = 3,
        initial_interval: float = 1.0,
        backoff_coefficient: float = 2.0,
        max_interval: float = 60.0,
        jitter: float = 0.1,
        non_retryable: Iterable[type[BaseException] | str] = (),
    ) -> None:
        _check(
            isinstance(max_attempts, int)
            and not isinstance(max_attempts, bool)
            and 1 <= max_attempts <= MAX_ATTEMPTS,
            "max_attempts",
            "an int from 1 to 2**63 - 1 (the most a record can hold)",
            max_attempts,
        )
        first = _number("initial_interval", initial_interval)
        factor = _number("backoff_coefficient", backoff_coefficient)
        ceiling = _number("max_interval", max_interval)
        spread = _number("jitter", jitter)
        _check(first >= 0, "initial_interval", ">= 0", initial_interval)
        _check(factor >= 1, "backoff_coefficient", ">= 1", backoff_coefficient)
        if ceiling < first:  # (max_interval's default, 60, is the one often not given)
            raise InvalidInput(
                f"max_interval must be >= initial_interval, got max_interval={ceiling:g} "
                f"(60 unless given) and initial_interval={first:g}: give "
                f"max_interval={first:g} or more (the longest wait between two attempts)"
            )
        _check(0 <= spread <= 1, "jitter", "between 0 and 1", jitter)
        if isinstance(non_retryable, str | type):  # one type (or name) on its own
            non_retryable = (non_retryable,)
        _check(
            isinstance(non_retryable, Iterable),
            "non_retryable",
            "exception types or their names",
            non_retryable,
        )
        # In one order whatever the order given: a set of types iterates in an order of
        # their addresses, and a plan compiled in another process must equal the stored one.
        given = tuple(non_retryable)
        names = tuple(sorted({_error_name(t) for t in given}))
        for kind in given:
            if isinstance(kind, str):  # (a type's own name is the one its errors carry)
                _matchable(_error_name(kind))
        object.__setattr__(self, "max_attempts", max_attempts)
        object.__setattr__(self, "initial_interval", first)
        object.__setattr__(self, "backoff_coefficient", factor)
        object.__setattr__(self, "max_interval", ceiling)
        object.__setattr__(self, "jitter", spread)
        object.__setattr__(self, "non_retryable", names)

    def delay(self, failed_attempt: int, rand: float = 0.5) -> float:
        """Seconds to wait after attempt ``failed_attempt`` (1-based) failed.

        ``rand`` in [0, 1) picks the jitter: 0.5 means none, 0 and 1 the extremes of
        ``± jitter`` around the exponential delay. Pure, so tests pass a fixed value.
        """
        first = self.initial_interval
        try:
            growth = self.backoff_coefficient ** max(0, failed_attempt - 1)
        except OverflowError:  # past 1e308 (a step probed for days): long at the ceiling
            growth = math.inf  # (and with no first interval, none: 0 x inf is nan)
        base = min(first * growth, self.max_interval, MAX_SECONDS) if first else 0.0
        return max(0.0, base * (1.0 + self.jitter * (2.0 * rand - 1.0)))

    def is_retryable(self, error_types: Iterable[str]) -> bool:
        """False when any of ``error_types`` (an error's MRO names) is non-retryable."""
        blocked = set(self.non_retryable)
        return not any(name in blocked for name in error_types)

    def to_dict(self) -> dict[str, Any]:
        """The policy as a msgpack-ready map."""
        return {
            "max_attempts": self.max_attempts,
            "initial_interval": self.initial_interval,
            "backoff_coefficient": self.backoff_coefficient,
            "max_interval": self.max_interval,
            "jitter": self.jitter,
            "non_retryable": list(self.non_retryable),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RetryPolicy:
        """Rebuild a policy from :meth:`to_dict` output (``max_attempts`` True, which
        was accepted once, reads back as the 1 it meant; a ``non_retryable`` name that
        matches no error, accepted before names were checked, as it was stored)."""
        if not isinstance(data, Mapping):
            raise TypeError(f"a retry policy is a map, got {type(data).__name__}")
        data = dict(data)
        if data.get("max_attempts") is True:
            data["max_attempts"] = 1
        names = data.pop("non_retryable", ())
        policy = cls(**data)
        _check(isinstance(names, list | tuple), "non_retryable", "a list of names", names)
        stored = tuple(sorted({_error_name(name) for name in names}))
        object.__setattr__(policy, "non_retryable", stored)
        return policy


def real_number(value: object) -> float | None:
    """``value`` as a float if it is a number (an int, a float, a Decimal, a Fraction, a
    numpy scalar...; an int too large for a float is infinity), else None: a str, bytes or
    bool is not one."""
    if isinstance(value, str | bytes | bool):
        return None
    try:
        return float(value)  # type: ignore[arg-type]
    except OverflowError:
        return math.inf if value > 0 else -math.inf  # type: ignore[operator]
    except (TypeError, ValueError):
        return None


def _number(name: str, value: object) -> float:
    """``value`` as a float (:func:`real_number`), or :class:`InvalidInput` naming ``name``."""
    number = real_number(value)
    _check(number is not None and not math.isnan(number), name, "a number", value)
    return cast("float", number)


def _error_name(kind: object) -> str:
    """An exception type's stored name (a name given as a str is taken as it is, but for
    a built-in exception's bare name: ``"ValueError"`` is stored ``builtins.ValueError``,
    the name every ValueError carries, which the bare name never matched)."""
    if isinstance(kind, str):
        if "." not in kind and _builtin_exception(kind):
            return exception_name(getattr(builtins, kind))
        return kind
    _check(
        isinstance(kind, type) and issubclass(kind, BaseException),
        "non_retryable",
        "exception types or their names",
        kind,
    )
    return exception_name(kind)  # type: ignore[arg-type]


def _matchable(name: str) -> None:
    """Refuse a name no error carries: each is stored as ``module.Qualname``, so a bare
    name matches only as a built-in's (``_error_name`` completes it) and a ``builtins.``
    name only as one of the built-in exceptions."""
    module, _, bare = name.rpartition(".")
    if module and (module != "builtins" or _builtin_exception(bare)):
        return
    close = difflib.get_close_matches(bare, _BUILTIN_EXCEPTIONS, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise InvalidInput(
        f"non_retryable name {name!r:.80} matches no error: an error's type is matched by "
        "its full name (module.Qualname, such as 'myapp.errors.Refused'), a built-in's by "
        f"its bare one too (ValueError): pass the exception type itself{hint}"
    )


def _builtin_exception(name: str) -> bool:
    kind = getattr(builtins, name, None)
    return isinstance(kind, type) and issubclass(kind, BaseException)


_BUILTIN_EXCEPTIONS = sorted(name for name in dir(builtins) if _builtin_exception(name))


def _check(ok: bool, name: str, expected: str, actual: object) -> None:
    if not ok:
        raise InvalidInput(f"{name} must be {expected}, got {safe_repr(actual):.80}")
