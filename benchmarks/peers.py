"""herder side by side with its peers on the travel workload, plus scale and recovery.

Every engine runs the workload of ``_workload.py`` in its own child process (so peak RSS
and CPU time are its own, and DBOS's process-wide state cannot leak between runs), one
size after another, in the same suite run:

- ``herder``: the real engine, durable, default settings (throughput.py's driver).
- ``bare-pykka``: the same chain on bare pykka actors, nothing durable: the ceiling.
- ``raw-lmdb/serial`` and ``raw-lmdb/group``: no engine, each step's result in a synced
  LMDB commit, one step per commit or one round of every in-flight workflow per commit:
  the storage limit.
- ``dbos-sqlite`` and ``dbos-sqlite-wal``: DBOS Transact, system database on SQLite,
  default journal and WAL, each with 1, 4 and 16 client threads (``dbos-sqlite/c4``...).
- ``huey-sqlite``: Huey on SqliteHuey with a thread consumer of 2, 8 and 16 workers
  (``huey-sqlite/w8``...), the steps as a pipeline.

A peer's ratio is taken against its best setting at each size (issue 15: each peer at its
best configuration); ``--engines dbos-sqlite`` runs all of a peer's settings.

Peers come from the ``bench`` extra (``pip install -e '.[bench]'``); a missing one is
reported as skipped. Each size gets a warm-up in the child, ``--reps`` repetitions (one
when a run is expected to take long) and the median with the min..max spread. A size is
skipped for an engine when the previous size's rate says it would exceed
``--time-limit``. Then ``scale.py`` (herder with 10..10,000 agent names) and
``recovery.py`` (SIGKILL with N workflows in flight) run, unless left out. Output: a table
on stdout, progress on stderr, a JSON report, and ``RESULTS.md`` (``_results.py``).

Usage: python benchmarks/peers.py [--quick] [--workflows 1000,10000,100000]
       [--engines herder,dbos-sqlite,...] [--reps 3] [--time-limit S] [--no-scale]
       [--no-recovery] [--out PATH] [--results PATH | --no-results]
       python benchmarks/peers.py --render REPORT.json [--results PATH]
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import pathlib
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

from _harness import machine_facts, progress, ratio, render_table, write_report
from _workload import Meter, Workload

TAG = "peers"
HERE = pathlib.Path(__file__).resolve().parent
RESULT = "RESULT "
LONG_RUN = 30.0  # seconds: runs expected to take longer get a single repetition


@dataclasses.dataclass(frozen=True)
class Engine:
    """One contender: how it runs in a child, and what its durability means."""

    name: str
    title: str
    run: Callable[[argparse.Namespace, pathlib.Path, Workload, Meter], dict[str, Any]]
    family: str = ""  # a peer run at several settings: the family whose best one counts

    @property
    def peer(self) -> str:
        """The engine this is a setting of (its own name when it has no settings)."""
        return self.family or self.name


def _herder(instances: int, batch: int = 1) -> Callable[..., dict[str, Any]]:
    """herder with ``args.starters`` threads calling ``start()`` (``batch`` 1), or with
    ``in_flight / batch`` threads calling ``start_many()`` of ``batch`` workflows."""

    def run(args: argparse.Namespace, root: pathlib.Path, wl: Workload, m: Meter) -> dict[str, Any]:
        from throughput import bench_herder

        starters = args.starters if batch == 1 else max(1, args.in_flight // batch)
        row = bench_herder(
            root,
            args.workflows[0],
            instances,
            args.in_flight,
            starters,
            workload=wl,
            warmup=args.warmup,
            meter=m,
            batch=batch,
        )
        calls = "start()" if batch == 1 else f"start_many() of {batch}"
        row["driver"] = (
            f"{starters} threads call {calls}; max_active_workflows={args.in_flight}; "
            f"{instances} instances per agent"
        )
        row["durable"] = (
            "start() returns once the workflow is committed; every step transition "
            "(dispatched, succeeded) committed before anything depends on it (group commit)"
        )
        row["fsync"] = "yes: every commit (LMDB sync=True, metasync=True)"
        return row

    return run


def _bare(instances: int) -> Callable[..., dict[str, Any]]:
    def run(args: argparse.Namespace, root: pathlib.Path, wl: Workload, m: Meter) -> dict[str, Any]:
        from throughput import bench_bare

        bench_bare(max(1, args.warmup), instances, args.in_flight, wl)
        row = bench_bare(args.workflows[0], instances, args.in_flight, wl, m)
        row["driver"] = f"{args.in_flight} chains in flight; {instances} actors per agent"
        row["durable"] = "nothing: in memory only (the ceiling)"
        row["fsync"] = "no"
        return row

    return run


def _raw(in_flight: int) -> Callable[..., dict[str, Any]]:
    def run(args: argparse.Namespace, root: pathlib.Path, wl: Workload, m: Meter) -> dict[str, Any]:
        from _engine_raw import run_raw

        return run_raw(root, args.workflows[0], wl, in_flight=in_flight, meter=m)

    return run


def _dbos(wal: bool, clients: int) -> Callable[..., dict[str, Any]]:
    def run(args: argparse.Namespace, root: pathlib.Path, wl: Workload, m: Meter) -> dict[str, Any]:
        from _engine_sqlite import run_dbos

        warm = min(args.warmup, 20)
        return run_dbos(root, args.workflows[0], wl, wal=wal, clients=clients, warmup=warm, meter=m)

    return run


def _huey(workers: int) -> Callable[..., dict[str, Any]]:
    def run(args: argparse.Namespace, root: pathlib.Path, wl: Workload, m: Meter) -> dict[str, Any]:
        from _engine_sqlite import run_huey

        return run_huey(
            root,
            args.workflows[0],
            wl,
            workers=workers,
            in_flight=args.in_flight,
            warmup=args.warmup,
            meter=m,
        )

    return run


# Each peer runs at every setting named here (issue 15: DBOS with 1, 4 and 16 client threads,
# Huey with 2, 8 and 16 workers; herder and bare pykka with 4 and 16 instances per agent, herder
# also driven by start_many), and the ratios take its best one at each size.
INSTANCES = (4, 16)
MANY = 64
"""The batch of herder's bulk setting (``herder/i4+many``): the caller of a blocking
``start()`` wakes once per workflow, the caller of a ``start_many()`` once per batch."""
DBOS_CLIENTS = (1, 4, 16)
HUEY_WORKERS = (2, 8, 16)
DBOS = {"dbos-sqlite": "SQLite default journal", "dbos-sqlite-wal": "SQLite WAL"}


ENGINES = {
    e.name: e
    for e in (
        *(
            Engine(
                f"herder/i{n}",
                f"herder (durable, defaults), {n} instances per agent",
                _herder(n),
                "herder",
            )
            for n in INSTANCES
        ),
        Engine(
            "herder/i4+many",
            f"herder (durable, defaults), 4 instances per agent, start_many() of {MANY}",
            _herder(4, MANY),
            "herder",
        ),
        *(
            Engine(
                f"bare-pykka/i{n}",
                f"bare pykka actors (no durability), {n} per agent",
                _bare(n),
                "bare-pykka",
            )
            for n in INSTANCES
        ),
        Engine("raw-lmdb/serial", "raw LMDB, one synced commit per step", _raw(1)),
        Engine("raw-lmdb/group", "raw LMDB, one synced commit per round", _raw(256)),
        *(
            Engine(
                f"{family}/c{n}",
                f"DBOS Transact 3.4, {journal}, {n} client threads",
                _dbos(family.endswith("-wal"), n),
                family,
            )
            for family, journal in DBOS.items()
            for n in DBOS_CLIENTS
        ),
        *(
            Engine(
                f"huey-sqlite/w{n}",
                f"Huey, SqliteHuey + {n}-thread consumer, pipeline",
                _huey(n),
                "huey-sqlite",
            )
            for n in HUEY_WORKERS
        ),
    )
}
PEERS = ("dbos-sqlite", "dbos-sqlite-wal", "huey-sqlite")
SWEPT = ("herder", "bare-pykka", *PEERS)
"""The engines run at several settings; each is compared at its fastest."""
TARGETS = {  # issue 15: workflows/s against each peer at its best; steps/s against bare pykka
    "herder_vs_dbos_sqlite": 30.0,
    "herder_vs_dbos_sqlite_wal": 30.0,
    "herder_vs_huey_sqlite": 10.0,
    "herder_vs_bare_steps": 0.15,
}


# -- the child -------------------------------------------------------------------------------


def child(args: argparse.Namespace) -> None:
    """Run one engine at one size and print its row as the last stdout line."""
    import logging

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    for noisy in ("huey", "huey.consumer", "dbos"):
        logging.getLogger(noisy).setLevel(logging.CRITICAL)
    engine = ENGINES[args.child]
    workload = Workload(fail_rate=args.fail_rate, latency=args.latency)
    meter = Meter()
    try:
        with tempfile.TemporaryDirectory(prefix="herder-peers-", dir=args.bench_dir) as d:
            row = engine.run(args, pathlib.Path(d), workload, meter)
    except ImportError as exc:
        row = {"skipped": f"not installed ({exc.name or exc}); pip install -e '.[bench]'"}
    else:
        row["cpu_s"] = meter.cpu
        row["cpu_s_per_1k_workflows"] = meter.cpu / row["workflows"] * 1000
        row["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(RESULT + json.dumps(row), flush=True)
    sys.stdout.flush()
    os._exit(0)  # peers leave non-daemon threads behind; the row is out, so leave now


def _run_child(args: argparse.Namespace, engine: str, workflows: int) -> dict[str, Any]:
    cmd = [
        sys.executable,
        str(HERE / "peers.py"),
        "--child",
        engine,
        "--workflows",
        str(workflows),
        *_shared_flags(args),
    ]
    limit = args.time_limit * 2 + 60
    try:
        done = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, timeout=limit, check=False)
    except subprocess.TimeoutExpired:
        return {"failed": f"no result within {limit:.0f} s"}
    for line in reversed(done.stdout.splitlines()):
        if line.startswith(RESULT):
            row: dict[str, Any] = json.loads(line[len(RESULT) :])
            return row
    return {"failed": f"child exited {done.returncode} without a result (see stderr above)"}


def _shared_flags(args: argparse.Namespace) -> list[str]:
    flags = {
        "--in-flight": args.in_flight,
        "--starters": args.starters,
        "--warmup": args.warmup,
        "--fail-rate": args.fail_rate,
        "--latency": args.latency,
    }
    out = [str(x) for kv in flags.items() for x in kv]
    if args.bench_dir:
        out += ["--bench-dir", args.bench_dir]
    return out


# -- the suite ------------------------------------------------------------------------------


def _median_row(engine: str, workflows: int, reps: list[dict[str, Any]]) -> dict[str, Any]:
    def med(get: Callable[[dict[str, Any]], float]) -> float:
        return statistics.median(get(r) for r in reps)

    rates = [r["workflows_per_s"] for r in reps]
    first = reps[0]
    return {
        "engine": engine,
        "workflows": workflows,
        "status": "measured",
        "reps": len(reps),
        "workflows_per_s": med(lambda r: r["workflows_per_s"]),
        "steps_per_s": med(lambda r: r["steps_per_s"]),
        "spread_workflows_per_s": [min(rates), max(rates)],
        "p50_ms": med(lambda r: r["workflow_latency"]["p50_ms"]),
        "p99_ms": med(lambda r: r["workflow_latency"]["p99_ms"]),
        "cpu_s_per_1k_workflows": med(lambda r: r["cpu_s_per_1k_workflows"]),
        "peak_rss_mb": med(lambda r: r["peak_rss_mb"]),
        "durable": first.get("durable", ""),
        "fsync": first.get("fsync", ""),
        "driver": first.get("driver", ""),
        "runs": reps,
    }


def run_engines(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every engine at every size: measured, or skipped with the reason."""
    rows: list[dict[str, Any]] = []
    for name in args.engines:
        rate: float | None = None
        skipped: str | None = None
        for workflows in sorted(args.workflows):
            if skipped is None and rate is not None and workflows / rate > args.time_limit:
                reason = (
                    f"expected {workflows / rate:,.0f} s at {rate:,.0f} wf/s, "
                    f"over the {args.time_limit:g} s limit"
                )
                rows.append(_skipped(name, workflows, reason))
                progress(TAG, f"{name} {workflows:,}: skipped, {reason}")
                continue
            if skipped is not None:
                rows.append(_skipped(name, workflows, skipped))
                continue
            expected = workflows / rate if rate else 0.0
            reps = 1 if expected > LONG_RUN else args.reps
            runs: list[dict[str, Any]] = []
            for rep in range(reps):
                progress(TAG, f"{name} {workflows:,} workflows, run {rep + 1}/{reps}")
                began = time.perf_counter()
                row = _run_child(args, name, workflows)
                if "skipped" in row or "failed" in row:
                    skipped = row.get("skipped") or f"failed: {row['failed']}"
                    progress(TAG, f"{name}: {skipped}")
                    break
                runs.append(row)
                progress(
                    TAG,
                    f"{name} {workflows:,}: {row['workflows_per_s']:,.0f} wf/s, "
                    f"p99 {row['workflow_latency']['p99_ms']:,.0f} ms "
                    f"({time.perf_counter() - began:.0f} s with set-up)",
                )
                if row["seconds"] > LONG_RUN:
                    break  # one long run is enough; more would not fit the suite's time
            if skipped is not None:
                rows.append(_skipped(name, workflows, skipped))
                continue
            summary = _median_row(name, workflows, runs)
            rate = summary["workflows_per_s"]
            rows.append(summary)
    return rows


