"""End-to-end throughput: durable workflows/s and steps/s against bare pykka and raw LMDB.

The travel workflow (flight -> hotel -> car, each a trivial action on its own agent,
returning a small dict) runs on a fresh store per case while ``--in-flight`` workflows
are kept unfinished: ``--starters`` threads call ``Runtime.start`` (which returns once the
workflow is durable), or with ``--batch N`` ``Runtime.start_many`` of N workflows (one
group commit, one wake-up of the caller per call), and the runtime's
``max_active_workflows = in_flight`` makes them block while that many are unfinished.
Every transition is synced to disk before anything depends on it.

In the same run, for the same instance counts and workflow counts:

- ``bare``: the ceiling. A pykka scheduler actor and the same agent actors run the same
  3-step chain with tells, keeping the same number of workflows in flight, no durability.
- ``raw/1-per-txn`` and ``raw/batch=100``: raw LMDB synced commits (store_commit's cases).

``instances`` is the concurrency of each of the three agents (the bare case starts the
same number of actors per agent). Latencies come from the records: a step's latency is
the time from the previous step's completion (or the workflow's creation) to its own
completion as recorded in its ``updated`` field; a workflow's from ``created`` to the
final record's ``updated``. The bare case measures the same spans with ``perf_counter``.
Whether ``start()`` limits throughput shows as the mean number of workflows actually in
flight (Little's law: summed workflow latency / wall time) against ``--in-flight``.

Each row also gives the process CPU per step (every thread's CPU time in the timed
window / steps) and the load average when the row was measured: on a shared machine only
ratios taken in one run mean much. ``--in-flight`` takes several values (one row pair
each); ``--raw-seconds 0`` leaves the raw LMDB rows out.

To compare two checkouts, run this script with each checkout's interpreter in turn (it
uses only the public API); each run carries its own bare-pykka ceiling.

Usage: python benchmarks/throughput.py [--workflows 1000,10000] [--instances 1,4,16]
       [--in-flight 256,16,1] [--starters 32] [--batch 1] [--raw-seconds 2] [--out PATH]
"""

from __future__ import annotations

import argparse
import collections
import itertools
import logging
import os
import pathlib
import tempfile
import threading
import time
from collections.abc import Sequence
from typing import Any

import pykka
from _harness import machine, progress, render_table, summary, write_report
from _workload import AGENTS, STEPS, Meter, Workload, book, booking_agent, result_row, travel
from store_commit import bench_raw

from herder.runtime import Runtime, Workflow

TAG = "throughput"
WAIT = 120.0
TARGETS: dict[int, dict[str, float]] = {  # issue 15, by workflows in flight (4 instances)
    256: {"steps_per_s": 12_000, "vs_bare": 0.15, "cpu_us_per_step": 60},
    16: {"vs_bare": 0.13},
    1: {"steps_per_s": 1_200},
}
"""What each case must reach: at least ``steps_per_s`` and ``vs_bare``, at most
``cpu_us_per_step`` (the issue's goals are 15,000 steps/s and 0.20x at 256 in flight)."""
NO_FAULTS = Workload()


# -- herder --------------------------------------------------------------------------------


