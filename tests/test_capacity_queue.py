"""start() waiting for a slot under max_active_workflows: queued, and created by the
thread that frees a slot (runtime/_capacity.py), so its caller wakes once."""

from __future__ import annotations

import asyncio
import collections
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from herder.runtime import (
    Agent,
    Runtime,
    RuntimeClosed,
    StepContext,
    UnknownWorkflow,
    Workflow,
    _capacity,
)
from herder.runtime.testing import FakeClock

WAIT = 30.0


class _Queue(collections.deque):  # type: ignore[type-arg]
    """The runtime's queue of waiting starts, telling the test each one that joins."""

    def __init__(self) -> None:
        super().__init__()
        self.joined = threading.Semaphore(0)

    def append(self, item: Any) -> None:
        super().append(item)
        self.joined.release()


class Gate(Agent):
    """Holds each attempt until the test opens the gate for it."""

    def __init__(self, go: threading.Semaphore, entered: threading.Semaphore) -> None:
        self.go, self.entered = go, entered

    def work(self, ctx: StepContext) -> str:
        self.entered.release()
        assert self.go.acquire(timeout=WAIT)
        return ctx.workflow_id


@pytest.fixture
def gated(tmp_path: Path) -> Iterator[tuple[Runtime, threading.Semaphore, _Queue]]:
    go, entered = threading.Semaphore(0), threading.Semaphore(0)
    with Runtime(tmp_path / "s", clock=FakeClock(), max_active_workflows=1) as rt:
        rt.add_agent("gate", lambda: Gate(go, entered), concurrency=4)
        rt.add_workflow(Workflow("w").step("s", agent="gate", action="work"))
        queue = rt._queued = _Queue()
        rt.start("w", workflow_id="first")
        assert entered.acquire(timeout=WAIT)  # the one slot is taken
        yield rt, go, queue


def in_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    """Run ``fn`` on a thread; what it returned or raised lands in the list."""
    out: list[Any] = []

    def run() -> None:
        try:
            out.append(fn())
        except BaseException as exc:
            out.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


@pytest.mark.timeout(60)
def test_queued_starts_are_created_in_order_by_the_thread_that_freed_the_slot(
    gated: tuple[Runtime, threading.Semaphore, _Queue], monkeypatch: pytest.MonkeyPatch
) -> None:
    rt, go, queue = gated
    creators: list[tuple[str, str]] = []
    submit = rt._submit_start

    def recorded(new: Any, *args: Any, **kwargs: Any) -> Any:
        creators.append((new.workflow_id, threading.current_thread().name))
        return submit(new, *args, **kwargs)

    monkeypatch.setattr(rt, "_submit_start", recorded)
    callers = []
    for wid in ("second", "third"):
        callers.append(in_thread(lambda wid=wid: rt.start("w", workflow_id=wid, timeout=WAIT)))
        assert queue.joined.acquire(timeout=WAIT)
    for _ in range(3):
        go.release()
    for thread, out in callers:
        thread.join(WAIT)
        assert not isinstance(out[0], BaseException), out
    assert [rt.handle(w).result(timeout=WAIT)["s"] for w in ("second", "third")] == [
        "second",
        "third",
    ]
    assert [wid for wid, _ in creators] == ["second", "third"]  # oldest first
    caller_threads = {thread.name for thread, _ in callers}
    assert not caller_threads & {name for _, name in creators}  # not their callers'


@pytest.mark.timeout(60)
def test_a_queued_start_that_times_out_is_never_created(
    gated: tuple[Runtime, threading.Semaphore, _Queue],
) -> None:
    rt, go, queue = gated
    with pytest.raises(TimeoutError, match="max_active_workflows=1"):
        rt.start("w", workflow_id="late", timeout=0.05)
    assert not queue
    thread, out = in_thread(lambda: rt.start("w", workflow_id="next", timeout=WAIT))
    assert queue.joined.acquire(timeout=WAIT)  # the second one queued (the first is gone)
    go.release()
    go.release()
    thread.join(WAIT)
    assert not isinstance(out[0], BaseException), out
    assert rt.handle("next").result(timeout=WAIT) == {"s": "next"}
    with pytest.raises(UnknownWorkflow):
        rt.status("late")


