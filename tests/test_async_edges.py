"""The asyncio face at its edges (found by review): a start_many_async cancelled while
its checks run on a worker thread gives its slots back, a blocking stop() from an
async action on the runtime's own loop stops the runtime whole, and a blocking result()
on the loop the async actions run on is refused rather than left to deadlock."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from test_capacity_queue import _Queue

from herder.runtime import (
    Agent,
    RetryPolicy,
    Runtime,
    RuntimeClosed,
    StepContext,
    Workflow,
    WorkflowHandle,
    WrongThread,
)

WAIT = 10.0
ONCE = RetryPolicy(max_attempts=1)
pytestmark = pytest.mark.timeout(60)


class Device(Agent):
    def configure(self, ctx: StepContext) -> str:
        return "ok"


def test_a_start_many_async_cancelled_while_it_checks_its_items_gives_its_slots_back(
    tmp_path: Path,
) -> None:
    """start_many_async runs its checks on a worker thread (run_async(off_loop=True)).
    A task cancelled meanwhile (here by asyncio.timeout) returns at once, but the thread
    goes on: it took the batch's max_active_workflows slots and left the body suspended
    at its next wait, never resumed. The slots came back only when that generator was
    garbage-collected: while the service kept the TimeoutError (to report it), every
    later start found no room. The thread now closes the body it was left with."""
    entered, release = threading.Event(), threading.Event()

    def pick(input: Any) -> str:  # a router: user code, run on the worker thread
        entered.set()
        release.wait(WAIT)
        return "a"

    async def main() -> WorkflowHandle:
        loop = asyncio.get_running_loop()
        loop.set_default_executor(ThreadPoolExecutor(1))  # (FIFO: a no-op waits for it)
        mine = ThreadPoolExecutor(1)  # the test's own waits, beside it
        failures: list[BaseException] = []  # what the service reports later
        async with Runtime(tmp_path / "s", max_active_workflows=1) as rt:
            rt.add_agent("device:a", Device)
            rt.add_router("pick", pick)
            rt.add_workflow(
                Workflow("routed").step("c", agent="device:{@pick}", action="configure")
            )
            rt.add_workflow(Workflow("plain").step("c", agent="device:a", action="configure"))

            async def handler() -> None:
                try:
                    async with asyncio.timeout(0.2):
                        await rt.start_many_async([{"workflow": "routed", "input": {}}])
                except TimeoutError as exc:
                    failures.append(exc)

            waiting = asyncio.create_task(handler())
            assert await loop.run_in_executor(mine, entered.wait, WAIT)
            await waiting  # timed out while the router ran
            assert failures
            assert rt.list() == []  # nothing of the batch was written
            release.set()
            await loop.run_in_executor(None, lambda: None)  # the checks' thread is done
            # The batch was given up: its slot must be free for the next start.
            handle = await rt.start_async("plain", timeout=2.0)
            assert await handle.result_async(WAIT) == {"c": "ok"}
            mine.shutdown()
            return handle

    asyncio.run(main())


def test_a_blocking_stop_from_an_async_action_on_the_runtimes_own_loop_stops_it_whole(
    tmp_path: Path,
) -> None:
    """rt.stop() called by an ``async def`` action on the runtime's own loop
    (``herder-asyncio``) raised RuntimeError('cannot join current thread') out of
    EventLoop.close, after the store was closed but before the waiters were failed: a
    handle.result() waiting elsewhere never heard RuntimeClosed (a wait without timeout
    hung for good), and a second stop() did not fix it (it returns early)."""
    holding = threading.Event()
    release = threading.Event()
    raised: list[str] = []
    done = threading.Event()
    box: dict[str, Runtime] = {}

    class Held(Agent):
        def hold(self, ctx: StepContext) -> str:
            holding.set()
            release.wait(WAIT)
            return "held"

    class Stopper(Agent):
        async def work(self, ctx: StepContext) -> int:
            await asyncio.sleep(0)  # (an await point, not a wait: the action is async)
            try:
                box["rt"].stop(timeout=2.0)
            except BaseException as exc:  # what stop() raised is the finding
                raised.append(repr(exc))
            finally:
                done.set()
            return 1

    rt = Runtime(tmp_path / "s", instance_shutdown=0.1, default_retry=ONCE)
    box["rt"] = rt
    try:
        rt.add_agent("held", Held)
        rt.add_agent("stopper", Stopper)
        rt.add_workflow(Workflow("other").step("a", agent="held", action="hold"))
        rt.add_workflow(Workflow("w").step("a", agent="stopper", action="work"))
        other = rt.start("other")
        assert holding.wait(WAIT)
        rt.start("w")
        assert done.wait(WAIT)
        assert raised == []  # stop() stopped the runtime, as from any other thread
        with pytest.raises(RuntimeClosed):  # the waiter hears of the stop at once
            other.result(timeout=WAIT)
    finally:
        release.set()
        rt.stop()


class Quick(Agent):
    async def act(self, ctx: StepContext) -> int:
        await asyncio.sleep(0)  # (an await point, not a wait: the action is async)
        return ctx.attempt


def test_a_blocking_result_on_the_applications_loop_is_refused_not_a_deadlock(
    tmp_path: Path,
) -> None:
    """h.result() on the loop given as Runtime(loop=) held that loop while it waited, so
    the workflow's own async step could never run: a wait without timeout hung for good."""

    async def main() -> dict[str, Any]:
        rt = Runtime(tmp_path / "s", loop=asyncio.get_running_loop())
        try:
            rt.add_agent("q", Quick)
            rt.add_workflow(Workflow("w").step("s", agent="q", action="act"))
            handle = await rt.start_async("w")
            with pytest.raises(WrongThread, match=r"await h\.result_async\(\)"):
                handle.result(timeout=2.0)  # (without the check: a TimeoutError)
            return await handle.result_async(timeout=WAIT)
        finally:
            await rt.stop_async()

    assert asyncio.run(main()) == {"s": 1}


