"""asyncio agents at 1,000 in flight: a 50 ms ``await asyncio.sleep`` action, its no-op
baseline, and the sync pooled host running the same 50 ms action as ``time.sleep``.

Each row runs ``--workflows`` one-step workflows through a fresh runtime (all started in
one ``start_many``, so about ``--workflows`` are in flight and the agent's concurrency,
1,000, caps the attempts running), and reports steps/s from the first start to the last
result. Rows are interleaved over ``--reps`` rounds (A, B, C, A, B, C, ...) and the
median is kept, with the load average seen at each round, because the machine is shared.

Target (issue 16): the 50 ms async row reaches at least 0.8x of
``min(1,000 / 0.05 s, the no-op async row)`` steps/s. The pooled-host row shows what the
same action costs on threads (its pool is capped at 32 workers by default). The "beside"
rows run both agents in one runtime at once (``agent_host="pool"``: the async agent on
the asyncio host, the sync one on the pool), ``--workflows`` each, started together:
each row's steps/s is its own workflows over the time until its last one finished.

Usage: python benchmarks/async_host.py [--workflows 4000] [--reps 3] [--out PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import pathlib
import statistics
import sys
import tempfile
import threading
import time
from typing import Any

from _harness import machine, progress, render_table, write_report

from herder.runtime import Agent, Runtime, StepContext, Workflow

TAG = "async_host"
HERE = pathlib.Path(__file__).resolve().parent
IN_FLIGHT = 1_000
SLEEP = 0.05
TARGET = 0.8


class AsyncSleep(Agent):
    async def work(self, ctx: StepContext) -> None:
        await asyncio.sleep(SLEEP)


class AsyncNoop(Agent):
    async def work(self, ctx: StepContext) -> None:
        return None


class ThreadSleep(Agent):
    def work(self, ctx: StepContext) -> None:
        time.sleep(SLEEP)


ROWS: dict[str, tuple[type[Agent], str]] = {
    "async 50 ms sleep": (AsyncSleep, "thread"),
    "async no-op": (AsyncNoop, "thread"),
    "pool host 50 ms time.sleep": (ThreadSleep, "pool"),
}


def one(root: pathlib.Path, agent: type[Agent], host: str, workflows: int) -> dict[str, Any]:
    """One row: steps/s of ``workflows`` one-step workflows, and the threads it took."""
    with Runtime(root / "store", agent_host=host, max_result_bytes=1024) as rt:
        rt.add_agent("a", agent, concurrency=IN_FLIGHT)
        rt.add_workflow(Workflow("w").step("s", agent="a", action="work", retry=None))
        begun = time.perf_counter()
        handles = rt.start_many([{"workflow": "w", "input": i} for i in range(workflows)])
        peak_threads = threading.active_count()
        for handle in handles:
            handle.result(timeout=600)
            peak_threads = max(peak_threads, threading.active_count())
        elapsed = time.perf_counter() - begun
    return {
        "steps_per_s": workflows / elapsed,
        "seconds": elapsed,
        "threads": peak_threads,
        "load": os.getloadavg()[0],
    }


def beside(root: pathlib.Path, workflows: int) -> dict[str, dict[str, Any]]:
    """The 50 ms action on both hosts of one runtime at once: each side's own rate."""
    with Runtime(root / "store", agent_host="pool", max_result_bytes=1024) as rt:
        sides = {"async": AsyncSleep, "pool": ThreadSleep}
        for side, agent in sides.items():
            rt.add_agent(side, agent, concurrency=IN_FLIGHT)
            rt.add_workflow(Workflow(side).step("s", agent=side, action="work", retry=None))
        begun = time.perf_counter()
        starts = [{"workflow": side, "input": i} for i in range(workflows) for side in sides]
        handles = rt.start_many(starts)
        peak_threads, finished = threading.active_count(), {}
        for side in sides:  # each side's last workflow, waited for in its own order
            for handle in handles[list(sides).index(side) :: len(sides)]:
                handle.result(timeout=600)
                peak_threads = max(peak_threads, threading.active_count())
            finished[side] = time.perf_counter() - begun
    load = os.getloadavg()[0]
    return {
        f"beside: {side} 50 ms": {
            "steps_per_s": workflows / seconds,
            "seconds": seconds,
            "threads": peak_threads,
            "load": load,
        }
        for side, seconds in finished.items()
    }


def run(workflows: int, reps: int) -> dict[str, Any]:
    samples: dict[str, list[dict[str, Any]]] = {
        **{name: [] for name in ROWS},
        "beside: async 50 ms": [],
        "beside: pool 50 ms": [],
    }
    for rep in range(reps):
        for name, (agent, host) in ROWS.items():
            with tempfile.TemporaryDirectory(prefix="herder-async-") as d:
                sample = one(pathlib.Path(d), agent, host, workflows)
            samples[name].append(sample)
            progress(TAG, f"round {rep + 1}/{reps} {name}: {sample['steps_per_s']:,.0f} steps/s")
        with tempfile.TemporaryDirectory(prefix="herder-async-") as d:
            for name, sample in beside(pathlib.Path(d), workflows).items():
                samples[name].append(sample)
                progress(TAG, f"round {rep + 1}/{reps} {name}: {sample['steps_per_s']:,.0f}")
    rows = {
        name: {
            "steps_per_s": statistics.median(s["steps_per_s"] for s in runs),
            "spread": [min(s["steps_per_s"] for s in runs), max(s["steps_per_s"] for s in runs)],
            "threads": max(s["threads"] for s in runs),
            "loads": [round(s["load"], 1) for s in runs],
        }
        for name, runs in samples.items()
    }
    bound = min(IN_FLIGHT / SLEEP, rows["async no-op"]["steps_per_s"])
    ratio = rows["async 50 ms sleep"]["steps_per_s"] / bound
    return {
        "benchmark": TAG,
        "machine": machine(),
        "workflows": workflows,
        "reps": reps,
        "in_flight": IN_FLIGHT,
        "sleep_s": SLEEP,
        "rows": rows,
        "bound_steps_per_s": bound,
        "ratio": ratio,
        "target": TARGET,
        "met": ratio >= TARGET,
    }


def table(report: dict[str, Any]) -> str:
    header = ("row", "steps/s (median)", "spread", "vs bound", "threads", "load avg")
    bound = report["bound_steps_per_s"]
    lines = [
        (
            name,
            row["steps_per_s"],
            f"{row['spread'][0]:,.0f}..{row['spread'][1]:,.0f}",
            f"{row['steps_per_s'] / bound:.2f}x",
            row["threads"],
            " ".join(map(str, row["loads"])),
        )
        for name, row in report["rows"].items()
    ]
    verdict = "met" if report["met"] else "NOT met"
    return render_table(header, lines) + (
        f"\nbound = min({IN_FLIGHT:,} / {SLEEP} s, async no-op) = {bound:,.0f} steps/s; "
        f"async 50 ms reaches {report['ratio']:.2f}x (target >= {TARGET}x: {verdict})"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--workflows", type=int, default=4000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--out", type=pathlib.Path, default=HERE / "out" / "async_host.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    report = run(args.workflows, args.reps)
    print(table(report))
    write_report(args.out, report)


if __name__ == "__main__":
    main()
