"""The timeline picture: which stretch of a step's life becomes which bar."""

from __future__ import annotations

import pytest

from herder.runtime.ui._timeline import render, segments
from herder.store import as_event


def step(  # noqa: PLR0917
    t: float, name: str, old: str, new: str, attempt: int, error: str | None = None
) -> dict:
    return {
        "kind": "step",
        "t": t,
        "step": name,
        "from": old,
        "to": new,
        "attempt": attempt,
        "error": error,
    }


HISTORY = [
    {"kind": "workflow", "t": 0.0, "from": None, "to": "RUNNING"},
    step(1.0, "pay", "PENDING", "DISPATCHED", 1),
    step(2.0, "pay", "DISPATCHED", "RETRY_WAIT", 1, "ConnectionError: down"),
    step(4.0, "pay", "RETRY_WAIT", "DISPATCHED", 2),
    step(5.0, "pay", "DISPATCHED", "SUCCEEDED", 2),
    step(5.0, "ship", "PENDING", "DISPATCHED", 1),
    step(6.0, "ship", "DISPATCHED", "WAITING", 1),
    step(7.0, "ship", "WAITING", "UNKNOWN", 1),
    {"kind": "probe", "t": 7.5, "step": "ship", "error": None},
    step(8.0, "ship", "UNKNOWN", "FAILED", 1, "Permanent: lost"),
    step(8.0, "pay", "SUCCEEDED", "COMPENSATING", 1),
    {
        "kind": "workflow",
        "t": 9.0,
        "from": "COMPENSATING",
        "to": "NEEDS_ATTENTION",
        "error": "compensation of step 'pay' failed",
    },
    {
        "kind": "operator",
        "t": 12.0,
        "action": "skip",
        "who": "ada",
        "why": "<b>by hand</b>",
        "step": "pay",
    },
    step(12.0, "pay", "COMPENSATING", "COMPENSATED", 1),
]


def test_each_stretch_of_a_step_becomes_a_segment_of_its_kind() -> None:
    got = [
        (s.step, s.state, s.start, s.end, s.css)
        for s in segments(["pay", "ship"], HISTORY, 0.0, 12.0)
    ]
    assert got == [
        ("pay", "PENDING", 0.0, 1.0, "pending"),
        ("pay", "DISPATCHED", 1.0, 2.0, "retried"),  # failed, to be retried
        ("pay", "RETRY_WAIT", 2.0, 4.0, "wait"),  # the backoff
        ("pay", "DISPATCHED", 4.0, 5.0, "ok"),
        ("ship", "PENDING", 0.0, 5.0, "pending"),
        ("ship", "DISPATCHED", 5.0, 6.0, "handed"),  # returned complete_later()
        ("ship", "WAITING", 6.0, 7.0, "wait"),
        ("ship", "UNKNOWN", 7.0, 8.0, "unknown"),  # probed
        ("pay", "COMPENSATING", 8.0, 9.0, "failed"),  # the undo failed: parked
        ("pay", "PARKED", 9.0, 12.0, "parked"),  # until the operator skipped it
    ]


def test_a_running_step_reaches_to_now() -> None:
    history = [step(1.0, "pay", "PENDING", "DISPATCHED", 1)]
    (_, running) = segments(["pay"], history, 0.0, 30.0)
    assert (running.state, running.end, running.css) == ("DISPATCHED", 30.0, "running")


def test_the_picture_marks_probes_and_operator_actions_escaped() -> None:
    svg = render(["pay", "ship"], HISTORY, 0.0, 12.0)
    assert svg.count('class="probe"') == 1
    assert "skip by ada" in svg
    assert "&lt;b&gt;by hand&lt;/b&gt;" in svg
    assert "<b>" not in svg


def test_a_failed_compensation_attempt_is_one_failed_bar_then_its_backoff() -> None:
    """Each failed compensation attempt is a history event of its own (its step stays
    COMPENSATING): its bar is failed, the wait after it is a wait, not a second failure."""
    history = [
        step(1.0, "pay", "SUCCEEDED", "COMPENSATING", 1),
        step(2.0, "pay", "COMPENSATING", "COMPENSATING", 1, "RuntimeError: down"),
        step(4.0, "pay", "COMPENSATING", "COMPENSATING", 2),
        step(5.0, "pay", "COMPENSATING", "COMPENSATING", 2, "RuntimeError: down"),
        {"kind": "workflow", "t": 5.0, "from": "COMPENSATING", "to": "NEEDS_ATTENTION"},
    ]
    got = [(s.state, s.start, s.end, s.css) for s in segments(["pay"], history, 1.0, 8.0)]
    assert got == [
        ("PENDING", 1.0, 1.0, "pending"),  # (no event before its undo in this history)
        ("COMPENSATING", 1.0, 2.0, "failed"),
        ("UNDO_WAIT", 2.0, 4.0, "wait"),  # its backoff
        ("COMPENSATING", 4.0, 5.0, "failed"),
        ("UNDO_WAIT", 5.0, 5.0, "wait"),  # escalated at once
        ("PARKED", 5.0, 8.0, "parked"),
    ]


@pytest.mark.timeout(30)
def test_the_console_timeline_escapes_a_step_state_read_from_history() -> None:
    """A step event's ``to`` (or ``from``) is any value ``herder check`` passes (its rule
    asks for the fields, not their values): the timeline writes it into the SVG's
    ``data-state`` attribute (runtime/ui/_timeline.py ``_bar``): unescaped, a stored
    event broke out of the attribute on the console's workflow page."""
    hostile = '" onmouseover="alert(1)" x="'
    event = {"kind": "step", "t": 1.0, "step": "pay", "from": "PENDING", "to": hostile}
    assert as_event(event) is not None  # an event, as check and read_history say
    svg = render(["pay"], [event], 0.0, 2.0)
    assert 'onmouseover="alert(1)"' not in svg


@pytest.mark.timeout(30)
def test_a_step_event_that_names_no_step_is_passed_over_not_a_failed_page() -> None:
    """``herder check`` and read_history take a step event whose ``step`` is null (its
    rule asks for the field, not its value): the picture's rows left it out, its bars
    did not, and the workflow's page was a 500 (KeyError: 'None')."""
    event = {"kind": "step", "t": 1.0, "step": None, "from": "PENDING", "to": "DISPATCHED"}
    assert as_event(event) is not None
    svg = render(["pay"], [*HISTORY[:3], event], 0.0, 3.0)
    assert svg.count('data-step="pay"') == 3  # pending, the first attempt, its backoff
    assert 'data-step="None"' not in svg


@pytest.mark.timeout(30)
def test_an_error_that_is_no_str_is_shown_not_a_failed_page() -> None:
    """``herder check``, read_history and ``herder show`` take a step event whose
    ``error`` is not a str (its rule asks for the fields, not their values; show prints
    it as text): a bar's tooltip clipped it as a str, and the workflow's page was a 500
    (TypeError: object of type 'int' has no len())."""
    event = {"kind": "step", "t": 1.0, "step": "pay", "from": "DISPATCHED", "to": "RETRY_WAIT"}
    event["error"] = 5
    assert as_event(event) is not None
    svg = render(["pay"], [event], 0.0, 2.0)
    assert "-&gt; RETRY_WAIT\n5</title>" in svg
