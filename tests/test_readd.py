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
        self.most = 0  # of both versions at once
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
            t.most = max(t.most, t.running[1] + t.running[2])
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


@pytest.mark.parametrize("host", ["pool", "thread"])
def test_an_agent_removed_and_added_again_while_its_attempts_run_keeps_its_concurrency(
    tmp_path: Path, host: str
) -> None:
    # The thread host let the busy instances go with the removed name's supervisor (their
    # threads ran on), and the name added again started two more beside them: four at once.
    tally = Tally()
    with Runtime(tmp_path / "s", agent_host=host) as rt:
        rt.add_agent("a", functools.partial(Versioned, 1, tally), concurrency=2)
        rt.add_workflow(Workflow("w").step("s", agent="a", action="go", timeout=60))
        first = [rt.start("w") for _ in range(2)]
        for _ in range(2):
            assert tally.started.acquire(timeout=WAIT)
        rt.remove_agent("a")
        rt.add_agent("a", functools.partial(Versioned, 2, tally), concurrency=2)
        later = [rt.start("w") for _ in range(2)]
        extra = tally.started.acquire(timeout=2.0)  # none starts before the gate opens
        tally.gate.set()
        assert [h.result(timeout=WAIT) for h in first] == [{"s": 1}] * 2
        assert [h.result(timeout=WAIT) for h in later] == [{"s": 2}] * 2
    assert not extra
    assert tally.most == 2
