"""The storage limit: the travel workload on raw LMDB synced commits, no engine at all.

One thread runs every action itself and records each step's result with a ``put`` in a
synced write transaction before the workflow's next step runs (the same rule herder
keeps: a step's result is durable before anything depends on it). ``in_flight``
workflows advance together: each round runs the next step of every one of them and
commits their results in one transaction (group commit). ``in_flight=1`` is one synced
commit per step. The environment has the store's settings (sync, metasync, no writemap).
"""

from __future__ import annotations

import pathlib
import time
from typing import Any

import lmdb
from _workload import STEPS, Meter, Workload, book, result_row

from herder.store import encode


def run_raw(
    root: pathlib.Path, workflows: int, workload: Workload, *, in_flight: int, meter: Meter
) -> dict[str, Any]:
    """``workflows`` travel bookings, ``in_flight`` at a time, one synced commit per round."""
    env = lmdb.open(
        str(root / "raw"),
        map_size=1 << 32,
        max_dbs=4,
        sync=True,
        metasync=True,
        writemap=False,
        readahead=False,
    )
    db = env.open_db(b"steps")
    spans: dict[int, tuple[float, list[float]]] = {}
    active: list[list[int]] = []  # [workflow, next step index]
    next_n = 0
    commits = 0
    meter.begin()
    t0 = time.perf_counter()
    while active or next_n < workflows:
        while len(active) < in_flight and next_n < workflows:
            spans[next_n] = (time.perf_counter(), [])
            active.append([next_n, 0])
            next_n += 1
        with env.begin(write=True) as txn:
            for item in active:
                n, index = item
                step = STEPS[index]
                try:
                    result = book(workload, n, step, 1)
                except Exception:
                    result = book(workload, n, step, 2)
                txn.put(f"{n:010d}/{step}".encode(), encode(result), db=db)
        commits += 1
        now = time.perf_counter()
        still = []
        for item in active:
            spans[item[0]][1].append(now)
            item[1] += 1
            if item[1] < len(STEPS):
                still.append(item)
        active = still
    elapsed = time.perf_counter() - t0
    meter.end()
    env.close()
    row = result_row(workflows, elapsed, list(spans.values()))
    row["driver"] = f"one thread, {in_flight} workflows per synced commit"
    row["durable"] = "each step's result put in a synced LMDB commit before the next step"
    row["fsync"] = "yes: every commit (sync=True, metasync=True)"
    row["commits"] = commits
    return row
