"""A start of a workflow id that waits for room under max_active_workflows holds its
id's claim (runtime/_claims.py) meanwhile; another start of that id waits for it at most
``ask_timeout`` and then goes on unclaimed. Neither may then halt the Scheduler's writes
(which reloads the workflows behind the failed creation and runs again steps of other
workflows): a start whose id another start went past is created without being taken up
early, and so is one that went on unclaimed."""

from __future__ import annotations

import asyncio
import collections
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from test_capacity_queue import _Queue

from herder.runtime import Agent, Runtime, StepContext, Workflow
from herder.runtime.testing import FakeClock, store_of

pytestmark = pytest.mark.timeout(60)
WAIT = 20.0


class Gate(Agent):
    """Counts each workflow's attempts and holds each until the test lets one go."""

    def __init__(self, go: threading.Semaphore, runs: collections.Counter[str]) -> None:
        self.go, self.runs = go, runs

    def work(self, ctx: StepContext) -> str:
        self.runs[ctx.workflow_id] += 1
        assert self.go.acquire(timeout=WAIT)
        return ctx.workflow_id


class Setup:
    def __init__(self, rt: Runtime, go: threading.Semaphore, runs: collections.Counter[str]):
        self.rt, self.go, self.runs = rt, go, runs
        self.queue = rt._queued = _Queue()

    def halts(self) -> int:
        return store_of(self.rt).writer._halts  # (fail-stops of the Scheduler's writes)


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Callable[..., Setup]]:
    opened: list[Runtime] = []

    def make(limit: int, ask_timeout: float = 0.3) -> Setup:
        go, runs = threading.Semaphore(0), collections.Counter[str]()
        rt = Runtime(
            tmp_path / f"s{len(opened)}",
            clock=FakeClock(),
            max_active_workflows=limit,
            ask_timeout=ask_timeout,
        )
        opened.append(rt)
        rt.add_agent("gate", lambda: Gate(go, runs), concurrency=8)
        rt.add_workflow(Workflow("w").step("s", agent="gate", action="work"))
        return Setup(rt, go, runs)

    yield make
    for rt in opened:
        rt.stop()


def in_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []

    def run() -> None:
        try:
            out.append(fn())
        except BaseException as exc:
            out.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


def test_a_start_that_went_past_a_queued_start_of_its_id_halts_nothing(
    setup: Callable[..., Setup],
) -> None:
    s = setup(1)
    s.rt.start("w", workflow_id="first")
    first, first_out = in_thread(lambda: s.rt.start("w", workflow_id="x", timeout=WAIT))
    assert s.queue.joined.acquire(timeout=WAIT)  # queued, holding the id's claim
    # The second waits ask_timeout for the claim, goes on unclaimed and queues too.
    second, second_out = in_thread(lambda: s.rt.start("w", workflow_id="x", timeout=WAIT))
    assert s.queue.joined.acquire(timeout=WAIT)
    s.go.release()  # "first" ends: its slot goes to the first start of x
    first.join(WAIT)
    s.go.release()  # x ends: its slot goes to the second, whose creation finds x
    second.join(WAIT)
    assert [first_out[0].id, second_out[0].id] == ["x", "x"], (first_out, second_out)
    assert s.rt.handle("x").result(timeout=WAIT) == {"s": "x"}
    assert s.halts() == 0
    assert s.runs == {"first": 1, "x": 1}


def test_a_start_many_that_went_past_a_queued_start_of_one_of_its_ids_halts_nothing(
    setup: Callable[..., Setup],
) -> None:
    s = setup(3)
    for wid in ("b1", "b2", "b3"):
        s.rt.start("w", workflow_id=wid)
    items = [{"workflow": "w", "workflow_id": wid} for wid in ("x", "y")]
    many, many_out = in_thread(lambda: s.rt.start_many(items, timeout=WAIT))
    assert s.queue.joined.acquire(timeout=WAIT)  # the batch waits for two slots
    one, one_out = in_thread(lambda: s.rt.start("w", workflow_id="x", timeout=WAIT))
    assert s.queue.joined.acquire(timeout=WAIT)  # queued behind it, holding x's claim
    s.go.release()
    s.go.release()  # two end: the batch has its slots, waits for x's claim, goes on
    many.join(WAIT)
    assert [h.id for h in many_out[0]] == ["x", "y"], many_out
    s.go.release()  # the third ends: its slot goes to the start of x, which exists
    one.join(WAIT)
    assert one_out[0].id == "x", one_out
    s.go.release()
    s.go.release()
    assert s.rt.handle("y").result(timeout=WAIT) == {"s": "y"}
    assert s.rt.handle("x").result(timeout=WAIT) == {"s": "x"}
    assert s.halts() == 0
    assert s.runs == {"b1": 1, "b2": 1, "b3": 1, "x": 1, "y": 1}


