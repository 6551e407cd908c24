"""``benchmarks/gil_handoff.py``: the CPU a thread wake-up costs, with the GIL free and
held, which the throughput benchmark's context-switch counts are read against."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest

BENCH = pathlib.Path(__file__).resolve().parent.parent / "benchmarks"

pytestmark = pytest.mark.timeout(60)


def run(*args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, str(BENCH / "gil_handoff.py"), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=50, check=False)


def test_each_case_is_measured_in_one_run_and_reported(tmp_path: pathlib.Path) -> None:
    out = tmp_path / "gil.json"
    done = run("--rounds", "400", "--spinners", "0,1", "--out", str(out))
    assert done.returncode == 0, done.stderr
    cases = json.loads(out.read_text())["cases"]
    assert [c["spinners"] for c in cases] == [0, 1]
    assert [c["rounds"] for c in cases] == [400, 10]  # the contended case runs 1/40 of them
    for case in cases:
        assert case["cpu_us_per_wake"] > 0
        assert case["switches_per_wake"] > 0  # each round blocks both threads
    assert "1 spinning" in done.stdout
    assert "switches/wake" in done.stdout


@pytest.mark.parametrize("spinners", ["x", "-1", ","])
def test_bad_counts_are_refused_with_a_usage_error(spinners: str) -> None:
    done = run("--spinners", spinners, "--rounds", "10")
    assert done.returncode == 2
    assert "--spinners" in done.stderr
