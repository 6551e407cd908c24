"""The exact simulation (``herder.runtime.testing.simulate_exact``): the real Scheduler,
watchdog and store driven on one thread, in an order the seed decides.

Each seed meets the faults of its :class:`FaultSchedule` (attempt errors, lost answers,
hangs whose late answers are stale, instance crashes, permanent failures, store write
errors, a Scheduler crash, a crash of the whole process at a round or mid-round, an
operator's cancel and abandon, a command queued while the process is down, a wall-clock
step) and then the same expectations as the threaded simulation: the final state the
schedule implies, effects that match the recorded steps (nothing lost, nothing applied
twice), compensation in reverse order, and ``herder check``.

One seed gives one history: a seed run twice, here or in another process, gives the
same trace byte for byte. ``--exact-seeds N`` runs seeds 0..N-1 (default 1000);
``HERDER_SIM_SEED=S`` runs only seed S.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import re
import subprocess
import sys
import threading
import time

import pytest
from _sim_tally import run_seeds

from herder.runtime.testing import FaultSchedule, simulate_exact
from herder.store import Put, Store, Transition, encode

CROSS_SEEDS = range(20)


# About 20 s of CPU, all of it this thread's: at load 20 on two cores its wall time passed
# 180 s and the timeout (method "thread") ended the whole pytest run. The timeout guards a
# hang; a seed that never settles fails on its own (MAX_STEPS), at any load.
@pytest.mark.timeout(900)
def test_the_exact_simulation_holds_every_expectation_over_many_seeds(
    scratch: pathlib.Path, exact_seeds: list[int]
) -> None:
    started, cpu = time.monotonic(), time.process_time()
    tally = run_seeds(simulate_exact, exact_seeds, scratch, "tests/test_model_sim.py")
    wall, cpu = time.monotonic() - started, time.process_time() - cpu
    print(
        f"\nexact simulation: {tally}; {wall:.1f}s ({cpu:.1f}s CPU, load {os.getloadavg()[0]:.1f})"
    )
    if len(exact_seeds) >= 50:
        tally.assert_every_fault_met()
        assert any(FaultSchedule(s).process_crash_step() for s in exact_seeds)


def test_a_seed_run_twice_gives_the_same_history_byte_for_byte(scratch: pathlib.Path) -> None:
    seed = _eventful_seed(scratch)
    first = simulate_exact(seed, scratch / "first")
    second = simulate_exact(seed, scratch / "second")
    assert first.problems == second.problems == []
    assert first.trace == second.trace
    assert "\n".join(first.trace).encode() == "\n".join(second.trace).encode()
    assert first.trace[-1].startswith("store ")  # the store's content ends the trace
    assert any(line.startswith("crash ") for line in first.trace)
    assert first.stale > 0
    assert first.scheduler_crashes > 0


def test_the_last_settle_after_the_rounds_has_no_crash(scratch: pathlib.Path) -> None:
    # Seed 11075 (found by running seeds past the default 1,000) draws a process crash at
    # delivery 69, which comes only in the fault-free settle after the rounds. Crashing
    # there queued its operator command for the next process, which had no round left to
    # sweep the commands channel on: "command #1 was never answered".
    seed = 11075
    schedule = _NoLiveCommand(seed)  # (its live command came later and moves the steps)
    assert schedule.process_crash_step() == 69
    assert schedule.queued_at_restart() is not None
    report = simulate_exact(seed, scratch / "late-crash", schedule)
    assert report.problems == []
    assert report.restarts == 0  # the crash step was not reached while faults were armed


def test_a_command_sent_through_the_channel_mid_round_is_answered(scratch: pathlib.Path) -> None:
    # Seed 938 sends a command through the CLI's channel while the process runs, and a
    # sweep hands it over while the end of its workflow is being committed: the refusal
    # was once told to no one and the command never answered (see test_operator_cli).
    seed = 938
    assert FaultSchedule(seed).command_at() is not None
    report = simulate_exact(seed, scratch / "command")
    assert report.problems == []
    assert "W sweep" in report.trace  # it was sent, and handed over then


def test_another_seed_gives_another_history(scratch: pathlib.Path) -> None:
    seed = _eventful_seed(scratch)
    other = simulate_exact(seed + 1, scratch / "other")
    assert simulate_exact(seed, scratch / "seed").trace != other.trace


def test_a_seed_gives_the_same_history_in_another_process(scratch: pathlib.Path) -> None:
    # Another hash seed too: no history may depend on the order of a set of strings.
    here = {
        seed: _digest(simulate_exact(seed, scratch / f"here-{seed}").trace) for seed in CROSS_SEEDS
    }
    code = (
        "import hashlib, json, sys; from herder.runtime.testing import simulate_exact; "
        "print(json.dumps({s: hashlib.sha256('\\n'.join(simulate_exact(s, "
        "f'{sys.argv[1]}/there-{s}').trace).encode()).hexdigest() "
        f"for s in {list(CROSS_SEEDS)}}}))"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run(
        [sys.executable, "-c", code, str(scratch)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    there = {int(seed): digest for seed, digest in json.loads(out.splitlines()[-1]).items()}
    assert there == here


def test_a_hung_attempt_of_a_crashed_scheduler_leaves_no_effect_after_its_compensation(
    scratch: pathlib.Path,
) -> None:
    # Seed 2153: attempt 1 of s2153-1/a hangs, the Scheduler crashes, its successor runs
    # the step again, the workflow is cancelled and the step compensated; only then does
    # the hung attempt go on. It found the effect standing in the cancelled workflow; now
    # the dying Scheduler marks it superseded (test_recovery), and the service fences by
    # token besides.
    report = simulate_exact(2153, scratch / "seed")
    assert report.problems == []
    assert report.scheduler_crashes > 0


def test_an_inline_store_commits_each_submission_before_submit_returns(
    scratch: pathlib.Path,
) -> None:
    store = Store(scratch / "inline", inline_writes=True)
    try:
        seen: list[tuple[object, str]] = []
        put = Put("meta", b"probe", encode(1))
        future = store.writer.submit(Transition(ops=(put,)))
        assert future.done()
        assert future.exception() is None
        assert store.get("meta", b"probe") == 1
        store.writer.submit_batch(
            {("meta", b"probe"): encode(2)},
            ["effect"],
            1,
            lambda effects, error: seen.append((error, threading.current_thread().name)),
        )
        assert seen == [(None, threading.current_thread().name)]
        assert store.get("meta", b"probe") == 2
        assert not any(t.name == "herder-store-writer" for t in threading.enumerate())
    finally:
        store.close()


def test_the_testing_guide_examples_run(capsys: pytest.CaptureFixture[str]) -> None:
    guide = pathlib.Path(__file__).resolve().parent.parent / "docs" / "testing.md"
    blocks = re.findall(r"```python\n(.*?)```", guide.read_text(), flags=re.DOTALL)
    assert len(blocks) == 2
    for block in blocks:
        exec(compile(block, "docs/testing.md", "exec"), {"__name__": "guide"})
    assert "SUCCEEDED" in capsys.readouterr().out


class _NoLiveCommand(FaultSchedule):
    """A seed's schedule without the command sent while the process runs."""

    def command_at(self) -> None:
        return None


