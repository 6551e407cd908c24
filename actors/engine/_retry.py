"""The retry rule, in one place: after a failed attempt or probe, retry when, or stop.

A step's attempt failed (its action raised, its instance crashed, its deadline lapsed,
a probe found it not applied). What happens next depends only on data:

- the policy: a compensation runs under ``compensate_retry``, else under the retry
  policy of the step it undoes, else the runtime's default; a forward step and its
  probes under ``retry``, else the default (:func:`policy_for`);
- ``Permanent`` ("this will never succeed") stops at once, and so does an error type the
  policy lists as non-retryable, a value that cannot be stored (:data:`UNSTORABLE_ERROR`:
  it would come back the same), or the last of ``max_attempts``;
- an attempt lost because the runtime gave up on its agent's instances
  (:data:`GIVEN_UP_ERROR`) is not charged: it runs again at once whatever the policy
  says, and gives its number back (``RetryIn.charged``);
- a forward step retries only while its workflow runs: once the workflow compensates, a
  failed attempt is its last.

:func:`after_failure` gives :class:`RetryIn` (backoff with jitter, or 0 for a failure
the host already saw the end of), :class:`GiveUp` (a forward step stops; ``undo``
when the attempt may have taken effect, which everything but ``Permanent`` and an
attempt whose instance never started (:data:`UNBUILT_ERROR`) may: an action that
handed over a value that cannot be stored ran) or
:class:`Escalate` (a compensation cannot finish: an operator must decide).
:func:`after_probe_failure` applies the same policy to the probes of an unknown outcome.

Imports: herder.store records only. Randomness is an argument (drawn only when a
backoff is computed, so a seeded stream stays the same); there is no clock.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from herder.store import RetryPolicy, StepRecord, StepSpec, StepState, WorkflowState

UNSTORABLE_ERROR = "herder.Unstorable"
"""The error type of an attempt that handed herder a value it cannot store (its result,
heartbeat details): it is not retried (it would fail the same way), but its action ran,
so when its workflow compensates its compensation runs."""

GIVEN_UP_ERROR = "herder.AgentGivenUp"
"""The error type of an attempt lost because the runtime gave up on its agent's instances
(their restart intensity was exceeded, by other attempts' crashes) while it ran, or
answered unstarted (``OutcomeKind.UNSTARTED``: the runtime's lease was in doubt): it did
not fail, so it is not charged; it may have taken effect, so its step is undone if it
cannot run again (its workflow compensates)."""


UNBUILT_ERROR = "herder.InstanceNotStarted"
"""The error type of an attempt whose agent instance could not be built (its factory
raised, or the thread host gave up waiting for it): its action never ran, so it took no
effect. It is retried under the policy as any failed attempt, but marks nothing to undo
(an earlier attempt that may have taken effect keeps its mark)."""


@dataclass(frozen=True, slots=True)
class RetryIn:
    """Run the step (or its compensation, or its probe) again after ``delay`` seconds;
    ``charged`` False: the attempt that ended is given back (the next one has its number)."""

    delay: float
    charged: bool = True


@dataclass(frozen=True, slots=True)
class GiveUp:
    """No more attempts of a forward step; ``undo``: it may have taken effect."""

    undo: bool


@dataclass(frozen=True, slots=True)
class Escalate:
    """A compensation (or a probe) cannot finish: the workflow needs an operator."""


Verdict = RetryIn | GiveUp | Escalate


def policy_for(spec: StepSpec, *, compensating: bool, default: RetryPolicy) -> RetryPolicy:
    """The policy a step's attempts run under (a compensation's, if ``compensating``)."""
    if compensating:
        return spec.compensate_retry or spec.retry or default
    return spec.retry or default


def after_failure(
    st: StepRecord,
    spec: StepSpec,
    *,
    workflow: WorkflowState,
    types: tuple[str, ...],
    permanent: bool,
    default: RetryPolicy,
    at_once: bool,
    rand: Callable[[], float],
) -> Verdict:
    """What follows the failure of ``st``'s current attempt (error ``types``, most
    derived first). ``at_once``: retry without a backoff (the failure was a crash or a
    lost instance, not the remote side's answer)."""
    compensating = st.state is StepState.COMPENSATING
    runs = compensating or workflow is WorkflowState.RUNNING  # it may run again
    if GIVEN_UP_ERROR in types:  # not its own failure: not charged (module docstring)
        return RetryIn(0.0, charged=False) if runs else GiveUp(undo=True)
    policy = policy_for(spec, compensating=compensating, default=default)
    attempt = st.comp_attempt if compensating else st.attempt
    retryable = (
        runs
        and not permanent
        and UNSTORABLE_ERROR not in types
        and attempt < policy.max_attempts
        and policy.is_retryable(types)
    )
    if retryable:
        return RetryIn(0.0 if at_once else policy.delay(attempt, rand()))
    if compensating:
        return Escalate()
    return GiveUp(undo=not permanent and UNBUILT_ERROR not in types)


def after_probe_failure(
    spec: StepSpec,
    *,
    probes: int,
    failures: int,
    default: RetryPolicy,
    rand: Callable[[], float],
) -> RetryIn | Escalate:
    """After the ``probes``-th probe of an unknown outcome left it unknown: probe again
    after a backoff, or escalate once ``failures`` (probes that raised or lapsed) reach
    the step's ``max_attempts``."""
    policy = policy_for(spec, compensating=False, default=default)
    if failures >= policy.max_attempts:
        return Escalate()
    return RetryIn(policy.delay(probes, rand()))
