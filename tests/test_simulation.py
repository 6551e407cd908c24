"""The threaded simulation over many seeds (``herder.runtime.testing.simulate``): the
integration check of the real, threaded runtime. The exact simulator runs the same
schedule on one thread over many more seeds (``tests/test_model_sim.py``).

Each seed runs a small workload on a real runtime under a fake clock and a seeded fault
schedule (errors, lost answers, hangs with late stale answers, instance crashes,
permanent failures, store write errors, a cancel, an abandon, a command queued while
the runtime is down for a restart, a wall-clock step of an hour either way, a Scheduler
crash) and
checks the outcome the schedule implies, the effects against the recorded states,
compensation order and ``herder check``. ``--sim-seeds N`` runs seeds 0..N-1 (default
200; the odd ones at the runtime's default prefetch); ``HERDER_SIM_SEED=S`` runs only
seed S, to reproduce a failure (its faults exactly, its thread interleaving very likely).
"""

from __future__ import annotations

import pathlib
import time
from collections.abc import Callable

import pytest
from _sim_tally import run_seeds

from herder.runtime import InvalidInput
from herder.runtime._config import DEFAULT_PREFETCH
from herder.runtime.testing import FaultSchedule, SimReport, simulate, simulate_exact


@pytest.mark.timeout(180)
def test_the_simulation_holds_every_expectation_over_many_seeds(
    scratch: pathlib.Path, sim_seeds: list[int]
) -> None:
    started = time.monotonic()
    tally = run_seeds(_simulate, sim_seeds, scratch, "tests/test_simulation.py")
    print(f"\nsimulation: {tally} in {time.monotonic() - started:.1f}s")
    if len(sim_seeds) >= 50:  # the schedule really exercises every kind of fault
        tally.assert_every_fault_met(also=frozenset({"unhealthy"}))  # failed health checks
        assert tally.fired > 0  # a schedule fired through these faults, each slot once


def _simulate(seed: int, directory: pathlib.Path) -> SimReport:
    """Odd seeds run at the runtime's default prefetch (one instance per agent, so that
    attempts wait ahead of it), even ones with none (two instances)."""
    return simulate(seed, directory, prefetch=DEFAULT_PREFETCH if seed % 2 else 0)


def test_a_seed_decides_the_same_faults_every_time() -> None:
    a, b = FaultSchedule(7), FaultSchedule(7)
    draws = [(w, s, n, c) for w in ("x", "y") for s in "abcd" for n in (1, 2) for c in (0, 1)]
    assert [a.attempt_fault(*d) for d in draws] == [b.attempt_fault(*d) for d in draws]
    assert [a.store_fault(k) for k in range(50)] == [b.store_fault(k) for k in range(50)]
    checks = [(agent, n) for agent in ("alpha", "beta") for n in range(1, 7)]
    assert [a.health_fault(*c) for c in checks] == [b.health_fault(*c) for c in checks]
    assert not any(a.health_fault(agent, 5) for agent in ("alpha", "beta"))  # it heals
    other = FaultSchedule(8)
    assert [a.attempt_fault(*d) for d in draws] != [other.attempt_fault(*d) for d in draws]


@pytest.mark.parametrize("run", [simulate, simulate_exact], ids=["threaded", "exact"])
def test_a_simulation_refuses_a_directory_holding_a_store(
    scratch: pathlib.Path, run: Callable[[int, pathlib.Path], SimReport]
) -> None:
    """Run again on the directory of an earlier run, the threaded simulation reported
    broken expectations of a run that had none (the workflows it found were the
    earlier run's), and the exact one raised a ConditionFailed on a key."""
    assert run(7, scratch / "seed").problems == []
    with pytest.raises(InvalidInput, match="holds a store"):
        run(7, scratch / "seed")


@pytest.mark.parametrize("run", [simulate, simulate_exact], ids=["threaded", "exact"])
def test_a_simulation_says_which_argument_is_wrong(
    scratch: pathlib.Path, run: Callable[..., SimReport]
) -> None:
    """A schedule that is no FaultSchedule raised AttributeError from inside the run; a
    seed of None or "7" ran a history of its own, silently; a chance of 30 (meant as
    percent) made every fault an error; the exact simulation ran any prefetch."""
    wrong: list[tuple[dict[str, object], str]] = [
        ({"seed": None}, "seed must be an int"),
        ({"seed": "7"}, "seed must be an int"),
        ({"seed": True}, "seed must be an int"),
        ({"seed": 2**64}, r"seed must be an int from -2\*\*63 to 2\*\*64 - 1"),  # (EncodeError)
        ({"schedule": 7}, "schedule must be a FaultSchedule"),
        ({"prefetch": -1}, "prefetch must be an int in 0..64"),
        ({"prefetch": 1.5}, "prefetch must be an int in 0..64"),
        ({"directory": None}, "directory must be a path"),
        ({"directory": 7}, "directory must be a path"),
    ]
    for n, (given, message) in enumerate(wrong):
        arguments = {"seed": 7, "directory": scratch / f"s{n}", **given}
        with pytest.raises(InvalidInput, match=message):
            run(**arguments)
        assert not (scratch / f"s{n}").exists()  # refused at the door: no store made


def test_a_fault_schedule_says_which_setting_is_wrong() -> None:
    # transient_attempts=8 at rate 1 failed every attempt the workload makes of a step:
    # 9 seeds in 10 "broke" expectations that assume steps outlast their transient
    # faults ("s0-0: NEEDS_ATTENTION, expected CANCELLED"), false alarms.
    for field, value, message in [
        ("seed", 7.5, "seed must be an int"),
        ("rate", 30, "rate must be a chance from 0 to 1"),
        ("permanent_rate", -0.1, "permanent_rate must be a chance from 0 to 1"),
        ("store_rate", float("nan"), "store_rate must be a chance from 0 to 1"),
        ("health_rate", "0.2", "health_rate must be a chance from 0 to 1"),
        ("transient_attempts", -1, "transient_attempts must be an int from 0 to 7"),
        ("transient_attempts", 8, "transient_attempts must be an int from 0 to 7"),
        ("max_store_faults", 2.0, "max_store_faults must be an int >= 0"),
        ("health_checks", None, "health_checks must be an int >= 0"),
    ]:
        settings: dict[str, object] = {"seed": 7, field: value}
        with pytest.raises(InvalidInput, match=message):
            FaultSchedule(**settings)  # type: ignore[arg-type]
    assert FaultSchedule(7, rate=0, permanent_rate=1).permanent("w", "a")
