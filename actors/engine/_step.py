"""One step's transitions as pure record functions: old record (+ facts) -> new record.

Each function builds the record a step moves to; none keeps memory, reads a clock or
writes anything. Time (``now``) and fencing tokens (``token``) are arguments; the
caller records the result (and its history event) in the workflow's transaction.

- timers: :func:`ms` (whole milliseconds, as the timer index keeps them),
  :func:`with_timer` (at the retry time, else the nearest deadline), :func:`lapse`
  (why an attempt's heartbeat or deadline ran out), :func:`attempt_due_ms` (when),
  :func:`why_stale` (why a task token's attempt no longer counts);
- forward and back: :func:`dispatch` (DISPATCHED, a compensation, or a probe of an
  UNKNOWN step, each with its deadline), :func:`settled` (succeeded, compensated,
  skipped; :func:`succeeded_with`: the action succeeded), :func:`failed` (what
  :func:`~herder.actors.engine._retry.after_failure` decided), :func:`unknown` (a lapsed
  attempt handed to a probe), :func:`probed` (a probe left the outcome unknown),
  :func:`handed_off` (``complete_later``), :func:`heartbeat`;
- :func:`stopped` (nothing will wake it) and :func:`restarted` (an operator's retry).

Imports: herder.store records, and this package's ``_retry`` and ``_members``.
"""

from __future__ import annotations

from typing import Any

from herder.actors.engine._members import moved_mark
from herder.actors.engine._retry import UNBUILT_ERROR, Escalate, GiveUp, RetryIn, Verdict
from herder.store import StepRecord, StepSpec, StepState, bounded_text, ms, replacer

TIMEOUT_ERROR = "herder.Timeout"
"""The error type of an attempt whose deadline or heartbeat lapsed."""


def with_timer(st: StepRecord) -> StepRecord:
    """The step with its timer at its retry time, else at its nearest deadline."""
    if st.retry_at is not None:
        return st.evolve(timer_ms=ms(st.retry_at))
    times = [t for t in (st.deadline, st.heartbeat_deadline) if t is not None]
    return st.evolve(timer_ms=ms(min(times)) if times else None)


_STOPPED: dict[str, Any] = dict.fromkeys(("deadline", "heartbeat_deadline", "retry_at", "timer_ms"))
"""What a stopped step has none of: nothing will wake it."""


def stopped(st: StepRecord, **changes: Any) -> StepRecord:
    """The step with no deadline, retry time or timer left: nothing will wake it."""
    return st.evolve(**_STOPPED, **changes)


def settled(st: StepRecord, state: StepState, token: int, now: float, **changes: Any) -> StepRecord:
    """The step ended in ``state`` (succeeded, compensated, skipped): :func:`stopped`, with
    no error (one ``evolve`` call: it runs once per step)."""
    return st.evolve(
        state=state, token=token, error=None, error_type=None, updated=now, **_STOPPED, **changes
    )


_SUCCEEDED = replacer(
    StepRecord,
    "state",
    "token",
    "done_token",
    "result",
    "succeeded",
    "updated",
    *_STOPPED,
    "error",
    "error_type",
)


def succeeded_with(st: StepRecord, result: Any, token: int, now: float) -> StepRecord:
    """The step's action succeeded with ``result``: :func:`settled` SUCCEEDED, to be undone
    (``done_token``) if its workflow compensates. (One generated copy, not ``evolve``:
    it runs once per step.)"""
    return _SUCCEEDED(
        st, StepState.SUCCEEDED, token, token, result, True, now, None, None, None, None, None, None
    )


def restarted(st: StepRecord, token: int) -> StepRecord:
    """The step back to PENDING at attempt 0, as a retry of a parked workflow wants it;
    marked (``done_token``) if the attempt it stopped at may have taken effect (its
    outcome unknown, running, or handed off), so that a Permanent answer of the next
    one, which speaks only for itself, still leaves it to be undone."""
    done = st.done_token
    if done is None and st.state in _UNSURE:
        done = token
    return stopped(st, state=StepState.PENDING, attempt=0, token=token, done_token=done, error=None)


_UNSURE = (StepState.UNKNOWN, StepState.DISPATCHED, StepState.WAITING)


def attempt_timeout(
    st: StepRecord,
    spec: StepSpec,
    default_timeout: float,
    probe_timeout: float,
    *,
    compensating: bool = False,
) -> float:
    """The seconds the step's next attempt (or the one under way) has before its deadline:
    a probe's (forward, of an UNKNOWN step) ``probe_timeout``, else the step's ``timeout``
    or ``default_timeout``."""
    if not compensating and st.state is StepState.UNKNOWN:
        return probe_timeout
    return spec.timeout or default_timeout


def completable(st: StepRecord, *, queued: bool) -> bool:
    """Whether the step's current attempt may still be completed through its task token
    (``complete_step``): handed off (WAITING), or its action still running (DISPATCHED,
    and not ``queued`` to run again after a restart). Its token must match, and the
    attempt must not have lapsed (:func:`lapse`)."""
    return st.state is StepState.WAITING or (st.state is StepState.DISPATCHED and not queued)


