"""Durable transitions per second: herder's group-commit writer vs raw LMDB, same run.

Cases (every commit is synced; each transition/put is one ~200-byte value):

- ``writer/Nthr``: N closed-loop submitter threads, each submits one transition and waits
  for its future before the next.
- ``writer/submit_many/64``: one submitter keeping 64 transitions in flight with
  ``submit_many`` (the engine's hot path, free of per-thread GIL hand-offs).
- ``raw/1-per-txn``: raw ``lmdb`` in a fresh env, one put per synced transaction.
- ``raw/batch=N``: raw ``lmdb``, N puts per synced transaction, N = the writer's mean batch
  size in the 64-thread case, and N = 100.

Usage: python benchmarks/store_commit.py [--seconds S] [--out PATH]
"""

from __future__ import annotations

import argparse
import os
import pathlib
import platform
import tempfile
import threading
import time
from collections.abc import Callable

import lmdb
from _harness import progress as _progress
from _harness import write_report

from herder.store import Put, Store, Transition, encode

VALUE = encode({"state": "DISPATCHED", "pad": "x" * 170})


def progress(msg: str) -> None:
    _progress("store_commit", msg)


def bench_writer_threads(root: pathlib.Path, threads: int, seconds: float) -> dict[str, float]:
    """Closed loop: each thread submits one transition and waits for it."""
    with Store(root / f"writer-{threads}", map_size=1 << 30) as store:
        writer = store.writer
        stop = threading.Event()
        counts = [0] * threads
        start = threading.Barrier(threads + 1)

        def loop(tid: int) -> None:
            prefix = f"{tid:03d}-".encode()
            n = 0
            start.wait()
            while not stop.is_set():
                key = prefix + n.to_bytes(8, "big")
                writer.submit(Transition((Put("steps", key, VALUE),))).result()
                n += 1
            counts[tid] = n

        workers = [threading.Thread(target=loop, args=(t,)) for t in range(threads)]
        for w in workers:
            w.start()
        start.wait()
        t0 = time.perf_counter()
        stop_timer = threading.Timer(seconds, stop.set)
        stop_timer.start()
        for w in workers:
            w.join()
        elapsed = time.perf_counter() - t0
        total = sum(counts)
        return _writer_result(store, total, elapsed)


def _writer_result(store: Store, total: int, elapsed: float) -> dict[str, float]:
    """The figures of one writer run, after checking every transition is in the store."""
    assert store.count("steps") == total
    stats = store.writer.stats()
    return {
        "transitions": total,
        "seconds": elapsed,
        "per_s": total / elapsed,
        "batches": stats["batches"],
        "mean_batch": stats["mean_batch"],
    }


def bench_writer_submit_many(root: pathlib.Path, inflight: int, seconds: float) -> dict[str, float]:
    """One submitter keeps ``inflight`` transitions in flight, in groups of ``inflight``.

    Double-buffered: a new group goes out whenever one completes, so up to two groups are
    queued at a time and the writer never waits on the submitter.
    """
    with Store(root / f"many-{inflight}", map_size=1 << 30) as store:
        writer = store.writer
        done = threading.Semaphore(0)
        n = 0

        def on_done(results: list[BaseException | None]) -> None:
            if any(r is not None for r in results):
                raise RuntimeError(f"benchmark transition failed: {results}")
            done.release()

        def group() -> list[Transition]:
            nonlocal n
            out = [
                Transition((Put("steps", (n + i).to_bytes(8, "big"), VALUE),))
                for i in range(inflight)
            ]
            n += inflight
            return out

        t0 = time.perf_counter()
        deadline = t0 + seconds
        writer.submit_many(group(), on_done)
        writer.submit_many(group(), on_done)
        groups_done = 0
        while True:
            done.acquire()
            groups_done += 1
            if time.perf_counter() >= deadline:
                break
            writer.submit_many(group(), on_done)
        done.acquire()  # the one still in flight
        groups_done += 1
        elapsed = time.perf_counter() - t0
        total = groups_done * inflight
        return _writer_result(store, total, elapsed)