@pytest.mark.timeout(60)
def test_a_queued_start_whose_creation_fails_hears_why_and_the_next_gets_the_slot(
    gated: tuple[Runtime, threading.Semaphore, _Queue], monkeypatch: pytest.MonkeyPatch
) -> None:
    rt, go, queue = gated
    creation = rt._creation

    def failing(new: Any, *args: Any, **kwargs: Any) -> Any:
        if new.workflow_id == "doomed":
            raise OSError("no room for it")
        return creation(new, *args, **kwargs)

    monkeypatch.setattr(rt, "_creation", failing)
    doomed, doomed_out = in_thread(lambda: rt.start("w", workflow_id="doomed", timeout=WAIT))
    assert queue.joined.acquire(timeout=WAIT)
    fine, fine_out = in_thread(lambda: rt.start("w", workflow_id="fine", timeout=WAIT))
    assert queue.joined.acquire(timeout=WAIT)
    go.release()  # "first" ends: its slot goes to "doomed", whose creation raises...
    doomed.join(WAIT)
    assert isinstance(doomed_out[0], OSError)
    assert "no room" in str(doomed_out[0])
    go.release()  # ... and on to "fine"
    fine.join(WAIT)
    assert not isinstance(fine_out[0], BaseException), fine_out
    assert rt.handle("fine").result(timeout=WAIT) == {"s": "fine"}
    after = rt.start("w", workflow_id="after", timeout=1.0)  # no slot was lost
    go.release()
    assert after.result(timeout=WAIT) == {"s": "after"}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("face", ["start", "start_many", "start_async"])
def test_starts_queued_when_the_runtime_stops_hear_it_stopped_and_that_nothing_was_written(
    gated: tuple[Runtime, threading.Semaphore, _Queue], face: str
) -> None:
    # They heard what a result() waiter hears: "the workflow is durable and goes on under
    # the next runtime", of a start that was never written (so never retried).
    rt, go, queue = gated
    call = {
        "start": lambda: rt.start("w", workflow_id="never", timeout=WAIT),
        "start_many": lambda: rt.start_many([{"workflow": "w", "workflow_id": "never"}]),
        "start_async": lambda: asyncio.run(rt.start_async("w", workflow_id="never")),
    }[face]
    thread, out = in_thread(call)
    assert queue.joined.acquire(timeout=WAIT)
    # "first" still runs: ended, its slot would go to "never" before stop() is called.
    rt.stop()  # (its worker is abandoned after a second)
    go.release()
    thread.join(WAIT)
    assert isinstance(out[0], RuntimeClosed), out
    assert "nothing of it was written" in str(out[0])
    assert "durable" not in str(out[0])


@pytest.mark.timeout(150)
@pytest.mark.parametrize("face", ["start", "start_many", "start_async"])
def test_starts_queued_when_a_draining_stop_begins_are_refused_at_once_not_after_it(
    gated: tuple[Runtime, threading.Semaphore, _Queue], face: str
) -> None:
    # They waited out the drain (up to run_forever's 30 s) for a refusal that was certain,
    # as start() refuses from the stop() call on, and heard "the runtime is stopping" with
    # no word of whether they were written.
    rt, go, queue = gated
    call = {
        "start": lambda: rt.start("w", workflow_id="never"),
        "start_many": lambda: rt.start_many([{"workflow": "w", "workflow_id": "never"}]),
        "start_async": lambda: asyncio.run(rt.start_async("w", workflow_id="never")),
    }[face]
    thread, out = in_thread(call)
    assert queue.joined.acquire(timeout=WAIT)
    stopping, _ = in_thread(lambda: rt.stop(timeout=2 * WAIT, drain=True))
    try:
        thread.join(WAIT / 3)  # while "first" still runs (its gate gives up after WAIT)
        assert not thread.is_alive(), "the queued start still waits while the stop drains"
        # A start during the drain is refused too, saying what to do (it said only "the
        # runtime is stopping (stop() was called)").
        with pytest.raises(RuntimeClosed, match=r"stopping .*open a new Runtime"):
            rt.start("w", workflow_id="late")
    finally:
        go.release()
        stopping.join(WAIT)
    assert isinstance(out[0], RuntimeClosed), out
    assert "nothing of it was written" in str(out[0])
    assert not stopping.is_alive()


