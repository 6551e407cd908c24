"""Many workflows waiting for their definition after a restart resume in chunks.

A restart parks every unfinished workflow until its definition is registered again; the
Scheduler then resumes them a chunk at a time (so the first runs before all are read,
benchmarks/recovery.py) and warns once per definition, not once per workflow.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import pytest

from herder.actors._recovery import RESUME_CHUNK
from herder.runtime import Agent, RetryPolicy, Runtime, State, StepContext, Workflow
from herder.runtime.testing import FakeClock, advance, wait_until

HOUR = RetryPolicy(max_attempts=2, initial_interval=3600.0, max_interval=3600.0, jitter=0.0)
WAIT = 30.0


class FailsFirst(Agent):
    """Fails every first attempt, so each workflow waits an hour (of fake time) to retry."""

    def work(self, ctx: StepContext) -> int:
        if ctx.attempt == 1:
            raise RuntimeError("transient")
        return ctx.attempt


def test_every_parked_workflow_resumes_in_chunks_with_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    n = 2 * RESUME_CHUNK + 7
    one = Workflow("one").step("s", agent="svc", action="work", retry=HOUR)
    path = tmp_path / "s"
    with Runtime(path, clock=FakeClock(), max_active_workflows=n) as rt:
        rt.add_agent("svc", FailsFirst, concurrency=4)
        rt.add_workflow(one)
        for i in range(n):
            rt.start("one", workflow_id=f"w{i:04d}")
        wait_until(rt, lambda: rt.stats()["steps"]["retried"] == n, timeout=WAIT)

    caplog.set_level(logging.WARNING, logger="herder.scheduler")
    warned = threading.Event()  # recovery warns once it has read the last chunk

    class Warned(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "awaits definition" in record.getMessage():
                warned.set()

    handler = Warned()
    logging.getLogger("herder.scheduler").addHandler(handler)
    clock = FakeClock()
    try:
        rt = Runtime(path, clock=clock, max_active_workflows=n)
        # Recovery reads the backlog a chunk at a time, the first before Runtime() returns.
        assert warned.wait(WAIT)
    finally:
        logging.getLogger("herder.scheduler").removeHandler(handler)
    with rt:
        assert rt.stats()["awaiting_definition"] == {"one@1": n}
        parked = [r for r in caplog.records if "awaits definition" in r.getMessage()]
        assert len(parked) == 1
        rt.add_agent("svc", FailsFirst, concurrency=4)
        rt.add_workflow(one)
        advance(rt, clock, 3600.0)  # retries of workflows not yet resumed are due at once
        for i in range(n):
            assert rt.handle(f"w{i:04d}").result(timeout=WAIT) == {"s": 2}
        assert {s.state for s in rt.list()} == {State.SUCCEEDED}
        assert rt.stats()["awaiting_definition"] == {}


def test_recovered_workflows_count_against_the_active_limit(tmp_path: Path) -> None:
    # The Scheduler's first recovery reports how many it found: start() waits for those,
    # and for no more once they finish.
    one = Workflow("one").step("s", agent="svc", action="work", retry=HOUR)
    path = tmp_path / "s"
    with Runtime(path, clock=FakeClock(), max_active_workflows=2) as rt:
        rt.add_agent("svc", FailsFirst, concurrency=4)
        rt.add_workflow(one)
        for i in range(2):
            rt.start("one", workflow_id=f"w{i}")
        wait_until(rt, lambda: rt.stats()["steps"]["retried"] == 2, timeout=WAIT)
    clock = FakeClock()
    with Runtime(path, clock=clock, max_active_workflows=2) as rt:
        rt.add_agent("svc", FailsFirst, concurrency=4)
        rt.add_workflow(one)
        with pytest.raises(TimeoutError, match="2 workflows are unfinished"):
            rt.start("one", workflow_id="new", timeout=0.2)
        advance(rt, clock, 3600.0)
        for i in range(2):
            assert rt.handle(f"w{i}").result(timeout=WAIT) == {"s": 2}
        rt.start("one", workflow_id="new", timeout=5.0)
        rt.start("one", workflow_id="newer", timeout=5.0)
