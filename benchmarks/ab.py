"""Interleaved A/B (/C...) of throughput.py between checkouts, in one session.

On a shared machine an absolute figure taken an hour ago says little; this runs the
throughput benchmark with checkout A's interpreter, then B's, then A's again, ``--rounds``
times, so both see the same load. Each run is a separate process with its own bare-pykka
ceiling. The benchmark script itself is taken from this directory (it uses only the
public API), so an old checkout is measured with the same harness as a new one.

Usage: python benchmarks/ab.py A_CHECKOUT B_CHECKOUT [C ...] [--rounds 2] [-- throughput args]
e.g.   python benchmarks/ab.py ../hot-base . -- --instances 4 --workflows 3000 \\
           --in-flight 256,16 --raw-seconds 0
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
from typing import Any

from _harness import progress, render_table

TAG = "ab"
HERE = pathlib.Path(__file__).resolve().parent


def run_once(checkout: pathlib.Path, extra: list[str]) -> dict[str, Any]:
    """One throughput run with ``checkout``'s interpreter; its JSON report."""
    python = checkout / ".venv" / "bin" / "python"
    with tempfile.TemporaryDirectory(prefix="herder-ab-") as d:
        out = pathlib.Path(d) / "report.json"
        cmd = [str(python), str(HERE / "throughput.py"), *extra, "--out", str(out)]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        report: dict[str, Any] = json.loads(out.read_text())
    return report


def main(argv: list[str] | None = None) -> None:
    """Run A, B alternately and print one row per case and run."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("a", type=pathlib.Path)
    parser.add_argument("b", type=pathlib.Path)
    parser.add_argument("more", type=pathlib.Path, nargs="*", help="checkouts C, D, ...")
    parser.add_argument("--rounds", type=int, default=2)
    argv = sys.argv[1:] if argv is None else argv
    cut = argv.index("--") if "--" in argv else len(argv)
    args = parser.parse_args(argv[:cut])
    extra = argv[cut + 1 :]
    rows: list[list[Any]] = []
    threads: dict[tuple[str, int], list[dict[str, float]]] = {}
    for n in range(args.rounds):
        checkouts = [args.a, args.b, *args.more]
        for label, checkout in zip("ABCDEFGH", checkouts, strict=False):
            progress(TAG, f"round {n + 1}: {label} ({checkout}), load {os.getloadavg()[0]:.1f}")
            report = run_once(checkout.resolve(), extra)
            for case in report["cases"]:
                h, bare = case["herder"], case["bare"]
                by_thread = h.get("cpu_us_per_step_by_thread")
                if by_thread:
                    threads.setdefault((label, case["in_flight"]), []).append(by_thread)
                rows.append(
                    [
                        f"{label}{n + 1}",
                        case["in_flight"],
                        case["instances"],
                        h["workflows"],
                        bare["steps_per_s"],
                        h["steps_per_s"],
                        f"{h['vs_bare']:.3f}",
                        h["cpu_us_per_step"],
                        h["load_avg"],
                    ]
                )
    header = (
        "run",
        "in flight",
        "inst",
        "wf",
        "bare steps/s",
        "steps/s",
        "vs bare",
        "CPU us/step",
        "load",
    )
    for label, checkout in zip("ABCDEFGH", [args.a, args.b, *args.more], strict=False):
        print(f"{label} = {checkout}")
    print(render_table(header, rows))
    if threads:
        print(thread_medians(threads))
    sys.stdout.flush()


def thread_medians(threads: dict[tuple[str, int], list[dict[str, float]]]) -> str:
    """The median CPU us/step of each busy group of threads, per checkout and case."""
    groups = ("Scheduler", "callers", "herder-store-writer", "PoolWorker")
    rows = [
        [f"{label} {in_flight}", len(runs)]
        + [f"{statistics.median(run.get(g, 0.0) for run in runs):.1f}" for g in groups]
        for (label, in_flight), runs in sorted(threads.items(), key=lambda kv: (kv[0][1], kv[0][0]))
    ]
    header = ("checkout, in flight", "runs", "Scheduler", "callers", "writer", "workers")
    return "median CPU us/step by thread\n" + render_table(header, rows)


if __name__ == "__main__":
    main()
