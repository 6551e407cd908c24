"""The retry rule and one step's transitions (``herder.actors.engine``), as tables.

No runtime, no store, no clock: time, tokens and randomness are arguments, so each row
is a step record and the facts of its failure, and the verdict or record that follows.
"""

from __future__ import annotations

from typing import Any

import pytest

from herder.actors.engine import (
    GIVEN_UP_ERROR,
    TIMEOUT_ERROR,
    UNSTORABLE_ERROR,
    Escalate,
    GiveUp,
    RetryIn,
    Verdict,
    after_failure,
    after_probe_failure,
    attempt_due_ms,
    dispatch,
    failed,
    lapse,
    ms,
    policy_for,
    probed,
    to_undo,
    unknown,
)
from herder.store import (
    InvalidInput,
    RetryPolicy,
    StepRecord,
    StepSpec,
    StepState,
    WorkflowState,
)

S = StepState
W = WorkflowState
DEFAULT = RetryPolicy(max_attempts=3, initial_interval=1.0, backoff_coefficient=2.0, jitter=0.0)
OWN = RetryPolicy(max_attempts=5, initial_interval=10.0, jitter=0.0, non_retryable=(KeyError,))
UNDO = RetryPolicy(max_attempts=2, initial_interval=7.0, jitter=0.0)
PLAIN = StepSpec("a", agent="svc", action="do", compensate="undo")
WITH_OWN = StepSpec("a", agent="svc", action="do", compensate="undo", retry=OWN)
WITH_UNDO = StepSpec(
    "a", agent="svc", action="do", compensate="undo", retry=OWN, compensate_retry=UNDO
)


def _step(state: StepState, attempt: int = 1, comp_attempt: int = 0) -> StepRecord:
    return StepRecord("w", "a", state=state, attempt=attempt, comp_attempt=comp_attempt)


def _dispatch(
    st: StepRecord, spec: StepSpec, *, compensating: bool, token: int, now: float
) -> tuple[StepRecord, float]:
    return dispatch(
        st,
        spec,
        compensating=compensating,
        token=token,
        now=now,
        default_timeout=30.0,
        probe_timeout=5.0,
    )


def _never() -> float:
    raise AssertionError("no backoff was due, so no randomness may be drawn")


@pytest.mark.parametrize(
    ("spec", "compensating", "policy"),
    [
        (PLAIN, False, DEFAULT),
        (PLAIN, True, DEFAULT),
        (WITH_OWN, False, OWN),
        (WITH_OWN, True, OWN),  # a compensation runs under its step's policy
        (WITH_UNDO, True, UNDO),
        (WITH_UNDO, False, OWN),
    ],
)
def test_each_attempt_runs_under_the_policy_the_design_names(
    spec: StepSpec, compensating: bool, policy: RetryPolicy
) -> None:
    assert policy_for(spec, compensating=compensating, default=DEFAULT) is policy


