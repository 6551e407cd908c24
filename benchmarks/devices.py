"""A daemon's tick: 2,000 devices, one agent each, one workflow per device, all at once.

The design card's second user is a daemon that spawns an agent per remote resource. Each
tick it starts one polling workflow per device (its own agent ``dev-NNNNN``, whose
``poll`` action waits ``--latency`` ms for the device, then answers) and waits for every
one. A child process per host (``--hosts pool,thread``, interleaved per repetition, so
the ratio is from one run) reports the tick's wall time, workflows/s, the peak number of
threads during the tick (sampled every millisecond) and RSS.

Target (issue 16): on the pooled host, at most 64 threads during a tick (the thread host
starts two per busy device: an instance and its per-agent supervisor).

Usage: python benchmarks/devices.py [--devices 2000] [--latency 5] [--reps 1]
       [--hosts pool,thread] [--out PATH]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import functools
import json
import logging
import os
import pathlib
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

from _harness import machine, progress, render_table, rss_mb, write_report

from herder.runtime import Agent, Runtime, StepContext, Workflow

TAG = "devices"
HERE = pathlib.Path(__file__).resolve().parent
THREAD_TARGET = 64


class Device(Agent):
    """One remote device: answers a poll after the device's latency."""

    def __init__(self, name: str, latency: float) -> None:
        self.name = name
        self.latency = latency

    def poll(self, ctx: StepContext) -> dict[str, Any]:
        time.sleep(self.latency)
        return {"device": self.name, "reading": ctx.attempt}


class PeakThreads:
    """Samples ``threading.active_count()`` every millisecond until stopped."""

    def __init__(self) -> None:
        self.peak = threading.active_count()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="peak-threads", daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.001):
            self.peak = max(self.peak, threading.active_count())

    def __enter__(self) -> PeakThreads:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()


def one(root: pathlib.Path, devices: int, latency: float, host: str) -> dict[str, Any]:
    """One tick over ``devices`` devices on ``host``, in this process."""
    names = [f"dev-{i:05d}" for i in range(devices)]
    # Not closed: the child exits with os._exit (thousands of threads need no stopping).
    rt = Runtime(root / "store", agent_host=host, map_size=1 << 30)
    for name in names:
        rt.add_agent(name, functools.partial(Device, name, latency))
        rt.add_workflow(Workflow(f"poll-{name}").step("poll", agent=name, action="poll"))
    opened = rss_mb()
    baseline = threading.active_count()
    began = time.perf_counter()
    with PeakThreads() as peak, concurrent.futures.ThreadPoolExecutor(8) as starters:
        handles = list(starters.map(lambda name: rt.start(f"poll-{name}", None), names))
        for handle in handles:
            handle.result(timeout=600)
        tick = time.perf_counter() - began
    return {
        "host": host,
        "devices": devices,
        "latency_ms": latency * 1000,
        "tick_s": tick,
        "workflows_per_s": devices / tick,
        "peak_threads": peak.peak,
        "threads_before": baseline,
        "rss_opened_mb": opened,
        "rss_end_mb": rss_mb(),
        "host_stats": rt.stats()["host"],
    }


def run(devices: int, latency: float, reps: int, hosts: list[str]) -> dict[str, Any]:
    """Each (repetition, host) in its own child process, hosts interleaved."""
    me = str(pathlib.Path(__file__).resolve())
    results = []
    for rep in range(reps):
        for host in hosts:
            progress(TAG, f"rep {rep + 1}: {devices:,} devices on the {host} host")
            child = ["--child", host, "--devices", str(devices), "--latency", str(latency * 1e3)]
            done = subprocess.run(
                [sys.executable, me, *child],
                stdout=subprocess.PIPE,
                text=True,
                check=True,
            )
            row = json.loads(done.stdout.splitlines()[-1])
            results.append(row)
            progress(
                TAG,
                f"{host}: tick {row['tick_s']:.2f} s, peak {row['peak_threads']} threads",
            )
    first = results[0]
    for r in results:
        r["vs_first_host"] = r["workflows_per_s"] / first["workflows_per_s"]
    return {
        "benchmark": "devices",
        "machine": machine(),
        "load_average": os.getloadavg(),
        "results": results,
        "targets": {"peak_threads_pool": THREAD_TARGET},
    }


def table(report: dict[str, Any]) -> str:
    """One line per (repetition, host)."""
    header = ("host", "devices", "tick s", "wf/s", "vs first", "peak threads", "RSS MB")
    cells = [
        [
            r["host"],
            r["devices"],
            r["tick_s"],
            r["workflows_per_s"],
            f"{r['vs_first_host']:.2f}x",
            r["peak_threads"],
            r["rss_end_mb"],
        ]
        for r in report["results"]
    ]
    return render_table(header, cells) + (
        f"\ntarget: the pool host stays at or below {THREAD_TARGET} threads during a tick"
    )


def main(argv: list[str] | None = None) -> None:
    """Run every host, print the table, write the JSON report (or be one host's child)."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--devices", type=int, default=2000)
    parser.add_argument("--latency", type=float, default=5.0, help="ms per poll")
    parser.add_argument("--reps", type=int, default=1)
    parser.add_argument("--hosts", default="pool,thread")
    parser.add_argument("--out", type=pathlib.Path, default=HERE / "out" / "devices.json")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
        with tempfile.TemporaryDirectory(
            prefix="herder-devices-", dir=os.environ.get("BENCH_DIR")
        ) as d:
            row = one(pathlib.Path(d), args.devices, args.latency / 1000, args.child)
        print(json.dumps(row), flush=True)
        os._exit(0)  # thousands of agent threads need not be stopped one by one
    report = run(args.devices, args.latency / 1000, args.reps, args.hosts.split(","))
    print(table(report))
    write_report(args.out, report)


if __name__ == "__main__":
    main()
