"""The application's event loop (``Runtime(loop=)``) closed under a running runtime:
its ``async def`` steps wait, durably, for a runtime that can run them; none is failed
for it (each attempt used to be lost at once, its retries spent in a millisecond and its
workflow compensated). A loop closed already is refused at the door."""

from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path
from typing import Any, cast

import pytest
from _ending import HeldCommit

from herder.runtime import (
    Agent,
    InvalidInput,
    RetryPolicy,
    Runtime,
    State,
    StepContext,
    Workflow,
)
from herder.runtime.testing import store_of, wait_until

WAIT = 10.0
pytestmark = pytest.mark.timeout(60)


class Quick(Agent):
    async def run(self, ctx: StepContext) -> dict[str, Any]:
        await asyncio.sleep(0)  # (a yield to the loop, as an awaiting action makes: no wait)
        return {"ran": ctx.input}


FLOW = Workflow("aw").step("a", agent="aq", action="run", timeout=30)


class _Said(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.event = threading.Event()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())
        self.event.set()


def test_a_closed_loop_holds_the_steps_and_the_next_runtime_runs_them(tmp_path: Path) -> None:
    said = _Said()
    logging.getLogger("herder.asyncio").addHandler(said)
    try:

        async def main() -> Runtime:
            rt = Runtime(tmp_path / "s", loop=asyncio.get_running_loop())
            rt.add_agent("aq", Quick)
            rt.add_workflow(FLOW)
            assert await (await rt.start_async("aw", 1)).result_async(WAIT) == {"a": {"ran": 1}}
            return rt  # not stopped: asyncio.run closes the loop under it

        rt = asyncio.run(main())
        try:
            rt.start("aw", 2, workflow_id="after")
            assert said.event.wait(WAIT)
            status = rt.status("after")
            assert status.state is State.RUNNING  # waiting, not compensated
            assert [e.get("to") for e in rt.history("after") if e["kind"] == "step"] in (
                [],
                ["DISPATCHED"],  # reserved ahead: it waits for a slot and spends no attempt
            )
        finally:
            rt.stop()
    finally:
        logging.getLogger("herder.asyncio").removeHandler(said)
    assert len(said.messages) == 1  # said once, not per step
    assert "Runtime(loop=) is closed" in said.messages[0]
    assert "await rt.stop_async()" in said.messages[0]
    with Runtime(tmp_path / "s") as again:  # its own loop this time
        again.add_agent("aq", Quick)
        again.add_workflow(FLOW)
        assert again.handle("after").result(timeout=WAIT) == {"a": {"ran": 2}}


def test_a_loop_closed_already_is_refused_and_the_store_stays_free(tmp_path: Path) -> None:
    loop = asyncio.new_event_loop()
    loop.close()
    with pytest.raises(InvalidInput, match="loop= is closed"):
        Runtime(tmp_path / "s", loop=loop)
    with Runtime(tmp_path / "s") as rt:  # not left locked by the refused one
        assert rt.list() == []


def test_a_given_loop_that_never_runs_is_named_when_a_step_times_out_unstarted(
    tmp_path: Path,
) -> None:
    # A loop passed as Runtime(loop=) that the application never runs (it runs its code
    # on another one, say asyncio.run's): every async attempt timed out before it started,
    # retried and compensated, "timed out after 0.2s" the only word of it.
    said = _Said()
    logging.getLogger("herder.asyncio").addHandler(said)
    idle = asyncio.new_event_loop()
    try:
        with Runtime(tmp_path / "s", loop=idle) as rt:
            rt.add_agent("aq", Quick)
            rt.add_workflow(Workflow("aw").step("a", agent="aq", action="run", timeout=0.2))
            rt.start("aw", 1)
            assert said.event.wait(WAIT), "no word of the loop that never runs"
        assert len(said.messages) == 1
        assert "Runtime(loop=) is not running" in said.messages[0]
    finally:
        logging.getLogger("herder.asyncio").removeHandler(said)
        idle.close()


class Held(Agent):
    """Its first attempt holds the only slot until told; later ones end at once."""

    started = threading.Event()
    go: asyncio.Event | None = None

    async def run(self, ctx: StepContext) -> dict[str, Any]:
        if ctx.input == "first":
            Held.go = asyncio.Event()
            Held.started.set()
            await Held.go.wait()
        return {"ran": ctx.input}


def test_a_step_sent_as_the_loop_closes_is_not_charged_for_it(tmp_path: Path) -> None:
    # The slot frees, the queued step takes it (the loop still open), and the loop closes
    # while its DISPATCHED is being written: once durable, the attempt could not be sent.
    # It was lost as "agent instance went away", charged, and its workflow (on its last
    # attempt) compensated for a loop that closed; it never ran.
    said = _Said()
    logging.getLogger("herder.asyncio").addHandler(said)
    loop = asyncio.new_event_loop()
    serving = threading.Thread(target=loop.run_forever)
    serving.start()
    flow = Workflow("aw").step("a", agent="aq", action="run", retry=RetryPolicy(max_attempts=1))
    held = HeldCommit()
    try:
        rt = Runtime(tmp_path / "s", loop=loop, lease=60.0)  # (no renewal held instead)
        try:
            rt.add_agent("aq", Held, concurrency=1)
            rt.add_workflow(flow)
            rt.start("aw", "first", workflow_id="first")
            assert Held.started.wait(WAIT)
            rt.start("aw", "queued", workflow_id="queued")
            wait_until(rt, lambda: rt.stats()["agents"]["aq"]["queued"] == 1, WAIT)
            store_of(rt).writer.fault = held
            held.armed = True
            loop.call_soon_threadsafe(cast("asyncio.Event", Held.go).set)
            assert held.entered.wait(WAIT)  # the first's end (and the next DISPATCHED)
            held.armed = False
            assert rt.stats()["agents"]["aq"]["queued"] == 0  # the slot went to "queued"
            loop.call_soon_threadsafe(loop.stop)
            serving.join(WAIT)
            loop.close()
            held.release.set()
            wait_until(rt, lambda: rt.status("queued").steps["a"].error is not None, WAIT)
            status = rt.status("queued")
            assert status.state is State.RUNNING, status.error  # waiting, not compensated
            assert "Runtime(loop=) is closed" in str(status.steps["a"].error)
            assert said.event.wait(WAIT)
        finally:
            held.release.set()
            rt.stop()
    finally:
        logging.getLogger("herder.asyncio").removeHandler(said)
        if not loop.is_closed():
            loop.call_soon_threadsafe(loop.stop)
            serving.join(WAIT)
            loop.close()
    with Runtime(tmp_path / "s") as again:  # its own loop this time
        again.add_agent("aq", Held)
        again.add_workflow(flow)
        assert again.handle("queued").result(timeout=WAIT) == {"a": {"ran": "queued"}}
