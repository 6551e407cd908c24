"""An agent added again while its instances run: every attempt after the call runs on an
object of the new factory, within the new concurrency (agents.md: "Adding a name again
replaces its factory"). The pool and thread hosts kept a busy instance's old object, and
the thread host its old concurrency, for as long as the agent stayed busy."""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
from pathlib import Path

import pytest
from _held_news import hold_commit_news

from herder.runtime import (
    Agent,
    CircuitBreaker,
    RetryPolicy,
    Runtime,
    StepContext,
    Workflow,
)
from herder.runtime.testing import FakeClock, advance, settle, wait_until

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


class AsyncVersioned(Agent):
    def __init__(self, version: int, tally: Tally) -> None:
        self.sync = Versioned(version, tally)

    async def go(self, ctx: StepContext) -> int:
        return await asyncio.to_thread(self.sync.go, ctx)


@pytest.mark.parametrize("move", ["to asyncio", "from asyncio"])
def test_an_agent_added_again_on_another_host_keeps_its_concurrency(
    tmp_path: Path, move: str
) -> None:
    """Added again with async def actions (or without them), the agent moves between the
    pool and the asyncio host; the new host started attempts beside those the old one
    still ran: two at once under concurrency=1."""
    tally = Tally()
    old, new = (Versioned, AsyncVersioned) if move == "to asyncio" else (AsyncVersioned, Versioned)
    try:
        with Runtime(tmp_path / "s") as rt:
            rt.add_agent("a", functools.partial(old, 1, tally))
            rt.add_workflow(Workflow("w").step("s", agent="a", action="go", timeout=60))
            first = rt.start("w")
            assert tally.started.acquire(timeout=WAIT)
            rt.add_agent("a", functools.partial(new, 2, tally))
            later = [rt.start("w") for _ in range(2)]
            settle(rt)  # (the first attempt is held by the gate)
            assert tally.most == 1
            tally.gate.set()
            assert first.result(timeout=WAIT) == {"s": 1}
            assert [h.result(timeout=WAIT) for h in later] == [{"s": 2}] * 2
    finally:
        tally.gate.set()
    assert tally.most == 1


class Blocker(Agent):
    def __init__(self, began: threading.Semaphore, gate: threading.Event) -> None:
        self.began, self.gate = began, gate

    def go(self, ctx: StepContext) -> str:
        self.began.release()
        self.gate.wait(WAIT)
        return "blocked"


class Sync(Agent):
    def go(self, ctx: StepContext) -> str:
        return "sync"


class Async(Agent):
    async def go(self, ctx: StepContext) -> str:
        return "async"


