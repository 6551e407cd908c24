"""Every wait of the public API that runs out of time raises :class:`TimedOut`: a
``HerderError`` (one ``except HerderError`` catches all herder raises) and a
``TimeoutError`` (code written against the builtin keeps working), whose message says
what timed out, after how long, and what to do. They used to be bare ``TimeoutError``s
("not resolved within 0.05 s"), pykka's ``Timeout`` (neither of the two) from a call
into the actors, or an empty ``TimeoutError()`` from a commit not made in time."""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from test_capacity_queue import _Queue

from herder.runtime import (
    Agent,
    HerderError,
    Runtime,
    StepContext,
    TimedOut,
    Workflow,
)
from herder.runtime.testing import FakeClock, crash_scheduler, store_of, wait_until

WAIT = 20.0
pytestmark = pytest.mark.timeout(60)


class Gate(Agent):
    def __init__(self, go: threading.Event) -> None:
        self.go = go

    def work(self, ctx: StepContext) -> str:
        assert self.go.wait(WAIT)
        return ctx.workflow_id


def timed_out(call: Callable[[], Any], *says: str) -> TimedOut:
    """What ``call`` raised: a TimedOut, TimeoutError and HerderError saying ``says``."""
    with pytest.raises(TimedOut) as info:
        call()
    exc = info.value
    assert isinstance(exc, TimeoutError)
    assert isinstance(exc, HerderError)
    for words in says:
        assert words in str(exc), str(exc)
    return exc


@pytest.fixture
def full(tmp_path: Path) -> Iterator[tuple[Runtime, threading.Event]]:
    """A runtime whose one slot of max_active_workflows a held workflow "first" takes."""
    go = threading.Event()
    rt = Runtime(tmp_path / "s", clock=FakeClock(), max_active_workflows=1, ask_timeout=WAIT)
    try:
        rt.add_agent("gate", lambda: Gate(go), concurrency=2)
        rt.add_workflow(Workflow("w").step("s", agent="gate", action="work"))
        rt.start("w", workflow_id="first")
        yield rt, go
    finally:
        go.set()
        rt.stop()


FACES = {
    "start": lambda rt: rt.start("w", timeout=0.05),
    "start_many": lambda rt: rt.start_many([{"workflow": "w"}], timeout=0.05),
    "start_async": lambda rt: asyncio.run(rt.start_async("w", timeout=0.05)),
    "start_many_async": lambda rt: asyncio.run(
        rt.start_many_async([{"workflow": "w"}], timeout=0.05)
    ),
}


@pytest.mark.parametrize("face", sorted(FACES))
def test_a_start_that_finds_no_room_in_time_times_out(
    full: tuple[Runtime, threading.Event], face: str
) -> None:
    rt, _ = full
    # (it names what was left of the 0.05 s for the wait itself, once the call's own checks ran)
    error = timed_out(lambda: FACES[face](rt), "max_active_workflows=1", "for room", "raise")
    assert re.search(r"waited 0\.0[0-9]* s for room", str(error)), str(error)


@pytest.mark.parametrize("face", ["result", "result_async"])
def test_a_result_not_ready_in_time_times_out_naming_the_workflow(
    full: tuple[Runtime, threading.Event], face: str
) -> None:
    rt, go = full
    handle = rt.handle("first")
    call = (
        (lambda: handle.result(timeout=0.05))
        if face == "result"
        else (lambda: asyncio.run(handle.result_async(timeout=0.05)))
    )
    timed_out(call, "'first'", "0.05 s", "wait for it again")
    go.set()
    assert handle.result(timeout=WAIT) == {"s": "first"}


@pytest.mark.parametrize("face", ["start", "start_async"])
def test_a_start_that_waits_too_long_for_another_start_of_its_id_times_out(
    full: tuple[Runtime, threading.Event], face: str
) -> None:
    rt, go = full
    queue = rt._queued = _Queue()
    out: list[Any] = []
    holder = threading.Thread(
        target=lambda: out.append(rt.start("w", workflow_id="x", timeout=WAIT)), daemon=True
    )
    holder.start()
    assert queue.joined.acquire(timeout=WAIT)  # queued for room, holding x's claim
    call = (
        (lambda: rt.start("w", workflow_id="x", timeout=0.05))
        if face == "start"
        else (lambda: asyncio.run(rt.start_async("w", workflow_id="x", timeout=0.05)))
    )
    timed_out(call, "same workflow id", "0.05s", "try again later")
    go.set()
    holder.join(WAIT)
    assert out[0].id == "x"


