"""What a marked answer or a lapse means for its step (``herder.actors.engine._answer``).

Tables with no runtime: a step's state and the news, and what follows.
"""

from __future__ import annotations

from typing import Any

import pytest

from herder.actors.engine import (
    CRASH_ERROR,
    GIVEN_UP_ERROR,
    TIMEOUT_ERROR,
    AskProbe,
    Fail,
    HandOff,
    OutcomeKind,
    ProbeAgain,
    Reading,
    Succeed,
    after_lapse,
    after_loss,
    read_answer,
)
from herder.store import StepRecord, StepState

S = StepState
K = OutcomeKind
NOT_APPLIED = "outcome unknown: timed out; the probe found it was not applied"


def _step(state: StepState) -> StepRecord:
    return StepRecord("w", "a", state=state, error="outcome unknown: timed out")


@pytest.mark.parametrize(
    ("state", "ok", "kind", "expected"),
    [
        (S.UNKNOWN, True, K.DONE, Succeed({"id": 7})),
        (S.UNKNOWN, True, K.NOT_DONE, Fail(NOT_APPLIED, (TIMEOUT_ERROR,), permanent=False)),
        (S.UNKNOWN, True, K.RUNNING, ProbeAgain("probe: still running", failed=False)),
        (S.UNKNOWN, False, K.PLAIN, ProbeAgain("probe failed: boom", failed=True)),
        (S.UNKNOWN, True, K.PLAIN, ProbeAgain("probe_pay must return a ProbeResult", failed=True)),
        (S.DISPATCHED, True, K.LATER, HandOff()),
        # marks where they cannot apply are the agent's bug: failed for good
        (S.DISPATCHED, True, K.DONE, Fail(
            "an action returned a ProbeResult (done), which only the probe probe_pay may: "
            "return the step's result instead", (), True)),
        (S.COMPENSATING, True, K.LATER, Fail(
            "a compensation returned ctx.complete_later(), which only a forward action may: "
            "a compensation must undo the step before it returns", (), permanent=True)),
        (S.DISPATCHED, True, "soon", Fail(
            "an action returned an unknown marker 'soon'; return plain data instead", (), True)),
        # answered unstarted (the runtime's lease was in doubt): it never ran, so it runs
        # again, uncharged; it was read as an unknown marker and failed for good
        (S.DISPATCHED, False, "unstarted", Fail(
            "boom", (GIVEN_UP_ERROR,), permanent=False, at_once=True)),
        (S.COMPENSATING, False, "unstarted", Fail(
            "boom", (GIVEN_UP_ERROR,), permanent=False, at_once=True)),
        (S.UNKNOWN, False, "unstarted", ProbeAgain("probe lost: boom", failed=False)),
    ],
)  # fmt: skip
def test_a_marked_answer_is_read_by_the_state_of_its_step(
    state: StepState, ok: bool, kind: str, expected: Reading
) -> None:
    got = read_answer(
        _step(state), ok=ok, kind=kind, result={"id": 7}, error="boom", probe="probe_pay"
    )
    assert got == expected


def test_the_marks_travel_as_the_plain_strings_agents_send() -> None:
    marks = ["", "later", "done", "not_done", "running", "unstarted"]
    assert [str(k) for k in OutcomeKind] == marks
    plain: Any = "done"  # what an Outcome carries over a host boundary
    assert read_answer(_step(S.UNKNOWN), ok=True, kind=plain, result=1, error=None, probe="p") == (
        Succeed(1)
    )


@pytest.mark.parametrize(
    ("state", "has_probe", "expected"),
    [
        (S.UNKNOWN, True, ProbeAgain("probe timed out after 5s", failed=True)),
        (S.DISPATCHED, True, AskProbe("timed out after 5s")),
        (S.WAITING, True, AskProbe("timed out after 5s")),
        (S.DISPATCHED, False, Fail("timed out after 5s", (TIMEOUT_ERROR,), permanent=False)),
        # a compensation is never probed: it is retried under its policy
        (S.COMPENSATING, True, Fail("timed out after 5s", (TIMEOUT_ERROR,), permanent=False)),
    ],
)
def test_a_lapse_is_probed_only_where_the_request_may_have_reached_the_remote_side(
    state: StepState, has_probe: bool, expected: Reading
) -> None:
    assert after_lapse(_step(state), "timed out after 5s", has_probe=has_probe) == expected


@pytest.mark.parametrize(
    ("state", "given_up", "expected"),
    [
        # a probe's loss: the outcome is still unknown, probed again, never run blind
        (S.UNKNOWN, False, ProbeAgain("probe lost: gone", failed=True)),
        (S.UNKNOWN, True, ProbeAgain("probe lost: gone", failed=False)),  # not its fault
        # an action's loss: a failure, retried at once (charged unless given up on)
        (S.DISPATCHED, False, Fail("gone", (CRASH_ERROR,), permanent=False, at_once=True)),
        (S.DISPATCHED, True, Fail("gone", (GIVEN_UP_ERROR,), permanent=False, at_once=True)),
        (S.COMPENSATING, False, Fail("gone", (CRASH_ERROR,), permanent=False, at_once=True)),
    ],
)
def test_an_attempt_lost_without_an_answer_is_read_by_what_it_was(
    state: StepState, given_up: bool, expected: Reading
) -> None:
    assert after_loss(_step(state), "gone", given_up=given_up) == expected
