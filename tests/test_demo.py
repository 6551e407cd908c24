"""`herder demo` end to end: a real worker subprocess, SIGKILLed midway and restarted."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest


def _row(output: str, label: str) -> int:
    match = re.search(rf"{re.escape(label)}\W+(\d+)", output)
    assert match is not None, f"no {label!r} row in:\n{output}"
    return int(match.group(1))


@pytest.mark.timeout(60)
def test_demo_survives_a_sigkill_of_its_worker_and_reports_no_duplicates(tmp_path: Path) -> None:
    demo = subprocess.run(
        [sys.executable, "-m", "herder.runtime", "demo", "--workflows", "200", "--dir", tmp_path],
        capture_output=True,
        text=True,
        timeout=55,
        check=False,
    )
    out = demo.stdout
    assert demo.returncode == 0, out + demo.stderr + (tmp_path / "worker.log").read_text()
    assert "SIGKILLed the worker" in out
    assert _row(out, "worker SIGKILLs / restarts") == 1
    assert _row(out, "trips") == 200
    assert _row(out, "succeeded") + _row(out, "compensated") == 200
    assert _row(out, "compensated") > 0  # sold-out cars made some trips undo themselves
    assert _row(out, "needing attention") == 0
    assert _row(out, "duplicate effects") == 0
    assert "invariants held" in out
