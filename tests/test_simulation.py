"""Deterministic simulation over many seeds (``herder.runtime.testing.simulate``).

Each seed runs a small workload on a real runtime under a fake clock and a seeded fault
schedule (errors, lost answers, hangs with late stale answers, instance crashes,
permanent failures, store write errors, a cancel, an abandon, a command queued while
the runtime is down for a restart, a wall-clock step of an hour either way, a Scheduler
crash) and
checks the outcome the schedule implies, the effects against the recorded states,
compensation order and ``herder check``. ``--sim-seeds N`` runs seeds 0..N-1 (default
200); ``HERDER_SIM_SEED=S`` runs only seed S, to reproduce a failure.
"""

from __future__ import annotations

import os
import pathlib
import tempfile
import time
from collections import Counter

import pytest

from herder.runtime.testing import FaultSchedule, simulate


def _scratch(tmp_path: pathlib.Path) -> pathlib.Path:
    # Stores on tmpfs when there is one: these runs test logic, not fsync.
    shm = pathlib.Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        return pathlib.Path(tempfile.mkdtemp(dir=shm, prefix="herder-sim-"))
    return tmp_path


@pytest.mark.timeout(180)
def test_the_simulation_holds_every_expectation_over_many_seeds(
    tmp_path: pathlib.Path, sim_seeds: list[int]
) -> None:
    root = _scratch(tmp_path)
    faults: Counter[str] = Counter()
    outcomes: Counter[str] = Counter()
    store_faults = stale = restarts = scheduler_crashes = fired = 0
    operator: Counter[str] = Counter()  # actions applied and clock steps, by kind
    started = time.monotonic()
    try:
        for seed in sim_seeds:
            report = simulate(seed, root / f"seed-{seed}")
            assert report.problems == [], (
                f"simulation seed {seed} failed; reproduce with HERDER_SIM_SEED={seed} "
                f"pytest tests/test_simulation.py\n" + "\n".join(report.problems)
            )
            faults += report.faults
            outcomes.update(report.workflows.values())
            store_faults += report.store_faults
            stale += report.stale
            restarts += report.restarts
            scheduler_crashes += report.scheduler_crashes
            fired += report.fired
            operator.update(done.split()[1] for done in report.operator)
    finally:
        if root != tmp_path:
            import shutil

            shutil.rmtree(root, ignore_errors=True)
    print(
        f"\nsimulation: {len(sim_seeds)} seeds in {time.monotonic() - started:.1f}s, "
        f"outcomes {dict(outcomes)}, faults {dict(faults)}, store faults {store_faults}, "
        f"stale answers dropped {stale}, restarts {restarts}, "
        f"scheduler crashes {scheduler_crashes}, schedule firings {fired}, "
        f"operator {dict(operator)}"
    )
    if len(sim_seeds) >= 50:  # the schedule really exercises every kind of fault
        assert set(faults) == {"raise", "lost", "hang", "crash", "permanent"}
        assert store_faults > 0
        assert stale > 0  # hung attempts answered after being superseded
        assert restarts > 0
        assert scheduler_crashes > 0
        assert fired > 0  # a schedule fired through these faults, each slot once
        assert {"SUCCEEDED", "COMPENSATED", "CANCELLED", "ABANDONED"} <= set(outcomes)
        assert {"cancel", "abandon", "step_wall"} <= set(operator)


def test_a_seed_decides_the_same_faults_every_time() -> None:
    a, b = FaultSchedule(7), FaultSchedule(7)
    draws = [(w, s, n, c) for w in ("x", "y") for s in "abcd" for n in (1, 2) for c in (0, 1)]
    assert [a.attempt_fault(*d) for d in draws] == [b.attempt_fault(*d) for d in draws]
    assert [a.store_fault(k) for k in range(50)] == [b.store_fault(k) for k in range(50)]
    other = FaultSchedule(8)
    assert [a.attempt_fault(*d) for d in draws] != [other.attempt_fault(*d) for d in draws]