@pytest.mark.timeout(60)
def test_a_queued_start_handed_a_slot_hears_when_its_commit_is_not_decided_in_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    go, entered = threading.Semaphore(0), threading.Semaphore(0)
    with Runtime(tmp_path / "s", clock=FakeClock(), max_active_workflows=1, ask_timeout=0.3) as rt:
        rt.add_agent("gate", lambda: Gate(go, entered), concurrency=4)
        rt.add_workflow(Workflow("w").step("s", agent="gate", action="work"))
        queue = rt._queued = _Queue()
        rt.start("w", workflow_id="first")
        assert entered.acquire(timeout=WAIT)
        # Its creation is handed to a writer that never answers (a stalled disk, say).
        monkeypatch.setattr(rt, "_submit_start", lambda *args, **kwargs: None)
        thread, out = in_thread(lambda: rt.start("w", workflow_id="stuck"))  # no timeout
        assert queue.joined.acquire(timeout=WAIT)
        go.release()
        thread.join(WAIT)
        assert isinstance(out[0], TimeoutError), out
        assert "ask_timeout" in str(out[0])


def _hold_hand_off(rt: Runtime, monkeypatch: pytest.MonkeyPatch) -> tuple[threading.Event, ...]:
    """Stop the first thread that frees a slot between freeing it and handing it to the
    queued starts (where a start arriving then used to take it): (there, go on)."""
    there, go_on = threading.Event(), threading.Event()
    hand_off = rt._hand_off
    # (Not handed on as it ends: a start queued after the Scheduler decided the end.)
    monkeypatch.setattr(rt, "_pass_on", lambda workflow_id: None)

    def held() -> None:
        if not there.is_set():
            there.set()
            assert go_on.wait(WAIT)
        hand_off()

    monkeypatch.setattr(rt, "_hand_off", held)
    return there, go_on


@pytest.mark.timeout(60)
@pytest.mark.parametrize("face", ["start", "start_async"])
def test_a_start_arriving_as_a_slot_frees_does_not_take_it_from_a_queued_one(
    gated: tuple[Runtime, threading.Semaphore, _Queue], monkeypatch: pytest.MonkeyPatch, face: str
) -> None:
    rt, go, queue = gated
    there, go_on = _hold_hand_off(rt, monkeypatch)
    thread, out = in_thread(lambda: rt.start("w", workflow_id="queued", timeout=WAIT))
    assert queue.joined.acquire(timeout=WAIT)
    go.release()  # "first" ends: its slot is free, not yet handed to "queued"
    assert there.wait(WAIT)
    late: Callable[[], Any] = lambda: rt.start("w", workflow_id="late", timeout=0)  # noqa: E731
    if face == "start_async":
        late = lambda: asyncio.run(rt.start_async("w", workflow_id="late", timeout=0))  # noqa: E731
    with pytest.raises(TimeoutError, match="max_active_workflows=1"):  # behind "queued"
        late()
    go_on.set()
    thread.join(WAIT)
    assert not isinstance(out[0], BaseException), out
    go.release()
    assert rt.handle("queued").result(timeout=WAIT) == {"s": "queued"}
    with pytest.raises(UnknownWorkflow):
        rt.status("late")


@pytest.mark.timeout(60)
def test_blocking_and_awaiting_starts_waiting_for_a_slot_get_it_in_the_order_they_came(
    gated: tuple[Runtime, threading.Semaphore, _Queue],
) -> None:
    rt, go, queue = gated
    awaiting, awaited = in_thread(
        lambda: asyncio.run(rt.start_async("w", workflow_id="awaiting", timeout=WAIT))
    )
    assert queue.joined.acquire(timeout=WAIT)  # the awaiting start waits in the one queue
    blocking, blocked = in_thread(lambda: rt.start("w", workflow_id="blocking", timeout=WAIT))
    assert queue.joined.acquire(timeout=WAIT)
    go.release()  # "first" ends: its slot goes to the oldest waiter, the awaiting one
    awaiting.join(WAIT)
    assert not isinstance(awaited[0], BaseException), awaited
    assert not blocked  # still waiting: its turn comes with the next free slot
    with pytest.raises(UnknownWorkflow):
        rt.status("blocking")
    go.release()  # "awaiting" ends: now "blocking"
    blocking.join(WAIT)
    assert not isinstance(blocked[0], BaseException), blocked
    go.release()
    assert rt.handle("blocking").result(timeout=WAIT) == {"s": "blocking"}
    assert rt.handle("awaiting").result(timeout=WAIT) == {"s": "awaiting"}