def _eventful_seed(scratch: pathlib.Path) -> int:
    """The first seed whose process crashes mid-round, whose Scheduler crashes too, and
    that has stale answers (an attempt answering after its step moved on)."""
    return next(
        s
        for s in range(1000)
        if FaultSchedule(s).process_crash_step() is not None
        and FaultSchedule(s).scheduler_crash_at() is not None
        and FaultSchedule(s).attempt_fault(f"s{s}-0", "a", 1, False) == "hang"
        and simulate_exact(s, scratch / f"pick-{s}").stale > 0
    )


def _digest(trace: list[str]) -> str:
    return hashlib.sha256("\n".join(trace).encode()).hexdigest()


def test_a_crash_of_the_process_leaves_its_lease_held_as_a_death_does(
    scratch: pathlib.Path,
) -> None:
    # The simulated death closed its store as a stop() does, releasing the lease: the next
    # process's recovery took it for a clean stop and counted none of the attempts the
    # crash cut against their workflows (poison work), unlike after a real death.
    seed = next(s for s in range(1000) if FaultSchedule(s).process_crash_step() is not None)
    report = simulate_exact(seed, scratch / "s")
    assert report.problems == []
    assert report.restarts > 0
    with Store(scratch / "s", readonly=True) as store:
        lease = store.read_lease()
    assert lease is not None
    assert lease.after == "holder gone"  # the last holder took it from a dead one
