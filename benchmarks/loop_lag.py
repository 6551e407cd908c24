"""An asyncio application's loop while 1,000 workflows run from it: how late a 5 ms
ticker wakes, and how much CPU each loop turn costs (issue 16: lag under 50 ms).

Each round runs two rows on a fresh loop, interleaved over ``--reps`` rounds because the
machine is shared:

- ``herder``: 1,000 requests whose handlers ``await rt.start_async(...)`` and
  ``await handle.result_async()``, the steps' ``async def`` actions (a 50 ms
  ``asyncio.sleep``, the remote call) on the same loop (``Runtime(loop=...)``);
- ``asyncio alone``: the same 1,000 handlers awaiting the same 50 ms sleep with no herder,
  the floor this loop and machine give the ticker;
- ``herder, switch N ms`` (with ``--switch-intervals``): the ``herder`` row with
  ``sys.setswitchinterval(N / 1000)`` (CPython's default is 5 ms): how much of the lag is
  the loop's thread waiting for the GIL that herder's threads hold;
- ``herder, gc.freeze()`` (with ``--gc-freeze``): the ``herder`` row after
  ``gc.freeze()``, which an application calls once it has started: the ~30,000 objects
  of the imported modules leave the collector's scans, so a full collection (which
  holds the GIL, on whichever thread triggers it) scans only what was made since.

A turn's CPU is this thread's CPU time inside one ``_run_once`` (waiting in ``select``
or for the GIL costs none), so it shows the work on the loop whatever the load; the
ticker's lag adds the GIL and the OS. Collections of the garbage collector that run on
the loop's thread are timed apart (``gc.callbacks``): the heaviest turn without them is
herder's and the handlers' own work. The target is a max lag under 50 ms.

Usage: python benchmarks/loop_lag.py [--workflows 1000] [--reps 5] [--out PATH]
       [--switch-intervals 1,0.5] [--gc-freeze]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import pathlib
import statistics
import sys
import tempfile
import threading
import time
from typing import Any

from _harness import machine, percentile, progress, render_table, write_report

from herder.runtime import Agent, Runtime, StepContext, Workflow

TAG = "loop_lag"
HERE = pathlib.Path(__file__).resolve().parent
TICK = 0.005
CALL = 0.05
TARGET_MS = 50.0


class TimedLoop(asyncio.SelectorEventLoop):
    """A loop that records this thread's CPU time in each of its turns, through
    asyncio's private ``_run_once``, and how much of it garbage collections took."""

    def __init__(self) -> None:
        super().__init__()
        self.turns: list[float] = []
        self.collecting: list[float] = []  # of each turn, in collections of the gc
        self._gc = 0.0  # this turn's, so far
        self._gc_began = 0.0
        self._thread = threading.get_ident()
        gc.callbacks.append(self._on_gc)

    def _on_gc(self, phase: str, _info: dict[str, Any]) -> None:
        if threading.get_ident() != self._thread:
            return
        if phase == "start":
            self._gc_began = time.thread_time()
        else:
            self._gc += time.thread_time() - self._gc_began

    def _run_once(self) -> None:
        began, self._gc = time.thread_time(), 0.0
        super()._run_once()  # type: ignore[misc]
        self.turns.append(time.thread_time() - began)
        self.collecting.append(self._gc)

    def close(self) -> None:
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)
        super().close()


async def _lags(until: asyncio.Event) -> list[float]:
    """How late each 5 ms sleep of this loop wakes, until ``until`` is set."""
    loop, lags = asyncio.get_running_loop(), []
    while not until.is_set():
        before = loop.time()
        await asyncio.sleep(TICK)
        lags.append(loop.time() - before - TICK)
    return lags


class Io(Agent):
    async def call(self, ctx: StepContext) -> int:
        await asyncio.sleep(CALL)  # a remote call
        return int(ctx.input)


async def _requests(n: int, handler: Any) -> tuple[list[int], list[float]]:
    """``n`` requests, arriving 50 per loop turn, with the ticker running meanwhile."""
    done = asyncio.Event()
    ticking = asyncio.create_task(_lags(done))
    requests = []
    for i in range(n):
        requests.append(asyncio.create_task(handler(i)))
        if i % 50 == 49:
            await asyncio.sleep(0)
    results = await asyncio.gather(*requests)
    done.set()
    return results, await ticking


async def _herder(n: int, store: pathlib.Path) -> tuple[list[int], list[float]]:
    rt = Runtime(store, loop=asyncio.get_running_loop())
    try:
        rt.add_agent("io", Io, concurrency=n)
        rt.add_workflow(Workflow("io").step("s", agent="io", action="call"))

        async def handler(i: int) -> int:
            handle = await rt.start_async("io", i)
            return int((await handle.result_async(timeout=60))["s"])

        return await _requests(n, handler)
    finally:
        await rt.stop_async()


