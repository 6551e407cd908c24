"""A start woken by a stop says the runtime stopped (RuntimeClosed), as stop() promises
("from the moment it is called, start raises RuntimeClosed"), never that the store is
closed (StoreClosed, "open it again").

A start of an id that another start holds (its claim, runtime/_claims.py) waits for it;
the stop refuses that other start, which gives the claim back, and the waiter went on
to read its id in the store the stop had just closed. start_many_async's body moves to
a worker thread between its waits, and a stop meanwhile met it at the store writer."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from test_capacity_queue import _Queue

from herder.runtime import Agent, Runtime, RuntimeClosed, StepContext, Workflow
from herder.runtime._claims import Claims

WAIT = 10.0
pytestmark = pytest.mark.timeout(60)


class Held(Agent):
    gate = threading.Event()

    def hold(self, ctx: StepContext) -> str:
        return "held" if Held.gate.wait(WAIT) else "never opened"


class Told(Claims):
    """The runtime's claims, telling the test each blocking start about to wait on one."""

    __slots__ = ("taking",)

    def __init__(self) -> None:
        super().__init__()
        self.taking = threading.Semaphore(0)

    def take(self, *args: Any, **options: Any) -> threading.Lock | None:
        self.taking.release()
        return super().take(*args, **options)


def _runtime(path: Path, **options: Any) -> Runtime:
    Held.gate = threading.Event()
    rt = Runtime(path, instance_shutdown=0.1, **options)
    rt.add_agent("held", Held)
    rt.add_agent("held:a", Held)
    rt.add_workflow(Workflow("w").step("s", agent="held", action="hold"))
    return rt


def test_a_blocking_start_waiting_for_its_id_when_the_runtime_stops_says_it_stopped(
    tmp_path: Path,
) -> None:
    rt = _runtime(tmp_path / "s", max_active_workflows=1)
    claims = rt._claims = Told()
    queue = rt._queued = _Queue()
    try:
        rt.start("w", workflow_id="z")  # holds the room; "x" sorts before it: a read
        errors: list[BaseException] = []

        def start() -> None:
            try:
                rt.start("w", workflow_id="x")
            except BaseException as exc:
                errors.append(exc)

        first = threading.Thread(target=start)  # claims "x", waits for room
        first.start()
        assert queue.joined.acquire(timeout=WAIT)
        assert claims.taking.acquire(timeout=WAIT)
        second = threading.Thread(target=start)  # waits for the first's claim of "x"
        second.start()
        assert claims.taking.acquire(timeout=WAIT)
        rt.stop()
        first.join(WAIT)
        second.join(WAIT)
    finally:
        Held.gate.set()
        rt.stop()
    assert len(errors) == 2
    assert all(isinstance(error, RuntimeClosed) for error in errors), errors


def test_a_start_async_waiting_for_its_id_when_the_runtime_stops_says_it_stopped(
    tmp_path: Path,
) -> None:
    async def main() -> list[BaseException]:
        rt = _runtime(tmp_path / "s", max_active_workflows=1)
        try:
            await rt.start_async("w", workflow_id="z")
            first = asyncio.create_task(rt.start_async("w", workflow_id="x"))
            while not rt._queued:  # it claimed "x" and waits for room
                await asyncio.sleep(0)  # (a turn of the loop, not a wait for time)
            second = asyncio.create_task(rt.start_async("w", workflow_id="x"))
            while "x" not in rt._claims._waiting:  # it waits for the first's claim
                await asyncio.sleep(0)  # (a turn of the loop, not a wait for time)
            await rt.stop_async()
            done = await asyncio.gather(first, second, return_exceptions=True)
        finally:
            Held.gate.set()
            await rt.stop_async()
        return [error for error in done if isinstance(error, BaseException)]

    errors = asyncio.run(main())
    assert len(errors) == 2
    assert all(isinstance(error, RuntimeClosed) for error in errors), errors


def test_a_start_many_async_stopped_under_between_its_steps_says_it_stopped(
    tmp_path: Path,
) -> None:
    """Its next step waits for the loop's one worker thread while the runtime stops."""

    async def main() -> BaseException | None:
        loop = asyncio.get_running_loop()
        worker = ThreadPoolExecutor(1)  # (FIFO: its next step queues behind the hold)
        loop.set_default_executor(worker)
        rt = _runtime(tmp_path / "s")
        held, release = threading.Event(), threading.Event()

        def hold_the_worker() -> None:
            held.set()
            release.wait(WAIT)

        def pick(input: Any) -> str:  # a router: run by its first step, on the worker
            worker.submit(hold_the_worker)
            return "a"

        rt.add_router("pick", pick)
        rt.add_workflow(Workflow("routed").step("s", agent="held:{@pick}", action="hold"))
        try:
            batch = asyncio.create_task(rt.start_many_async([{"workflow": "routed"}]))
            with ThreadPoolExecutor(1) as mine:
                assert await loop.run_in_executor(mine, held.wait, WAIT)
                await loop.run_in_executor(mine, rt.stop)  # its next step waits meanwhile
            release.set()
            try:
                await batch
            except BaseException as exc:
                return exc
            return None
        finally:
            release.set()
            Held.gate.set()
            rt.stop()

    error = asyncio.run(main())
    assert isinstance(error, RuntimeClosed), error
