"""A start_async waiting for another start of the same workflow_id holds no thread."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from herder.runtime import Agent, Runtime, StepContext, Workflow
from herder.runtime._claims import PASSED, Claims

WAIT = 10.0


class Gate(Agent):
    gate = threading.Event()

    def hold(self, ctx: StepContext) -> str:
        Gate.gate.wait(WAIT)
        return "held"


@pytest.mark.timeout(30)
def test_start_async_of_a_claimed_id_holds_no_thread(tmp_path: Path) -> None:
    # docs/asyncio.md: "A waiting start_async or result_async holds no thread"
    Gate.gate = threading.Event()
    with Runtime(tmp_path / "s", max_active_workflows=1, instance_shutdown=0.1) as rt:
        rt.add_agent("gate", Gate)
        rt.add_workflow(Workflow("held").step("s", agent="gate", action="hold"))

        async def main() -> None:
            await rt.start_async("held")  # takes the only slot
            # A client retries one request (one idempotency key) while no slot is free:
            first = asyncio.ensure_future(rt.start_async("held", workflow_id="k", timeout=WAIT))
            await asyncio.sleep(0)  # one loop turn: `first` claims "k", then waits for a slot
            retries = [
                asyncio.ensure_future(rt.start_async("held", workflow_id="k", timeout=WAIT))
                for _ in range(8)
            ]
            for _ in range(3):  # loop turns: each retry reaches its worker-thread wait
                await asyncio.sleep(0)
            try:
                # The application's own worker-thread call (and stats_async, stop_async)
                # must still get a thread of the loop's default executor:
                assert await asyncio.wait_for(asyncio.to_thread(lambda: 42), 3.0) == 42
            finally:
                Gate.gate.set()
                handles = await asyncio.gather(first, *retries)
                assert {h.id for h in handles} == {"k"}

        asyncio.run(main())


@pytest.mark.timeout(30)
def test_an_awaited_claim_wait_is_woken_cancelled_or_timed_out_without_a_thread() -> None:
    claims = Claims()
    held = claims.take("k", WAIT)  # a blocking start holds "k"
    assert held is not None

    async def main() -> None:
        asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(max_workers=1))
        cancelled = asyncio.ensure_future(claims.take_async("k", WAIT))
        waiting = asyncio.ensure_future(claims.take_async("k", WAIT))
        for _ in range(3):  # loop turns: both are waiting
            await asyncio.sleep(0)
        assert not cancelled.done()
        assert not waiting.done()
        # No worker thread waits for them: the only one is free.
        assert await asyncio.wait_for(asyncio.to_thread(lambda: 42), 3.0) == 42
        cancelled.cancel()
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        assert await claims.take_async("k", 0.0) is None  # past its timeout: nothing held
        claims.give_back("k", held)  # (from the loop's thread here; any thread will do)
        mine = await asyncio.wait_for(waiting, WAIT)
        assert mine is not None
        assert claims.take("k", 0.0) is None  # the waiter holds it now
        claims.give_back("k", mine)
        assert claims._waiting == {}  # the cancelled and timed-out waiters left nothing

    asyncio.run(main())


@pytest.mark.timeout(30)
def test_an_awaited_batch_claim_waits_without_a_thread_and_gives_back_when_cancelled() -> None:
    claims = Claims()
    held = claims.take("b", WAIT)
    assert claims.sole(held)  # its start went early: a batch waits for it (not past it)

    async def main() -> None:
        batch = asyncio.ensure_future(claims.take_many_async(["c", "a", "b"], WAIT))
        await asyncio.sleep(0)  # one loop turn: "a" claimed, waiting for "b"
        assert not batch.done()
        assert claims.take("a", 0.0) is None
        batch.cancel()
        with pytest.raises(asyncio.CancelledError):
            await batch
        free = claims.take("a", 0.0)  # the cancelled batch gave "a" back
        assert free is not None
        claims.give_back("a", free)
        again = asyncio.ensure_future(claims.take_many_async(["c", "a", "b"], WAIT))
        await asyncio.sleep(0)
        assert not again.done()
        claims.give_back("b", held)
        got = await asyncio.wait_for(again, WAIT)
        assert [wid for wid, claim in got if claim is not None] == ["a", "b", "c"]
        claims.give_back_many(got)

    asyncio.run(main())


def test_a_batch_goes_past_a_claim_whose_start_did_not_go_early_and_that_start_stays_late() -> None:
    claims = Claims()
    held = claims.take("b", WAIT)  # a start queued for room behind the batch, say
    got = claims.take_many(["a", "b"], WAIT)  # (at once: it would wait WAIT)
    assert got[1] == ("b", PASSED)
    assert not claims.sole(held)  # gone past: that start is not taken up early
    claims.give_back_many(got)  # (PASSED: nothing to give back)
    assert claims.take("b", 0.0) is None  # still held by its start
    claims.give_back("b", held)


def test_a_start_whose_wait_ran_out_goes_past_an_early_claim_only_once_its_creation_is_queued() -> (
    None
):
    # A start whose wait for a claim ran out (ask_timeout) went past it at once. If the
    # holder had just been taken up early but not yet queued its creation, the one going
    # past could queue its own first: the early creation then failed behind it, halting
    # the Scheduler's writes (which reloads workflows and runs steps again).
    claims = Claims()
    holder = claims.take("x", WAIT)
    assert claims.sole(holder)  # taken up early; its creation is not queued yet
    waiting, done = threading.Event(), threading.Event()

    class Spy(threading.Condition):
        def wait(self, timeout: float | None = None) -> bool:
            waiting.set()
            return super().wait(timeout)

    claims._queued = Spy(claims._lock)
    out: list[object] = []

    def late() -> None:
        out.append(claims.take("x", 0.01))  # runs out: goes past the claim
        done.set()
        waiting.set()

    thread = threading.Thread(target=late, daemon=True)
    thread.start()
    assert waiting.wait(WAIT)
    assert not done.is_set(), "it went past before the early creation was queued"
    claims.queued(holder)
    thread.join(WAIT)
    assert out == [None]
    assert not claims.sole(holder)  # (contested from then on)
    claims.give_back("x", holder)
