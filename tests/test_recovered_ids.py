"""The ids recovery took over (``Absent.recovered``, actors/_absent.py: a late Admit of
one is stale) were matched by id alone: an id that retention deleted and a start then
reused was dropped as stale, its workflow never run (until the next restart's
recovery). The Scheduler now lets an id go once its workflow's end is durable."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_retention import DAY, T0, WAIT, register

from herder.runtime import Runtime
from herder.runtime.testing import FakeClock, advance, wait_until


def test_an_id_recovery_took_over_starts_anew_once_retention_deleted_it(
    tmp_path: Path,
) -> None:
    path = tmp_path / "s"
    clock = FakeClock(start=T0)
    with Runtime(path, clock=clock, setup=register) as rt:
        rt.start("order", {}, workflow_id="w1", delay=60.0)  # unfinished when it closes
    with Runtime(path, clock=clock, setup=register, retention=DAY) as rt:
        advance(rt, clock, 61.0)  # recovered, then its delay ends and it runs
        assert rt.handle("w1").result(timeout=WAIT) == {"pay": "ok", "ship": "ok"}
        advance(rt, clock, DAY + 120.0)  # past retention: deleted
        wait_until(rt, lambda: not rt.list(), WAIT)
        again = rt.start("order", {"n": 2}, workflow_id="w1")  # a new workflow, same id
        assert again.result(timeout=5.0) == {"pay": "ok", "ship": "ok"}  # (~10 ms when run)


@pytest.mark.timeout(60)
def test_a_reused_id_started_at_the_recovered_records_creation_time_runs(
    tmp_path: Path,
) -> None:
    """The same at one instant: on a FakeClock (the testing aid) nothing moves time
    between a recovered workflow's end, its purge and the id's reuse, so the new
    workflow's creation time is the old one's, and only letting the id go at the end
    (not telling the records apart by creation time) runs it."""
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