def _skipped(engine: str, workflows: int, reason: str) -> dict[str, Any]:
    return {"engine": engine, "workflows": workflows, "status": "skipped", "reason": reason}


def best_settings(
    rows: list[dict[str, Any]], leave_out: str | None = None
) -> dict[str, dict[int, dict[str, Any]]]:
    """Per peer and size, the row of its fastest setting (by median workflows/s); the
    settings whose name holds ``leave_out`` do not count."""
    best: dict[str, dict[int, dict[str, Any]]] = {}
    for r in rows:
        engine = ENGINES.get(r["engine"])
        if r["status"] != "measured" or engine is None or engine.peer not in SWEPT:
            continue
        if leave_out and leave_out in engine.name:
            continue
        held = best.setdefault(engine.peer, {}).get(r["workflows"])
        if held is None or r["workflows_per_s"] > held["workflows_per_s"]:
            best[engine.peer][r["workflows"]] = r
    return best


def ratios(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """herder's wf/s over each peer's, and its steps/s over bare pykka's, per size, each
    at its best setting; ``herder_start_vs_...``: herder's best setting driven by
    ``start()`` callers only (no target; shown beside the bulk setting's)."""
    out: dict[str, dict[str, float]] = {}
    for prefix, leave_out in (("herder", None), ("herder_start", "+many")):
        best = best_settings(rows, leave_out)
        for size, herder in best.get("herder", {}).items():
            for peer in PEERS:
                if size in best.get(peer, {}):
                    key = f"{prefix}_vs_{peer.replace('-', '_')}"
                    out.setdefault(key, {})[str(size)] = (
                        herder["workflows_per_s"] / best[peer][size]["workflows_per_s"]
                    )
            if size in best.get("bare-pykka", {}):
                out.setdefault(f"{prefix}_vs_bare_steps", {})[str(size)] = (
                    herder["steps_per_s"] / best["bare-pykka"][size]["steps_per_s"]
                )
    return out


def _sub_benchmark(script: str, argv: list[str]) -> dict[str, Any] | None:
    """Run scale.py or recovery.py, which write their own JSON; read it back."""
    with tempfile.TemporaryDirectory(prefix="herder-peers-") as d:
        out = pathlib.Path(d) / "report.json"
        cmd = [sys.executable, str(HERE / script), *argv, "--out", str(out)]
        done = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=False)
        sys.stderr.write(done.stdout)
        if done.returncode != 0 or not out.exists():
            progress(TAG, f"{script} failed with exit code {done.returncode}")
            return {"failed": f"{script} exited {done.returncode}"}
        report: dict[str, Any] = json.loads(out.read_text())
        return report