@pytest.mark.parametrize(
    "case",
    [
        # transient failures back off exponentially under the policy
        (_step(S.DISPATCHED, 1), PLAIN, W.RUNNING, ("x.Err",), False, False, RetryIn(1.0)),
        (_step(S.DISPATCHED, 2), PLAIN, W.RUNNING, (), False, False, RetryIn(2.0)),
        (_step(S.DISPATCHED, 3), PLAIN, W.RUNNING, (), False, False, GiveUp(undo=True)),
        (_step(S.DISPATCHED, 3), WITH_OWN, W.RUNNING, (), False, False, RetryIn(10.0 * 2**2)),
        # a crash or a lost instance retries at once
        (_step(S.DISPATCHED, 1), PLAIN, W.RUNNING, (), False, True, RetryIn(0.0)),
        # Permanent: no retry, and nothing to undo
        (_step(S.DISPATCHED, 1), PLAIN, W.RUNNING, (), True, False, GiveUp(undo=False)),
        # a non-retryable type (or a base of it) stops at once, but may have taken effect
        (_step(S.DISPATCHED, 1), WITH_OWN, W.RUNNING, ("builtins.KeyError",), False, False,
         GiveUp(undo=True)),
        # a value herder cannot store: no retry (it would fail the same way), but it ran
        (_step(S.DISPATCHED, 1), PLAIN, W.RUNNING, (UNSTORABLE_ERROR, "x.EncodeError"), False,
         False, GiveUp(undo=True)),
        (_step(S.COMPENSATING, 1, 1), WITH_UNDO, W.COMPENSATING, (UNSTORABLE_ERROR,), False,
         False, Escalate()),
        # once the workflow compensates, a forward failure is final
        (_step(S.DISPATCHED, 1), PLAIN, W.COMPENSATING, (), False, False, GiveUp(undo=True)),
        (_step(S.UNKNOWN, 1), PLAIN, W.COMPENSATING, (), False, True, GiveUp(undo=True)),
        # lost when its agent's instances were given up on: not charged, whatever its
        # number or the policy, while it may run; else it may have taken effect
        (_step(S.DISPATCHED, 3), PLAIN, W.RUNNING, (GIVEN_UP_ERROR,), False, True,
         RetryIn(0.0, charged=False)),
        (_step(S.DISPATCHED, 5), WITH_OWN, W.RUNNING, (GIVEN_UP_ERROR,), False, True,
         RetryIn(0.0, charged=False)),
        (_step(S.COMPENSATING, 1, 2), WITH_UNDO, W.COMPENSATING, (GIVEN_UP_ERROR,), False, True,
         RetryIn(0.0, charged=False)),
        (_step(S.DISPATCHED, 1), PLAIN, W.COMPENSATING, (GIVEN_UP_ERROR,), False, True,
         GiveUp(undo=True)),
        # a compensation retries under its own count and policy, even while compensating
        (_step(S.COMPENSATING, 3, 1), WITH_UNDO, W.COMPENSATING, (), False, False, RetryIn(7.0)),
        (_step(S.COMPENSATING, 1, 2), WITH_UNDO, W.COMPENSATING, (), False, False, Escalate()),
        (_step(S.COMPENSATING, 1, 1), PLAIN, W.COMPENSATING, (), True, False, Escalate()),
    ],
)  # fmt: skip
def test_after_a_failure_the_rule_retries_gives_up_or_escalates(case: tuple[Any, ...]) -> None:
    step, spec, workflow, types, permanent, at_once, verdict = case
    backoff = isinstance(verdict, RetryIn) and not at_once
    got = after_failure(
        step,
        spec,
        workflow=workflow,
        types=types,
        permanent=permanent,
        default=DEFAULT,
        at_once=at_once,
        rand=(lambda: 0.5) if backoff else _never,
    )
    assert got == verdict


@pytest.mark.parametrize(
    ("probes", "failures", "verdict"),
    [(1, 0, RetryIn(1.0)), (2, 1, RetryIn(2.0)), (5, 2, RetryIn(16.0)), (3, 3, Escalate())],
)
def test_probes_back_off_and_escalate_after_max_attempts_failures(
    probes: int, failures: int, verdict: Verdict
) -> None:
    rand = _never if isinstance(verdict, Escalate) else lambda: 0.5
    got = after_probe_failure(PLAIN, probes=probes, failures=failures, default=DEFAULT, rand=rand)
    assert got == verdict


@pytest.mark.parametrize(
    ("policy", "failed_attempt", "wait"),
    [
        # 2.0 ** 1024 overflows a float: a step probed "for as long as it takes" reached
        # it after ~17 h at the 60 s ceiling, and the Scheduler crashed on every retry.
        (RetryPolicy(max_attempts=2000, jitter=0.0), 1025, 60.0),
        (
            RetryPolicy(
                initial_interval=0.001, backoff_coefficient=1e200, max_interval=0.01, jitter=0.0
            ),
            3,
            0.01,
        ),
        (RetryPolicy(initial_interval=0.0, max_interval=0.0, jitter=0.0), 5000, 0.0),
        # Whatever the ceiling, a wait stays one the store's timers can hold.
        (RetryPolicy(max_interval=float("inf"), jitter=0.0), 5000, 10 * 365 * 86400.0),
    ],
)
def test_a_backoff_that_would_overflow_waits_at_its_ceiling(
    policy: RetryPolicy, failed_attempt: int, wait: float
) -> None:
    assert policy.delay(failed_attempt) == wait
    spec = StepSpec("a", agent="svc", action="do", retry=policy)
    got = after_probe_failure(spec, probes=failed_attempt, failures=0, default=DEFAULT, rand=_half)
    assert got == RetryIn(wait)


