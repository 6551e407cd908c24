"""Review of 6ff2a79..mend (schedules, asyncio, pool host, history, recovery): each test
fails now and passes once the defect it names is fixed."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

import pytest

from herder.runtime import Agent, Runtime, StepContext, Workflow, _lifecycle
from herder.runtime._firing import Firer
from herder.runtime.testing import FakeClock
from herder.runtime.ui._timeline import render
from herder.store import as_event

WAIT = 10.0
T0 = datetime.datetime(2027, 1, 15, 8, 0, 0, 500000, tzinfo=datetime.UTC).timestamp()


class Job(Agent):
    def run(self, ctx: StepContext) -> str:
        return ctx.workflow_id


# -- 342b796: a failed runtime halts its firer ---------------------------------------------


@pytest.mark.timeout(60)
def test_a_runtime_that_failed_before_its_firer_was_made_does_not_start_firing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """_failed halts ``rt._firer`` only if there is one: a failure (the supervision tree
    giving up, the lease lost) that lands while _become_active is still recovering, before
    ``rt._firer = Firer(...)``, leaves the firer that is made next running: started after
    the runtime failed, it retries its refused firings every RETRY s for ever, the loop
    342b796 ended for a runtime failed later. (Simulated by failing the runtime just before
    its Firer is made, as a fatal from the supervision thread would during ``sync``.)"""
    made: list[Firer] = []

    def failing_first(rt: Any, ask_timeout: float) -> Firer:
        rt._failed(RuntimeError("the lease was lost during recovery"))  # another thread's
        firer = Firer(rt, ask_timeout)
        made.append(firer)
        return firer

    monkeypatch.setattr(_lifecycle, "Firer", failing_first)
    clock = FakeClock(start=T0)
    rt = Runtime(tmp_path, clock=clock)
    try:
        assert rt._fatal is not None  # the runtime failed: every start is refused
        thread = made[0]._thread if made else None  # (a fix may make none, or not start it)
        if thread is not None:
            thread.join(WAIT)  # (halted, the thread ends at once)
            assert not thread.is_alive(), "a failed runtime's firing thread runs on"
    finally:
        rt.stop()


# -- console timeline: values from the store are escaped ----------------------------------


@pytest.mark.timeout(30)
def test_the_console_timeline_escapes_a_step_state_read_from_history() -> None:
    """A step event's ``to`` (or ``from``) is any value ``herder check`` passes (its rule
    asks for the fields, not their values): the timeline writes it into the SVG's
    ``data-state`` attribute unescaped (runtime/ui/_timeline.py ``_bar``), so a stored
    event breaks out of the attribute on the console's workflow page."""
    hostile = '" onmouseover="alert(1)" x="'
    event = {"kind": "step", "t": 1.0, "step": "pay", "from": "PENDING", "to": hostile}
    assert as_event(event) is not None  # an event, as check and read_history say
    svg = render(["pay"], [event], 0.0, 2.0)
    assert 'onmouseover="alert(1)"' not in svg


# -- 939ac40: an id recovery took over, reused ----------------------------------------------


@pytest.mark.timeout(60)
def test_a_reused_id_started_at_the_recovered_records_creation_time_runs(
    tmp_path: Path,
) -> None:
    """Absent.stale tells the record recovery took over from a new one of the same id by
    its ``created`` alone (actors/_absent.py ``stale``): a new workflow created at the
    same time is dropped as a stale Admit and never runs. On a FakeClock (the testing
    aid) nothing moves time between a recovered workflow's end, its purge and the id's
    reuse, so the new workflow's creation time is the old one's."""
    from test_retention import register

    from herder.store._retention import purge

    path = tmp_path / "s"
    clock = FakeClock(start=T0)
    with Runtime(path, clock=clock, setup=register) as rt:
        rt.start("order", {}, workflow_id="w1", delay=60.0)  # unfinished when it closes
    with Runtime(path, clock=clock, setup=register) as rt:
        rt.cancel("w1", who="ops", why="not wanted")  # the recovered workflow ends
        rt._wait_final("w1", WAIT)
        assert purge(rt._store, T0 + 1.0) == 1  # and goes (herder purge, retention)
        assert rt.list() == []
        again = rt.start("order", {"n": 2}, workflow_id="w1")  # a new workflow, same id
        assert again.result(timeout=5.0) == {"pay": "ok", "ship": "ok"}
