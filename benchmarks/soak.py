"""Soak: many workflows under a steady fault rate, watching for leaks and slow-downs.

Runs ``--workflows`` (default 100,000) three-step travel bookings through one durable
runtime, ``--in-flight`` at a time, while the agents fail a steady share of attempts
(transient failures are retried, a smaller share fail for good and are compensated).
Every ``--window`` finished workflows it samples throughput, latency (start to final
state), resident memory, the store's size, threads and pending timers, and prints a row.

The leak check compares resident memory after the run with resident memory after the
first ``--window`` workflows: within 20% is PASS. Resident memory also counts the pages
of the store's memory map that were read, which grow with the store by design (finished
workflows are kept), so the check is made on anonymous memory (heap: records, timers,
futures, threads); the total is printed next to it.

    python benchmarks/soak.py [--workflows N] [--fault-rate F] [--out PATH]

``--retention`` runs the retention soak instead (``_retention_soak.py``): the store's size
under a steady stream with ``Runtime(retention=R)``, and step latency while ``--purge``
finished workflows are deleted with ``--in-flight`` running (off, on until done, off).
"""

from __future__ import annotations

import argparse
import array
import os
import random
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _harness import machine, percentile, progress, render_table, write_report

from herder.runtime import Agent, Permanent, RetryPolicy, Runtime, StepContext, Workflow
from herder.store._records import StepRecord, WorkflowRecord

TAG = "soak"
LEAK_TOLERANCE = 0.20


class Booking(Agent):
    """Books and cancels instantly; fails a share of attempts, a smaller share for good."""

    def __init__(self, fault_rate: float, permanent_rate: float, seed: int) -> None:
        self.fault_rate = fault_rate
        self.permanent_rate = permanent_rate
        self.rand = random.Random(seed)

    def book(self, ctx: StepContext) -> dict[str, Any]:
        roll = self.rand.random()
        if roll < self.permanent_rate:
            raise Permanent("sold out (injected)")
        if roll < self.permanent_rate + self.fault_rate:
            raise ConnectionError("remote timed out (injected)")
        return {"ref": ctx.idempotency_key, "attempt": ctx.attempt}

    def cancel(self, ctx: StepContext) -> None:
        if self.rand.random() < self.fault_rate:
            raise ConnectionError("remote timed out while cancelling (injected)")


def trip() -> Workflow:
    retry = RetryPolicy(
        max_attempts=6, initial_interval=0.005, backoff_coefficient=2.0, max_interval=0.05
    )
    return (
        Workflow("trip")
        .step("flight", agent="airline", action="book", compensate="cancel", retry=retry)
        .step("hotel", agent="hotels", action="book", compensate="cancel", after=["flight"],
              retry=retry)
        .step("car", agent="cars", action="book", compensate="cancel", after=["hotel"],
              retry=retry)
    )  # fmt: skip


