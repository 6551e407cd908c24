"""An ``async def`` action that ignores its cancellation (catches ``CancelledError`` and
carries on, or waits under ``asyncio.shield``) runs on after its attempt timed out, as a
hung thread does on the thread hosts: its slot is freed for the retry once
``instance_shutdown`` has passed (``concurrency`` counts the attempts the runtime waits
for, docs/protection.md), and the task left running is counted in
``rt.stats()["host"]["asyncio_abandoned"]`` until it ends, as the thread hosts count
``abandoned_threads``. One whose cancel merely takes a while (an await in its cleanup)
holds its slot until it has ended."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from pathlib import Path

import pytest

from herder.runtime import Agent, RetryPolicy, Runtime, StepContext, Workflow
from herder.runtime.testing import FakeClock, advance, settle

WAIT = 10.0
pytestmark = pytest.mark.timeout(60)


def test_a_task_that_ignores_its_cancel_is_counted_until_it_ends(tmp_path: Path) -> None:
    clock = FakeClock()
    started, cancelled, ended = threading.Event(), threading.Event(), threading.Event()
    release: concurrent.futures.Future[None] = concurrent.futures.Future()
    running: list[int] = []  # attempts running, seen by the second when it starts

    class Stubborn(Agent):
        async def work(self, ctx: StepContext) -> int:
            running.append(ctx.attempt)
            try:
                if ctx.input == "stubborn" and ctx.attempt == 1:
                    started.set()
                    try:
                        await asyncio.Event().wait()  # forever: only a cancel ends it
                    except asyncio.CancelledError:
                        cancelled.set()  # ... and it goes on regardless
                    await asyncio.wrap_future(release)
                    return 1
                return len(running)
            finally:
                running.remove(ctx.attempt)
                if ctx.input == "stubborn" and ctx.attempt == 1:
                    ended.set()

    retry = RetryPolicy(max_attempts=3, initial_interval=0.0, jitter=0.0)
    with Runtime(tmp_path / "s", clock=clock, sweep_interval=1.0, default_retry=retry) as rt:
        rt.add_agent("stub", Stubborn, concurrency=1)
        rt.add_workflow(Workflow("t").step("s", agent="stub", action="work", timeout=5.0))
        handle = rt.start("t", "stubborn")
        assert started.wait(WAIT)
        advance(rt, clock, 6.0)
        assert cancelled.wait(WAIT)
        # The retry ran while the first attempt still did: two of concurrency=1.
        assert handle.result(timeout=WAIT) == {"s": 2}
        assert not ended.is_set()
        host = rt.stats()["host"]
        assert host["asyncio_cancelled"] == 1
        assert host["asyncio_abandoned"] == 1  # visible while it runs on
        release.set_result(None)
        assert ended.wait(WAIT)
        # A later attempt runs on the loop after the abandoned task's end was noted.
        assert rt.start("t", "later").result(timeout=WAIT) == {"s": 1}  # alone again
        assert rt.stats()["host"]["asyncio_abandoned"] == 0


def test_a_cancelled_attempt_holds_its_place_under_concurrency_until_its_task_ends(
    tmp_path: Path,
) -> None:
    """A timed-out attempt's slot was freed when its task was told to cancel, not when
    the task ended: one whose cancel took more than a loop turn (an await in its cleanup,
    closing a connection; ``asyncio.wait_for``, which awaits its inner task's cancel)
    ran beside the next attempt of its agent, two under concurrency=1 (an attempt
    reserved ahead starts in the very loop turn of the cancel). The slot now serves again
    once the task has ended (or after ``instance_shutdown``, for one that goes on)."""
    clock = FakeClock()
    started, cleaning = threading.Event(), threading.Event()
    release: concurrent.futures.Future[None] = concurrent.futures.Future()
    running: list[str] = []
    beside: list[list[str]] = []  # what ran when each attempt started

    class Tidy(Agent):
        async def work(self, ctx: StepContext) -> int:
            me = f"{ctx.input}#{ctx.attempt}"
            beside.append(list(running))
            running.append(me)
            try:
                if me == "slow#1":
                    started.set()
                    await asyncio.Event().wait()  # only a cancel ends it
                return ctx.attempt
            finally:
                if me == "slow#1":
                    cleaning.set()
                    await asyncio.wrap_future(release)  # its cleanup, closing a connection
                running.remove(me)

    retry = RetryPolicy(max_attempts=3, initial_interval=0.0, jitter=0.0)
    with Runtime(
        tmp_path / "s", clock=clock, sweep_interval=1.0, default_retry=retry, instance_shutdown=60
    ) as rt:
        rt.add_agent("tidy", Tidy, concurrency=1)
        rt.add_workflow(Workflow("t").step("s", agent="tidy", action="work", timeout=5.0))
        slow = rt.start("t", "slow")
        assert started.wait(WAIT)
        other = rt.start("t", "other")  # waits for the one slot
        advance(rt, clock, 6.0)  # slow#1 times out: its task is cancelled, and cleans up
        assert cleaning.wait(WAIT)
        settle(rt)
        assert running == ["slow#1"]  # nothing started beside its cleanup
        release.set_result(None)
        assert slow.result(timeout=WAIT) == {"s": 2}
        assert other.result(timeout=WAIT) == {"s": 1}
        assert beside == [[], [], []]  # each attempt ran alone