def bench_herder(
    root: pathlib.Path,
    workflows: int,
    instances: int,
    in_flight: int,
    starters: int,
    *,
    workload: Workload = NO_FAULTS,
    warmup: int = 1,
    meter: Meter | None = None,
    agents: Sequence[str] = tuple(AGENTS.values()),
    flows: Sequence[Workflow] = (),
    agent_host: str | None = None,
    pool_workers: int | None = None,
    batch: int = 1,
) -> dict[str, Any]:
    """The real engine, durable, ``in_flight`` workflows kept unfinished.

    ``flows`` (default: the travel workflow) are started in turn, workflow ``i`` from
    ``flows[i % len(flows)]``; ``agents`` are the agent names they use. Each of the
    ``starters`` threads calls ``start()`` (``batch`` 1) or ``start_many()`` of ``batch``
    workflows (one group commit, one wake-up of the caller per batch).
    """
    meter = meter or Meter()
    flows = flows or (travel(),)
    names = [f.name for f in flows]
    # The host is named only when asked for (None: the checkout's default), so
    # benchmarks/ab.py can still measure a checkout from before Runtime(agent_host=).
    host: dict[str, Any] = {} if agent_host is None else {"agent_host": agent_host}
    if pool_workers is not None:  # (named only when asked for, as agent_host)
        host["pool_workers"] = pool_workers
    with Runtime(
        root / "store",
        map_size=1 << 31,
        max_active_workflows=in_flight,
        sweep_interval=1.0,
        **host,
    ) as rt:
        factory = booking_agent(workload)
        for agent in agents:
            rt.add_agent(agent, factory, concurrency=instances)
        for flow in flows:
            rt.add_workflow(flow)
        warm = [
            rt.start(names[i % len(names)], {"n": -1 - i}, workflow_id=f"warm-{i}")
            for i in range(warmup)
        ]
        for handle in warm:
            handle.result(timeout=WAIT)

        counter = iter(range(workflows))
        lock = threading.Lock()
        start_latency: list[float] = []
        report_every = max(1, workflows // 4)

        def starter() -> None:
            mine = []
            while True:
                with lock:
                    chunk = list(itertools.islice(counter, batch))
                if not chunk:
                    break
                began = time.perf_counter()
                if batch == 1:
                    i = chunk[0]
                    rt.start(
                        names[i % len(names)], {"n": i}, workflow_id=f"wf-{i:08d}", timeout=WAIT
                    )
                else:
                    rt.start_many(
                        [
                            {
                                "workflow": names[i % len(names)],
                                "input": {"n": i},
                                "workflow_id": f"wf-{i:08d}",
                            }
                            for i in chunk
                        ],
                        timeout=WAIT,
                    )
                mine += [time.perf_counter() - began] * len(chunk)
                if any(i % report_every == report_every - 1 for i in chunk):
                    progress(TAG, f"  started {chunk[-1] + 1:,}/{workflows:,}")
            with lock:
                start_latency.extend(mine)
            meter.exited("callers")

        threads = [threading.Thread(target=starter, daemon=True) for _ in range(starters)]
        meter.begin()
        t0 = time.time()  # records carry the runtime clock, SystemClock = time.time()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        starting = time.time() - t0
        # The last few hundred started are (nearly) the only ones left unfinished.
        for i in range(max(0, workflows - 2 * in_flight), workflows):
            rt.handle(f"wf-{i:08d}").result(timeout=WAIT)
        meter.end()
        statuses = [s for s in rt.list() if not s.id.startswith("warm-")]
        while unfinished := [s.id for s in statuses if not s.state.is_final]:
            for wid in unfinished:
                rt.handle(wid).result(timeout=WAIT)
            statuses = [s for s in rt.list() if not s.id.startswith("warm-")]
        failed = [s.id for s in statuses if s.state != "SUCCEEDED"]
        if failed or len(statuses) != workflows:
            raise RuntimeError(f"{len(failed)} workflows failed, {len(statuses)} found")
        spans = [(s.created, [s.steps[n].updated for n in STEPS]) for s in statuses]
        elapsed = max(done[-1] for _, done in spans) - t0
        store = rt.stats()["store"]
    row = result_row(workflows, elapsed, spans)
    row.update(cpu_row(meter, workflows))
    row["start_latency"] = summary(start_latency, 1e3, "ms")
    row["starting_seconds"] = starting
    row["store"] = {
        "commits": store["batches"],
        "commits_per_s": store["batches"] / elapsed,
        "mean_batch": store["mean_batch"],
    }
    return row


# -- bare pykka ----------------------------------------------------------------------------


class BareAgent(pykka.ThreadingActor):
    """Runs a step and tells the scheduler; no durability, no supervision."""

    use_daemon_thread = True

    def __init__(
        self, scheduler: pykka.ActorRef[Any], agent: str, index: int, workload: Workload
    ) -> None:
        super().__init__()
        self.scheduler = scheduler
        self.agent = agent
        self.index = index
        self.workload = workload

    def on_receive(self, message: Any) -> None:
        workflow, step = message
        try:
            result = book(self.workload, workflow, STEPS[step], 1)
        except Exception:  # the injected failure: retry at once, in place
            result = book(self.workload, workflow, STEPS[step], 2)
        self.scheduler.tell((self.agent, self.index, workflow, step, result))


class BareRun:
    """What the bare scheduler hands back: timings and results."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.t0 = 0.0
        self.t_end = 0.0
        self.spans: dict[int, tuple[float, list[float]]] = {}
        self.results: dict[int, dict[str, Any]] = {}


class BareScheduler(pykka.ThreadingActor):
    """Keeps ``in_flight`` chains going over per-agent pools of idle instances and queues."""

    use_daemon_thread = True

    def __init__(
        self, instances: int, total: int, in_flight: int, out: BareRun, workload: Workload
    ) -> None:
        super().__init__()
        self.workload = workload
        self.instances = instances
        self.total = total
        self.in_flight = in_flight
        self.started = 0
        self.finished = 0
        self.out = out
        self.spans = out.spans
        self.results = out.results
        self.refs: dict[str, list[pykka.ActorRef[Any]]] = {}
        self.idle: dict[str, list[int]] = {}
        self.queues: dict[str, collections.deque[tuple[int, int]]] = {}

    def on_start(self) -> None:
        for agent in AGENTS.values():
            self.refs[agent] = [
                BareAgent.start(self.actor_ref, agent, i, self.workload)
                for i in range(self.instances)
            ]
            self.idle[agent] = list(range(self.instances))
            self.queues[agent] = collections.deque()

    def on_stop(self) -> None:
        for refs in self.refs.values():
            for ref in refs:
                ref.stop(block=False)

    def on_receive(self, message: Any) -> None:
        if message == "go":
            self.out.t0 = time.perf_counter()
            for _ in range(min(self.in_flight, self.total)):
                self._begin()
        else:
            agent, index, workflow, step, result = message
            self.idle[agent].append(index)
            self.results.setdefault(workflow, {})[STEPS[step]] = result
            self.spans[workflow][1].append(time.perf_counter())
            if step + 1 < len(STEPS):
                self._enqueue(workflow, step + 1)
            else:
                self.finished += 1
                if self.started < self.total:
                    self._begin()
                elif self.finished == self.total:
                    self.out.t_end = time.perf_counter()
                    self.out.done.set()
            self._pump(agent)

    def _begin(self) -> None:
        workflow = self.started
        self.started += 1
        self.spans[workflow] = (time.perf_counter(), [])
        self._enqueue(workflow, 0)

    def _enqueue(self, workflow: int, step: int) -> None:
        agent = AGENTS[STEPS[step]]
        self.queues[agent].append((workflow, step))
        self._pump(agent)

    def _pump(self, agent: str) -> None:
        queue, idle = self.queues[agent], self.idle[agent]
        while queue and idle:
            self.refs[agent][idle.pop()].tell(queue.popleft())


def bench_bare(
    workflows: int,
    instances: int,
    in_flight: int,
    workload: Workload = NO_FAULTS,
    meter: Meter | None = None,
) -> dict[str, Any]:
    """The same chain on bare pykka actors: the ceiling."""
    meter = meter or Meter()
    out = BareRun()
    ref = BareScheduler.start(instances, workflows, in_flight, out, workload)
    meter.begin()
    ref.tell("go")
    if not out.done.wait(WAIT * 5):
        raise TimeoutError("bare pykka run did not finish")
    meter.end()
    ref.stop(timeout=WAIT)
    assert len(out.results) == workflows
    row = result_row(workflows, out.t_end - out.t0, list(out.spans.values()))
    row.update(cpu_row(meter, workflows))
    return row


def cpu_row(meter: Meter, workflows: int) -> dict[str, Any]:
    """Process CPU per step in the timed window (in all, and by group of threads), and the
    1-minute load average now."""
    per_step = 1e6 / (len(STEPS) * workflows)
    return {
        "cpu_us_per_step": meter.cpu * per_step,
        "cpu_us_per_step_by_thread": {k: v * per_step for k, v in meter.by_thread.items()},
        "switches_per_step_by_thread": {k: v * per_step / 1e6 for k, v in meter.switches.items()},
        "load_avg": os.getloadavg()[0],
    }


# -- the run -------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, Any]:
    cases: list[dict[str, Any]] = []
    base = os.environ.get("BENCH_DIR")
    for in_flight in args.in_flight:
        for instances in args.instances:
            for workflows in args.workflows:
                label = f"{instances} inst, {workflows:,} workflows, {in_flight} in flight"
                progress(TAG, f"bare pykka, {label}")
                bare = bench_bare(workflows, instances, in_flight)
                progress(TAG, f"bare pykka, {label}: {bare['steps_per_s']:,.0f} steps/s")
                calls = "start()" if args.batch == 1 else f"start_many() of {args.batch}"
                progress(TAG, f"herder, {label}, {args.starters} starter threads, {calls}")
                with tempfile.TemporaryDirectory(prefix="herder-bench-", dir=base) as d:
                    herder = bench_herder(
                        pathlib.Path(d),
                        workflows,
                        instances,
                        in_flight,
                        args.starters,
                        pool_workers=args.pool_workers,
                        batch=args.batch,
                    )
                herder["vs_bare"] = herder["steps_per_s"] / bare["steps_per_s"]
                progress(
                    TAG,
                    f"herder, {label}: {herder['steps_per_s']:,.0f} steps/s "
                    f"({herder['vs_bare']:.0%} of bare), "
                    f"{herder['cpu_us_per_step']:.0f} us CPU/step, "
                    f"mean in flight {herder['mean_in_flight']:.0f}, "
                    f"load {herder['load_avg']:.1f}",
                )
                cases.append(
                    {"in_flight": in_flight, "instances": instances, "bare": bare, "herder": herder}
                )
    raw: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="herder-bench-", dir=base) as d:
        for per_txn in (1, 100) if args.raw_seconds > 0 else ():
            name = "raw/1-per-txn" if per_txn == 1 else f"raw/batch={per_txn}"
            progress(TAG, f"{name} for {args.raw_seconds:g} s")
            raw[name] = bench_raw(pathlib.Path(d), per_txn, args.raw_seconds)
            progress(TAG, f"{name}: {raw[name]['per_s']:,.0f} puts/s")
    return {
        "benchmark": "throughput",
        "machine": machine(),
        "starters": args.starters,
        "batch": args.batch,
        "cases": cases,
        "raw_lmdb": raw,
        "targets": {str(n): t for n, t in TARGETS.items()},
    }


def verdicts(report: dict[str, Any]) -> list[str]:
    """Each case against its targets (``TARGETS``, as the report recorded them)."""
    lines = []
    for case in report["cases"]:
        targets = report["targets"].get(str(case["in_flight"]))
        if not targets or case["instances"] != 4:
            continue
        h, said = case["herder"], []
        for key, unit, at_most in (
            ("steps_per_s", "{:,.0f} steps/s", False),
            ("vs_bare", "{:.3g}x bare pykka", False),
            ("cpu_us_per_step", "{:.0f} us CPU/step", True),
        ):
            if key in targets:
                value, target = h[key], targets[key]
                met = value <= target if at_most else value >= target
                bound = ("<= " if at_most else ">= ") + unit.split(" ")[0].format(target)
                said.append(f"{unit.format(value)} (target {bound}: {'met' if met else 'missed'})")
        lines.append(f"{case['in_flight']} in flight: " + ", ".join(said))
    return lines


def table(report: dict[str, Any]) -> str:
    header = (
        "case",
        "in flight",
        "inst",
        "workflows",
        "wf/s",
        "steps/s",
        "step p50 ms",
        "step p99 ms",
        "wf p50 ms",
        "wf p99 ms",
        "mean in flight",
        "CPU us/step",
        "load",
        "vs bare",
    )
    rows: list[list[Any]] = []
    for case in report["cases"]:
        for kind in ("bare", "herder"):
            r = case[kind]
            rows.append(
                [
                    kind,
                    case["in_flight"],
                    case["instances"],
                    r["workflows"],
                    r["workflows_per_s"],
                    r["steps_per_s"],
                    r["step_latency"]["p50_ms"],
                    r["step_latency"]["p99_ms"],
                    r["workflow_latency"]["p50_ms"],
                    r["workflow_latency"]["p99_ms"],
                    r["mean_in_flight"],
                    r["cpu_us_per_step"],
                    r["load_avg"],
                    f"{r['vs_bare']:.0%}" if "vs_bare" in r else "",
                ]
            )
    lines = [render_table(header, rows), ""]
    raw = report["raw_lmdb"]
    if raw:
        lines.append(
            "raw LMDB synced commits: "
            + ", ".join(f"{name} {r['per_s']:,.0f} puts/s" for name, r in raw.items())
        )
    batch = report.get("batch", 1)
    calls = "start()" if batch == 1 else f"start_many() of {batch}"  # (per workflow)
    for case in report["cases"]:
        h = case["herder"]
        lines.append(
            f"herder {case['instances']} inst, {h['workflows']:,} wf: {calls} p50 "
            f"{h['start_latency']['p50_ms']:.1f} ms p99 {h['start_latency']['p99_ms']:.1f} ms, "
            f"{h['store']['commits_per_s']:,.0f} commits/s of {h['store']['mean_batch']:.1f} "
            f"transitions, mean in flight {h['mean_in_flight']:.0f}/{case['in_flight']}"
        )
        threads = h.get("cpu_us_per_step_by_thread")
        if threads:
            lines.append(
                "  CPU us/step by thread: "
                + ", ".join(f"{name} {us:.1f}" for name, us in threads.items() if us >= 0.05)
            )
        switches = h.get("switches_per_step_by_thread")
        if switches:
            lines.append(
                "  voluntary context switches/step by thread: "
                + ", ".join(f"{name} {n:.2f}" for name, n in switches.items() if n >= 0.005)
            )
    lines += verdicts(report)
    pinned = report["machine"].get("pinned_to")
    if pinned:  # every row, bare pykka's included, ran on these CPUs only
        lines.append(f"the process ran pinned to CPU {', '.join(map(str, pinned))}")
    return "\n".join(lines)


def ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def main(argv: list[str] | None = None) -> None:
    """Run every case, print the table, write the JSON report."""
    here = pathlib.Path(__file__).parent
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--workflows", type=ints, default=[1000, 10000])
    parser.add_argument("--instances", type=ints, default=[1, 4, 16])
    parser.add_argument("--in-flight", type=ints, default=[256])
    parser.add_argument("--starters", type=int, default=32, help="threads starting workflows")
    parser.add_argument(
        "--batch",
        type=int,
        default=1,
        help="workflows per call: 1 (default) calls start(), more calls start_many()",
    )
    parser.add_argument("--raw-seconds", type=float, default=2.0)
    parser.add_argument(
        "--pool-workers", type=int, default=None, help="Runtime(pool_workers=); default its own"
    )
    parser.add_argument("--out", type=pathlib.Path, default=here / "out" / "throughput.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    report = run(args)
    print(table(report))
    write_report(args.out, report)


if __name__ == "__main__":
    main()
