"""The ids recovery took over (``Absent.recovered``, actors/_absent.py: a late Admit of
one is stale) are never let go: they grow with every recovered workflow of a
long-running runtime, and an id that retention deleted and a start then reused is
dropped as stale, its workflow never run (until the next restart's recovery).

Open: the fix lets an id go when its workflow ends, which the Scheduler hears of in
``CommitPipeline``'s ``on_ending`` (actors/_commits.py, actors/_scheduler.py), and must
keep a late Admit of the old records (sent before recovery read the store, told after the
workflow ended) from running them again."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_retention import DAY, T0, WAIT, register

from herder.runtime import Runtime
from herder.runtime.testing import FakeClock, advance, wait_until


@pytest.mark.xfail(strict=True, raises=TimeoutError, reason="Absent.recovered is never pruned")
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
