"""Review of the early hand-on of an ending workflow's slot (runtime/_capacity.py
``_pass_on``, commits f414773 and 8024ae5): defects, each shown by a test that fails on
main."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from herder.runtime import Runtime
from test_capacity_queue import WAIT, _Queue, gated, in_thread  # noqa: F401


@pytest.mark.timeout(60)
def test_a_start_handed_an_ending_slot_is_not_created_twice_when_its_commit_lands_first(
    gated: tuple[Runtime, threading.Semaphore, _Queue],  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """_pass_on submits the queued start's creation and only then stores its Landing
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
    assert returned and returned[0] is not None, "the caller found no Landing: it creates again"
    assert len(creations) == 1, creations  # created once, by the hand-on
    assert rt.handle("second").result(timeout=WAIT) == {"s": "second"}
    assert rt._active == 0


@pytest.mark.timeout(60)
def test_a_start_many_waiting_for_a_slot_is_not_overtaken_by_a_start_queued_after_it(
    gated: tuple[Runtime, threading.Semaphore, _Queue],  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Slots go to starts in the order they came (8024ae5), but start_many waits beside
    the queue (``_wait_capacity``: for ``_active`` to fall), and an ending workflow's slot
    now goes to the oldest *queued* start on the Scheduler's thread before ``_active``
    ever falls (``_pass_on``): under a steady stream of start() calls a waiting
    start_many never sees a free slot, however long it waited (here: one that waited
    first loses the slot to a start() that came after it)."""
    from herder.runtime.testing import wait_until

    rt, go, queue = gated
    wait_capacity, many_waits = rt._wait_capacity, threading.Event()

    def waiting(*args: Any, **kwargs: Any) -> None:
        many_waits.set()
        wait_capacity(*args, **kwargs)

    monkeypatch.setattr(rt, "_wait_capacity", waiting)
    batch = [{"workflow": "w", "workflow_id": "many"}]
    many, many_out = in_thread(lambda: rt.start_many(batch, timeout=WAIT))
    assert many_waits.wait(WAIT)  # the start_many waits for the one slot...
    single, single_out = in_thread(lambda: rt.start("w", workflow_id="single", timeout=WAIT))
    assert queue.joined.acquire(timeout=WAIT)  # ... and a start() came after it
    go.release()  # "first" ends: its slot is the start_many's, which waited longest
    exists = rt._store.get_workflow
    wait_until(rt, lambda: exists("many") is not None or exists("single") is not None, WAIT)
    created_first = [wid for wid in ("many", "single") if exists(wid) is not None]
    for _ in range(3):
        go.release()
    many.join(WAIT)
    single.join(WAIT)
    assert created_first == ["many"], f"{created_first} took the slot of the oldest waiter"
