"""The retention soak (``python benchmarks/soak.py --retention``), issue 17's two figures.

1. **Flat store.** A runtime with ``retention=R`` seconds runs a steady stream of
   two-step workflows (about 2.5 KB each in the store) for ``4 R``: ``--retention-rate``
   starts a second, paced (issue 17's daemon: 2,000 devices, one each per 5 s, is 400/s),
   never more, so the data retention keeps is the same from one period to the next; the
   store file's size is sampled every second. PASS when the largest size after the first
   retention period (``1.5 R``, once the first deletions have run) is within 20% of the
   size then. Closed loops (as each start's result came back) made the rate, and with it
   the data kept (rate x R), follow the machine's load: a busier period kept more, and
   the file grew with the data, not with retention or LMDB's page reuse.
2. **Purge under load.** ``--purge`` finished workflows 30 days old are written straight
   into a store (through the writer's plain batches); a runtime then keeps ``--in-flight``
   one-step workflows running and measures each one's latency (start to result): for a
   window of ``--phase`` seconds with retention off, then with retention on until the
   whole backlog is gone, then for another window with it off (before and after, so a
   drift in the machine's load shows). PASS when p99 with the purge running is at most
   2x p99 without it.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

from _harness import percentile, progress, render_table

from herder.runtime import Agent, Runtime, StepContext, Workflow
from herder.store import (
    Put,
    StepRecord,
    StepState,
    Store,
    WorkflowRecord,
    WorkflowState,
    encode,
    history_put,
    step_event,
    step_key,
    workflow_event,
    workflow_key,
)

TAG = "soak/retention"
PAD = "x" * 1500  # with records and history: about 2.5 KB per workflow in the store


class Device(Agent):
    def sync(self, ctx: StepContext) -> dict[str, int]:
        return {"n": len(ctx.input["pad"])}


PAIR = (
    Workflow("device")
    .step("pull", agent="device", action="sync")
    .step("push", agent="device", action="sync", after=["pull"])
)
ONE = Workflow("ping").step("only", agent="device", action="sync")


def register(rt: Runtime) -> None:
    rt.add_agent("device", Device, concurrency=16)
    rt.add_workflow(PAIR)
    rt.add_workflow(ONE)


def _size(path: Path) -> int:
    return (path / "data.mdb").stat().st_size


def _pump(
    rt: Runtime,
    name: str,
    threads: int,
    stop: threading.Event,
    done: list[Any],
    *,
    rate: float | None = None,
) -> tuple[list[threading.Thread], list[int]]:
    """``threads`` loops, each starting one workflow and waiting for its result: as fast
    as that goes (``rate`` None), or together ``rate`` a second, loop ``t`` owning the
    slots ``t/rate + k*threads/rate``. A slot that passed while its loop was still
    waiting is skipped and counted (per loop, in the returned list), so a slow stretch
    never turns into a burst."""
    period = 0.0 if rate is None else threads / rate
    missed = [0] * threads
    began = time.monotonic()

    def loop(t: int) -> None:
        due, n = began + (0.0 if rate is None else t / rate), 0
        while True:
            late = time.monotonic() - due
            if late < 0 and stop.wait(-late):
                return
            if period and late >= period:
                skipped = int(late // period)
                missed[t] += skipped
                due += skipped * period
            if stop.is_set():
                return
            due += period
            started = time.perf_counter()
            try:
                rt.start(name, {"pad": PAD}, workflow_id=f"{name}-{t}-{n}").result(timeout=60)
            except Exception as exc:  # a stopping runtime ends the loop
                progress(TAG, f"loop {t}: {type(exc).__name__}: {exc}")
                return
            done.append((time.monotonic(), time.perf_counter() - started))
            n += 1

    workers = [threading.Thread(target=loop, args=(t,), daemon=True) for t in range(threads)]
    for w in workers:
        w.start()
    return workers, missed


def flat_store(root: Path, period: float, threads: int, rate: float) -> dict[str, Any]:
    path = root / "flat"
    stop = threading.Event()
    done: list[Any] = []
    samples: list[tuple[float, int, int]] = []
    with Runtime(path, setup=register, retention=period, map_size=1 << 30) as rt:
        began = time.monotonic()
        workers, missed = _pump(rt, "device", threads, stop, done, rate=rate)
        tick = threading.Event()
        while (elapsed := time.monotonic() - began) < 4 * period:
            tick.wait(1.0)
            samples.append((elapsed, _size(path), rt._store.count("workflows")))
        stop.set()
        for w in workers:
            w.join(60)
    at = next(s for s in samples if s[0] >= 1.5 * period)
    later = [s for s in samples if s[0] >= at[0]]
    peak = max(s[1] for s in later)
    growth = peak / at[1] - 1
    progress(TAG, f"flat store: {len(done)} workflows in {4 * period:.0f}s")
    return {
        "retention_s": period,
        "workflows": len(done),
        "target_rate_per_s": rate,
        "rate_per_s": len(done) / (4 * period),
        "missed_slots": sum(missed),
        "size_at_1_5R": at[1],
        "peak_after": peak,
        "final": later[-1][1],
        "kept_at_1_5R": at[2],
        "most_kept_after": max(s[2] for s in later),
        "kept_at_end": later[-1][2],
        "growth": growth,
        "pass": growth <= 0.20,
        "samples": samples,
    }


def _prefill(path: Path, count: int, age: float, chunk: int = 5000) -> None:
    """``count`` SUCCEEDED two-step workflows last updated ``age`` seconds ago, written
    straight through the store's plain batch writer (``submit_batch``: one putmulti per
    database per commit, no conditions), ``chunk`` workflows per commit, so a million
    take minutes, not the better part of an hour. The writer keeps the secondary indexes
    (what retention reads) as for any write."""
    t = time.time() - age
    with Store(path, map_size=1 << 35) as store:
        began = time.monotonic()
        for first in range(0, count, chunk):
            ops: dict[tuple[str, bytes], bytes | None] = {}
            for i in range(first, min(count, first + chunk)):
                for put in _finished(f"old-{i:08d}", i * 8, t):
                    ops[(put.db, put.key)] = put.value
            store.writer.submit_batch(ops, [], min(chunk, count - first), lambda _e, _x: None)
            if first // chunk % 4 == 3:
                store.writer.flush(timeout=600)  # bounded memory: at most 4 chunks queued
            if first % 100_000 == 0:
                progress(TAG, f"prefilled {first:,}/{count:,} ({time.monotonic() - began:.0f}s)")
        store.writer.flush(timeout=600)


def _finished(wid: str, seq: int, t: float) -> list[Put]:
    """The records and history of one SUCCEEDED two-step workflow updated at ``t``."""
    wf = WorkflowRecord(wid, "device", 1, {"pad": PAD}, WorkflowState.SUCCEEDED, t, t)
    ops = [Put("workflows", workflow_key(wid), encode(wf.to_stored()))]
    ops.append(history_put(wid, seq, workflow_event(None, wf.evolve(state=WorkflowState.RUNNING))))
    for n, step in enumerate(("pull", "push")):
        old = StepRecord(wid, step, updated=t)
        new = old.evolve(state=StepState.SUCCEEDED, attempt=1, result={"n": 1500})
        ops.append(Put("steps", step_key(wid, step), encode(new.to_stored())))
        event = step_event(old, new, t)
        if event is not None:
            ops.append(history_put(wid, seq + 1 + n, event))
    ops.append(history_put(wid, seq + 5, workflow_event(WorkflowState.RUNNING, wf)))
    return ops


def purge_under_load(root: Path, count: int, in_flight: int, phase: float) -> dict[str, Any]:
    path = root / "purge"
    began_fill = time.monotonic()
    _prefill(path, count, age=30 * 86400)
    progress(TAG, f"prefilled {count:,} in {time.monotonic() - began_fill:.0f}s")
    stop = threading.Event()
    done: list[tuple[float, float]] = []
    phases: list[tuple[float, float, str]] = []
    # Opening finds the unfinished workflows through the recent index (none here), but
    # a loaded machine may still take longer than the default 30 s ask timeout.
    opened = time.monotonic()
    with Runtime(path, setup=register, retention=None, map_size=1 << 35, ask_timeout=1800.0) as rt:
        open_seconds = time.monotonic() - opened
        progress(TAG, f"opened over {count:,} finished in {open_seconds:.0f}s")
        workers, _ = _pump(rt, "ping", in_flight, stop, done)
        tick = threading.Event()  # never set: the pace of the measurement loop
        tick.wait(phase)  # warm-up, not measured

        def window(mode: str, until: Any) -> None:
            start = time.monotonic()
            while not until(time.monotonic() - start):
                tick.wait(1.0)
            phases.append((start, time.monotonic(), mode))

        window("idle", lambda took: took >= phase)
        rt._retention._keep = 7 * 86400.0  # every prefilled workflow is 30 days old
        limit = max(3600.0, count / 200)  # a stuck purge ends the run

        def purged(took: float) -> bool:
            if int(took) % 60 == 0:
                progress(TAG, f"purging: {rt._retention.deleted:,} deleted in {took:.0f}s")
            return rt._retention.deleted >= count or took > limit

        window("purge", purged)
        rt._retention._keep = None
        window("idle", lambda took: took >= phase)  # after too, so drift shows
        deleted = rt._retention.deleted
        stop.set()
        for w in workers:
            w.join(60)
    took = sum(end - start for start, end, mode in phases if mode == "purge")
    by: dict[str, list[float]] = {"idle": [], "purge": []}
    for at, latency in done:
        for start, end, mode in phases:
            if start <= at < end:
                by[mode].append(latency)
                break
    p99 = {m: percentile(v, 0.99) * 1000 for m, v in by.items()}
    p50 = {m: percentile(v, 0.50) * 1000 for m, v in by.items()}
    ratio = p99["purge"] / p99["idle"] if p99["idle"] else float("inf")
    return {
        "prefilled": count,
        "deleted": deleted,
        "open_seconds": open_seconds,
        "purge_seconds": took,
        "purged_per_s_while_on": deleted / max(1e-9, took),
        "in_flight": in_flight,
        "p50_ms": p50,
        "p99_ms": p99,
        "n": {m: len(v) for m, v in by.items()},
        "p99_ratio": ratio,
        "pass": ratio <= 2.0,
    }


def run(root: Path, args: Any) -> dict[str, Any]:
    load_before = os.getloadavg()
    flat = flat_store(root, args.retention_period, args.retention_threads, args.retention_rate)
    print(
        render_table(
            ("flat store", "retention s", "workflows", "wf/s", "missed", "size @1.5R",
             "peak after", "growth", "kept @1.5R", "most kept", "pass"),
            [("", flat["retention_s"], flat["workflows"], flat["rate_per_s"],
              flat["missed_slots"], flat["size_at_1_5R"], flat["peak_after"],
              f"{flat['growth']:+.1%}", flat["kept_at_1_5R"], flat["most_kept_after"],
              flat["pass"])],
        )
    )  # fmt: skip
    purge = purge_under_load(root, args.purge, args.in_flight, args.phase)
    print(
        render_table(
            ("purge under load", "prefilled", "deleted", "seconds", "p99 idle ms",
             "p99 purge ms", "ratio", "pass"),
            [("", purge["prefilled"], purge["deleted"], purge["purge_seconds"],
              purge["p99_ms"]["idle"], purge["p99_ms"]["purge"], purge["p99_ratio"],
              purge["pass"])],
        )
    )  # fmt: skip
    load_after = os.getloadavg()
    print(f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f}")
    flat.pop("samples")
    return {"flat_store": flat, "purge_under_load": purge, "load": [load_before, load_after]}
