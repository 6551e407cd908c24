"""Takeover and handoff times of a hot standby, with real processes under load.

Each round runs two ``herder run --app ha_app:build`` daemons on one store (the app of
``tests/ha_app.py``: three-step workflows started at a steady pace by the active one,
each action logging the time it ran): an active one and a standby. Then, per scenario:

- ``kill``: SIGKILL the active. Takeover = the standby's "active" time (lease taken and
  recovery run) minus the kill time. The dead process's flock tells the standby at once.
- ``stop``: SIGSTOP the active (it keeps its flock), so the standby must wait for the
  lease to expire. Then SIGCONT: the old process must exit 1 (deposed) without writing.
- ``handoff``: ``herder handoff --store``. Pause = the standby's "active" time minus the
  request time; work gap = the first action run by the new leader minus the last action
  run by the old one (how long no step ran anywhere).

Usage: python benchmarks/handoff.py [--rounds 5] [--lease 2.0] [--out PATH]
"""

from __future__ import annotations

import argparse
import os
import pathlib
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

from _harness import machine, progress, render_table, write_report

ROOT = pathlib.Path(__file__).resolve().parent.parent
APP_DIR = ROOT / "tests"
sys.path.insert(0, str(APP_DIR))
from _child_kit import Child  # noqa: E402  (the daemons' app and helper live in tests/)

WAIT = 60.0


class Daemon(Child):
    """A ``herder run`` child and its stdout lines."""

    def __init__(self, store: pathlib.Path, effects: pathlib.Path, lease: float, **env: str):
        standby = env.pop("standby", "")
        cmd = ["-m", "herder.runtime", "run", "--store", str(store)]
        cmd += ["--app", "ha_app:build", "--lease", str(lease), "--drain-timeout", "10"]
        if standby:
            cmd.append("--standby")
        super().__init__(cmd, cwd=APP_DIR, env={"HA_EFFECTS": str(effects), **env})

    def wait_for(self, prefix: str, timeout: float = WAIT) -> str:
        """The next line starting with ``prefix``."""
        return super().wait_for(prefix, timeout)

    def end(self) -> None:
        """Kill it (resumed first if it was stopped) and reap it."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
        self.kill(WAIT)


def one_round(scenario: str, lease: float, workdir: pathlib.Path) -> dict[str, float]:
    store, effects = workdir / "store", workdir / "effects"
    load = {"HA_START": "400", "HA_PACE": "0.01", "HA_STEP": "0.02"}
    active = Daemon(store, effects, lease, **load)
    active.wait_for("active")  # first, or the standby would take the fresh store's lease
    standby = Daemon(store, effects, lease, standby="1", HA_WATCH="1")
    try:
        standby.wait_for("standby")
        active.wait_for("start w-100")  # steady load by now
        out: dict[str, float] = {}
        t0 = time.time()
        if scenario == "kill":
            active.proc.kill()
        elif scenario == "stop":
            active.proc.send_signal(signal.SIGSTOP)
        else:
            subprocess.run(
                [sys.executable, "-m", "herder.runtime", "handoff", "--store", str(store)],
                check=True,
                capture_output=True,
                timeout=WAIT,
            )
        took = float(standby.wait_for("active").split()[1]) - t0
        out["takeover_s"] = took
        standby.wait_for("idle")
        if scenario == "stop":
            active.proc.send_signal(signal.SIGCONT)
            out["deposed_exit"] = float(active.proc.wait(timeout=WAIT))
        if scenario == "handoff":
            old, new = str(active.proc.pid), str(standby.proc.pid)
            runs = [line.split() for line in effects.read_text().splitlines()]
            last_old = max(float(r[4]) for r in runs if r[3] == old)
            first_new = min(float(r[4]) for r in runs if r[3] == new)
            out["work_gap_s"] = first_new - last_old
            seen = [(r[0], r[1]) for r in runs]
            out["duplicate_runs"] = float(len(seen) - len(set(seen)))
        return out
    finally:
        active.end()
        standby.end()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--lease", type=float, default=2.0)
    parser.add_argument("--out", type=pathlib.Path, default=ROOT / "benchmarks/out/handoff.json")
    args = parser.parse_args()
    results: dict[str, list[dict[str, float]]] = {}
    for scenario in ("kill", "stop", "handoff"):
        results[scenario] = []
        for r in range(args.rounds):
            with tempfile.TemporaryDirectory(prefix="herder-handoff-") as tmp:
                outcome = one_round(scenario, args.lease, pathlib.Path(tmp))
            progress("handoff", f"{scenario} round {r + 1}: {outcome}")
            results[scenario].append(outcome)
    rows: list[list[Any]] = []
    for scenario, runs in results.items():
        took = [r["takeover_s"] for r in runs]
        note = ""
        if scenario == "stop":
            note = f"deposed exits: {sorted({int(r['deposed_exit']) for r in runs})}"
        if scenario == "handoff":
            gaps = [r["work_gap_s"] for r in runs]
            dupes = sum(r["duplicate_runs"] for r in runs)
            note = f"work gap p50 {statistics.median(gaps):.3f} s, max {max(gaps):.3f} s"
            note += f"; duplicate runs {dupes:.0f}"
        rows.append([scenario, len(runs), statistics.median(took), max(took), note])
    print(f"lease {args.lease} s, {os.cpu_count()} CPUs; seconds from the event to the")
    print("standby having taken the lease and recovered")
    print(render_table(["scenario", "rounds", "p50 s", "max s", "notes"], rows))
    report = {"machine": machine(), "lease_s": args.lease, "results": results}
    write_report(args.out, report)


if __name__ == "__main__":
    main()