def _half() -> float:
    return 0.5


@pytest.mark.parametrize("attempts", [True, 2**63, 10**30, 2.0])
def test_max_attempts_must_be_an_int_a_record_can_hold(attempts: Any) -> None:
    with pytest.raises(InvalidInput, match="max_attempts must be an int from 1 to 2\\*\\*63 - 1"):
        RetryPolicy(max_attempts=attempts)


def test_a_policy_stored_with_max_attempts_true_reads_back_as_one() -> None:
    stored = {**RetryPolicy().to_dict(), "max_attempts": True}
    assert RetryPolicy.from_dict(stored).max_attempts == 1
    assert RetryPolicy(max_attempts=2**63 - 1).max_attempts == 2**63 - 1


@pytest.mark.parametrize(
    ("verdict", "state", "done_token", "timer"),
    [
        # marked: a failure a retry follows was no Permanent one, it may have taken effect
        (RetryIn(2.0), S.RETRY_WAIT, 9, ms(102.0)),
        (RetryIn(0.0), S.RETRY_WAIT, 9, ms(100.0)),  # a timer even for "at once"
        (GiveUp(undo=True), S.FAILED, 9, None),
        (GiveUp(undo=False), S.FAILED, None, None),
    ],
)
def test_a_failed_forward_attempt_is_recorded_as_the_verdict_says(
    verdict: Verdict, state: StepState, done_token: int | None, timer: int | None
) -> None:
    st = _dispatch(_step(S.PENDING, 0), PLAIN, compensating=False, token=5, now=90.0)[0]
    new = failed(st, verdict, error="boom", types=("builtins.OSError",), token=9, now=100.0)
    assert (new.state, new.done_token, new.timer_ms) == (state, done_token, timer)
    assert (new.token, new.error, new.error_type, new.deadline) == (
        9,
        "boom",
        "builtins.OSError",
        None,
    )


def test_a_permanent_failure_after_an_attempt_that_may_have_taken_effect_is_undone() -> None:
    # Attempt 1 timed out (its charge may stand); attempt 2 raised Permanent. The step
    # was left unmarked and never compensated, though the workflow said it undid
    # everything (the workflow review of session 14). Permanent speaks only for its own
    # attempt.
    st = _dispatch(_step(S.PENDING, 0), PLAIN, compensating=False, token=5, now=90.0)[0]
    waiting = failed(st, RetryIn(1.0), error="timed out", types=(), token=6, now=100.0)
    again = _dispatch(waiting, PLAIN, compensating=False, token=7, now=101.0)[0]
    gave_up = failed(again, GiveUp(undo=False), error="declined", types=(), token=8, now=102.0)
    assert (gave_up.state, gave_up.done_token) == (S.FAILED, 8)
    assert to_undo(gave_up)
    # A step whose only attempt failed with Permanent had no effect: not undone.
    alone = failed(st, GiveUp(undo=False), error="declined", types=(), token=6, now=100.0)
    assert (alone.done_token, to_undo(alone)) == (None, False)


def test_an_attempt_sent_again_after_its_answer_was_lost_marks_the_step() -> None:
    # Its first attempt was running at a crash: it may have taken effect.
    st = _dispatch(_step(S.PENDING, 0), PLAIN, compensating=False, token=5, now=90.0)[0]
    rerun = _dispatch(st, PLAIN, compensating=False, token=9, now=95.0)[0]
    assert (rerun.state, rerun.attempt, rerun.done_token) == (S.DISPATCHED, 2, 5)
    gave_up = failed(rerun, GiveUp(undo=False), error="declined", types=(), token=10, now=96.0)
    assert to_undo(gave_up)


def test_a_compensation_that_cannot_finish_stays_compensating_with_its_error() -> None:
    st = _step(S.COMPENSATING, 1, 2)
    new = failed(st, Escalate(), error="no", types=(), token=4, now=1.0)
    assert (new.state, new.error, new.timer_ms, new.comp_attempt) == (S.COMPENSATING, "no", None, 2)