@pytest.fixture
def stalled(tmp_path: Path) -> Iterator[tuple[Runtime, threading.Event]]:
    """A runtime whose store writer stalls in its next commit until the event is set."""
    gate = threading.Event()

    def stall() -> None:  # inside the write transaction, before its commit
        assert gate.wait(WAIT)

    rt = Runtime(tmp_path / "s", ask_timeout=0.2)
    try:
        rt.add_agent("gate", lambda: Gate(gate))
        rt.add_workflow(Workflow("w").step("s", agent="gate", action="work"))
        for _ in range(50):  # a new store's first commit may take over 0.2 s (a loaded
            try:  # machine: it failed the set-up once in CI); starting again is safe
                rt.start("w", workflow_id="running")
                break
            except TimedOut:
                continue
        store_of(rt).writer.fault = stall
        yield rt, gate
    finally:
        store_of(rt).writer.fault = None
        gate.set()
        rt.stop(timeout=WAIT)


STALLED = {
    "start": (lambda rt: rt.start("w", workflow_id="a"), "'a'", "is safe"),
    "start_many": (lambda rt: rt.start_many([{"workflow": "w"}]), "batch", "is safe"),
    "cancel": (lambda rt: rt.cancel("running"), "cancel of workflow 'running'", "status"),
    "cancel_async": (
        lambda rt: asyncio.run(rt.cancel_async("running")),
        "cancel of workflow 'running'",
        "status",
    ),
    "add_workflow": (
        lambda rt: rt.add_workflow(Workflow("v").step("s", agent="gate", action="work")),
        "workflow 'v' version 1",
        "add_workflow again",
    ),
    "schedule": (lambda rt: rt.schedule("s", "w", every=60), "a write", "may still land"),
}


@pytest.mark.parametrize("face", sorted(STALLED))
def test_a_call_whose_commit_is_not_made_in_time_times_out_saying_what_to_do(
    stalled: tuple[Runtime, threading.Event], face: str
) -> None:
    rt, _ = stalled
    call, what, todo = STALLED[face]
    timed_out(lambda: call(rt), what, "0.2 s", todo)


def test_a_stop_whose_store_does_not_close_in_time_times_out_and_may_be_called_again(
    tmp_path: Path,
) -> None:
    go, stalling, unstall = threading.Event(), threading.Event(), threading.Event()

    def stall() -> None:
        if stalling.is_set():
            assert unstall.wait(WAIT)

    rt = Runtime(tmp_path / "s")
    try:
        rt.add_agent("gate", lambda: Gate(go))
        rt.add_workflow(Workflow("w").step("s", agent="gate", action="work"))
        rt.start("w", workflow_id="a")
        store_of(rt).writer.fault = stall
        stalling.set()
        go.set()  # a's SUCCEEDED commit stalls
        timed_out(lambda: rt.stop(timeout=0.3), "store is still open", "call stop() again")
    finally:
        unstall.set()
        rt.stop(timeout=WAIT)


def test_calls_into_the_actors_not_answered_in_time_time_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Runtime(tmp_path / "s", ask_timeout=0.2) as rt:
        answered, stats = threading.Event(), rt._scheduler.actor_class.stats

        def slow(self: Any) -> Any:
            assert answered.wait(WAIT)
            return stats(self)

        monkeypatch.setattr(rt._scheduler.actor_class, "stats", slow)
        try:
            timed_out(rt.stats, "did not answer stats() within 0.2 s", "ask_timeout")
            # (the Scheduler is still busy with that stats(): it cannot crash meanwhile)
            timed_out(lambda: crash_scheduler(rt, timeout=0.05), "did not crash within 0.05s")
        finally:
            answered.set()


def test_wait_until_times_out_with_timed_out(tmp_path: Path) -> None:
    with Runtime(tmp_path / "s") as rt:
        timed_out(lambda: wait_until(rt, lambda: False, timeout=0.01), "not reached within")
