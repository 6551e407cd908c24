"""Cancelling a task that awaits the runtime: the cancel is never lost; and the
attempts a stop cancels get to end before it returns, on the application's loop too.

On Python 3.11 ``asyncio.wait_for`` returns its future's result when the cancel comes in
the loop turn that future is resolved (the cancel is dropped; 3.12 rebuilt it on
``asyncio.timeout``): a ``start_async(timeout=...)`` waiting for room, cancelled (its
``asyncio.timeout`` ran out, a ``TaskGroup`` sibling failed) as the room came, started
its workflow and went on running its caller as if nobody had cancelled it."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from herder.runtime import Agent, RetryPolicy, Runtime, StepContext, Workflow
from herder.runtime._waits import NotifyingEvent

WAIT = 10.0
pytestmark = pytest.mark.timeout(60)


class Held(Agent):
    gate = threading.Event()

    def hold(self, ctx: StepContext) -> str:
        return "held" if Held.gate.wait(WAIT) else "never opened"


def test_a_start_async_cancelled_as_room_comes_is_cancelled_and_gives_the_room_back(
    tmp_path: Path,
) -> None:
    Held.gate = threading.Event()

    async def main() -> None:
        async with Runtime(tmp_path / "s", max_active_workflows=1) as rt:
            rt.add_agent("held", Held)
            rt.add_workflow(Workflow("w").step("s", agent="held", action="hold"))
            first = await rt.start_async("w")
            went_on = []

            async def second() -> None:
                await rt.start_async("w", timeout=WAIT)
                went_on.append(True)  # (a cancelled task must not get here)

            task = asyncio.create_task(second())
            while not rt._queued:  # it waits for room...
                await asyncio.sleep(0)  # (a turn of the loop, not a wait for time)
            # ...and is cancelled in the very loop turn its room is handed to it
            rt._queued[0].woken.add_done_callback(lambda _: task.cancel())  # type: ignore[union-attr]
            Held.gate.set()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert not went_on
            assert await first.result_async(timeout=WAIT) == {"s": "held"}
            # the room it was handed went back (kept, this start would time out)
            late = await rt.start_async("w", timeout=WAIT)
            assert await late.result_async(timeout=WAIT) == {"s": "held"}

    asyncio.run(main())


def test_an_awaited_event_wait_cancelled_in_any_turn_after_the_set_is_cancelled() -> None:
    """``wait_active_async(timeout)`` awaits a NotifyingEvent: a cancel in any of the loop
    turns between the set and the waiter's wake-up (three, through ``wait_for``'s inner
    task) was dropped and the wait returned True."""

    async def main() -> None:
        for turns in range(6):
            event = NotifyingEvent()
            task = asyncio.create_task(event.wait_async(WAIT))
            await asyncio.sleep(0)  # (it waits)
            event.set()
            for _ in range(turns):
                await asyncio.sleep(0)  # (a turn of the loop, not a wait for time)
            if task.cancel():  # not ended yet: the cancel must reach it
                with pytest.raises(asyncio.CancelledError):
                    await task
            else:
                assert await task is True

    asyncio.run(main())


def test_stopping_on_the_applications_loop_lets_cancelled_attempts_end_first(
    tmp_path: Path,
) -> None:
    """stop_async() (and ``async with``) on ``Runtime(loop=)`` cancelled the running
    attempts and returned at once: their cleanup (an awaiting ``finally``) had not even
    begun, so ``asyncio.run`` ending cancelled it half way, and a runtime opened next on
    the store ran the step's next attempt beside it under ``concurrency=1``. On the
    runtime's own loop, as on threads, a stop waits for them (here up to a second)."""
    log: list[str] = []
    started = threading.Event()

    class Careful(Agent):
        async def work(self, ctx: StepContext) -> int:
            log.append(f"attempt {ctx.attempt}")
            if ctx.attempt == 1:
                started.set()
                try:
                    await asyncio.Event().wait()  # only a cancel ends it
                finally:
                    log.append("cleanup begins")
                    await asyncio.sleep(0.1)  # (its work: closing a connection, say)
                    log.append("cleanup ends")
            return ctx.attempt

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for first in (True, False):  # the second runtime runs the step again
            async with Runtime(tmp_path / "s", loop=loop) as rt:
                rt.add_agent("careful", Careful, concurrency=1)
                rt.add_workflow(Workflow("w").step("s", agent="careful", action="work"))
                handle = await rt.start_async("w", workflow_id="x")
                if first:
                    assert await loop.run_in_executor(None, started.wait, WAIT)
                else:
                    assert await handle.result_async(timeout=WAIT) == {"s": 2}
            log.append("stopped")

    asyncio.run(main())
    assert log == ["attempt 1", "cleanup begins", "cleanup ends", "stopped", "attempt 2", "stopped"]


def test_an_attempt_that_user_code_cancels_while_its_object_is_built_fails_not_hangs(
    tmp_path: Path,
) -> None:
    """An attempt cancelled by user code (here the async factory cancels the loop's other
    tasks) before its action ran (before its task's first step, or while it waited for
    another attempt to build the agent object) ended without a word: its step waited for
    ever (no timeout), holding a place under ``concurrency``. A cancel that reaches the
    action fails the attempt; this one now does the same, and the step is retried."""

    class Plain(Agent):
        async def work(self, ctx: StepContext) -> int:
            return ctx.attempt

    async def rude_factory() -> Plain:
        me = asyncio.current_task()
        # The runtime's own loop runs only attempts: wait for the other one to wait for
        # this build (a turn at a time), then cancel it, as a careless library might.
        for _ in range(100_000):
            others = asyncio.all_tasks() - {me}
            if others:
                break
            await asyncio.sleep(0)  # (a turn of the loop, not a wait for time)
        for task in others:
            task.cancel()
        return Plain()

    with Runtime(tmp_path / "s", default_retry=RetryPolicy(initial_interval=0.01)) as rt:
        rt.add_agent("plain", rude_factory, asyncio=True, concurrency=2)
        rt.add_workflow(Workflow("w").step("s", agent="plain", action="work"))
        handles = [rt.start("w"), rt.start("w")]
        results = sorted(handle.result(timeout=WAIT)["s"] for handle in handles)
        assert results == [1, 2]  # the cancelled attempt failed, and its retry ran
        assert rt.stats()["host"]["asyncio_attempts"] == 0
