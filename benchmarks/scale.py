"""herder with 10 to 10,000 agent names (one per remote resource): throughput and RSS.

For each N (``--agents``), a child process registers N agents ``res-00000`` .. (one
instance each) and ``ceil(N / 3)`` travel workflows, definition ``k`` running its
three steps on agents ``3k``, ``3k+1`` and ``3k+2`` (mod N), then runs ``--workflows``
workflows spread evenly over the definitions with throughput.py's driver. So every agent
name gets work and has a live instance at the end. Reported per N: workflows/s, p50/p99
latency, the time to register, RSS after opening (before any agent), at the end, and
per agent ``(end - opened) / N``, plus the marginal cost per agent over the 10-agent
case. RSS is read from /proc/self/statm and includes the store's mapped pages.

Target (issue 7): with 10,000 names, per-workflow throughput within 2x of 10 names.

``--host`` picks the agent host: ``pool`` (the default, issue 16: 10,000 names keep
>= 0.75x of the 10-name rate, threads stay near the pool size, <= 4 KiB of RSS per agent)
or ``thread``; ``--host pool,thread`` runs both in one run, interleaved per N (A/B), each
host's ratios against its own smallest N, and prints one table with a host column.

Usage: python benchmarks/scale.py [--agents 10,100,1000,10000] [--workflows 5000]
       [--host pool|thread|pool,thread] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import pathlib
import resource
import subprocess
import sys
import tempfile
import time
from typing import Any

from _harness import machine, progress, render_table, rss_mb, write_report
from _workload import STEPS, Meter, travel

TAG = "scale"
HERE = pathlib.Path(__file__).resolve().parent
RATIO_TARGET = 0.75  # 10k names keep at least 0.75x of the 10-name rate (issue 16, pool)


def one(root: pathlib.Path, agents: int, workflows: int, host: str) -> dict[str, Any]:
    """Run ``workflows`` over ``agents`` agent names in this process (module docstring)."""
    from throughput import bench_herder

    names = [f"res-{i:05d}" for i in range(agents)]
    flows = [
        travel({step: names[(3 * k + j) % agents] for j, step in enumerate(STEPS)}, f"trip-{k}")
        for k in range((agents + 2) // 3)
    ]
    opened = rss_mb()
    meter = Meter()
    began = time.perf_counter()
    row = bench_herder(
        root,
        workflows,
        1,
        256,
        32,
        warmup=0,
        meter=meter,
        agents=names,
        flows=flows,
        agent_host=host,
    )
    total = time.perf_counter() - began
    end = meter.rss_mb  # read when the last workflow finished, every instance still alive
    row.update(
        agents=agents,
        host=host,
        definitions=len(flows),
        setup_and_run_s=total,
        cpu_s_per_1k_workflows=meter.cpu / workflows * 1000,
        rss_opened_mb=opened,
        rss_end_mb=end,
        rss_per_agent_kb=(end - opened) * 1024 / agents,
        peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        threads=meter.threads,
    )
    return row


def run(agent_counts: list[int], workflows: int, host: str) -> dict[str, Any]:
    """Each N (and host, of the comma-separated ``host``) in its own child process, the
    hosts interleaved per N; ratios against the same host's smallest N."""
    results = []
    me = str(pathlib.Path(__file__).resolve())
    hosts = host.split(",")
    for n in agent_counts:
        for h in hosts:
            progress(TAG, f"{n:,} agent names on the {h} host, {workflows:,} workflows")
            done = subprocess.run(
                [sys.executable, me, "--child", str(n), "--workflows", str(workflows), "--host", h],
                stdout=subprocess.PIPE,
                text=True,
                check=True,
            )
            row = json.loads(done.stdout.splitlines()[-1])
            results.append(row)
            progress(
                TAG,
                f"{n:,} names, {h}: {row['workflows_per_s']:,.0f} wf/s, "
                f"{row['rss_per_agent_kb']:,.1f} KiB RSS per agent, {row['threads']} threads",
            )
    for r in results:
        base = next(b for b in results if b["host"] == r["host"])
        r["vs_smallest"] = r["workflows_per_s"] / base["workflows_per_s"]
        extra = r["agents"] - base["agents"]
        r["marginal_rss_per_agent_kb"] = (
            (r["rss_end_mb"] - base["rss_end_mb"]) * 1024 / extra if extra else None
        )
    return {
        "benchmark": "scale",
        "machine": machine(),
        "workflows": workflows,
        "host": host,
        "results": results,
        "targets": {"vs_smallest": RATIO_TARGET},
    }


def rows(results: list[dict[str, Any]]) -> list[list[Any]]:
    """The cells of one table row per number of agent names (also in RESULTS.md)."""
    return [
        [
            r["agents"],
            r["workflows_per_s"],
            f"{r['vs_smallest']:.2f}x",
            r["workflow_latency"]["p50_ms"],
            r["workflow_latency"]["p99_ms"],
            r["cpu_s_per_1k_workflows"],
            r["rss_end_mb"],
            r["rss_per_agent_kb"],
            "" if r["marginal_rss_per_agent_kb"] is None else r["marginal_rss_per_agent_kb"],
            r["threads"],
        ]
        for r in results
    ]


def table(report: dict[str, Any]) -> str:
    """One line per number of agent names (and host)."""
    header = (
        "host",
        "agents",
        "wf/s",
        "vs smallest",
        "p50 ms",
        "p99 ms",
        "CPU s/1k wf",
        "RSS end MB",
        "KiB/agent",
        "marginal KiB/agent",
        "threads",
    )
    cells = [
        [r["host"], *row] for r, row in zip(report["results"], rows(report["results"]), strict=True)
    ]
    return render_table(header, cells) + (
        f"\ntarget: the largest N keeps >= {RATIO_TARGET:.0%} of the smallest N's wf/s"
    )


def main(argv: list[str] | None = None) -> None:
    """Run every N, print the table, write the JSON report (or be one N's child)."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--agents", type=lambda s: [int(x) for x in s.split(",")], default=[10, 100, 1000, 10_000]
    )
    parser.add_argument("--workflows", type=int, default=5000)
    parser.add_argument("--host", default="pool", help="pool, thread, or pool,thread")
    parser.add_argument("--out", type=pathlib.Path, default=HERE / "out" / "scale.json")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
        with tempfile.TemporaryDirectory(
            prefix="herder-scale-", dir=os.environ.get("BENCH_DIR")
        ) as d:
            row = one(pathlib.Path(d), args.child, args.workflows, args.host)
        print(json.dumps(row), flush=True)
        os._exit(0)  # 10,000 agent threads need not be stopped one by one
    report = run(args.agents, args.workflows, args.host)
    print(table(report))
    write_report(args.out, report)


if __name__ == "__main__":
    main()