@pytest.mark.parametrize("face", ["blocking", "awaited"])
@pytest.mark.parametrize("holder", ["start", "start_async"])
def test_a_start_many_ahead_of_a_queued_start_of_one_of_its_ids_does_not_wait_for_it(
    setup: Callable[..., Setup], face: str, holder: str
) -> None:
    # The batch had its room, then waited ask_timeout (30 s by default) for the claim of
    # a start queued behind it for room: one it could go past at once.
    s = setup(3, 3600.0)
    for wid in ("b1", "b2", "b3"):
        s.rt.start("w", workflow_id=wid)
    items = [{"workflow": "w", "workflow_id": wid} for wid in ("x", "y")]
    many, many_out = in_thread(
        (lambda: s.rt.start_many(items, timeout=WAIT))
        if face == "blocking"
        else (lambda: asyncio.run(s.rt.start_many_async(items, timeout=WAIT)))
    )
    assert s.queue.joined.acquire(timeout=WAIT)  # the batch waits for two slots
    one, one_out = in_thread(
        (lambda: s.rt.start("w", workflow_id="x", timeout=WAIT))
        if holder == "start"
        else (lambda: asyncio.run(s.rt.start_async("w", workflow_id="x", timeout=WAIT)))
    )
    assert s.queue.joined.acquire(timeout=WAIT)  # queued behind it, holding x's claim
    s.go.release()
    s.go.release()  # two end: the batch has its slots and goes past x's claim
    many.join(WAIT)
    assert not many.is_alive(), "the batch waited for the claim of a start behind it"
    assert [h.id for h in many_out[0]] == ["x", "y"], many_out
    s.go.release()  # the third ends: its slot goes to the start of x, which exists
    one.join(WAIT)
    assert one_out[0].id == "x", one_out
    s.go.release()
    s.go.release()
    assert s.rt.handle("y").result(timeout=WAIT) == {"s": "y"}
    assert s.rt.handle("x").result(timeout=WAIT) == {"s": "x"}
    assert s.halts() == 0
    assert s.runs == {"b1": 1, "b2": 1, "b3": 1, "x": 1, "y": 1}


def test_a_queued_start_whose_commit_is_late_keeps_its_claim_until_the_commit_is_decided(
    setup: Callable[..., Setup],
) -> None:
    # A start() handed a slot while queued gave its id's claim back when it stopped
    # waiting for a late commit (ask_timeout), though that commit was still on its way:
    # a retry, as the error invites, then held the claim alone, was taken up early and
    # its creation failed behind the first, halting the Scheduler's writes.
    s = setup(1)
    stalling, unstall = threading.Event(), threading.Event()

    def stall() -> None:
        if stalling.is_set():
            assert unstall.wait(WAIT)

    s.rt.start("w", workflow_id="first")
    first, first_out = in_thread(lambda: s.rt.start("w", workflow_id="x", timeout=WAIT))
    assert s.queue.joined.acquire(timeout=WAIT)  # queued for room, holding x's claim
    store_of(s.rt).writer.fault = stall
    stalling.set()
    s.go.release()  # "first" ends: x is handed its slot; both commits stall
    first.join(WAIT)
    assert isinstance(first_out[0], TimeoutError), first_out  # x's commit is undecided
    retry, retry_out = in_thread(lambda: s.rt.start("w", workflow_id="x", timeout=WAIT))
    assert s.queue.joined.acquire(timeout=WAIT)  # (after the claim's ask_timeout, if kept)
    unstall.set()
    s.go.release()  # x ends: its slot goes to the retry, whose creation finds x
    retry.join(WAIT)
    assert not isinstance(retry_out[0], BaseException), str(retry_out[0])
    assert retry_out[0].id == "x"
    assert s.halts() == 0
    assert s.rt.handle("x").result(timeout=WAIT) == {"s": "x"}
    assert s.runs == {"first": 1, "x": 1}


class _Held:
    """``rt._defining``, telling the test once a thread took it."""

    def __init__(self, lock: Any) -> None:
        self.lock, self.taken = lock, threading.Event()

    def __enter__(self) -> None:
        self.lock.acquire()
        self.taken.set()

    def __exit__(self, *exc: object) -> None:
        self.lock.release()


def test_add_workflow_while_the_writer_hands_a_slot_to_a_first_start_does_not_deadlock(
    setup: Callable[..., Setup],
) -> None:
    # add_workflow held rt._defining while it waited for the store writer to commit the
    # definition; the writer, handing a freed slot to a queued start (its definition's
    # first here, which writes the started mark under rt._defining), waited for that
    # lock: every commit stalled until add_workflow gave up at ask_timeout.
    s = setup(1, 5.0)
    s.rt.add_workflow(Workflow("v").step("s", agent="gate", action="work"))
    stalling, stalled, unstall = threading.Event(), threading.Event(), threading.Event()

    def stall() -> None:
        if stalling.is_set():
            stalled.set()
            assert unstall.wait(WAIT)

    s.rt.start("w", workflow_id="first")
    store_of(s.rt).writer.fault = stall
    stalling.set()
    s.go.release()  # "first" ends; its final commit stalls
    assert stalled.wait(WAIT)  # (decided: no start waits to take its slot early)
    queued, queued_out = in_thread(lambda: s.rt.start("v", workflow_id="q", timeout=WAIT))
    assert s.queue.joined.acquire(timeout=WAIT)  # q waits for first's slot
    defining = s.rt._defining = _Held(s.rt._defining)  # type: ignore[assignment]
    u = Workflow("u").step("s", agent="gate", action="work")
    adding, adding_out = in_thread(lambda: s.rt.add_workflow(u))
    assert defining.taken.wait(WAIT)  # add_workflow queues its write (and held on to it)
    stalling.clear()
    unstall.set()  # first's final lands; the writer hands its slot to q
    adding.join(WAIT)
    assert adding_out == [None], adding_out
    s.go.release()
    queued.join(WAIT)
    assert queued_out[0].result(timeout=WAIT) == {"s": "q"}
