"""The pool host's line, end to end: attempts that found an instance slot but no free
worker are recorded, wait in the line, and the next worker to finish takes them.

The host-level rules (who takes what, withdrawing, replacing) are in test_pool_host.py;
here a runtime checks the guarantees around them: the concurrency cap, the deadlines of
an attempt that waited, and that workers take lined attempts themselves."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from test_prefetch import WAIT, Counted, Gated, lapses_from_its_start

from herder.actors._pool_worker import SELF_FEEDS
from herder.runtime import (
    Agent,
    CircuitBreaker,
    Runtime,
    State,
    StepContext,
    Workflow,
    WorkflowFailed,
)
from herder.runtime.testing import FakeClock, settle, wait_until


def test_agents_keep_their_concurrency_while_their_attempts_wait_in_the_line(
    tmp_path: Path,
) -> None:
    Counted.running, Counted.most, Counted.gate = {}, {}, threading.Event()
    names = [f"r{i}" for i in range(6)]
    with Runtime(tmp_path / "s", pool_workers=2, prefetch=0) as rt:
        for name in names:
            rt.add_agent(name, lambda name=name: Counted(name), concurrency=1)
        for name in names:
            rt.add_workflow(Workflow(name).step("s", agent=name, action="go"))
        handles = [rt.start(names[i % 6], {}, workflow_id=f"w{i}") for i in range(48)]
        # Two run, one attempt of each of the four other agents waits in the line (its
        # instance slot held): the rest wait in their agents' queues, unrecorded.
        wait_until(rt, lambda: rt.stats()["host"]["line"] == 4)
        assert sum(Counted.running.values()) == 2
        Counted.gate.set()
        for handle in handles:
            assert handle.result(timeout=WAIT) == {"s": 1}
        stats = rt.stats()
    assert Counted.most == dict.fromkeys(names, 1)  # never two of one agent at once
    assert stats["host"]["fed_from_line"] > 0  # workers went on with lined attempts
    assert stats["host"]["line"] == 0
    assert stats["host"]["workers"] <= 2


def _waited_in_the_line(tmp_path: Path, *, heartbeat: float | None) -> None:
    """w1 holds the only worker; w2 (another agent) waits in the line from t=0 and
    starts at t=8: with a timeout (or heartbeat timeout) of 10 s it lapses at t=18."""
    clock = FakeClock()
    Gated.started, Gated.go = {}, {}
    with Runtime(tmp_path / "s", clock=clock, pool_workers=1, prefetch=0) as rt:
        for name in ("a", "b"):
            rt.add_agent(name, Gated, concurrency=1)
            step = {"timeout": 10.0} if heartbeat is None else {"heartbeat_timeout": heartbeat}
            rt.add_workflow(Workflow(name).step("s", agent=name, action="act", **step))
        rt.start("a", {}, workflow_id="w1")
        assert Gated.started.setdefault("w1", threading.Event()).wait(WAIT)
        rt.start("b", {}, workflow_id="w2")  # recorded at t=0, in the line
        wait_until(rt, lambda: rt.stats()["host"]["line"] == 1)
        # The worker takes w2 when w1 is let go, at t=8.
        lapses_from_its_start(rt, clock, "timed out" if heartbeat is None else "no heartbeat")


def test_an_attempt_that_waited_in_the_line_gets_its_whole_timeout(tmp_path: Path) -> None:
    _waited_in_the_line(tmp_path, heartbeat=None)


def test_an_attempt_that_waited_in_the_line_gets_its_whole_heartbeat_timeout(
    tmp_path: Path,
) -> None:
    _waited_in_the_line(tmp_path, heartbeat=10.0)


def test_a_cancelled_workflows_attempt_waiting_in_the_line_never_starts(tmp_path: Path) -> None:
    """It is given up like an attempt reserved ahead (it may have taken effect, as far as
    anyone knows), the worker that takes it skips it, and its skipping is no failure of
    its agent's resource (the breaker counts none)."""
    Gated.started, Gated.go = {}, {}
    with Runtime(tmp_path / "s", pool_workers=1, prefetch=0) as rt:
        rt.add_agent("a", Gated, concurrency=1)
        rt.add_agent("b", Gated, concurrency=1, breaker=CircuitBreaker(failures=1))
        for name in ("a", "b"):
            rt.add_workflow(Workflow(name).step("s", agent=name, action="act"))
        rt.start("a", {}, workflow_id="w1")
        assert Gated.started.setdefault("w1", threading.Event()).wait(WAIT)
        waiting = rt.start("b", {}, workflow_id="w2")
        wait_until(rt, lambda: rt.stats()["host"]["line"] == 1)
        rt.cancel("w2")
        with pytest.raises(WorkflowFailed):
            waiting.result(timeout=WAIT)
        assert rt.status("w2").state is State.CANCELLED
        Gated.go.setdefault("w1", threading.Event()).set()  # the worker takes w2's, skips it
        wait_until(rt, lambda: rt.stats()["host"]["line"] == 0)
        settle(rt)
        assert "w2" not in Gated.started  # its action never ran
        assert rt.stats()["resources"]["b"]["failures"] == 0
        assert rt.stats()["agents"]["b"]["busy"] == 0  # its slot freed
        Gated.go["w3"] = threading.Event()
        Gated.go["w3"].set()
        assert rt.start("b", {}, workflow_id="w3").result(timeout=WAIT) == {"s": 1}