def run_suite(args: argparse.Namespace) -> dict[str, Any]:
    """The whole suite: engines, then scale and recovery unless left out."""
    load_before = os.getloadavg()
    began = time.perf_counter()
    rows = run_engines(args)
    scale = None
    if args.scale:
        progress(TAG, f"scale curve: {args.scale_agents} agent names")
        scale = _sub_benchmark(
            "scale.py",
            ["--agents", ",".join(map(str, args.scale_agents)), "--workflows", str(args.scale_wf)],
        )
    recovery = None
    if args.recovery:
        progress(TAG, f"recovery: {args.recovery_sizes} in flight")
        recovery = _sub_benchmark(
            "recovery.py", ["--in-flight", ",".join(map(str, args.recovery_sizes))]
        )
    return {
        "benchmark": "peers",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine_facts(),
        "load_average": {"before": load_before, "after": os.getloadavg()},
        "suite_seconds": time.perf_counter() - began,
        "settings": {
            "quick": args.quick,
            "workflows": args.workflows,
            "reps": args.reps,
            "time_limit_s": args.time_limit,
            "instances": list(INSTANCES),
            "in_flight": args.in_flight,
            "starters": args.starters,
            "dbos_clients": list(DBOS_CLIENTS),
            "huey_workers": list(HUEY_WORKERS),
            "warmup": args.warmup,
        },
        "workload": Workload(fail_rate=args.fail_rate, latency=args.latency).as_dict(),
        "engines": {name: ENGINES[name].title for name in args.engines},
        "rows": rows,
        "ratios": ratios(rows),
        "best": {
            peer: {str(size): r["engine"] for size, r in by_size.items()}
            for peer, by_size in best_settings(rows).items()
        },
        "targets": TARGETS,
        "scale": scale,
        "recovery": recovery,
    }


