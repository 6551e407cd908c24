"""An ``async def`` action that ignores its cancellation (catches ``CancelledError`` and
carries on, or waits under ``asyncio.shield``) runs on after its attempt timed out, as a
hung thread does on the thread hosts: its slot is freed for the retry (``concurrency``
counts the attempts the runtime waits for, docs/protection.md), and the task left
running is counted in ``rt.stats()["host"]["asyncio_abandoned"]`` until it ends, as the
thread hosts count ``abandoned_threads``."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from pathlib import Path

import pytest

from herder.runtime import Agent, RetryPolicy, Runtime, StepContext, Workflow
from herder.runtime.testing import FakeClock, advance

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