def test_an_attempt_waiting_in_the_pools_line_runs_on_the_host_its_agent_moved_to(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Added again with async def actions, the agent moves to the asyncio host; its attempt
    waiting in the pool's line for a worker was withdrawn there and never heard of again:
    the step stayed DISPATCHED for good (its timeout waits for a start that never came).
    The attempt given up is not charged, and the log says so: it said 'attempt 1 failed'
    (WARNING) and 'failed, will retry' of an attempt that never ran."""
    caplog.set_level(logging.INFO, logger="herder.scheduler")
    began, gate = threading.Semaphore(0), threading.Event()
    once = RetryPolicy(max_attempts=1)
    try:
        with Runtime(tmp_path / "s", pool_workers=2, prefetch=0) as rt:
            rt.add_agent("blk", functools.partial(Blocker, began, gate), concurrency=2)
            rt.add_agent("a", Sync)
            rt.add_workflow(Workflow("b").step("s", agent="blk", action="go", timeout=60))
            rt.add_workflow(Workflow("w").step("s", agent="a", action="go", timeout=5, retry=once))
            for _ in range(2):  # both workers busy
                rt.start("b")
                assert began.acquire(timeout=WAIT)
            handle = rt.start("w")
            wait_until(rt, lambda: rt.stats()["host"]["line"] == 1)
            rt.add_agent("a", Async)
            assert handle.result(timeout=WAIT) == {"s": "async"}  # not charged: once is enough
    finally:
        gate.set()
    lines = [r.getMessage() for r in caplog.records if "/s attempt 1 " in r.getMessage()]
    assert len(lines) == 1, lines
    assert "attempt 1 given up, not charged: it runs again: agent 'a' was added" in lines[0]


def test_attempts_waiting_in_the_pools_line_run_as_the_agent_is_added_again(
    tmp_path: Path,
) -> None:
    """Added again on the pool with concurrency 1 (it was 4) while four of its attempts
    waited in the line for a worker: all four started at once once workers freed, on the
    old factory's objects. They go back to the agent's queue now, not charged, and run
    one at a time on the new factory's."""
    began, gate = threading.Semaphore(0), threading.Event()
    tally = Tally()
    try:
        with Runtime(tmp_path / "s", pool_workers=4) as rt:
            rt.add_agent("blk", functools.partial(Blocker, began, gate), concurrency=4)
            rt.add_agent("a", functools.partial(Versioned, 1, tally), concurrency=4)
            rt.add_workflow(Workflow("b").step("s", agent="blk", action="go", timeout=60))
            once = RetryPolicy(max_attempts=1)  # (an attempt charged would fail its workflow)
            rt.add_workflow(Workflow("w").step("s", agent="a", action="go", timeout=60, retry=once))
            for _ in range(4):  # every worker busy
                rt.start("b")
                assert began.acquire(timeout=WAIT)
            handles = [rt.start("w") for _ in range(4)]
            wait_until(rt, lambda: rt.stats()["host"]["line"] == 4)
            settle(rt)  # (their DISPATCHED durable, each in the line)
            rt.add_agent("a", functools.partial(Versioned, 2, tally), concurrency=1)
            gate.set()  # the workers free
            assert tally.started.acquire(timeout=WAIT)
            settle(rt)  # (what else would start has started: held by tally.gate)
            assert tally.most == 1
            tally.gate.set()
            assert [h.result(timeout=WAIT) for h in handles] == [{"s": 2}] * 4
    finally:
        gate.set()
        tally.gate.set()
    assert tally.peak == {1: 0, 2: 1}


class DownOnce(Agent):
    def go(self, ctx: StepContext) -> str:
        if ctx.attempt == 1:
            raise ConnectionError("down")
        return "sync"


@pytest.mark.parametrize("again", [DownOnce, Async], ids=["same host", "moved host"])
def test_a_half_open_breakers_probe_given_up_as_its_agent_is_added_again_lets_another_go(
    tmp_path: Path, again: type[Agent]
) -> None:
    """The probe waited in the pool's line when the agent was added again (moved to the
    asyncio host, or not): it was given up, but its breaker kept waiting for its answer,
    half-open for good, and held the agent's work for good."""
    began, gate, clock = threading.Semaphore(0), threading.Event(), FakeClock()
    breaker = CircuitBreaker(failures=1, cooldown=10.0)
    retry = RetryPolicy(max_attempts=3, initial_interval=1.0, jitter=0.0)
    try:
        with Runtime(tmp_path / "s", clock=clock, pool_workers=1, prefetch=0) as rt:
            rt.add_agent("blk", functools.partial(Blocker, began, gate))
            rt.add_agent("a", DownOnce, breaker=breaker)
            rt.add_workflow(Workflow("b").step("s", agent="blk", action="go", timeout=60))
            rt.add_workflow(
                Workflow("w").step("s", agent="a", action="go", timeout=60, retry=retry)
            )
            handle = rt.start("w")
            wait_until(rt, lambda: rt.stats()["resources"]["a"]["breaker"] == "OPEN")
            rt.start("b")  # the only worker busy
            assert began.acquire(timeout=WAIT)
            advance(rt, clock, 11.0)  # cooled down: the retry is its probe, in the line
            wait_until(rt, lambda: rt.stats()["host"]["line"] == 1)
            assert rt.stats()["resources"]["a"]["breaker"] == "HALF_OPEN"
            rt.add_agent("a", again, breaker=breaker)
            gate.set()
            assert handle.result(timeout=WAIT)["s"] in ("sync", "async")
    finally:
        gate.set()


@pytest.mark.parametrize("host", ["pool", "thread"])
def test_an_attempt_whose_commit_was_on_its_way_when_its_agent_moved_runs_uncharged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, host: str
) -> None:
    """Added again with async def actions while an attempt's DISPATCHED was being written:
    the thread host it left had stopped its instances, and the attempt was lost as a crash,
    charged (with max_attempts=1 its workflow failed, its action never run)."""
    armed, held, release = hold_commit_news(monkeypatch)
    once = RetryPolicy(max_attempts=1)
    with Runtime(tmp_path / "s", agent_host=host) as rt:
        rt.add_agent("d", Sync)
        rt.add_workflow(Workflow("w").step("s", agent="d", action="go", timeout=30, retry=once))
        assert rt.start("w", workflow_id="w0").result(timeout=WAIT) == {"s": "sync"}
        armed.set()
        handle = rt.start("w", workflow_id="w1")
        assert held.wait(WAIT)  # its DISPATCHED is in the writer, the Scheduler unaware
        rt.add_agent("d", Async)
        armed.clear()
        release.set()
        assert handle.result(timeout=WAIT) == {"s": "async"}


@pytest.mark.parametrize("move", ["to asyncio", "from asyncio"])
def test_the_stats_of_an_agent_that_moved_host_count_its_work_on_either(
    tmp_path: Path, move: str
) -> None:
    """Moved from the asyncio host to the pool, an agent's row in stats()["agents"] (and
    the metrics and the console's facts) was the asyncio host's, emptied by the move, for
    good: no instance, none busy, nothing queued, whatever ran and waited on the pool."""
    tally = Tally()
    old, new = (Versioned, AsyncVersioned) if move == "to asyncio" else (AsyncVersioned, Versioned)
    try:
        with Runtime(tmp_path / "s", prefetch=0) as rt:
            rt.add_agent("a", functools.partial(old, 1, tally))
            rt.add_workflow(Workflow("w").step("s", agent="a", action="go", timeout=60))
            first = rt.start("w")
            assert tally.started.acquire(timeout=WAIT)  # runs on the host it leaves
            rt.add_agent("a", functools.partial(new, 2, tally), concurrency=3)
            later = [rt.start("w") for _ in range(4)]
            for _ in range(2):  # two more run on the new host, two wait
                assert tally.started.acquire(timeout=WAIT)
            settle(rt)
            row = rt.stats()["agents"]["a"]
            assert (row["busy"], row["queued"]) == (3, 2)
            tally.gate.set()
            assert first.result(timeout=WAIT) == {"s": 1}
            assert [h.result(timeout=WAIT) for h in later] == [{"s": 2}] * 4
    finally:
        tally.gate.set()