def table(report: dict[str, Any]) -> str:
    """The terminal table: one line per engine and size, then the ratios."""
    header = (
        "engine",
        "workflows",
        "wf/s",
        "spread",
        "steps/s",
        "p50 ms",
        "p99 ms",
        "CPU s/1k wf",
        "RSS MB",
        "fsync",
    )
    body: list[list[Any]] = []
    for r in report["rows"]:
        if r["status"] != "measured":
            body.append([r["engine"], r["workflows"], "skipped", "", "", "", "", "", "", ""])
            continue
        lo, hi = r["spread_workflows_per_s"]
        body.append(
            [
                r["engine"],
                r["workflows"],
                r["workflows_per_s"],
                f"{lo:,.0f}..{hi:,.0f}" if r["reps"] > 1 else "1 run",
                r["steps_per_s"],
                r["p50_ms"],
                r["p99_ms"],
                r["cpu_s_per_1k_workflows"],
                r["peak_rss_mb"],
                "yes" if r["fsync"].startswith("yes") else "no",
            ]
        )
    lines = [render_table(header, body), ""]
    lines += [
        f"skipped {r['engine']} {r['workflows']:,}: {r['reason']}"
        for r in report["rows"]
        if r["status"] != "measured"
    ]
    for key, by_size in report["ratios"].items():
        target = report["targets"].get(key)
        values = ", ".join(f"{ratio(v)} at {int(s):,}" for s, v in by_size.items())
        aim = "start() callers only, no target" if target is None else f"target >= {target}x"
        lines.append(f"{key}: {values} ({aim})")
    return "\n".join(lines)


