"""Vocabulary for outcomes that are not a plain answer: probes, later completion, tokens.

- :class:`ProbeResult`: what ``probe_<action>(self, ctx)`` returns after an attempt's
  outcome became unknown (the step is ``UNKNOWN``): the request was applied (with its
  result), was not applied, or is still running on the remote side.
- :data:`COMPLETE_LATER`: what ``ctx.complete_later()`` returns; an action returning it
  hands the step off, and the step waits (``WAITING``) for ``Runtime.complete_step`` or
  ``Runtime.fail_step``.
- Task tokens: the opaque string ``ctx.task_token`` that names one attempt (workflow
  id, step, fencing token) for a later completion.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgpack

from herder.actors.engine import OutcomeKind, probe_name
from herder.store import InvalidInput, UserCodeFailed, contain, validate_id

DONE, NOT_DONE, RUNNING = (
    OutcomeKind.DONE.value,
    OutcomeKind.NOT_DONE.value,
    OutcomeKind.RUNNING.value,
)


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """A probe's verdict on an attempt whose outcome is unknown.

    Build it with :meth:`done` (the remote side applied the request; ``result`` becomes
    the step's result), :meth:`not_done` (it did not: the step is retried under its
    policy) or :meth:`running` (it is still working: probe again later).
    """

    status: str
    result: Any = None

    @classmethod
    def done(cls, result: Any = None) -> ProbeResult:
        """The request was applied; ``result`` is the step's result."""
        return cls(DONE, result)

    @classmethod
    def not_done(cls) -> ProbeResult:
        """The request was not applied; the step is retried."""
        return cls(NOT_DONE)

    @classmethod
    def running(cls) -> ProbeResult:
        """The remote side is still working on it; the step keeps waiting."""
        return cls(RUNNING)


class _CompleteLater:
    """The marker an action returns to complete its step later (``ctx.complete_later()``)."""

    _instance: _CompleteLater | None = None

    def __new__(cls) -> _CompleteLater:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "COMPLETE_LATER"


COMPLETE_LATER = _CompleteLater()

_TOKEN_PREFIX = "ht1."


def task_token(workflow_id: str, step: str, token: int) -> str:
    """The opaque task token of one attempt (see :func:`parse_task_token`)."""
    packed = msgpack.packb([workflow_id, step, token], use_bin_type=True)
    return _TOKEN_PREFIX + base64.urlsafe_b64encode(packed).decode("ascii").rstrip("=")


def parse_task_token(value: object) -> tuple[str, str, int]:
    """(workflow id, step, fencing token) of a task token; :class:`InvalidInput` if malformed."""
    bad = InvalidInput(
        f"not a herder task token: {value!r:.80}; pass ctx.task_token of the attempt exactly"
    )
    if not isinstance(value, str) or not value.startswith(_TOKEN_PREFIX) or len(value) > 2000:
        raise bad
    body = value[len(_TOKEN_PREFIX) :]
    try:
        raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        parts = msgpack.unpackb(raw, raw=False)  # at most 2000 bytes: checked above
    except (binascii.Error, ValueError, msgpack.UnpackException):
        raise bad from None
    if (
        not isinstance(parts, list)
        or len(parts) != 3
        or not isinstance(parts[0], str)
        or not isinstance(parts[1], str)
        or type(parts[2]) is not int
    ):
        raise bad
    try:  # (an id no workflow can have: the token's fault, not an id the caller chose)
        validate_id(parts[0])
    except InvalidInput:
        raise bad from None
    return parts[0], parts[1], parts[2]


def has_probe(factory: Callable[[], object], action: str) -> bool:
    """True when the agent class a factory builds defines ``probe_<action>``.

    Told from the class (the factory is the class or a ``functools.partial`` of it); a
    factory that hides its class (a lambda) has no probes, nor has one whose attributes
    raise when looked up (asked on the Scheduler's thread: nothing may escape).
    """
    from herder.actors._agent import agent_class_of  # _agent imports this module

    try:
        cls = contain(agent_class_of, factory)
        return cls is not None and callable(contain(getattr, cls, probe_name(action), None))
    except UserCodeFailed:
        return False
