"""What start() and start_many() promise about waiting: slots go to waiting batches
oldest first, a repeated batch needs no room, a timeout bounds the wait behind another
start of the same id, and a number too large for a float is refused as bad input."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from test_capacity_queue import Gate, _Queue, in_thread

from herder.runtime import Agent, InvalidInput, Runtime, StepContext, Workflow
from herder.runtime.testing import FakeClock

WAIT = 30.0
HUGE = 10**400  # an int float() cannot hold


class A(Agent):
    def work(self, ctx: StepContext) -> int:
        return 1


@pytest.mark.timeout(60)
def test_start_many_batches_waiting_for_room_take_the_slots_that_free_oldest_first(
    tmp_path: Path,
) -> None:
    """Two start_many calls wait for room: a batch of 2 (first) and a batch of 1. They
    wait in the one queue of starts, oldest first: the batch of 2 takes each slot that
    frees until it has both (two batches never split the slots between them, and the
    small one does not overtake it for ever), then the batch of 1 takes the next. (They
    used to wait on a condition, and a slot freed woke only one of them, the batch of 2,
    which did not fit: the batch of 1 slept on until its timeout with a slot free.)"""
    go, entered = threading.Semaphore(0), threading.Semaphore(0)
    with Runtime(tmp_path / "s", clock=FakeClock(), max_active_workflows=2) as rt:
        rt.add_agent("gate", lambda: Gate(go, entered), concurrency=4)
        rt.add_workflow(Workflow("w").step("s", agent="gate", action="work"))
        queue = rt._queued = _Queue()
        rt.start("w", workflow_id="a")
        rt.start("w", workflow_id="b")
        assert entered.acquire(timeout=WAIT)
        assert entered.acquire(timeout=WAIT)
        pair = [{"workflow": "w", "workflow_id": "x1"}, {"workflow": "w", "workflow_id": "x2"}]
        big, big_out = in_thread(lambda: rt.start_many(pair, timeout=WAIT))
        assert queue.joined.acquire(timeout=WAIT)  # the batch of 2 waits
        one = [{"workflow": "w", "workflow_id": "y"}]
        small, small_out = in_thread(lambda: rt.start_many(one, timeout=WAIT))
        assert queue.joined.acquire(timeout=WAIT)  # then the batch of 1
        go.release()
        go.release()  # "a" and "b" end: both slots are the batch of 2's
        big.join(WAIT)
        assert not isinstance(big_out[0], BaseException), big_out[0]
        assert rt._store.get_workflow("y") is None  # behind it, until one of them ends
        assert entered.acquire(timeout=WAIT)
        go.release()  # "x1" or "x2" ends: its slot is the batch of 1's
        small.join(WAIT)
        assert not isinstance(small_out[0], BaseException), small_out[0]
        for _ in range(3):  # let everything finish before the runtime stops
            go.release()
        assert rt.handle("y").result(timeout=WAIT) == {"s": "y"}


@pytest.mark.timeout(60)
def test_start_many_repeated_for_running_workflows_returns_their_handles(tmp_path: Path) -> None:
    """start_many is documented idempotent per id like start(): a caller that repeats a
    batch that landed (its first call timed out, a retry after a crash) gets the same
    handles. start() does so at once, without a slot; start_many first waits for one
    fresh slot per id, and the workflows it names hold those very slots, so the repeat
    times out with "nothing of it was written" while all of them are running."""
    go, entered = threading.Semaphore(0), threading.Semaphore(0)
    with Runtime(tmp_path / "s", clock=FakeClock(), max_active_workflows=2) as rt:
        rt.add_agent("gate", lambda: Gate(go, entered), concurrency=4)
        rt.add_workflow(Workflow("w").step("s", agent="gate", action="work"))
        batch = [{"workflow": "w", "workflow_id": "x1"}, {"workflow": "w", "workflow_id": "x2"}]
        first = rt.start_many(batch)
        assert entered.acquire(timeout=WAIT)
        assert entered.acquire(timeout=WAIT)
        assert rt.start("w", workflow_id="x1").id == "x1"  # start(): at once
        try:
            again = rt.start_many(batch, timeout=1.0)
        finally:
            go.release()
            go.release()
        assert [h.id for h in again] == [h.id for h in first]


@pytest.mark.timeout(60)
def test_start_timeout_bounds_the_wait_behind_a_start_of_the_same_id(tmp_path: Path) -> None:
    """start(timeout=1) is documented to block at most 1 s for room, then TimeoutError.
    While an earlier start() of the same id waits for a slot, it holds the id's claim
    (runtime/_claims.py), and the second start waits for that claim for ask_timeout
    (here 10 s; 30 s by default), whatever timeout its caller gave."""
    go, entered = threading.Semaphore(0), threading.Semaphore(0)
    with Runtime(tmp_path / "s", clock=FakeClock(), max_active_workflows=1, ask_timeout=10.0) as rt:
        rt.add_agent("gate", lambda: Gate(go, entered), concurrency=4)
        rt.add_workflow(Workflow("w").step("s", agent="gate", action="work"))
        queue = rt._queued = _Queue()
        rt.start("w", workflow_id="first")
        assert entered.acquire(timeout=WAIT)  # the one slot is taken
        first, _ = in_thread(lambda: rt.start("w", workflow_id="x"))  # no limit: queued
        assert queue.joined.acquire(timeout=WAIT)

        began = time.monotonic()
        second, out = in_thread(lambda: rt.start("w", workflow_id="x", timeout=1.0))
        second.join(5.0)
        took = time.monotonic() - began
        done_in_time = not second.is_alive()
        for _ in range(4):
            go.release()
        first.join(WAIT)
        second.join(WAIT)
        assert done_in_time, f"start(timeout=1.0) still blocked after {took:.1f} s"
        assert isinstance(out[0], TimeoutError), out


@pytest.mark.timeout(60)
@pytest.mark.parametrize("when", [{"delay": HUGE}, {"deadline": HUGE}])
def test_start_refuses_a_huge_int_delay_or_deadline_with_invalid_input(
    tmp_path: Path, when: dict[str, int]
) -> None:
    """delay=/deadline= are checked with math.isfinite, which raises OverflowError for
    an int beyond a float's range: the caller gets a bare OverflowError instead of the
    documented InvalidInput (a HerderError). timeout=HUGE is accepted as no limit."""
    with Runtime(tmp_path / "s", clock=FakeClock()) as rt:
        rt.add_agent("a", A)
        rt.add_workflow(Workflow("w").step("s", agent="a", action="work"))
        with pytest.raises(InvalidInput):
            rt.start("w", **when)  # type: ignore[arg-type]


@pytest.mark.timeout(60)
def test_workflow_refuses_a_huge_int_deadline_with_invalid_input() -> None:
    with pytest.raises(InvalidInput):
        Workflow("w", deadline=HUGE)


class Handed(Agent):
    def go(self, ctx: StepContext) -> Any:
        return ctx.complete_later()  # unfinished until a completion that never comes


def _handed(rt: Runtime) -> None:
    rt.add_agent("h", Handed, concurrency=4)
    rt.add_workflow(Workflow("w").step("s", agent="h", action="go", timeout=3600))


@pytest.mark.timeout(60)
def test_a_restart_counts_every_unfinished_workflow_before_it_takes_starts(
    tmp_path: Path,
) -> None:
    # Recovery counted the unfinished workflows a chunk (200) at a time, and the runtime
    # took starts once the first chunk was in: right after Runtime() 800 of 1,000 were
    # counted, so starts were let past max_active_workflows until the rest came.
    path = tmp_path / "s"
    with Runtime(path, setup=_handed) as rt:
        rt.start_many([{"workflow": "w", "workflow_id": f"w{i:04d}"} for i in range(1000)])
    full = pytest.raises(TimeoutError, match="max_active_workflows=1000")
    with Runtime(path, setup=_handed, max_active_workflows=1000) as rt, full:
        rt.start("w", workflow_id="one-too-many", timeout=0.2)


@pytest.mark.timeout(60)
def test_an_awaited_start_many_that_found_no_room_says_it_was_start_many_async(
    tmp_path: Path,
) -> None:
    go, entered = threading.Semaphore(0), threading.Semaphore(0)
    with Runtime(tmp_path / "s", clock=FakeClock(), max_active_workflows=1) as rt:
        rt.add_agent("gate", lambda: Gate(go, entered), concurrency=2)
        rt.add_workflow(Workflow("w").step("s", agent="gate", action="work"))
        rt.start("w", workflow_id="first")
        assert entered.acquire(timeout=WAIT)
        batch = rt.start_many_async([{"workflow": "w", "workflow_id": "later"}], timeout=0.05)
        with pytest.raises(TimeoutError, match=r"start_many_async\(\) waited 0.05 s for room"):
            asyncio.run(batch)
        go.release()
        assert rt.handle("first").result(timeout=WAIT) == {"s": "first"}
        assert not rt._queued


def test_a_start_that_found_no_room_says_how_long_it_waited_in_round_figures() -> None:
    # It printed what was left of the timeout as it was: "waited 0.9999801310041221s".
    from herder.runtime._capacity import _full

    said = str(_full(3, 3, 0.9999801310041221, "start()"))
    assert "start() waited 1 s for room" in said, said
    assert "max_active_workflows=3" in said
