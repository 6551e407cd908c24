"""``OneShot``: the one-time hand-over a start's commit and a workflow's end use instead
of a ``concurrent.futures.Future``."""

from __future__ import annotations

import asyncio
import threading

import pytest

from herder.runtime._waits import OneShot


def test_the_first_resolution_wins_and_a_blocked_waiter_gets_it() -> None:
    shot: OneShot[int] = OneShot()
    got: list[int] = []
    waiter = threading.Thread(target=lambda: got.append(shot.wait(30)))
    waiter.start()
    shot.set(1)
    shot.set(2)
    shot.fail(RuntimeError("late"))
    waiter.join(30)
    assert got == [1]
    assert shot.wait(0) == 1  # a second wait returns at once, the same value


def test_an_error_is_raised_to_the_waiter_and_an_unresolved_wait_times_out() -> None:
    shot: OneShot[int] = OneShot()
    with pytest.raises(TimeoutError):
        shot.wait(0.01)
    shot.fail(ValueError("no"))
    with pytest.raises(ValueError, match="no"):
        shot.wait(1)


def test_a_waiter_on_a_loop_is_woken_from_another_thread_and_may_time_out() -> None:
    async def main() -> tuple[int, bool]:
        shot: OneShot[int] = OneShot(asyncio.get_running_loop())
        try:
            await shot.wait_async(0.01)
            timed_out = False
        except TimeoutError:
            timed_out = True
        threading.Thread(target=shot.set, args=(7,)).start()
        return await shot.wait_async(30), timed_out  # a timeout left it usable

    assert asyncio.run(main()) == (7, True)


def test_a_loop_waiter_resolved_before_it_waits_returns_even_with_no_time_to_wait() -> None:
    """Resolved from another thread, the loop has not yet run the wake-up it was sent:
    ``wait_async(0)`` returns the value, as ``wait(0)`` does (it timed out before)."""

    async def main() -> tuple[int, int]:
        ok: OneShot[int] = OneShot(asyncio.get_running_loop())
        bad: OneShot[int] = OneShot(asyncio.get_running_loop())
        resolver = threading.Thread(target=lambda: (ok.set(3), bad.fail(ValueError("no"))))
        resolver.start()
        resolver.join(30)
        got = await ok.wait_async(0)
        with pytest.raises(ValueError, match="no"):
            await bad.wait_async(0)
        return got, await ok.wait_async(0)

    assert asyncio.run(main()) == (3, 3)
