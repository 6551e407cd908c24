"""Pure step-record transitions the Scheduler's handlers share (no memory, no store)."""

from __future__ import annotations

from typing import Any

from herder.store import StepRecord, StepSpec, StepState


def ms(seconds: float) -> int:
    """Seconds as the whole milliseconds timers are kept in."""
    return int(seconds * 1000)


def with_timer(st: StepRecord) -> StepRecord:
    """The step with its timer at its retry time, else at its nearest deadline."""
    if st.retry_at is not None:
        return st.evolve(timer_ms=ms(st.retry_at))
    times = [t for t in (st.deadline, st.heartbeat_deadline) if t is not None]
    return st.evolve(timer_ms=ms(min(times)) if times else None)


def stopped(st: StepRecord, **changes: Any) -> StepRecord:
    """The step with no deadline, retry time or timer left: nothing will wake it."""
    return st.evolve(
        deadline=None, heartbeat_deadline=None, retry_at=None, timer_ms=None, **changes
    )


def settled(st: StepRecord, state: StepState, token: int, now: float, **changes: Any) -> StepRecord:
    """The step ended in ``state`` (succeeded, compensated, skipped): no timer, no error."""
    return stopped(
        st, state=state, token=token, error=None, error_type=None, updated=now, **changes
    )


def restarted(st: StepRecord, token: int) -> StepRecord:
    """The step back to PENDING at attempt 0, as a retry of a parked workflow wants it."""
    return stopped(st, state=StepState.PENDING, attempt=0, token=token, error=None)


def lapse(st: StepRecord, spec: StepSpec, now: float, default_timeout: float) -> str | None:
    """Why the step's attempt lapsed by ``now`` (heartbeat, then deadline), else None."""
    now_ms = ms(now)  # timers are kept in whole ms; compare at the same precision
    if st.heartbeat_deadline is not None and now_ms >= ms(st.heartbeat_deadline):
        return f"no heartbeat for {spec.heartbeat_timeout}s"
    if st.deadline is not None and now_ms >= ms(st.deadline):
        return f"timed out after {spec.timeout or default_timeout}s"
    return None