def bench_raw(root: pathlib.Path, per_txn: int, seconds: float) -> dict[str, float]:
    """Raw lmdb in a fresh env with the store's settings: ``per_txn`` puts per synced txn."""
    path = root / f"raw-{per_txn}"
    env = lmdb.open(
        str(path),
        map_size=1 << 30,
        max_dbs=8,
        sync=True,
        metasync=True,
        writemap=False,
        readahead=False,
    )
    db = env.open_db(b"steps")
    n = 0
    txns = 0
    t0 = time.perf_counter()
    deadline = t0 + seconds
    while time.perf_counter() < deadline:
        with env.begin(write=True) as txn:
            for _ in range(per_txn):
                txn.put(n.to_bytes(8, "big"), VALUE, db=db)
                n += 1
        txns += 1
    elapsed = time.perf_counter() - t0
    env.close()
    return {"transitions": n, "seconds": elapsed, "per_s": n / elapsed, "batches": txns}


def run(seconds: float) -> dict[str, object]:
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="herder-bench-", dir=os.environ.get("BENCH_DIR")) as d:
        root = pathlib.Path(d)
        cases: list[tuple[str, Callable[[], dict[str, float]]]] = [
            ("raw/1-per-txn", lambda: bench_raw(root, 1, seconds)),
            ("writer/1thr", lambda: bench_writer_threads(root, 1, seconds)),
            ("writer/8thr", lambda: bench_writer_threads(root, 8, seconds)),
            ("writer/64thr", lambda: bench_writer_threads(root, 64, seconds)),
            ("writer/submit_many/64", lambda: bench_writer_submit_many(root, 64, seconds)),
            ("raw/batch=100", lambda: bench_raw(root, 100, seconds)),
        ]
        for name, fn in cases:
            progress(f"{name} for {seconds:g} s")
            results[name] = fn()
            progress(f"{name}: {results[name]['per_s']:,.0f}/s")
        for case in ("writer/64thr", "writer/submit_many/64"):
            mean = max(1, round(results[case]["mean_batch"]))
            name = f"raw/batch={mean}"
            if name not in results:
                progress(f"{name} (mean batch of {case}) for {seconds:g} s")
                results[name] = bench_raw(root, mean, seconds)
                progress(f"{name}: {results[name]['per_s']:,.0f}/s")
            results[case]["raw_batch_case"] = mean  # type: ignore[assignment]
        fs = os.statvfs(root)
    one = results["raw/1-per-txn"]["per_s"]
    ratios = {}
    for case in ("writer/64thr", "writer/submit_many/64"):
        r = results[case]
        batched = results[f"raw/batch={r['raw_batch_case']}"]["per_s"]
        ratios[case] = {
            "vs_raw_same_batch": r["per_s"] / batched,
            "vs_raw_1_per_txn": r["per_s"] / one,
            "vs_raw_batch_100": r["per_s"] / results["raw/batch=100"]["per_s"],
        }
    return {
        "benchmark": "store_commit",
        "seconds_per_case": seconds,
        "value_bytes": len(VALUE),
        "python": platform.python_version(),
        "lmdb": lmdb.__version__,
        "cpus": os.cpu_count(),
        "fs_block_size": fs.f_bsize,
        "results": results,
        "ratios": ratios,
        "targets": {"vs_raw_same_batch": ">= 0.5", "vs_raw_1_per_txn": ">= 20"},
    }


def table(report: dict[str, object]) -> str:
    results: dict[str, dict[str, float]] = report["results"]  # type: ignore[assignment]
    lines = [
        f"{'case':<24} {'durable/s':>12} {'txns':>8} {'mean batch':>11}",
        "-" * 58,
    ]
    for name, r in results.items():
        batches = r["batches"]
        mean = r["transitions"] / batches if batches else 0.0
        lines.append(f"{name:<24} {r['per_s']:>12,.0f} {batches:>8,.0f} {mean:>11.1f}")
    lines.append("")
    ratios: dict[str, dict[str, float]] = report["ratios"]  # type: ignore[assignment]
    for case, rr in ratios.items():
        lines.append(
            f"{case}: {rr['vs_raw_same_batch']:.2f}x raw same-batch (target >= 0.5), "
            f"{rr['vs_raw_1_per_txn']:.1f}x raw 1-per-txn (target >= 20), "
            f"{rr['vs_raw_batch_100']:.2f}x raw batch=100"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Run every case, print the table, write the JSON report."""
    here = pathlib.Path(__file__).parent
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="duration of each case")
    parser.add_argument("--out", type=pathlib.Path, default=here / "out" / "store_commit.json")
    args = parser.parse_args(argv)
    report = run(args.seconds)
    print(table(report))
    write_report(args.out, report)


if __name__ == "__main__":
    main()
