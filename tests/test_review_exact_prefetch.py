"""Adversarial review of reserve-ahead in the exact simulation (hot-path.md §6): with the
runtime's default prefetch (7) a seed still gives one history, byte for byte, and meets
every expectation. The exact simulation's own determinism tests run prefetch=0."""

from __future__ import annotations

import pathlib
from typing import Any

import pytest

from herder.actors._ahead import Lanes
from herder.runtime.testing import FaultSchedule, simulate_exact


def _eventful_seeds(count: int) -> list[int]:
    """Seeds whose process crashes mid-round, whose Scheduler crashes too and whose
    first attempt hangs (``test_model_sim``'s eventful seed and the next ones like it)."""
    return [
        s
        for s in range(1000)
        if FaultSchedule(s).process_crash_step() is not None
        and FaultSchedule(s).scheduler_crash_at() is not None
        and FaultSchedule(s).attempt_fault(f"s{s}-0", "a", 1, False) == "hang"
    ][:count]


@pytest.mark.timeout(300)
def test_with_prefetch_a_seed_run_twice_gives_the_same_history(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reserved = [0]
    reserve_ahead = Lanes.reserve_ahead

    def counted(self: Lanes, *args: Any) -> bool:
        ahead = reserve_ahead(self, *args)
        reserved[0] += ahead
        return ahead

    monkeypatch.setattr(Lanes, "reserve_ahead", counted)
    for seed in _eventful_seeds(5):
        first = simulate_exact(seed, tmp_path / f"a{seed}", prefetch=7)
        second = simulate_exact(seed, tmp_path / f"b{seed}", prefetch=7)
        assert first.problems == second.problems == [], seed
        assert "\n".join(first.trace).encode() == "\n".join(second.trace).encode(), seed
        assert any(line.startswith("crash ") for line in first.trace), seed
    assert reserved[0] > 0  # these seeds did reserve attempts ahead