def _status_kib(field: str) -> float:
    """A ``/proc/self/status`` field in KiB (RssAnon, RssFile, ...); 0.0 elsewhere."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return float(line.split()[1])
    except OSError:
        pass
    return 0.0


def memory_mib() -> tuple[float, float]:
    """(resident total, resident anonymous) memory of this process in MiB."""
    return _status_kib("VmRSS") / 1024, _status_kib("RssAnon") / 1024


class Tracker:
    """Counts final states and latencies as the runtime announces them."""

    def __init__(self, in_flight: int, total: int) -> None:
        self.slots = threading.BoundedSemaphore(in_flight)
        self.lock = threading.Lock()
        self.started: dict[str, float] = {}
        # Allocated up front: a list growing by a float object per workflow would be a
        # leak of the benchmark's own (about 3 MiB per 100k), inside the RSS it checks.
        self.latencies = array.array("d", bytes(8 * total))
        self.count = 0
        self.states: dict[str, int] = {}
        self.changed = threading.Condition(self.lock)

    def began(self, workflow_id: str) -> None:
        with self.lock:
            self.started[workflow_id] = time.perf_counter()

    def finished(self, record: WorkflowRecord) -> None:
        now = time.perf_counter()
        with self.lock:
            began = self.started.pop(record.id, None)
            if began is None:
                return
            self.latencies[self.count] = now - began
            self.count += 1
            self.states[str(record.state)] = self.states.get(str(record.state), 0) + 1
            self.changed.notify_all()
        self.slots.release()

    def wait_for(self, count: int, timeout: float) -> bool:
        with self.lock:
            return self.changed.wait_for(lambda: self.count >= count, timeout)


def run(args: argparse.Namespace) -> dict[str, Any]:
    directory = Path(args.dir or tempfile.mkdtemp(prefix="herder-soak-"))
    store = directory / "store"
    tracker = Tracker(args.in_flight, args.workflows)
    windows: list[dict[str, Any]] = []
    with Runtime(store, max_active_workflows=args.in_flight * 2, seed=args.seed) as rt:
        announce = rt._listener.on_final  # the soak listens to every final state, as waiters do

        def on_final(record: WorkflowRecord, steps: list[StepRecord] | None) -> None:
            announce(record, steps)
            tracker.finished(record)

        rt._listener.on_final = on_final  # type: ignore[method-assign]
        for i, name in enumerate(("airline", "hotels", "cars")):

            def factory(i: int = i) -> Booking:
                return Booking(args.fault_rate, args.permanent_rate, args.seed * 31 + i)

            rt.add_agent(name, factory, concurrency=4)
        rt.add_workflow(trip())

        def sample(done: int, window_began: float, window_start: int) -> None:
            now = time.perf_counter()
            with tracker.lock:
                recent = tracker.latencies[window_start:done].tolist()
            rss, anon = memory_mib()
            row = {
                "finished": done,
                "elapsed_s": now - t0,
                "workflows_per_s": (done - window_start) / (now - window_began),
                "p50_ms": percentile(recent, 0.50) * 1e3,
                "p99_ms": percentile(recent, 0.99) * 1e3,
                "rss_mib": rss,
                "rss_anon_mib": anon,
                "store_mib": (store / "data.mdb").stat().st_size / 2**20,
                "threads": threading.active_count(),
                "timers": rt._store.count("timers"),
            }
            windows.append(row)
            progress(
                TAG,
                f"{done:>7,} done  {row['workflows_per_s']:7.0f} wf/s  p99 {row['p99_ms']:6.1f} ms"
                f"  rss {rss:6.1f} MiB (anon {anon:6.1f})  store {row['store_mib']:6.1f} MiB",
            )

        t0 = time.perf_counter()
        window_began, window_start = t0, 0
        next_sample = args.window

        numbers = iter(range(args.workflows))
        numbers_lock = threading.Lock()

        def feeder() -> None:
            # Several threads: each start() waits for its own durable commit, and the
            # group commit only pays off with many in flight.
            while True:
                tracker.slots.acquire()
                with numbers_lock:
                    i = next(numbers, None)
                if i is None:
                    tracker.slots.release()
                    return
                wid = f"soak-{i:07d}"
                tracker.began(wid)
                rt.start("trip", {"n": i}, workflow_id=wid, timeout=60)

        feeders = [
            threading.Thread(target=feeder, name=f"soak-feeder-{n}", daemon=True)
            for n in range(args.starters)
        ]
        for thread in feeders:
            thread.start()
        while next_sample <= args.workflows:
            if not tracker.wait_for(next_sample, timeout=120):
                raise RuntimeError(f"stalled before {next_sample:,} workflows finished")
            sample(next_sample, window_began, window_start)
            window_began, window_start = time.perf_counter(), next_sample
            next_sample += args.window
        for thread in feeders:
            thread.join(timeout=60)
        elapsed = time.perf_counter() - t0
        stats = rt.stats()
    first, last = windows[0], windows[-1]
    growth_anon = last["rss_anon_mib"] / first["rss_anon_mib"] - 1
    growth_total = last["rss_mib"] / first["rss_mib"] - 1
    return {
        "benchmark": "soak",
        "machine": machine(),
        "settings": vars(args) | {"dir": str(directory), "out": str(args.out)},
        "workflows": args.workflows,
        "elapsed_s": elapsed,
        "workflows_per_s": args.workflows / elapsed,
        "p50_ms": percentile(tracker.latencies.tolist(), 0.50) * 1e3,
        "p99_ms": percentile(tracker.latencies.tolist(), 0.99) * 1e3,
        "final_states": tracker.states,
        "steps": {k: v for k, v in stats["steps"].items() if isinstance(v, int)},
        "store_io_errors": stats["store"]["io_errors"],
        "windows": windows,
        "leak_check": {
            "rss_anon_first_window_mib": first["rss_anon_mib"],
            "rss_anon_after_run_mib": last["rss_anon_mib"],
            "growth_anon": growth_anon,
            "rss_first_window_mib": first["rss_mib"],
            "rss_after_run_mib": last["rss_mib"],
            "growth_total": growth_total,
            "tolerance": LEAK_TOLERANCE,
            "passed": growth_anon <= LEAK_TOLERANCE,
        },
    }


def table(report: dict[str, Any]) -> str:
    header = ("finished", "s", "wf/s", "p50 ms", "p99 ms", "RSS MiB", "anon MiB", "store MiB",
              "threads", "timers")  # fmt: skip
    rows = [
        (
            f"{w['finished']:,}",
            w["elapsed_s"],
            w["workflows_per_s"],
            w["p50_ms"],
            w["p99_ms"],
            w["rss_mib"],
            w["rss_anon_mib"],
            w["store_mib"],
            w["threads"],
            w["timers"],
        )
        for w in report["windows"]
    ]
    leak = report["leak_check"]
    verdict = "PASS" if leak["passed"] else "FAIL"
    return "\n".join(
        [
            render_table(header, rows),
            "",
            f"{report['workflows']:,} workflows in {report['elapsed_s']:.1f} s: "
            f"{report['workflows_per_s']:.0f} wf/s, p50 {report['p50_ms']:.1f} ms, "
            f"p99 {report['p99_ms']:.1f} ms; final states {report['final_states']}; "
            f"retried {report['steps'].get('retried', 0):,}, "
            f"failed {report['steps'].get('failed', 0):,}",
            f"anonymous RSS {leak['rss_anon_first_window_mib']:.1f} MiB after the first "
            f"window -> {leak['rss_anon_after_run_mib']:.1f} MiB after the run "
            f"({leak['growth_anon']:+.1%}, limit +{leak['tolerance']:.0%}): {verdict}",
            f"total RSS {leak['rss_first_window_mib']:.1f} -> {leak['rss_after_run_mib']:.1f} "
            f"MiB ({leak['growth_total']:+.1%}; includes the store's mapped pages)",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    here = Path(__file__).resolve().parent
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workflows", type=int, default=100_000)
    parser.add_argument("--window", type=int, default=10_000, help="sample every N finished")
    parser.add_argument("--in-flight", type=int, default=200)
    parser.add_argument("--starters", type=int, default=16, help="threads calling start()")
    parser.add_argument("--fault-rate", type=float, default=0.05, help="transient failures")
    parser.add_argument("--permanent-rate", type=float, default=0.002, help="permanent failures")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--dir", help="where to put the store (default: a new temp dir)")
    parser.add_argument("--out", type=Path, default=here / "out" / "soak.json")
    parser.add_argument("--retention", action="store_true", help="run the retention soak")
    parser.add_argument("--retention-period", type=float, default=20.0, help="seconds (R)")
    parser.add_argument("--retention-threads", type=int, default=32, help="starting loops")
    parser.add_argument(
        "--retention-rate", type=float, default=400.0, help="workflows started per second"
    )
    parser.add_argument("--purge", type=int, default=1_000_000, help="finished to purge")
    parser.add_argument(
        "--phase", type=float, default=60.0, help="seconds without purging, before and after"
    )
    args = parser.parse_args(argv)
    if args.retention:
        import tempfile as _tempfile

        from _retention_soak import run as run_retention

        with _tempfile.TemporaryDirectory(prefix="herder-retention-", dir=args.dir) as tmp:
            found = run_retention(Path(tmp), args)
        write_report(args.out.with_name("soak_retention.json"), {"machine": machine(), **found})
        return 0 if found["flat_store"]["pass"] and found["purge_under_load"]["pass"] else 1
    if args.workflows < args.window or args.workflows % args.window:
        parser.error("--workflows must be a multiple of --window")
    report = run(args)
    print(table(report))
    write_report(args.out, report)
    return 0 if report["leak_check"]["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