@pytest.mark.parametrize(
    ("state", "compensating", "expected"),
    [
        (S.PENDING, False, (S.DISPATCHED, 2, 0, 30.0)),
        (S.RETRY_WAIT, False, (S.DISPATCHED, 2, 0, 30.0)),
        (S.UNKNOWN, False, (S.UNKNOWN, 1, 0, 5.0)),  # a probe: same attempt, probe timeout
        (S.SUCCEEDED, True, (S.COMPENSATING, 1, 1, 30.0)),
        (S.COMPENSATING, True, (S.COMPENSATING, 1, 1, 30.0)),
    ],
)
def test_a_dispatch_records_the_attempt_and_its_deadline_before_it_runs(
    state: StepState, compensating: bool, expected: tuple[StepState, int, int, float]
) -> None:
    st = _step(state, 1, 0)
    new, window = _dispatch(st, PLAIN, compensating=compensating, token=7, now=100.0)
    assert (new.state, new.attempt, new.comp_attempt, window) == expected
    assert new.token == 7
    assert new.deadline == 100.0 + window
    assert new.timer_ms is None  # its commit's batch entry watches it, at:
    assert attempt_due_ms(new) == ms(100.0 + window)


def test_a_heartbeat_deadline_comes_first_and_sets_the_window() -> None:
    spec = StepSpec("a", agent="svc", action="do", timeout=60.0, heartbeat_timeout=4.0)
    new, window = _dispatch(_step(S.PENDING, 0), spec, compensating=False, token=1, now=10.0)
    assert window == 4.0
    assert (new.deadline, new.heartbeat_deadline, new.timer_ms) == (70.0, 14.0, None)
    assert attempt_due_ms(new) == ms(14.0)


def test_a_lapsed_attempt_turns_unknown_and_counts_its_probes() -> None:
    st = _step(S.DISPATCHED, 2)
    new = unknown(st, "timed out after 30s", token=3, now=50.0)
    assert (new.state, new.error_type, new.retry_at, new.timer_ms) == (
        S.UNKNOWN,
        TIMEOUT_ERROR,
        50.0,
        ms(50.0),
    )
    once = probed(new, "probe failed: x", failed=True, token=4, now=51.0)
    twice = probed(once, "still running", failed=False, token=5, now=52.0)
    assert (once.extra["probes"], once.extra["probe_failures"], once.error) == (
        1,
        1,
        "probe failed: x",
    )
    assert (twice.extra["probes"], twice.extra["probe_failures"], twice.error) == (
        2,
        1,
        "probe failed: x",
    )
    assert twice.timer_ms is None  # the caller sets the next probe's time


def test_a_lapse_names_the_timeout_that_ran_out_a_probes_own() -> None:
    # A probe that timed out was reported with the step's timeout (5.0s), not the
    # probe_timeout that ran out (the outcomes review, session 14).
    probing = _step(S.UNKNOWN).evolve(deadline=10.0)
    forward = _step(S.DISPATCHED).evolve(deadline=10.0)
    assert lapse(probing, PLAIN, 11.0, 30.0, 3.0) == "timed out after 3.0s"
    assert lapse(forward, PLAIN, 11.0, 30.0, 3.0) == "timed out after 30.0s"
    assert lapse(forward, PLAIN, 9.0, 30.0, 3.0) is None


def test_an_initial_interval_past_the_default_ceiling_says_to_give_max_interval() -> None:
    # RetryPolicy(initial_interval=300.0) (retry every five minutes) was refused with
    # "max_interval must be >= initial_interval, got 60.0": a value the caller never gave
    # (the default), and nothing said what to do.
    with pytest.raises(InvalidInput) as refused:
        RetryPolicy(initial_interval=300.0)
    assert str(refused.value) == (
        "max_interval must be >= initial_interval, got max_interval=60 (60 unless given) "
        "and initial_interval=300: give max_interval=300 or more (the longest wait "
        "between two attempts)"
    )
    assert RetryPolicy(initial_interval=300.0, max_interval=300.0).delay(5, 0.5) == 300.0