def why_stale(st: StepRecord, lapsed: str | None) -> str:
    """Why a task token's attempt no longer counts, from its step's state (``lapsed``:
    what :func:`lapse` said)."""
    if lapsed is not None:
        return f"it {lapsed}; the next sweep retries or probes it"
    if st.state is StepState.UNKNOWN:
        return "it timed out, and whether it took effect is being probed"
    if st.state.is_compensation:
        return "its workflow is undoing the step"
    if st.state in (StepState.SUCCEEDED, StepState.FAILED):
        return "the step already finished"
    return (
        "a newer attempt replaced it: it failed, timed out or was cut off by a restart, and "
        "the step runs again"
    )


def lapse(
    st: StepRecord, spec: StepSpec, now: float, default_timeout: float, probe_timeout: float
) -> str | None:
    """Why the step's attempt lapsed by ``now`` (heartbeat, then deadline), else None."""
    now_ms = ms(now)  # timers are kept in whole ms; compare at the same precision
    if st.heartbeat_deadline is not None and now_ms >= ms(st.heartbeat_deadline):
        return f"no heartbeat for {spec.heartbeat_timeout}s"
    if st.deadline is not None and now_ms >= ms(st.deadline):
        return f"timed out after {attempt_timeout(st, spec, default_timeout, probe_timeout)}s"
    return None


def attempt_due_ms(st: StepRecord) -> int | None:
    """When the step's attempt lapses (its heartbeat or deadline, whichever comes
    first), in the whole ms of the timer index; None if it has no deadline."""
    if st.deadline is None:
        return None
    hb = st.heartbeat_deadline
    return ms(st.deadline if hb is None or hb > st.deadline else hb)


def dispatch(
    st: StepRecord,
    spec: StepSpec,
    *,
    compensating: bool,
    token: int,
    now: float,
    default_timeout: float,
    probe_timeout: float,
) -> tuple[StepRecord, float]:
    """The step's next attempt recorded before anyone runs it, and the seconds it has
    before it lapses (its heartbeat timeout, else its timeout). Its deadline is watched
    by the batch entry of the commit that records it (no timer of its own).

    A compensation counts in ``comp_attempt``; a probe (forward, of an UNKNOWN step)
    keeps the step UNKNOWN at its attempt, under ``probe_timeout``; anything else is
    DISPATCHED at attempt + 1.
    """
    probing = not compensating and st.state is StepState.UNKNOWN
    timeout = attempt_timeout(st, spec, default_timeout, probe_timeout, compensating=compensating)
    hb = None if probing else spec.heartbeat_timeout
    deadline = now + timeout
    hb_deadline = None if hb is None else now + hb
    if compensating:
        state, attempt, comp_attempt = StepState.COMPENSATING, st.attempt, st.comp_attempt + 1
    elif probing:
        state, attempt, comp_attempt = st.state, st.attempt, st.comp_attempt
    else:
        state, attempt, comp_attempt = StepState.DISPATCHED, st.attempt + 1, st.comp_attempt
    # No timer of its own (timer_ms None): its commit's batch entry watches the deadline
    # (batch_timer_key; a heartbeat gives it its own timer from then on).
    # Sent again from DISPATCHED (its attempt's answer was lost to a crash or with its
    # instance): that attempt may have taken effect, so the step is undone even if the
    # next one fails with Permanent (to_undo).
    done = st.token if st.state is StepState.DISPATCHED and not compensating else st.done_token
    new = _DISPATCHED(
        st, state, attempt, comp_attempt, token, done, deadline, hb_deadline, now, None, None
    )
    return new, hb or timeout


_DISPATCHED = replacer(
    StepRecord,
    "state",
    "attempt",
    "comp_attempt",
    "token",
    "done_token",
    "deadline",
    "heartbeat_deadline",
    "updated",
    "retry_at",
    "timer_ms",
)


def failed(
    st: StepRecord,
    verdict: Verdict,
    *,
    error: str,
    types: tuple[str, ...],
    token: int,
    now: float,
) -> StepRecord:
    """The step after its attempt failed with ``error`` and the retry rule's ``verdict``:
    waiting for its retry (with a timer, kept even for an immediate retry so a crash
    before it runs is swept up), FAILED (undone later if it may have taken effect,
    ordered by this token), or a compensation stopped where it is.

    Whether it may have taken effect is the step's, not only this attempt's: a forward
    attempt that failed with anything but Permanent (only the retry rule's verdict knows)
    marks the step (``done_token``) on its way to the retry, and a Permanent answer of
    a later attempt says nothing about that one. One whose instance never started
    (``UNBUILT_ERROR``) never ran: it marks nothing."""
    base = stopped(
        st,
        token=token,
        error=error,
        error_type=bounded_text(types[0], 512) if types else None,
        updated=now,
    )
    if isinstance(verdict, RetryIn):
        back = 0 if verdict.charged else 1  # (given back: the next attempt has its number)
        at = now + verdict.delay
        if st.state is StepState.COMPENSATING:
            comp_attempt = max(0, st.comp_attempt - back)
            return with_timer(base.evolve(state=st.state, retry_at=at, comp_attempt=comp_attempt))
        state = StepState.RETRY_WAIT  # (a retry is never given for a Permanent failure)
        attempt = max(0, st.attempt - back)
        done = st.done_token if UNBUILT_ERROR in types else token
        return with_timer(base.evolve(state=state, retry_at=at, done_token=done, attempt=attempt))
    if isinstance(verdict, GiveUp):
        undo = verdict.undo or st.done_token is not None
        gave_up = base.evolve(state=StepState.FAILED, done_token=token if undo else None)
        # An earlier attempt's mark, now ordered by this token: its member goes with it.
        return gave_up if verdict.undo else moved_mark(st, gave_up)
    assert isinstance(verdict, Escalate)
    return base