def test_an_attempt_waiting_in_the_line_when_its_agent_is_removed_never_starts(
    tmp_path: Path,
) -> None:
    """remove_agent: none of the agent's attempts starts after it returns. One waiting in
    the line for a worker ran once a worker freed; it goes back (not charged, as one its
    host gave up on) and waits, queued, until the agent is added again."""
    Gated.started, Gated.go = {}, {}
    with Runtime(tmp_path / "s", pool_workers=1, prefetch=0) as rt:
        for name in ("a", "b"):
            rt.add_agent(name, Gated, concurrency=1)
            rt.add_workflow(Workflow(name).step("s", agent=name, action="act"))
        rt.start("a", {}, workflow_id="w1")
        assert Gated.started.setdefault("w1", threading.Event()).wait(WAIT)
        waiting = rt.start("b", {}, workflow_id="w2")
        wait_until(rt, lambda: rt.stats()["host"]["line"] == 1)
        rt.remove_agent("b")
        assert rt.stats()["host"]["line"] == 0
        Gated.go.setdefault("w1", threading.Event()).set()  # the worker frees
        wait_until(rt, lambda: rt.status("w1").state is State.SUCCEEDED)
        settle(rt)
        assert "w2" not in Gated.started  # its action never ran
        assert rt.stats()["agents"]["b"]["queued"] == 1
        assert rt.stats()["agents"]["b"]["busy"] == 0
        Gated.go.setdefault("w2", threading.Event()).set()
        rt.add_agent("b", Gated, concurrency=1)
        assert waiting.result(timeout=WAIT) == {"s": 1}  # its lost attempt was not charged


def test_a_group_steps_attempt_waiting_in_the_line_moves_to_another_member_at_remove(
    tmp_path: Path,
) -> None:
    from herder.runtime import AnyOf

    Gated.started, Gated.go = {}, {}
    with Runtime(tmp_path / "s", pool_workers=1, prefetch=0) as rt:
        for name in ("a", "b", "c"):
            rt.add_agent(name, Gated, concurrency=1)
        rt.add_workflow(Workflow("a").step("s", agent="a", action="act"))
        rt.add_workflow(Workflow("g").step("s", agent=AnyOf("b", "c"), action="act"))
        rt.start("a", {}, workflow_id="w1")
        assert Gated.started.setdefault("w1", threading.Event()).wait(WAIT)
        waiting = rt.start("g", {}, workflow_id="w2")  # on b, the first member
        wait_until(rt, lambda: rt.stats()["host"]["line"] == 1)
        assert rt.status("w2").steps["s"].agent == "b"
        rt.remove_agent("b")
        Gated.go.setdefault("w2", threading.Event()).set()
        Gated.go.setdefault("w1", threading.Event()).set()
        assert waiting.result(timeout=WAIT) == {"s": 1}  # on c, its attempt not charged
        assert rt.status("w2").steps["s"].agent == "c"


class Permits(Agent):
    """Each attempt takes a permit the test hands out (one per attempt it lets end)."""

    permits = threading.Semaphore(0)
    began = threading.Semaphore(0)
    ended = 0

    def go(self, ctx: StepContext) -> str:
        Permits.began.release()
        assert Permits.permits.acquire(timeout=WAIT)
        Permits.ended += 1
        return "done"


class Free(Agent):
    def go(self, ctx: StepContext) -> int:
        return Permits.ended  # how many of the busy agent's attempts ran before this one


def test_an_agent_with_a_backlog_that_fills_the_pool_does_not_starve_the_line(
    tmp_path: Path,
) -> None:
    """A worker that finished an attempt fed itself its agent's next attempt reserved
    ahead before it looked at the line: an agent with a backlog and workers enough to
    fill the pool (here both of its two) ran its whole backlog while another agent's
    attempt waited in the line, however long the backlog (3.8 s of it, measured, with
    four workers and 400 steps of 50 ms). Now a worker feeds itself SELF_FEEDS in a row
    at most while the line has work."""
    Permits.permits, Permits.began = threading.Semaphore(0), threading.Semaphore(0)
    Permits.ended = 0
    backlog = 24
    with Runtime(tmp_path / "s", pool_workers=2, prefetch=7) as rt:
        rt.add_agent("hot", Permits, concurrency=2)
        rt.add_agent("cold", Free, concurrency=1)
        for name in ("hot", "cold"):
            rt.add_workflow(Workflow(name).step("s", agent=name, action="go", timeout=60))
        Permits.permits.release()  # one timed action: hot's attempts may be reserved ahead
        assert rt.start("hot", {}).result(timeout=WAIT) == {"s": "done"}
        hot = [rt.start("hot", {}) for _ in range(backlog)]
        for _ in range(2):  # both workers run hot's attempts, 14 more wait reserved ahead
            assert Permits.began.acquire(timeout=WAIT)
        wait_until(rt, lambda: rt.stats()["agents"]["hot"]["ahead"] == 14)
        cold = rt.start("cold", {})
        wait_until(rt, lambda: rt.stats()["host"]["line"] == 1)  # no worker free for it
        settle(rt)  # (its attempt durable, in the line)
        for _ in range(backlog - 2):  # let hot's attempts end one at a time
            Permits.permits.release()
            assert Permits.began.acquire(timeout=WAIT)  # (the next one began)
            settle(rt)  # hot's attempts reserved ahead, durable: a worker may feed on
        Permits.permits.release(2)
        # Each worker ran its first attempt and SELF_FEEDS more at most before cold's
        # (it ran after all 25 of hot's: the warm-up and the backlog).
        assert cold.result(timeout=WAIT)["s"] <= 1 + 2 * (1 + SELF_FEEDS)
        for handle in hot:
            assert handle.result(timeout=WAIT) == {"s": "done"}