@pytest.mark.timeout(60)
def test_an_awaiting_start_cancelled_while_queued_leaves_the_queue_and_loses_no_slot(
    gated: tuple[Runtime, threading.Semaphore, _Queue],
) -> None:
    rt, go, queue = gated

    async def cancelled_while_queued() -> None:
        waiting = asyncio.ensure_future(rt.start_async("w", workflow_id="gone", timeout=WAIT))
        assert await asyncio.to_thread(queue.joined.acquire, True, WAIT)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting

    asyncio.run(cancelled_while_queued())
    assert not queue
    go.release()  # "first" ends: the slot is free for the next start, not for "gone"
    after = rt.start("w", workflow_id="after", timeout=WAIT)
    go.release()
    assert after.result(timeout=WAIT) == {"s": "after"}
    with pytest.raises(UnknownWorkflow):
        rt.status("gone")


@pytest.mark.timeout(60)
def test_a_queued_start_is_created_in_the_commit_that_ends_the_workflow_it_waited_for(
    gated: tuple[Runtime, threading.Semaphore, _Queue], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its creation and first DISPATCHED join the final commit of the workflow whose
    slot it takes: one synced commit less per workflow while starts wait for room."""
    from herder.store import _writer

    monkeypatch.setattr(_writer, "MERGE_WAIT", 20.0)  # the creation waits for the engine's batch
    rt, go, queue = gated
    thread, out = in_thread(lambda: rt.start("w", workflow_id="second", timeout=WAIT))
    assert queue.joined.acquire(timeout=WAIT)
    before = rt.stats()["store"]["batches"]
    go.release()  # "first" ends, "second" is created and dispatched: one commit
    thread.join(WAIT)
    assert not isinstance(out[0], BaseException), out
    assert rt.status("second").steps["s"].state == "DISPATCHED"
    assert rt.stats()["store"]["batches"] == before + 1
    go.release()
    assert rt.handle("second").result(timeout=WAIT) == {"s": "second"}
    assert rt._active == 0  # each slot was given back once
    assert not rt._passed


@pytest.mark.timeout(60)
def test_a_start_handed_an_ending_slot_is_not_created_twice_when_its_commit_lands_first(
    gated: tuple[Runtime, threading.Semaphore, _Queue],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """_pass_on submitted the queued start's creation and only then stored its Landing
    (``queued.landing = rt._submit_start(...)``). The creation commits on its own after
    MERGE_WAIT (the Scheduler's batch comes only after its turn), so the writer can
    decide it (and wake the caller) while the Scheduler's thread is still inside
    _submit_start (preempted: the GIL, admit_early's put). The caller then reads
    ``landing`` None, takes it for "a slot was free after all" and creates the workflow a
    second time: a ConditionFailed creation (halts: fail-stop of the engine's batches,
    an Unadmit of the running workflow) whose failure gives back a slot never taken."""
    rt, go, queue = gated
    submit, queue_start = rt._submit_start, rt._queue_start
    creations: list[str] = []
    woke, returned = threading.Event(), []

    def slow_scheduler(new: Any, *args: Any, **kwargs: Any) -> Any:
        creations.append(threading.current_thread().name)
        landing = submit(new, *args, **kwargs)
        if len(creations) == 1:  # the hand-on: preempted before its caller stores landing
            rt._store.writer.flush(WAIT)  # the creation is decided (alone)
            assert woke.wait(WAIT)  # and its caller woke meanwhile
        return landing

    def watched(*args: Any, **kwargs: Any) -> Any:
        try:
            out = queue_start(*args, **kwargs)
            returned.append(out)
            return out
        finally:
            woke.set()

    monkeypatch.setattr(rt, "_submit_start", slow_scheduler)
    monkeypatch.setattr(rt, "_queue_start", watched)
    thread, out = in_thread(lambda: rt.start("w", workflow_id="second", timeout=WAIT))
    assert queue.joined.acquire(timeout=WAIT)
    go.release()  # "first" ends: its slot goes on to "second" on the Scheduler's thread
    thread.join(WAIT)
    for _ in range(3):  # (whatever runs may end: "second", "first" run again if refused)
        go.release()
    assert not isinstance(out[0], BaseException), out
    assert returned
    assert returned[0] is not None, "the caller found no Landing: it creates again"
    assert len(creations) == 1, creations  # created once, by the hand-on
    assert rt.handle("second").result(timeout=WAIT) == {"s": "second"}
    assert rt._active == 0


@pytest.mark.timeout(90)
def test_a_start_many_waiting_for_room_is_not_overtaken_by_a_start_queued_after_it(
    gated: tuple[Runtime, threading.Semaphore, _Queue],
) -> None:
    """A start_many waits for its slots in the one queue: it used to wait beside it for
    ``_active`` to fall, and each slot went to the queued start() first (on the
    Scheduler's thread before ``_active`` ever fell), so under a stream of start() calls
    a waiting start_many never saw room."""
    rt, go, queue = gated
    batch = [{"workflow": "w", "workflow_id": "many"}]
    many, many_out = in_thread(lambda: rt.start_many(batch, timeout=WAIT))
    assert queue.joined.acquire(timeout=WAIT)  # the start_many queued first...
    single, single_out = in_thread(lambda: rt.start("w", workflow_id="single", timeout=WAIT))
    assert queue.joined.acquire(timeout=WAIT)  # ... and a start() after it
    go.release()  # "first" ends: its slot is the start_many's
    many.join(WAIT)
    assert not isinstance(many_out[0], BaseException), many_out
    assert rt._store.get_workflow("single") is None  # waiting for "many" to end
    for _ in range(2):
        go.release()
    single.join(WAIT)
    assert not isinstance(single_out[0], BaseException), single_out
    assert rt.handle("single").result(timeout=WAIT) == {"s": "single"}
    assert rt._active == 0


class _Interrupted:
    """A stand-in for the lock a waiting start sleeps on: its wait is interrupted, as
    Ctrl-C interrupts a blocked main thread (KeyboardInterrupt out of ``acquire``)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        if self._lock.acquire(blocking=False):  # (taken at once by its maker)
            return True
        raise KeyboardInterrupt

    def release(self) -> None:
        self._lock.release()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("call", ["start", "start_many"])
def test_a_start_interrupted_while_it_waits_for_room_gives_its_place_up(
    gated: tuple[Runtime, threading.Semaphore, _Queue],
    monkeypatch: pytest.MonkeyPatch,
    call: str,
) -> None:
    """Left in the queue, an interrupted start_many() was later handed the slot that
    freed, and nobody took it: one slot less for good. An interrupted start() was created
    later by the thread that freed a slot, though its caller was told it failed."""
    rt, go, queue = gated
    monkeypatch.setattr(_capacity, "threading", SimpleNamespace(Lock=_Interrupted))
    calls = {
        "start": lambda: rt.start("w", workflow_id="late", timeout=WAIT),
        "start_many": lambda: rt.start_many([{"workflow": "w", "workflow_id": "late"}]),
    }
    with pytest.raises(KeyboardInterrupt):
        calls[call]()
    monkeypatch.undo()
    assert not queue  # nothing waits in its name
    go.release()  # "first" ends: its slot frees
    assert rt.handle("first").result(timeout=WAIT) == {"s": "first"}
    queue.joined = threading.Semaphore(0)
    nxt, out = in_thread(lambda: rt.start("w", workflow_id="next", timeout=WAIT))
    nxt.join(WAIT)
    assert [h.id for h in out] == ["next"]  # the freed slot was there to take
    go.release()
    assert rt.handle("next").result(timeout=WAIT) == {"s": "next"}
    with pytest.raises(UnknownWorkflow):
        rt.status("late")


@pytest.mark.timeout(60)
def test_a_start_many_that_waited_for_room_is_created_when_it_got_it(
    gated: tuple[Runtime, threading.Semaphore, _Queue],
) -> None:
    """As a queued start(): its record was stamped with the time of the call, so its age,
    and any latency reckoned from it, counted the wait for room."""
    rt, go, queue = gated
    clock = rt._clock
    assert isinstance(clock, FakeClock)
    many, out = in_thread(lambda: rt.start_many([{"workflow": "w", "workflow_id": "late"}]))
    assert queue.joined.acquire(timeout=WAIT)  # it waits for room
    called = clock.time()
    clock.advance(60.0)
    go.release()  # "first" ends: its slot goes to the batch
    many.join(WAIT)
    assert [h.id for h in out[0]] == ["late"]
    assert rt.status("late").created == called + 60.0
    go.release()
    assert rt.handle("late").result(timeout=WAIT) == {"s": "late"}