def retry_mark(st: StepRecord, token: int) -> int | None:
    """The mark (``done_token``) a step waiting for its retry keeps when it is given up
    (its workflow compensates or parks): its failed attempt's, which :func:`failed` set;
    ``token`` for a record written before that mark was; none for an attempt whose
    instance never started (``UNBUILT_ERROR``): it never ran."""
    if st.done_token is not None or st.error_type == UNBUILT_ERROR:
        return st.done_token
    return token


def unknown(st: StepRecord, lapsed: str, *, token: int, now: float) -> StepRecord:
    """A lapsed attempt that may have reached the remote side: UNKNOWN, probed at once."""
    return with_timer(
        st.evolve(
            state=StepState.UNKNOWN,
            token=token,
            error=f"outcome unknown: {lapsed}",
            error_type=TIMEOUT_ERROR,
            deadline=None,
            heartbeat_deadline=None,
            retry_at=now,
            extra={**st.extra, "probes": 0, "probe_failures": 0},
            updated=now,
        )
    )


def probe_again(st: StepRecord, token: int, now: float) -> StepRecord:
    """An UNKNOWN step whose probes had failed, probed afresh (an operator's retry): its
    probe counts start over, its probe is due now."""
    extra = {**st.extra, "probes": 0, "probe_failures": 0}
    return with_timer(st.evolve(token=token, retry_at=now, extra=extra, updated=now))


def probed(st: StepRecord, note: str, *, failed: bool, token: int, now: float) -> StepRecord:
    """The UNKNOWN step after one more probe left it unknown (``failed``: the probe
    itself raised or lapsed, with ``note`` as the error); no timer yet."""
    probes = int(st.extra.get("probes", 0)) + 1
    failures = int(st.extra.get("probe_failures", 0)) + (1 if failed else 0)
    return stopped(
        st,
        token=token,
        error=note if failed else st.error,
        extra={**st.extra, "probes": probes, "probe_failures": failures},
        updated=now,
    )


def handed_off(st: StepRecord, now: float) -> StepRecord:
    """The action returned ``complete_later()``: WAITING under the deadline it has, same
    token (the task token stays valid)."""
    return st.evolve(state=StepState.WAITING, updated=now)


def beats(st: StepRecord, spec: StepSpec) -> bool:
    """Whether a heartbeat of the step's attempt counts: the step has a heartbeat timeout
    and the attempt is no probe (an UNKNOWN step's probe has ``probe_timeout`` alone, as
    :func:`dispatch` sets it)."""
    return spec.heartbeat_timeout is not None and st.state is not StepState.UNKNOWN


def heartbeat(st: StepRecord, spec: StepSpec, details: Any, now: float) -> StepRecord:
    """The attempt is alive: its heartbeat deadline moves on, with the details it gave."""
    assert spec.heartbeat_timeout is not None
    hb_deadline = now + spec.heartbeat_timeout
    return with_timer(st.evolve(heartbeat_deadline=hb_deadline, heartbeat=details))


def idempotency_key(workflow_id: str, step: str, *, compensating: bool = False) -> str:
    """The key every attempt of ``step`` of ``workflow_id`` carries to the remote side,
    the same for each retry and after a crash: ``WORKFLOW/STEP``, and for the step's
    compensation ``WORKFLOW/STEP/compensate``.

    A "%" or "/" in the step's name is written "%25" or "%2F", and a step named
    "compensate" as "%63ompensate", so no two operations share a key: without that,
    step "1/pay" of workflow "order/1" and step "pay" of "order/1/1" did, and so did
    step "a/compensate" and the compensation of step "a" (a remote side that dedupes by
    key then skipped the second and answered it with the first's result). Workflow ids
    are left as they are: with the step's slashes escaped, the last "/" (or the one
    before "/compensate") ends the id. Names without these characters (nearly all) keep
    the keys they always had.
    """
    if "/" in step or "%" in step:
        step = step.replace("%", "%25").replace("/", "%2F")
    elif step == "compensate":
        step = "%63ompensate"
    return f"{workflow_id}/{step}/compensate" if compensating else f"{workflow_id}/{step}"
