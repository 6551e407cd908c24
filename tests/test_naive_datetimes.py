"""Datetimes without a timezone: ``start_at`` reads one as local time (documented, in
docs/scheduling.md), ``deadline`` refuses one; the same at every entry point."""

from __future__ import annotations

import asyncio
import datetime
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from herder.runtime import Agent, InvalidInput, Runtime, StepContext, StepState, Workflow
from herder.runtime.testing import FakeClock

WAIT = 10.0
AHEAD = "HRB-3"  # POSIX TZ: three hours ahead of UTC (no tzdata needed)


class Idle(Agent):
    def work(self, ctx: StepContext) -> None:
        return None


@pytest.fixture
def local_ahead(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Local time three hours ahead of UTC, so that local and UTC readings differ."""
    monkeypatch.setenv("TZ", AHEAD)
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def start(rt: Runtime, entry: str, **kwargs: Any) -> None:
    """Start workflow ``w`` as ``x`` through ``entry``."""
    if entry == "start":
        rt.start("w", workflow_id="x", **kwargs)
    elif entry == "start_many":
        rt.start_many([{"workflow": "w", "workflow_id": "x", **kwargs}])
    else:
        asyncio.run(rt.start_async("w", workflow_id="x", **kwargs))


def open_runtime(path: Path, clock: FakeClock) -> Runtime:
    rt = Runtime(path, clock=clock, sweep_interval=0.1)
    rt.add_agent("a", Idle)
    rt.add_workflow(Workflow("w").step("s", agent="a", action="work"))
    return rt


ENTRIES = ["start", "start_many", "start_async"]


@pytest.mark.timeout(30)
@pytest.mark.parametrize("entry", ENTRIES)
def test_a_naive_start_at_is_local_time(tmp_path: Path, local_ahead: None, entry: str) -> None:
    clock = FakeClock()
    with open_runtime(tmp_path / "s", clock) as rt:
        begin = clock.time()
        naive = datetime.datetime.fromtimestamp(begin + 90.0)  # local, no tzinfo
        assert naive.tzinfo is None
        start(rt, entry, start_at=naive)
        step = rt.status("x").steps["s"]
        assert step.state is StepState.PENDING
        assert step.waits_until == pytest.approx(begin + 90.0, abs=0.01), (
            f"a naive start_at was not read as local time: it waits until "
            f"{step.waits_until - begin:+.0f} s from now, not +90 s"
        )


@pytest.mark.timeout(30)
@pytest.mark.parametrize("entry", ENTRIES)
def test_a_naive_deadline_is_refused_and_nothing_is_stored(tmp_path: Path, entry: str) -> None:
    clock = FakeClock()
    with open_runtime(tmp_path / "s", clock) as rt:
        naive = datetime.datetime.fromtimestamp(clock.time() + 3600.0)
        with pytest.raises(InvalidInput, match=r"naive datetime; give it a timezone, e\.g\."):
            start(rt, entry, deadline=naive)
        assert rt.list() == []


@pytest.mark.timeout(10)
def test_a_definitions_deadline_takes_seconds_and_says_where_a_datetime_goes() -> None:
    """``Workflow(deadline=)`` counts from each start: no datetime, and the message must
    not suggest one to it."""
    aware = datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC)
    with pytest.raises(InvalidInput) as caught:
        Workflow("x", deadline=aware)  # type: ignore[arg-type]
    message = str(caught.value)
    assert "counted from each start" in message, message
    assert "pass start(deadline=) an aware datetime" in message, message
