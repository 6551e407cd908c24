"""Operator commands decided on a workflow's state that is gone by the time a runtime
applies them: two operators each saw trip ``w`` parked (NEEDS_ATTENTION) and queued
``retry`` and ``abandon`` while no runtime ran; the next runtime applied the retry, then
the abandon stopped the retry's compensation half way. A queued command now carries
the state it was decided on, and the runtime refuses it (on the record, in the history)
if the workflow is in another when it applies it."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from _http_kit import request
from operator_child import TRIP, Travel
from test_ui_edges import posted
from test_ui_http import signed_in

from herder.runtime import RetryPolicy, Runtime, State, WorkflowFailed
from herder.runtime._cli import main as cli
from herder.runtime.testing import FakeClock, settle
from herder.store import append_command, new_command, wait_outcome

WAIT = 20.0
ONCE = RetryPolicy(max_attempts=1)
STALE = "is COMPENSATING now, not NEEDS_ATTENTION as when this abandon was queued"


def parked_trip(path: Path) -> Path:
    """A store, with no runtime on it, holding trip ``w`` parked: its car failed, then
    the hotel's refund (which fails again when retried)."""
    with Runtime(path, default_retry=ONCE) as rt:
        rt.add_agent("t", Travel)
        rt.add_workflow(TRIP)
        with pytest.raises(WorkflowFailed):
            rt.start("trip", workflow_id="w").result(timeout=WAIT)
    return path


def by_cli(path: Path, action: str) -> int:
    return cli([action, "w", "--store", str(path), "--why", f"{action} it"], io.StringIO())


def by_console(path: Path, action: str) -> int:
    """``action`` sent from the workflow's page, read now (with no runtime running)."""
    with signed_in(path) as (console, headers):
        _, _, page = request(console, "GET", "/workflow?id=w", headers=headers)
        target, fields = posted(page, action, who="ada", why=f"{action} it")
        status, _, html = request(console, "POST", target, body=fields, headers=headers)
    assert status == 200, html
    assert "queued: no runtime holds the store" in html
    return 3


def applied(path: Path) -> tuple[list[dict[str, Any]], State, list[dict[str, Any]]]:
    """Commands 1 and 2 as the next runtime answers them, the state it leaves ``w`` in,
    and the operator events of ``w``'s history."""
    with Runtime(path, default_retry=ONCE, sweep_interval=0.05) as rt:
        rt.add_agent("t", Travel)
        rt.add_workflow(TRIP)
        outcomes = [wait_outcome(path, command, timeout=WAIT) for command in (1, 2)]
        settle(rt)
        state = rt.status("w").state
        events = [e for e in rt.history("w") if e["kind"] == "operator"]
    assert None not in outcomes, outcomes
    return outcomes, state, events  # type: ignore[return-value]


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("first", "second"), [(by_cli, by_cli), (by_console, by_console), (by_cli, by_console)]
)
def test_the_second_of_two_commands_queued_on_one_view_is_refused_once_it_moved_on(
    tmp_path: Path, first: Any, second: Any
) -> None:
    path = parked_trip(tmp_path / "store")
    assert first(path, "retry") == 3  # both queued: no runtime holds the store
    assert second(path, "abandon") == 3
    [retry, abandon], state, events = applied(path)
    assert retry["state"] == "DONE", retry
    assert abandon["state"] == "FAILED", abandon
    assert STALE in abandon["error"]
    assert "look at the workflow again and decide anew" in abandon["error"]
    # The retry's compensation ran to its end (the hotel's refund failed again): the
    # workflow is parked again, not ABANDONED half way through it.
    assert state is State.NEEDS_ATTENTION
    assert [(e["action"], e.get("refused")) for e in events] == [
        ("retry", None),
        ("abandon", abandon["error"]),
    ]
    out = io.StringIO()
    assert cli(["show", "w", "--store", str(path)], out) == 0
    assert STALE in out.getvalue()


def test_commands_that_name_no_state_apply_as_before(tmp_path: Path) -> None:
    # (A script's, or one queued by an older herder: nothing to compare.)
    path = parked_trip(tmp_path / "store")
    for action in ("retry", "abandon"):
        append_command(path, new_command(action, "w", who="script", why="x"))
    [retry, abandon], state, _ = applied(path)
    assert (retry["state"], abandon["state"]) == ("DONE", "DONE")
    assert state is State.ABANDONED


@pytest.mark.timeout(60)
def test_a_live_runtime_refuses_the_second_of_two_commands_it_finds_in_one_sweep(
    tmp_path: Path,
) -> None:
    # Both handed over in one message: the abandon finds the retry's change not yet
    # durable; its refusal is recorded with that change, and in the history as well.
    path = parked_trip(tmp_path / "store")
    with Runtime(path, default_retry=ONCE, clock=FakeClock(), sweep_interval=3600.0) as rt:
        rt.add_agent("t", Travel)
        rt.add_workflow(TRIP)
        ids = [
            append_command(
                path, new_command(a, "w", who="o", why="x", decided_on="NEEDS_ATTENTION")
            )
            for a in ("retry", "abandon")
        ]
        rt._sweep_now()
        retry, abandon = (wait_outcome(path, i, timeout=WAIT) for i in ids)
        settle(rt)
        events = [e for e in rt.history("w") if e["kind"] == "operator"]
        assert rt.status("w").state is State.NEEDS_ATTENTION
    assert retry is not None
    assert retry["state"] == "DONE", retry
    assert abandon is not None
    assert abandon["state"] == "FAILED", abandon
    assert STALE in abandon["error"]
    assert [e.get("refused") for e in events] == [None, abandon["error"]]
    assert json.dumps(events)  # (plain data)
