"""Recovery's rules (``herder.actors.engine._recovery``), as tables with no process.

What a restart queues again, which steps are suspects of a crash, and what parking a
workflow as poison work makes of each step. (The crash-loop itself is tested by
really killing processes in ``test_poison.py``.)
"""

from __future__ import annotations

import itertools
import types

import pytest

from herder.actors.engine import POISON_ERROR, poisoned, resumes, running_at_crash
from herder.actors.engine._recovery import lost_by_previous
from herder.store import StepRecord, StepState

S = StepState
NOW = 100.0


def _step(state: StepState, **changes: object) -> StepRecord:
    return StepRecord("w", "a", state=state).evolve(**changes)


@pytest.mark.parametrize(
    ("step", "compensating", "queued"),
    [
        (_step(S.DISPATCHED), False, False),  # outcome unknown: run again
        (_step(S.DISPATCHED), True, False),  # even while compensating: it may apply
        (_step(S.DISPATCHED, retry_at=NOW + 1), False, None),  # deferred suspect
        (_step(S.RETRY_WAIT, retry_at=NOW), False, False),
        (_step(S.RETRY_WAIT, retry_at=NOW + 1), False, None),  # its timer queues it
        (_step(S.UNKNOWN, retry_at=NOW), False, False),  # probe again
        (_step(S.COMPENSATING), True, True),
        (_step(S.COMPENSATING), False, None),  # parked: an operator resumes it
        (_step(S.WAITING), False, None),  # its completion or deadline moves it on
        (_step(S.PENDING), False, None),  # advancing the workflow queues it
        (_step(S.SUCCEEDED), True, None),
    ],
)
def test_a_restart_queues_what_was_running_or_due(
    step: StepRecord, compensating: bool, queued: bool | None
) -> None:
    assert resumes(step, compensating=compensating, now=NOW) is queued


@pytest.mark.parametrize(
    ("high", "lost"),
    [
        (4, False),  # the holder before the previous one: counted by the previous
        (5, True),  # the previous holder's own incarnation
        (6, True),  # past it: its tokens ran on into the incarnations it reserved
        (7, True),
        (8, False),  # ours (a Scheduler of this process restarted)
    ],
)
def test_an_attempt_lost_is_one_of_the_previous_holders_tokens(high: int, lost: bool) -> None:
    """The lease ours (8) replaced was 5, whose holder reserved 6 and 7 for its tokens."""
    lease = types.SimpleNamespace(incarnation=8, taken_from=5)
    step = _step(S.DISPATCHED, token=(high << 32) + 3)
    assert lost_by_previous(step, lease) is lost
    assert not lost_by_previous(step.evolve(state=S.RETRY_WAIT), lease)
    assert not lost_by_previous(step, types.SimpleNamespace(incarnation=8, taken_from=None))


def test_the_suspects_of_a_crash_are_the_attempts_that_were_running() -> None:
    steps = [
        _step(S.DISPATCHED).evolve(name="ran"),
        _step(S.DISPATCHED, retry_at=NOW).evolve(name="deferred"),  # waited, did not run
        _step(S.COMPENSATING, deadline=NOW).evolve(name="undoing"),
        _step(S.COMPENSATING).evolve(name="undo-failed"),  # no deadline: nothing ran
        _step(S.RETRY_WAIT).evolve(name="retrying"),
    ]
    assert [st.name for st in running_at_crash(steps)] == ["ran", "undoing"]


@pytest.mark.parametrize(
    ("state", "after"),
    [
        (S.DISPATCHED, S.FAILED),
        (S.RETRY_WAIT, S.FAILED),
        (S.COMPENSATING, S.COMPENSATING),  # a retry runs the compensation again
        (S.SUCCEEDED, None),
        (S.PENDING, None),
    ],
)
def test_parking_poison_work_stops_what_was_running_or_due(
    state: StepState, after: StepState | None
) -> None:
    tokens = itertools.count(40).__next__
    new = poisoned(_step(state, timer_ms=5, deadline=NOW), "died 3 times", tokens=tokens, now=NOW)
    if after is None:
        assert new is None
        assert tokens() == 40  # no token spent on a step that stays
        return
    assert new is not None
    assert (new.state, new.error, new.error_type) == (after, "died 3 times", POISON_ERROR)
    assert (new.token, new.timer_ms, new.deadline) == (40, None, None)
    if after is S.FAILED:  # its attempt may have taken effect: a compensation undoes it
        assert new.done_token == 40


def test_parking_poison_work_ends_a_step_handed_off_beside_it() -> None:
    # It stayed WAITING: a parked workflow waits on nothing (herder check: "WAITING in a
    # NEEDS_ATTENTION workflow"). It ends FAILED, marked done (the partner may have acted),
    # and is not the poison: the inbox names the step that ran at each crash.
    tokens = itertools.count(40).__next__
    st = _step(S.WAITING, timer_ms=5, deadline=NOW)
    new = poisoned(st, "died 3 times", tokens=tokens, now=NOW)
    assert new is not None
    assert (new.state, new.error_type, new.done_token) == (S.FAILED, None, 40)
    assert (new.token, new.timer_ms, new.deadline) == (40, None, None)
    assert "parked as poison work" in (new.error or "")
