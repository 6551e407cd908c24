"""The loop inbox (issue 16): how the runtime's threads hand calls to an event loop. Many
calls queued at once wake the loop once and run in order, at most ``BATCH`` per loop turn,
so herder's work in one turn stays bounded whatever the number of workflows in flight."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from herder.actors._event_loop import EventLoop, LoopInbox, inbox


class CountingLoop(asyncio.SelectorEventLoop):
    """A loop that numbers its turns and counts its thread-safe wake-ups."""

    def __init__(self) -> None:
        super().__init__()
        self.turn = 0
        self.wakeups = 0

    def _run_once(self) -> None:
        self.turn += 1
        super()._run_once()  # type: ignore[misc]

    def call_soon_threadsafe(self, *args: Any, **kwargs: Any) -> Any:
        self.wakeups += 1
        return super().call_soon_threadsafe(*args, **kwargs)


def test_many_calls_from_a_thread_wake_the_loop_once_and_run_in_bounded_batches() -> None:
    loop = CountingLoop()
    try:
        box, n = inbox(loop), 5 * LoopInbox.BATCH + 3
        assert inbox(loop) is box  # one per loop
        ran: list[tuple[int, int]] = []
        done = loop.create_future()

        def record(i: int) -> None:
            ran.append((loop.turn, i))
            if i == n - 1:
                done.set_result(None)

        queuing = threading.Thread(target=lambda: [box.call(record, i) for i in range(n)])
        queuing.start()
        queuing.join(30)
        loop.run_until_complete(asyncio.wait_for(done, 30))
    finally:
        loop.close()
    assert [i for _, i in ran] == list(range(n))  # all of them, in order
    per_turn: dict[int, int] = {}
    for turn, _ in ran:
        per_turn[turn] = per_turn.get(turn, 0) + 1
    assert max(per_turn.values()) == LoopInbox.BATCH
    assert len(per_turn) == 6  # five full batches and the last three, one turn each
    assert loop.wakeups == 1  # one write to the self-pipe for all of them


def test_a_failing_call_is_reported_and_the_others_still_run() -> None:
    loop = asyncio.new_event_loop()
    reported: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: reported.append(context))
    try:
        ran: list[int] = []

        def fail() -> None:
            raise ValueError("boom")

        box, done = inbox(loop), loop.create_future()
        box.call(ran.append, 1)
        box.call(fail)
        box.call(ran.append, 2)
        box.call(done.set_result, None)
        loop.run_until_complete(asyncio.wait_for(done, 30))
    finally:
        loop.close()
    assert ran == [1, 2]
    assert [type(c["exception"]) for c in reported] == [ValueError]


def test_a_closed_loop_refuses_calls() -> None:
    loop = asyncio.new_event_loop()
    loop.close()
    with pytest.raises(RuntimeError):
        inbox(loop).call(print)


def test_a_loop_closed_with_a_drain_pending_refuses_later_calls_and_holds_nothing() -> None:
    """The loop closed between a call's wake-up and its drain (the application's
    ``asyncio.run`` ending as a runtime thread hands it a call): that drain never runs,
    and a later call must be refused like any call to a closed loop, not queued for good
    (its caller would think it delivered, and the queue would keep what it refers to)."""
    loop = asyncio.new_event_loop()
    box = inbox(loop)
    box.call(print, "never run")  # a drain is scheduled on the loop ...
    loop.close()  # ... which closes before running it
    with pytest.raises(RuntimeError):
        box.call(print, "after the close")
    assert not box._calls  # nothing kept for a loop that will never run it


def test_an_attempt_sent_to_a_loop_closed_with_a_drain_pending_is_refused() -> None:
    """EventLoop.submit says None (the host frees the slot) rather than an attempt that
    will never run, and closes the coroutine (never left un-awaited)."""
    loop = asyncio.new_event_loop()
    owner = EventLoop(loop)
    inbox(loop).call(print, "never run")
    loop.close()

    async def attempt() -> None:
        raise AssertionError("ran on a closed loop")

    coro = attempt()
    assert owner.submit(coro) is None
    assert coro.cr_frame is None  # closed
