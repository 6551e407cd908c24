"""benchmarks/async_host.py runs end to end on a tiny size and reports its three rows
(no numbers are asserted: they depend on the machine)."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

BENCH = pathlib.Path(__file__).resolve().parent.parent / "benchmarks"


def test_the_async_host_benchmark_reports_every_row_and_its_verdict(
    tmp_path: pathlib.Path,
) -> None:
    out = tmp_path / "async_host.json"
    cmd = [sys.executable, str(BENCH / "async_host.py"), "--workflows", "20", "--reps", "1"]
    done = subprocess.run(
        [*cmd, "--out", str(out)], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    assert set(report["rows"]) == {
        "async 50 ms sleep",
        "async no-op",
        "pool host 50 ms time.sleep",
        "beside: async 50 ms",
        "beside: pool 50 ms",
    }
    assert all(row["steps_per_s"] > 0 for row in report["rows"].values())
    assert report["bound_steps_per_s"] == min(20_000, report["rows"]["async no-op"]["steps_per_s"])
    assert "target >= 0.8x" in done.stdout
