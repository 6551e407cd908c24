"""Recovery: open a store that a SIGKILL left with N workflows in flight, time the resume.

For each N (``--in-flight``, default 10,000 and 100,000):

1. ``fill``: a child process opens ``Runtime(store)``, registers the travel workflow with
   agents whose action blocks forever, starts N workflows (``start()`` returns once each
   is durable), prints ``filled`` and waits; the parent SIGKILLs it. The store then holds
   N RUNNING workflows: a few with their first step DISPATCHED to a blocked agent, the
   rest PENDING.
2. ``resume``: a fresh child process times, from just before ``Runtime(path)``:
   ``opened`` (the constructor returned), ``registered`` (agents and workflow added,
   which is when recovered workflows may resume), ``first_dispatch`` (the first action
   call), ``all_redispatched`` (every one of the N workflows has had its in-flight step
   handed to an agent again) and ``all_finished`` (every workflow SUCCEEDED). Its actions
   are trivial.

Targets (issue 15): with 100k in flight, the first re-dispatch within 1 s of
``Runtime()`` starting and every workflow re-dispatched within 30 s; peak RSS reported.

Usage: python benchmarks/recovery.py [--in-flight 10000,100000] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import pathlib
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

from _harness import machine, progress, render_table, write_report
from _workload import AGENTS, travel

from herder.runtime import Agent, Runtime, StepContext

TAG = "recovery"
HERE = pathlib.Path(__file__).resolve().parent
FIRST_DISPATCH_TARGET = 1.0
ALL_REDISPATCHED_TARGET = 30.0
STARTERS = 64
INSTANCES = 4


class Blocked(Agent):
    """An action that never returns: the step stays in flight until the process dies."""

    forever = threading.Event()

    def book(self, ctx: StepContext) -> None:
        self.forever.wait()


def fill(store: str, n: int) -> None:
    """Start ``n`` workflows against blocked agents, say ``filled``, wait to be killed."""
    rt = Runtime(store, map_size=1 << 32, max_active_workflows=n + 1)
    for agent in AGENTS.values():
        rt.add_agent(agent, Blocked, concurrency=INSTANCES)
    rt.add_workflow(travel())
    counter = iter(range(n))
    lock = threading.Lock()

    def starter() -> None:
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            rt.start("travel", {"n": i}, workflow_id=f"wf-{i:08d}")

    threads = [threading.Thread(target=starter, daemon=True) for _ in range(STARTERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print("filled", flush=True)
    threading.Event().wait()


def resume(store: str, n: int) -> dict[str, Any]:
    """Open the killed store with trivial agents and time the resume (module docstring)."""
    seen: set[int] = set()
    lock = threading.Lock()
    marks: dict[str, float] = {}
    everyone = threading.Event()

    class Quick(Agent):
        """Notes the first call per workflow, then answers at once."""

        def book(self, ctx: StepContext) -> dict[str, Any]:
            now = time.perf_counter()
            with lock:
                marks.setdefault("first_dispatch", now)
                number = ctx.input["n"]
                if number not in seen:
                    seen.add(number)
                    if len(seen) == n:
                        marks["all_redispatched"] = now
                        everyone.set()
            return {"ok": True}

    t0 = time.perf_counter()
    rt = Runtime(store, map_size=1 << 32, max_active_workflows=n + 1)
    marks["opened"] = time.perf_counter()
    for agent in AGENTS.values():
        rt.add_agent(agent, Quick, concurrency=INSTANCES)
    rt.add_workflow(travel())
    marks["registered"] = time.perf_counter()
    if not everyone.wait(600):
        raise TimeoutError(f"only {len(seen)} of {n} workflows re-dispatched in 600 s")
    for i in range(n - 1, -1, -1):  # the last ones started are the last to finish, mostly
        rt.handle(f"wf-{i:08d}").result(timeout=600)
    marks["all_finished"] = time.perf_counter()
    states = {s.state for s in rt.list()}
    rt.stop()
    return {
        "in_flight": n,
        **{f"{k}_s": v - t0 for k, v in marks.items()},
        "final_states": sorted(str(s) for s in states),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def run_one(root: pathlib.Path, n: int) -> dict[str, Any]:
    """Fill a store with ``n`` in flight, SIGKILL the filler, time the resume."""
    store = str(root / f"store-{n}")
    me = str(pathlib.Path(__file__).resolve())
    progress(TAG, f"{n:,}: starting {n:,} workflows against blocked agents")
    began = time.perf_counter()
    filler = subprocess.Popen(
        [sys.executable, me, "--fill", store, str(n)], stdout=subprocess.PIPE, text=True
    )
    assert filler.stdout is not None
    line = filler.stdout.readline().strip()
    filling = time.perf_counter() - began
    os.kill(filler.pid, signal.SIGKILL)
    filler.wait()
    if line != "filled":
        raise RuntimeError(f"the filler died before filling the store (said {line!r})")
    progress(TAG, f"{n:,}: filled in {filling:.1f} s, SIGKILLed; resuming")
    done = subprocess.run(
        [sys.executable, me, "--resume", store, str(n)],
        stdout=subprocess.PIPE,
        text=True,
        check=True,
    )
    row: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    row["fill_s"] = filling
    row["store_mb"] = sum(f.stat().st_size for f in pathlib.Path(store).iterdir()) / 2**20
    progress(
        TAG,
        f"{n:,}: first re-dispatch {row['first_dispatch_s']:.2f} s, all re-dispatched "
        f"{row['all_redispatched_s']:.1f} s, all finished {row['all_finished_s']:.1f} s",
    )
    return row


def table(report: dict[str, Any]) -> str:
    """One line per size."""
    header = (
        "in flight",
        "store MB",
        "open s",
        "registered s",
        "1st dispatch s",
        "all re-dispatched s",
        "all finished s",
        "RSS MB",
    )
    rows = [
        [
            r["in_flight"],
            r["store_mb"],
            r["opened_s"],
            r["registered_s"],
            r["first_dispatch_s"],
            r["all_redispatched_s"],
            r["all_finished_s"],
            r["peak_rss_mb"],
        ]
        for r in report["results"]
    ]
    return render_table(header, rows) + (
        f"\ntargets: first re-dispatch within {FIRST_DISPATCH_TARGET:g} s, all re-dispatched "
        f"within {ALL_REDISPATCHED_TARGET:g} s (times from just before Runtime(path)); "
        f"load average {report['load'][0]:.2f}"
    )


def main(argv: list[str] | None = None) -> None:
    """Run every size, print the table, write the JSON report (or act as a child)."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--in-flight", type=lambda s: [int(x) for x in s.split(",")], default=[10_000, 100_000]
    )
    parser.add_argument("--out", type=pathlib.Path, default=HERE / "out" / "recovery.json")
    parser.add_argument("--fill", nargs=2, metavar=("STORE", "N"), help=argparse.SUPPRESS)
    parser.add_argument("--resume", nargs=2, metavar=("STORE", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.fill or args.resume:
        # Warnings are still formatted and written (their cost counts), just not shown.
        logging.basicConfig(level=logging.WARNING, stream=open(os.devnull, "w"))  # noqa: SIM115
    if args.fill:
        fill(args.fill[0], int(args.fill[1]))
        return
    if args.resume:
        print(json.dumps(resume(args.resume[0], int(args.resume[1]))), flush=True)
        os._exit(0)
    results = []
    with tempfile.TemporaryDirectory(
        prefix="herder-recovery-", dir=os.environ.get("BENCH_DIR")
    ) as d:
        for n in args.in_flight:
            results.append(run_one(pathlib.Path(d), n))
    report = {
        "benchmark": "recovery",
        "machine": machine(),
        "results": results,
        "targets": {
            "first_dispatch_s": FIRST_DISPATCH_TARGET,
            "all_redispatched_s": ALL_REDISPATCHED_TARGET,
        },
        "load": os.getloadavg(),
    }
    print(table(report))
    write_report(args.out, report)


if __name__ == "__main__":
    main()