def test_a_blocking_result_in_an_action_on_the_runtimes_own_loop_is_refused(
    tmp_path: Path,
) -> None:
    """An async action waiting on a child workflow with h.result() held the runtime's own
    loop (herder-asyncio), where the child's async step had to run: neither could end."""
    box: dict[str, Runtime] = {}

    class Parent(Agent):
        async def parent(self, ctx: StepContext) -> str:
            child = box["rt"].start("child", workflow_id=f"child-of-{ctx.workflow_id}")
            try:
                child.result(timeout=2.0)  # (without the check: a TimeoutError)
            except WrongThread as exc:
                return str(exc)
            return "waited"

        async def act(self, ctx: StepContext) -> int:
            return 1

    with Runtime(tmp_path / "s", default_retry=ONCE) as rt:
        box["rt"] = rt
        rt.add_agent("p", Parent)
        rt.add_workflow(Workflow("parent").step("s", agent="p", action="parent"))
        rt.add_workflow(Workflow("child").step("s", agent="p", action="act"))
        said = rt.start("parent", workflow_id="p").result(timeout=WAIT)["s"]
        assert "result_async" in said
        assert rt.handle("child-of-p").result(timeout=WAIT) == {"s": 1}  # it ran meanwhile


def test_a_blocking_start_that_must_wait_for_room_on_the_actions_loop_is_refused(
    tmp_path: Path,
) -> None:
    """start() (or start_many()) on the loop given as Runtime(loop=) waited there for room
    that only the workflows running on that loop could free: it timed out blaming
    max_active_workflows, and without a timeout it hung for good."""

    async def main() -> tuple[list[dict[str, Any]], int]:
        rt = Runtime(tmp_path / "s", loop=asyncio.get_running_loop(), max_active_workflows=1)
        try:
            rt.add_agent("q", Quick)
            rt.add_workflow(Workflow("w").step("s", agent="q", action="act"))
            first = await rt.start_async("w")  # holds the one slot until its step ran here
            with pytest.raises(WrongThread, match=r"await rt\.start_async\(\)"):
                rt.start("w", timeout=2.0)  # (without the check: a TimeoutError)
            with pytest.raises(WrongThread, match=r"await rt\.start_many_async\(\)"):
                rt.start_many([{"workflow": "w"}], timeout=2.0)
            second = await rt.start_async("w", timeout=WAIT)  # the slot is free again
            results = [await h.result_async(timeout=WAIT) for h in (first, second)]
            return results, len(rt.list())
        finally:
            await rt.stop_async()

    assert asyncio.run(main()) == ([{"s": 1}, {"s": 1}], 2)  # the refused wrote nothing