async def _alone(n: int) -> tuple[list[int], list[float]]:
    async def handler(i: int) -> int:
        await asyncio.sleep(CALL)
        return i

    return await _requests(n, handler)


def measure(row: str, n: int, switch: float | None = None, freeze: bool = False) -> dict[str, Any]:
    """One row on a fresh loop: the ticker's lags and the loop's turns, in ms; with
    ``switch`` (ms), under that GIL switch interval; with ``freeze``, after
    ``gc.freeze()``."""
    loop = TimedLoop()
    default = sys.getswitchinterval()
    try:
        if switch is not None:
            sys.setswitchinterval(switch / 1000)
        if freeze:
            gc.freeze()
        with tempfile.TemporaryDirectory(prefix="herder-lag-") as d:
            herder = row.startswith("herder")
            work = _herder(n, pathlib.Path(d) / "s") if herder else _alone(n)
            results, lags = loop.run_until_complete(work)
    finally:
        sys.setswitchinterval(default)
        gc.unfreeze()
        loop.close()
    if results != list(range(n)):
        raise SystemExit(f"{row}: the requests' answers are wrong")
    ms = [lag * 1000 for lag in lags]
    return {
        "lag_p50_ms": statistics.median(ms),
        "lag_p99_ms": percentile(ms, 0.99),
        "lag_max_ms": max(ms),
        "heaviest_turn_ms": max(loop.turns) * 1000,
        "heaviest_turn_without_gc_ms": max(map(float.__sub__, loop.turns, loop.collecting)) * 1000,
        "longest_gc_ms": max(loop.collecting) * 1000,
        "loop_cpu_s": sum(loop.turns),
        "ticks": len(ms),
        "load": round(os.getloadavg()[0], 2),
    }


def run(
    n: int, reps: int, switches: tuple[float, ...] = (), freeze: bool = False
) -> dict[str, Any]:
    rows: dict[str, list[dict[str, Any]]] = {"herder": [], "asyncio alone": []}
    switch_of = {f"herder, switch {ms:g} ms": ms for ms in switches}
    rows.update({row: [] for row in switch_of})
    frozen = "herder, gc.freeze()"
    if freeze:
        rows[frozen] = []
    for rep in range(reps):
        for row, runs in rows.items():
            runs.append(measure(row, n, switch_of.get(row), freeze=row == frozen))
            progress(TAG, f"round {rep + 1}/{reps}, {row}: {runs[-1]}")
    worst = max(r["lag_max_ms"] for r in rows["herder"])
    return {
        "machine": machine(),
        "workflows": n,
        "rows": rows,
        "worst_lag_ms": worst,
        "heaviest_turn_ms": max(r["heaviest_turn_ms"] for r in rows["herder"]),
        "heaviest_turn_without_gc_ms": max(
            r["heaviest_turn_without_gc_ms"] for r in rows["herder"]
        ),
        "met": worst < TARGET_MS,
    }


def table(report: dict[str, Any]) -> str:
    header = (
        "row",
        "lag p50 ms",
        "lag p99 ms",
        "lag max ms",
        "heaviest turn ms",
        "without gc ms",
        "longest gc ms",
        "loads",
    )
    lines = [
        (
            row,
            f"{statistics.median(r['lag_p50_ms'] for r in runs):.1f}",
            f"{statistics.median(r['lag_p99_ms'] for r in runs):.1f}",
            f"{max(r['lag_max_ms'] for r in runs):.1f}",
            f"{max(r['heaviest_turn_ms'] for r in runs):.1f}",
            f"{max(r['heaviest_turn_without_gc_ms'] for r in runs):.1f}",
            f"{max(r['longest_gc_ms'] for r in runs):.1f}",
            " ".join(str(r["load"]) for r in runs),
        )
        for row, runs in report["rows"].items()
    ]
    verdict = "met" if report["met"] else "NOT met"
    return render_table(header, lines) + (
        f"\nherder's worst lag {report['worst_lag_ms']:.1f} ms over "
        f"{len(report['rows']['herder'])} rounds (target < {TARGET_MS:.0f} ms: {verdict})"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--workflows", type=int, default=1000)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--out", type=pathlib.Path, default=HERE / "out" / "loop_lag.json")
    parser.add_argument(
        "--switch-intervals",
        default="",
        help="comma-separated GIL switch intervals in ms: one more herder row each",
    )
    parser.add_argument(
        "--gc-freeze", action="store_true", help="one more herder row, after gc.freeze()"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    switches = tuple(float(ms) for ms in args.switch_intervals.split(",") if ms)
    report = run(args.workflows, args.reps, switches, args.gc_freeze)
    print(table(report))
    write_report(args.out, report)


if __name__ == "__main__":
    main()
