"""What many seeds of a simulation did, added up: shared by the threaded and the exact
simulation's tests, which check that their seeds really exercise every kind of fault."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from herder.runtime.testing import SimReport


@dataclass
class Tally:
    seeds: int = 0
    faults: Counter[str] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)
    operator: Counter[str] = field(default_factory=Counter)  # actions and clock steps
    store_faults: int = 0
    stale: int = 0
    refused: int = 0
    restarts: int = 0
    scheduler_crashes: int = 0
    fired: int = 0

    def add(self, report: SimReport) -> None:
        self.seeds += 1
        self.faults += report.faults
        self.outcomes.update(report.workflows.values())
        self.operator.update(done.split()[1] for done in report.operator)
        self.store_faults += report.store_faults
        self.stale += report.stale
        self.refused += report.refused
        self.restarts += report.restarts
        self.scheduler_crashes += report.scheduler_crashes
        self.fired += report.fired

    def __str__(self) -> str:
        return (
            f"{self.seeds} seeds, outcomes {dict(self.outcomes)}, faults {dict(self.faults)}, "
            f"store faults {self.store_faults}, stale answers dropped {self.stale}, "
            f"stale requests the service refused {self.refused}, "
            f"restarts {self.restarts}, scheduler crashes {self.scheduler_crashes}, "
            f"schedule firings {self.fired}, operator {dict(self.operator)}"
        )

    def assert_every_fault_met(self, also: frozenset[str] = frozenset()) -> None:
        """The schedule really exercised every kind of fault (meaningful from ~50 seeds);
        ``also``: the kinds only this simulation injects."""
        assert set(self.faults) == {"raise", "lost", "hang", "crash", "permanent", *also}
        assert self.store_faults > 0
        assert self.stale > 0  # hung attempts answered after being superseded
        assert self.restarts > 0
        assert self.scheduler_crashes > 0
        assert {"SUCCEEDED", "COMPENSATED", "CANCELLED", "ABANDONED"} <= set(self.outcomes)
        assert {"cancel", "abandon", "step_wall"} <= set(self.operator)


def run_seeds(
    simulate: Callable[[int, Path], SimReport], seeds: Iterable[int], root: Path, test: str
) -> Tally:
    """Run every seed in its own store below ``root``; fail at the first seed that broke
    an expectation, saying how to replay it (``test`` is the test file)."""
    tally = Tally()
    for seed in seeds:
        report = simulate(seed, root / f"seed-{seed}")
        assert report.problems == [], (
            f"simulation seed {seed} failed; reproduce with HERDER_SIM_SEED={seed} "
            f"pytest {test}\n" + "\n".join(report.problems)
        )
        tally.add(report)
    return tally
