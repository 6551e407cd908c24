"""The fake clock runs timers in due order and only when advanced."""

import pytest

from herder.actors import FakeClock


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
    with pytest.raises(ValueError, match="backwards"):
        FakeClock().advance(-1)
