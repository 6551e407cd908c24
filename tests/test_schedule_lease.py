"""A runtime that lost its store's lease stops firing schedules: its firings would all
be refused (the lease check of every write), and retried with a warning every few
seconds, per schedule, for as long as the deposed process lives."""

from __future__ import annotations

import datetime
import logging
from pathlib import Path

import pytest
from test_lease import _foreign

from herder.runtime import Agent, Runtime, StepContext, Workflow, _firing
from herder.runtime.testing import FakeClock

WAIT = 10.0
T0 = datetime.datetime(2027, 1, 15, 8, 0, 0, 500000, tzinfo=datetime.UTC).timestamp()


class Job(Agent):
    def run(self, ctx: StepContext) -> str:
        return ctx.workflow_id


def test_a_runtime_deposed_by_another_lease_holder_stops_firing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock(start=T0)
    rt = Runtime(tmp_path, clock=clock, sweep_interval=0.05)
    try:
        rt.add_agent("job", Job)
        rt.add_workflow(Workflow("job").step("run", agent="job", action="run"))
        for name in ("tick", "tock"):
            rt.schedule(name, "job", every=60)
        firer, lease = rt._firer, rt._store.lease
        assert firer is not None
        assert firer._thread is not None
        assert lease is not None
        rt._store.writer.submit(_foreign(lease)).result(timeout=WAIT)  # a standby took it
        caplog.set_level(logging.WARNING, logger="herder.schedules")
        clock.advance(60)  # 08:01: the firing's commit is refused, and so deposes it
        assert rt._wake.wait(WAIT)
        assert not rt.is_active
        firer._thread.join(WAIT)
        assert not firer._thread.is_alive()  # (it retried every RETRY seconds, for ever)
        refused = len([r for r in caplog.records if "could not fire" in r.getMessage()])
        assert 1 <= refused <= 2  # at most the pass that found the lease gone
        clock.advance(10 * _firing.RETRY)
        assert [s.fired for s in rt.schedules()] == [0, 0]  # nothing was written
        assert rt.list() == []
    finally:
        rt.stop()
