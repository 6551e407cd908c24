"""An agent added again while its instances run: every attempt after the call runs on an
object of the new factory, within the new concurrency (agents.md: "Adding a name again
replaces its factory"). The pool and thread hosts kept a busy instance's old object, and
the thread host its old concurrency, for as long as the agent stayed busy."""

from __future__ import annotations

import functools
import threading
from pathlib import Path

import pytest

from herder.runtime import Agent, Runtime, StepContext, Workflow

WAIT = 20.0
pytestmark = pytest.mark.timeout(90)


class Tally:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.running: dict[int, int] = {1: 0, 2: 0}
        self.peak: dict[int, int] = {1: 0, 2: 0}
        self.started = threading.Semaphore(0)
        self.gate = threading.Event()


class Versioned(Agent):
    def __init__(self, version: int, tally: Tally) -> None:
        self.version, self.tally = version, tally

    def go(self, ctx: StepContext) -> int:
        t, v = self.tally, self.version
        with t.lock:
            t.running[v] += 1
            t.peak[v] = max(t.peak[v], t.running[v])
        t.started.release()
        try:
            t.gate.wait(WAIT)
            return v
        finally:
            with t.lock:
                t.running[v] -= 1


@pytest.mark.parametrize("concurrency", [4, 1])
@pytest.mark.parametrize("host", ["pool", "thread"])
def test_attempts_after_add_agent_run_on_the_new_factory_within_its_concurrency(
    tmp_path: Path, host: str, concurrency: int
) -> None:
    tally = Tally()
    with Runtime(tmp_path / "s", agent_host=host) as rt:
        rt.add_agent("a", functools.partial(Versioned, 1, tally), concurrency=4)
        rt.add_workflow(Workflow("w").step("s", agent="a", action="go", timeout=60))
        first = [rt.start("w") for _ in range(4)]
        for _ in range(4):  # all four run, each on an instance of version 1
            assert tally.started.acquire(timeout=WAIT)
        rt.add_agent("a", functools.partial(Versioned, 2, tally), concurrency=concurrency)
        later = [rt.start("w") for _ in range(12)]
        tally.gate.set()
        assert [h.result(timeout=WAIT) for h in first] == [{"s": 1}] * 4
        assert [h.result(timeout=WAIT) for h in later] == [{"s": 2}] * 12
    assert tally.peak[2] <= concurrency