def ints(text: str) -> list[int]:
    """A comma-separated list of integers."""
    return [int(x) for x in text.split(",") if x]


def engines(text: str) -> list[str]:
    """A comma-separated list of engine names, checked; a peer's name stands for every
    setting it runs at (``huey-sqlite``: ``huey-sqlite/w2``, ``/w8``, ``/w16``)."""
    names: list[str] = []
    for name in (x for x in text.split(",") if x):
        settings = [e.name for e in ENGINES.values() if name in (e.name, e.family)]
        if not settings:
            known = sorted({e.peer for e in ENGINES.values()} | set(ENGINES))
            raise argparse.ArgumentTypeError(f"unknown engine {name!r}; known: {known}")
        names += [n for n in settings if n not in names]
    return names


def parse(argv: list[str] | None) -> argparse.Namespace:
    """The command line; --quick changes the defaults it is given before the rest."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a run of a few minutes")
    parser.add_argument("--workflows", type=ints, default=None)
    parser.add_argument("--engines", type=engines, default=list(ENGINES))
    parser.add_argument("--reps", type=int, default=None)
    parser.add_argument("--time-limit", type=float, default=None, help="seconds per run")
    # Each engine's best setting in a sweep on this machine (see ANALYSIS.md).
    parser.add_argument("--in-flight", type=int, default=256)
    parser.add_argument("--starters", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=100, help="workflows before timing")
    parser.add_argument("--fail-rate", type=float, default=0.0)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds per action")
    parser.add_argument("--scale-agents", type=ints, default=None)
    parser.add_argument("--scale-wf", type=int, default=None)
    parser.add_argument("--recovery-sizes", type=ints, default=None)
    parser.add_argument("--no-scale", dest="scale", action="store_false")
    parser.add_argument("--no-recovery", dest="recovery", action="store_false")
    parser.add_argument("--bench-dir", default=os.environ.get("BENCH_DIR"))
    parser.add_argument("--out", type=pathlib.Path, default=HERE / "out" / "peers.json")
    parser.add_argument("--results", type=pathlib.Path, default=None)
    parser.add_argument("--no-results", action="store_true")
    parser.add_argument(
        "--render", type=pathlib.Path, help="only write RESULTS.md from this JSON report"
    )
    parser.add_argument("--child", choices=list(ENGINES), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    quick = args.quick
    defaults: dict[str, Any] = {
        "workflows": [1000] if quick else [1000, 10_000, 100_000],
        "reps": 1 if quick else 3,
        "time_limit": 60.0 if quick else 150.0,
        "scale_agents": [10, 100, 1000] if quick else [10, 100, 1000, 10_000],
        "scale_wf": 1000 if quick else 3000,
        "recovery_sizes": [10_000] if quick else [10_000, 100_000],
    }
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.results is None and not quick and not args.no_results:
        args.results = HERE / "RESULTS.md"
    if args.no_results:
        args.results = None
    return args


def main(argv: list[str] | None = None) -> None:
    """Run the suite (or, with --child, one engine run) and write the reports."""
    args = parse(argv)
    if args.child:
        child(args)
        return
    if args.render:
        from _results import write_results

        path = args.results or HERE / "RESULTS.md"
        write_results(path, json.loads(args.render.read_text()))
        print(f"wrote {path}")
        return
    report = run_suite(args)
    print(table(report))
    write_report(args.out, report)
    if args.results is not None:
        from _results import write_results

        write_results(args.results, report)
        print(f"wrote {args.results}")


if __name__ == "__main__":
    main()
