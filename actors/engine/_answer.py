"""What an answer that is not a plain result, or a lapse, means for its step.

An attempt usually ends with a plain answer: a result, or an error the retry rule
(``_retry``) judges. Two kinds of news need reading first:

- a marked answer (:class:`OutcomeKind`): a probe's verdict on an UNKNOWN step (applied,
  not applied, still running), or ``complete_later()`` handing a DISPATCHED step off;
  an attempt answered unstarted (it never ran: the runtime's lease was in doubt) is a
  loss not charged; anything else marked (a probe verdict from a plain action, a
  hand-off from a compensation or a probe) is a programming error in the agent, failed
  permanently;
- a lapse (its deadline or heartbeat ran out): an UNKNOWN step's probe failed; an
  attempt that may have reached the remote side is probed when its agent has a probe;
  anything else failed with a timeout;
- a loss (no answer: its instance crashed, could not start, or was given up on): a
  probe's loss leaves the outcome unknown, so the step is probed again, never run blind;
  an action's loss is a failure retried at once.

:func:`read_answer`, :func:`after_lapse` and :func:`after_loss` give what follows as
data: :class:`Succeed`, :class:`Fail`, :class:`ProbeAgain`, :class:`HandOff` or
:class:`AskProbe`.

Imports: herder.store records and this package; no clock, no I/O.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from herder.actors.engine._retry import GIVEN_UP_ERROR, UNBUILT_ERROR
from herder.actors.engine._step import TIMEOUT_ERROR
from herder.store import StepRecord, StepState

CRASH_ERROR = "herder.InstanceCrashed"
"""The error type of an attempt whose instance crashed or could not start."""

PROBE_PREFIX = "probe_"
"""An action's probe is the agent method of this prefix and the action's name."""


def probe_name(action: str) -> str:
    """The name of the probe method for ``action``."""
    return PROBE_PREFIX + action


class OutcomeKind(enum.StrEnum):
    """How an attempt's answer is marked; the values travel in ``Outcome.kind``."""

    PLAIN = ""  # a result or an error
    LATER = "later"  # the action returned ctx.complete_later()
    DONE = "done"  # a probe: the request was applied
    NOT_DONE = "not_done"  # a probe: it was not
    RUNNING = "running"  # a probe: the remote side is still at it
    UNSTARTED = "unstarted"  # never started (the lease in doubt, or a stale token)


@dataclass(frozen=True, slots=True)
class Succeed:
    """The step succeeded with ``result``."""

    result: Any


@dataclass(frozen=True, slots=True)
class Fail:
    """The attempt failed; the retry rule decides what follows."""

    error: str
    types: tuple[str, ...]
    permanent: bool
    at_once: bool = False  # retried without the policy's backoff (a loss, not a failure)


STILL_RUNNING = "probe: still running"
"""The history's note of a probe that answered ``ProbeResult.running()``."""


@dataclass(frozen=True, slots=True)
class ProbeAgain:
    """The outcome stays unknown: probe again later (``failed``: the probe itself
    raised or lapsed, which counts against the step's attempts)."""

    note: str
    failed: bool


@dataclass(frozen=True, slots=True)
class HandOff:
    """The step waits for ``complete_step``/``fail_step`` under its deadline."""


@dataclass(frozen=True, slots=True)
class AskProbe:
    """The lapsed attempt may have reached the remote side: UNKNOWN, probe it."""

    lapsed: str


Reading = Succeed | Fail | ProbeAgain | HandOff | AskProbe


def read_answer(
    st: StepRecord, *, ok: bool, kind: str, result: Any, error: str | None, probe: str
) -> Succeed | Fail | ProbeAgain | HandOff:
    """What a marked answer (or any answer to a probe) of ``st``'s current attempt means;
    ``probe`` names the probe method, for the error when it returned no verdict."""
    if kind == OutcomeKind.UNSTARTED:  # it never ran: as a loss not charged, it runs again
        return after_loss(st, error or "not started", given_up=True)
    if st.state is StepState.UNKNOWN:
        if not ok:
            return ProbeAgain(f"probe failed: {error}", failed=True)
        if kind == OutcomeKind.DONE:
            return Succeed(result)
        if kind == OutcomeKind.NOT_DONE:
            error = f"{st.error}; the probe found it was not applied"
            return Fail(error, (TIMEOUT_ERROR,), permanent=False)
        if kind == OutcomeKind.RUNNING:
            return ProbeAgain(STILL_RUNNING, failed=False)  # (the step keeps its error)
        return ProbeAgain(f"{probe} must return a ProbeResult", failed=True)
    if kind == OutcomeKind.LATER and st.state is StepState.DISPATCHED:
        return HandOff()
    return Fail(_misplaced(st, kind, probe), (), permanent=True)


def _misplaced(st: StepRecord, kind: str, probe: str) -> str:
    """The error of an answer marked ``kind`` where that mark cannot apply (the agent's
    bug): what was returned, and what to return instead."""
    what = "a compensation" if st.state is StepState.COMPENSATING else "an action"
    if kind == OutcomeKind.LATER:
        return (
            f"{what} returned ctx.complete_later(), which only a forward action may: "
            "a compensation must undo the step before it returns"
        )
    if kind in (OutcomeKind.DONE, OutcomeKind.NOT_DONE, OutcomeKind.RUNNING):
        return (
            f"{what} returned a ProbeResult ({kind}), which only the probe {probe} may: "
            "return the step's result instead"
        )
    return f"{what} returned an unknown marker {str(kind)!r}; return plain data instead"


def after_lapse(st: StepRecord, lapsed: str, *, has_probe: bool) -> Fail | ProbeAgain | AskProbe:
    """What follows when ``st``'s attempt (or probe) lapsed for the reason ``lapsed``;
    ``has_probe``: its agent defines a probe for the step's action."""
    if st.state is StepState.UNKNOWN:
        return ProbeAgain(f"probe {lapsed}", failed=True)
    if st.state in (StepState.DISPATCHED, StepState.WAITING) and has_probe:
        return AskProbe(lapsed)
    return Fail(lapsed, (TIMEOUT_ERROR,), permanent=False)


def after_loss(
    st: StepRecord, error: str, *, given_up: bool, unbuilt: bool = False
) -> Fail | ProbeAgain:
    """What follows an attempt that ended without an answer (module docstring). A lost
    probe counts as a failed probe, unless its agent was given up on; an action's loss
    is retried at once, charged unless given up on (``GIVEN_UP_ERROR``, ``_retry``).
    ``unbuilt``: lost because its instance could not be built, so it never ran
    (``UNBUILT_ERROR``), and retried after its policy's backoff, as the thread and
    asyncio hosts retry a failed start: at once, a factory failing for a moment spent
    every attempt of the step within milliseconds."""
    if st.state is StepState.UNKNOWN:
        return ProbeAgain(f"probe lost: {error}", failed=not given_up)
    crashed = (UNBUILT_ERROR, CRASH_ERROR) if unbuilt else (CRASH_ERROR,)
    types = (GIVEN_UP_ERROR,) if given_up else crashed
    return Fail(error, types, permanent=False, at_once=not unbuilt)
