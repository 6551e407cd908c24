"""One wide workflow: a root step, N steps after it, and a join after all N (a change
rolled out to N hosts, say), run to the end; the cost per step as N grows.

The root returns a small map (the batch); each of the N steps reads it from
``ctx.results["root"]`` and returns a small map of its own; the join reads every result.
Trivial actions, one agent with 32 instances. (Results are each action's own copies: a
step that reads an N-long list from ``ctx.results`` pays O(N) for its copy, so N steps
each reading the whole host list would cost O(N^2) whatever the engine does.)

Reported per N: wall time, process CPU per step and that CPU against the smallest N of
the same run (1.0: each step costs what it costs in a small workflow; a cost that grows
with N shows as a ratio that grows with it). Each N runs ``--rounds`` times,
interleaved, and the median is reported.

Usage: python benchmarks/wide.py [--steps 1000,5000,20000] [--rounds 2] [--out PATH]
"""

from __future__ import annotations

import argparse
import logging
import os
import pathlib
import statistics
import tempfile
import time
from typing import Any

from _harness import machine, progress, render_table, write_report

from herder.runtime import Agent, Runtime, StepContext, Workflow

TAG = "wide"
HERE = pathlib.Path(__file__).resolve().parent


class Rollout(Agent):
    def plan(self, ctx: StepContext) -> dict[str, Any]:
        return {"batch": "b-1", "hosts": ctx.input["n"]}

    def change(self, ctx: StepContext) -> dict[str, Any]:
        host = f"host-{int(ctx.step[1:]):05d}"
        return {"host": host, "batch": ctx.results["root"]["batch"], "ok": True}

    def verify(self, ctx: StepContext) -> int:
        return sum(1 for name, r in ctx.results.items() if name != "root" and r["ok"])


def wide(n: int) -> Workflow:
    flow = Workflow(f"wide{n}").step("root", agent="fleet", action="plan")
    for i in range(n):
        flow = flow.step(f"s{i}", agent="fleet", action="change", after=["root"])
    return flow.step("join", agent="fleet", action="verify", after=[f"s{i}" for i in range(n)])


def run_once(root: pathlib.Path, n: int) -> tuple[float, float]:
    """Wall seconds and process CPU seconds from start() to the result."""
    with Runtime(root / "store", map_size=1 << 32) as rt:
        rt.add_agent("fleet", Rollout, concurrency=32)
        flow = wide(n)
        rt.add_workflow(flow)
        began, cpu = time.perf_counter(), time.process_time()
        result = rt.start(flow.name, {"n": n}).result(timeout=3600)
        took, used = time.perf_counter() - began, time.process_time() - cpu
    if result["join"] != n:
        raise AssertionError(f"the join counted {result['join']} of {n} steps")
    return took, used


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", default="1000,5000,20000")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=pathlib.Path, default=HERE / "out" / "wide.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    sizes = [int(s) for s in args.steps.split(",")]
    walls: dict[int, list[float]] = {n: [] for n in sizes}
    cpus: dict[int, list[float]] = {n: [] for n in sizes}
    with tempfile.TemporaryDirectory(prefix="herder-wide-") as tmp:
        for r in range(args.rounds):
            for n in sizes:
                wall, cpu = run_once(pathlib.Path(tmp) / f"{n}-{r}", n)
                walls[n].append(wall)
                cpus[n].append(cpu)
                progress(TAG, f"round {r + 1}, {n:,} steps: {wall:.2f} s, {cpu:.2f} s CPU")
    rows, report_rows = [], []
    base = statistics.median(cpus[sizes[0]]) / (sizes[0] + 2)
    for n in sizes:
        wall, cpu = statistics.median(walls[n]), statistics.median(cpus[n])
        per_step = cpu / (n + 2)
        rows.append((n + 2, wall, (n + 2) / wall, per_step * 1e6, per_step / base))
        report_rows.append(
            {"steps": n + 2, "wall_s": wall, "cpu_s": cpu, "cpu_us_per_step": per_step * 1e6}
        )
    header = ("steps", "wall s", "steps/s", "CPU us/step", f"vs {sizes[0] + 2:,} steps")
    print(render_table(header, rows))
    write_report(
        args.out,
        {
            "benchmark": TAG,
            "machine": machine(),
            "load_average": os.getloadavg(),
            "rounds": args.rounds,
            "rows": report_rows,
        },
    )


if __name__ == "__main__":
    main()
