"""The fake clock runs timers in due order and only when advanced."""

import threading

import pytest

from herder.actors import FakeClock
from herder.actors._clock import MessageClock, SteadyClock, SystemClock
from herder.store import InvalidInput


def test_fake_clock_runs_due_timers_in_order_when_advanced() -> None:
    clock = FakeClock(start=0.0)
    fired: list[tuple[str, float]] = []
    clock.call_later(2.0, lambda: fired.append(("b", clock.monotonic())))
    clock.call_later(1.0, lambda: fired.append(("a", clock.monotonic())))
    late = clock.call_later(5.0, lambda: fired.append(("late", clock.monotonic())))
    clock.advance(0.5)
    assert fired == []
    clock.advance(2.0)
    assert fired == [("a", 1.0), ("b", 2.0)]
    assert clock.monotonic() == 2.5
    late.cancel()
    clock.advance(10)
    assert fired == [("a", 1.0), ("b", 2.0)]


def test_fake_clock_refuses_to_go_backwards() -> None:
    with pytest.raises(InvalidInput, match="backwards"):
        FakeClock().advance(-1)


@pytest.mark.parametrize("seconds", [float("nan"), float("inf"), float("-inf")])
def test_fake_clock_refuses_no_time_and_fires_nothing(seconds: float) -> None:
    """advance(nan) ran every pending timer, however far off, and left the time as it
    was; advance(inf) moved the clock to infinity; step_wall took either, and every
    wall time read after it was nan or inf."""
    clock = FakeClock(start=0.0)
    fired: list[float] = []
    clock.call_later(3600.0, lambda: fired.append(clock.monotonic()))
    with pytest.raises(InvalidInput, match="finite"):
        clock.advance(seconds)
    with pytest.raises(InvalidInput, match="finite"):
        clock.step_wall(seconds)
    assert (fired, clock.monotonic(), clock.time(), clock.pending()) == ([], 0.0, 0.0, 1)


def test_the_system_clock_thread_ends_when_idle_and_comes_back_for_new_timers() -> None:
    # Regression: each stopped runtime used to leave its restart clock's thread behind
    # (found by the simulation: one more "herder-timers" thread per seed).
    clock = SystemClock(idle_exit=0.01)
    threads: list[threading.Thread] = []
    for _ in range(2):
        fired = threading.Event()

        def fire(fired: threading.Event = fired) -> None:
            threads.append(threading.current_thread())
            fired.set()

        clock.call_later(0.0, fire)
        assert fired.wait(5)
        threads[-1].join(timeout=5)
        assert not threads[-1].is_alive()
    assert threads[0] is not threads[1]


def test_a_message_clock_reads_the_time_once_per_message() -> None:
    fake = FakeClock(start=100.0)
    clock = MessageClock(fake)
    fake.advance(5.0)
    assert clock.time() == 100.0  # the instant the current message arrived
    assert clock.tick() == 105.0
    assert clock.time() == 105.0
    assert clock.monotonic() == 105.0  # monotonic and timers are the clock's own
    fired: list[float] = []
    clock.call_later(1.0, lambda: fired.append(fake.monotonic()))
    fake.advance(1.0)
    assert fired == [106.0]


def test_a_message_clock_over_a_steady_clock_reads_both_times_at_one_instant() -> None:
    fake = FakeClock(start=100.0)
    steady = SteadyClock(fake)
    clock = MessageClock(steady)
    fake.advance(2.0)
    fake.step_wall(30.0)  # the wall clock jumps: the steady time only slews towards it
    assert (clock.mono, clock.now) == (100.0, 100.0)  # as the last message arrived
    assert clock.tick() == pytest.approx(102.1)  # 2 s, plus at most 5% of them
    assert clock.mono == 102.0
    assert (clock.monotonic(), clock.time()) == (102.0, clock.now)
    fake.advance(1.0)
    assert clock.mono == 102.0  # until the next message


def test_a_timer_centuries_away_does_not_stop_the_system_clocks_thread() -> None:
    # A breaker's cool-down of 1e10 s (or a rate of 1e-10/s): once it was the only timer
    # left, the thread waited on it, raised OverflowError (past threading.TIMEOUT_MAX)
    # and died, and no timer ran again (the protection review, D5).
    clock = SystemClock(idle_exit=60.0)
    far = clock.call_later(1e10, lambda: None)
    first, second = threading.Event(), threading.Event()
    clock.call_later(0.01, first.set)
    assert first.wait(10)  # now the far timer is the only one: the thread waits on it
    clock.call_later(0.01, second.set)
    assert second.wait(10), "the clock's thread died waiting for the far timer"
    far.cancel()


def test_fake_clock_says_what_it_takes() -> None:
    # step_wall("5") raised a bare TypeError; FakeClock(start="x") was taken, and failed
    # at its first advance with "can only concatenate str"; a NaN start read as NaN.
    for bad in ("5", None, float("nan")):
        with pytest.raises(InvalidInput, match="finite number of seconds"):
            FakeClock().step_wall(bad)  # type: ignore[arg-type]
        with pytest.raises(InvalidInput, match="finite number of seconds"):
            FakeClock(start=bad)  # type: ignore[arg-type]
    clock = FakeClock(start=5)
    clock.step_wall(-2)
    assert (clock.monotonic(), clock.time()) == (5.0, 3.0)
