"""Touching objects that came from user code without letting user code escape.

User code (actions, probes, compensations, agent factories) and the objects it hands back
(results, exceptions, their types) are untrusted: their ``__str__``, ``__repr__``,
``__format__``, a metaclass's ``__name__``/``__mro__`` property or a dict subclass's
``items`` may raise anything, ``BaseException`` included. On an actor thread that is
fatal beyond the step: pykka stops *every* actor of the process when a ``BaseException``
(``SystemExit``, ``KeyboardInterrupt``, ``GeneratorExit``, a custom subclass) escapes one.

Every place that touches such an object goes through this module:

- :func:`safe_str` / :func:`safe_repr`: a plain ``str`` always; ``"<unprintable: str()
  raised X>"`` when the object's method raises.
- :func:`type_name` and :func:`exception_name`: a type's names read straight from the
  type object, so no metaclass property runs. :func:`error_types` walks the real MRO the
  same way (the names ``RetryPolicy.non_retryable`` is matched against).
- :func:`describe`: ``"Type: message"`` for any exception, bounded and storable;
  :func:`bounded_text` makes any text storable (valid UTF-8, at most
  :data:`MAX_TEXT_CHARS`).
- :func:`contain`: call user code; whatever it raises comes out as :class:`UserCodeFailed`,
  an ordinary ``Exception`` whose text is already plain, never as the user's object.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from herder.store._errors import HerderError

T = TypeVar("T")

MAX_TEXT_CHARS = 8192
"""Longest error text kept in a record; the rest is cut (an exception can say megabytes)."""

_TYPE_ATTRS = type.__dict__
"""``type``'s own descriptors: reading through them skips any metaclass override."""


def _plain(text: object) -> str:
    """An exact ``str`` copy of a str (subclass) without running any of its methods."""
    return str.__str__(text) if issubclass(type(text), str) else "?"


def type_name(cls: type) -> str:
    """``cls.__name__`` as the type itself holds it (a metaclass property is not run)."""
    return _plain(_TYPE_ATTRS["__name__"].__get__(cls))


def exception_name(cls: type) -> str:
    """The qualified name under which an exception type is stored and matched, e.g.
    ``builtins.ValueError``; read without running user code (``?`` for a module that is
    not a str)."""
    module = _TYPE_ATTRS["__module__"].__get__(cls)
    return f"{_plain(module)}.{_plain(_TYPE_ATTRS['__qualname__'].__get__(cls))}"


def error_types(exc: BaseException) -> tuple[str, ...]:
    """The stored names of an exception's type and all its base types (its real MRO)."""
    mro = _TYPE_ATTRS["__mro__"].__get__(type(exc))
    return tuple(exception_name(t) for t in mro if issubclass(t, BaseException))


def safe_str(obj: object, fn: Callable[[object], str] = str) -> str:
    """``fn(obj)`` (``str`` by default) as a plain str, whatever ``obj``'s methods raise."""
    try:
        return _plain(fn(obj))
    except BaseException as failed:  # user code may raise anything at all
        return f"<unprintable: {fn.__name__}() raised {type_name(type(failed))}>"


def safe_repr(obj: object) -> str:
    """``repr(obj)`` as a plain str, whatever ``obj.__repr__`` raises."""
    return safe_str(obj, repr)


def describe(exc: BaseException) -> str:
    """``"Type: message"`` for any exception, storable: even one whose ``__str__`` raises
    (anything), returns megabytes or lone surrogates."""
    message = safe_str(exc)
    name = type_name(type(exc))
    return bounded_text(f"{name}: {message}" if message else name)


def explain(reason: object) -> str:
    """Why something failed, as a person reads it: a herder error's own message (it says
    what happened, user code's ``"Type: message"`` included), any other exception as
    :func:`describe` puts it (unless its message starts with its type's name already: an
    ``InstanceCrash`` carrying a described one), anything else as text. Not a ``repr``: a
    reason that wraps another read as nested quotes
    (``SupervisorStartError("... UserCodeFailed('...')")``)."""
    text = bounded_text(safe_str(reason))
    if isinstance(reason, HerderError) or not isinstance(reason, BaseException):
        return text
    return text if text.startswith(f"{type(reason).__name__}: ") else describe(reason)


class UserCodeFailed(HerderError):
    """User code raised; ``error`` and ``error_types`` describe what (as plain data).

    Raised by :func:`contain` in place of the user's exception, so nothing downstream
    (pykka's logging, a supervisor's report) touches the user's object again.
    """

    def __init__(self, error: str, error_types: tuple[str, ...]) -> None:
        super().__init__(error)
        self.error = error
        self.error_types = error_types


def contain(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)``; anything it raises, ``BaseException`` included, is re-raised as
    :class:`UserCodeFailed` (without the original attached)."""
    try:
        return fn(*args)
    except BaseException as exc:  # user code may raise anything at all
        failed = UserCodeFailed(describe(exc), error_types(exc))
    raise failed


def bounded_text(text: str, limit: int = MAX_TEXT_CHARS) -> str:
    """``text`` as it can always be stored: lone surrogates escaped, at most ``limit``
    characters (the cut is marked)."""
    if len(text) > limit:
        text = f"{text[:limit]}... [{len(text) - limit} more characters cut]"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text
