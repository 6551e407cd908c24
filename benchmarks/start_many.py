"""``rt.start_many()`` vs a loop of ``rt.start()``: N workflows from one thread, same run.

Each round opens a fresh store twice and starts N one-step workflows, once with a loop
of ``start()`` (each waits for its own fsync) and once with one ``start_many()`` (one
group commit); the rounds interleave the two (A/B) so load drifts hit both. Starts are
delayed an hour, so no step runs and only starting is measured. Prints the median of
each and the ratio (issue 17 asks for at least 20x), with the load average, and the
process CPU per start of each (which the load does not inflate). Each side first lets
the new runtime finish its own start-up (recovery, registration), whose CPU would
otherwise be counted as the starts' (about 25 us per item of a batch).

Usage: python benchmarks/start_many.py [--workflows N] [--rounds R] [--out PATH]
"""

from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import tempfile
import time

from _harness import machine, render_table, write_report
from _harness import progress as _progress

from herder.runtime import Agent, Runtime, StepContext, Workflow

JOB = Workflow("job").step("only", agent="idle", action="work")


class Idle(Agent):
    def work(self, ctx: StepContext) -> None:
        return None


def register(rt: Runtime) -> None:
    rt.add_agent("idle", Idle)
    rt.add_workflow(JOB)


def loop(path: pathlib.Path, n: int) -> tuple[float, float]:
    with Runtime(path, setup=register) as rt:
        rt._settle()  # the runtime's own start-up is not the starts' CPU
        began, cpu = time.perf_counter(), time.process_time()
        for i in range(n):
            rt.start("job", {"i": i}, workflow_id=f"w{i}", delay=3600)
        took = time.perf_counter() - began
        rt._settle()  # the Scheduler's admissions count as CPU of the starts
        return took, time.process_time() - cpu


def batch(path: pathlib.Path, n: int) -> tuple[float, float]:
    with Runtime(path, setup=register) as rt:
        items = [
            {"workflow": "job", "input": {"i": i}, "workflow_id": f"w{i}", "delay": 3600}
            for i in range(n)
        ]
        rt._settle()
        began, cpu = time.perf_counter(), time.process_time()
        rt.start_many(items)
        took = time.perf_counter() - began
        rt._settle()
        return took, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workflows", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("/tmp/start_many.json"))
    args = parser.parse_args()
    times: dict[str, list[float]] = {"start() loop": [], "start_many()": []}
    cpus: dict[str, list[float]] = {name: [] for name in times}
    with tempfile.TemporaryDirectory(prefix="herder-start-many-") as tmp:
        for r in range(args.rounds):
            for name, run in (("start() loop", loop), ("start_many()", batch)):
                took, cpu = run(pathlib.Path(tmp) / f"{run.__name__}-{r}", args.workflows)
                times[name].append(took)
                cpus[name].append(cpu)
                _progress("start_many", f"round {r + 1} {name}: {took:.3f} s")
    medians = {name: statistics.median(t) for name, t in times.items()}
    ratio = medians["start() loop"] / medians["start_many()"]
    load = os.getloadavg()
    # Process CPU per start (every thread, until the Scheduler admitted them): what the
    # load average cannot inflate, unlike the wall time.
    cpu_us = {name: statistics.median(c) / args.workflows * 1e6 for name, c in cpus.items()}
    rows = [
        (name, args.workflows, med, args.workflows / med, cpu_us[name])
        for name, med in medians.items()
    ]
    print(render_table(("case", "workflows", "median s", "starts/s", "CPU us/start"), rows))
    print(f"start_many() is {ratio:.1f}x a loop of start() (load average {load[0]:.2f})")
    write_report(
        args.out,
        {
            "benchmark": "start_many",
            "machine": machine(),
            "load_average": load,
            "workflows": args.workflows,
            "seconds": times,
            "median_seconds": medians,
            "cpu_us_per_start": cpu_us,
            "ratio": ratio,
        },
    )


if __name__ == "__main__":
    main()