def test_a_start_many_async_cancelled_before_its_next_step_got_a_thread_gives_its_slots_back(
    tmp_path: Path,
) -> None:
    """The same, one step later: the batch was handed its slot, and its next step (the
    claims and the commit) waited for a worker thread when the task was cancelled.
    Cancelling ``asyncio.to_thread`` then cancelled that job before it ran, so nothing
    resumed or closed the body: the slot stayed taken for good and every later start
    found no room (with max_active_workflows=1, none ever again)."""

    class Pool(ThreadPoolExecutor):
        def __init__(self) -> None:
            super().__init__(1)
            self.submitted = threading.Semaphore(0)

        def submit(self, *args: Any, **kwargs: Any) -> Any:
            job = super().submit(*args, **kwargs)
            self.submitted.release()
            return job

    go, hold = threading.Event(), threading.Event()

    class Gate(Agent):
        def work(self, ctx: StepContext) -> str:
            assert go.wait(WAIT)
            return ctx.workflow_id

    async def main() -> None:
        loop = asyncio.get_running_loop()
        pool, mine = Pool(), ThreadPoolExecutor(1)  # (mine: the test's own waits)
        loop.set_default_executor(pool)

        async def off(fn: Any, *args: Any) -> Any:
            return await loop.run_in_executor(mine, fn, *args)

        async with Runtime(tmp_path / "s", max_active_workflows=1) as rt:
            rt.add_agent("gate", Gate)
            rt.add_workflow(Workflow("w").step("s", agent="gate", action="work"))
            queue = rt._queued = _Queue()
            await rt.start_async("w", workflow_id="first")
            batch = asyncio.create_task(rt.start_many_async([{"workflow": "w"}]))
            assert await off(pool.submitted.acquire, True, WAIT)  # its checks ran there
            assert await off(queue.joined.acquire, True, WAIT)  # it waits for room
            blocker = loop.run_in_executor(None, hold.wait, WAIT)  # the one worker, busy
            assert await off(pool.submitted.acquire, True, WAIT)
            go.set()  # "first" ends: its slot goes to the batch, whose next step queues
            assert await off(pool.submitted.acquire, True, WAIT)
            batch.cancel()
            with pytest.raises(asyncio.CancelledError):
                await batch
            hold.set()
            assert await blocker
            await loop.run_in_executor(None, lambda: None)  # behind the batch's step
            after = await rt.start_async("w", workflow_id="after", timeout=2.0)
            assert await after.result_async(WAIT) == {"s": "after"}
        mine.shutdown()

    asyncio.run(main())


def test_a_blocking_start_on_the_actions_loop_does_not_wait_there_for_a_queued_start_of_its_id(
    tmp_path: Path,
) -> None:
    """A start() of an id whose claim a start_async waiting for room held, made on the
    loop the actions run on, waited there for that claim up to ask_timeout (30 s by
    default): every async action stood still meanwhile, and only then came the
    WrongThread the docs promise at once."""

    # The first workflow's step waits for the check: were it to end while the test
    # awaits the queue (the loop runs it then), "x" would be created, and start() of it
    # would return its handle instead of refusing.
    checked = asyncio.Event()

    class Held(Agent):
        async def act(self, ctx: StepContext) -> int:
            await checked.wait()
            return ctx.attempt

    async def main() -> None:
        loop = asyncio.get_running_loop()
        rt = Runtime(tmp_path / "s", loop=loop, max_active_workflows=1, ask_timeout=3600.0)
        try:
            rt.add_agent("q", Held)
            rt.add_workflow(Workflow("w").step("s", agent="q", action="act"))
            queue = rt._queued = _Queue()
            first = await rt.start_async("w")  # holds the one slot until its step ran here
            waiting = asyncio.create_task(rt.start_async("w", workflow_id="x"))
            assert await loop.run_in_executor(None, queue.joined.acquire, True, WAIT)
            with pytest.raises(WrongThread, match=r"await rt\.start_async\(\)"):
                rt.start("w", workflow_id="x", timeout=WAIT)  # at once, not after WAIT
            checked.set()
            assert await first.result_async(timeout=WAIT) == {"s": 1}
            assert (await waiting).id == "x"
        finally:
            await rt.stop_async()

    asyncio.run(main())


def test_blocking_calls_that_wait_for_the_actions_on_their_own_loop_are_refused(
    tmp_path: Path,
) -> None:
    """stop(drain=True) and handoff() on the loop the async actions run on waited there
    for those very actions to finish: the loop stood still for the whole drain, which
    then gave up and left the attempt to run again at the next open. run_forever() there
    held the loop until SIGTERM, no async step running meanwhile. Each now raises
    WrongThread at once, and nothing was stopped."""
    release = asyncio.Event()

    class Held(Agent):
        async def act(self, ctx: StepContext) -> int:
            await release.wait()
            return ctx.attempt

    async def main() -> None:
        rt = Runtime(tmp_path / "s", loop=asyncio.get_running_loop())
        stopper = threading.Timer(2.0, rt.stop)  # (ends a run_forever() let through)
        try:
            rt.add_agent("h", Held)
            rt.add_workflow(Workflow("w").step("s", agent="h", action="act"))
            handle = await rt.start_async("w")
            with pytest.raises(WrongThread, match=r"await rt\.stop_async\(drain=True\)"):
                rt.stop(timeout=2.0, drain=True)
            with pytest.raises(WrongThread, match=r"await rt\.handoff_async\(\)"):
                rt.handoff(2.0)
            stopper.start()
            with pytest.raises(WrongThread, match=r"await rt\.run_forever_async\(\)"):
                rt.run_forever()
            stopper.cancel()
            assert rt.is_active  # nothing was stopped
            release.set()
            assert await handle.result_async(timeout=WAIT) == {"s": 1}  # its one attempt
            await rt.stop_async(drain=True)
        finally:
            stopper.cancel()
            await rt.stop_async()

    asyncio.run(main())
