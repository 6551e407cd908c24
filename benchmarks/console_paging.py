"""The console's workflow list on a big store: one page costs the same at any size.

Writes N workflow records (default 1,000,000; one in 10,000 NEEDS_ATTENTION, the rest
SUCCEEDED) straight through the store's writer, which keeps the ``recent`` index, then
times the console's page queries against the same store, and, as the baseline, a full
scan of the records (``Store.workflows``), which reads every one.

Usage: python benchmarks/console_paging.py [--workflows N]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

from herder.runtime.ui._query import Filters, workflow_page
from herder.store import (
    Put,
    Store,
    Transition,
    WorkflowRecord,
    WorkflowState,
    encode,
    workflow_key,
)

BATCH = 20_000


def fill(path: str, n: int) -> None:
    t0 = 1_700_000_000.0
    with Store(path, map_size=4 << 30) as store:
        for start in range(0, n, BATCH):
            ops = []
            for i in range(start, min(n, start + BATCH)):
                wid = f"wf-{i:08d}"
                state = (
                    WorkflowState.NEEDS_ATTENTION if i % 10_000 == 7 else WorkflowState.SUCCEEDED
                )
                rec = WorkflowRecord(wid, "order", 1, {"n": i}, state, t0 + i * 0.01, t0 + i * 0.01)
                ops.append(Put("workflows", workflow_key(wid), encode(rec.to_dict())))
            store.writer.submit(Transition(ops=tuple(ops))).result(timeout=600)


def timed(fn: object) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()  # type: ignore[operator]
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workflows", type=int, default=1_000_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "store")
        took, _ = timed(lambda: fill(path, args.workflows))
        print(f"filled {args.workflows:,} workflows in {took:.1f} s; load {os.getloadavg()}")
        with Store(path, readonly=True) as store:
            rows = []
            newest = workflow_page(store, Filters())
            cases = [
                ("newest 50", lambda: workflow_page(store, Filters())),
                ("next page (cursor)", lambda: workflow_page(store, Filters(), newest.next_cursor)),
                ("name=order", lambda: workflow_page(store, Filters(name="order"))),
                ("name=other (no match)", lambda: workflow_page(store, Filters(name="other"))),
                (
                    "state=NEEDS_ATTENTION",
                    lambda: workflow_page(store, Filters(state=WorkflowState.NEEDS_ATTENTION)),
                ),
                (
                    "since the middle",
                    lambda: workflow_page(
                        store, Filters(until=1_700_000_000 + args.workflows * 0.005)
                    ),
                ),
                ("baseline: full scan", lambda: sum(1 for _ in store.workflows())),
            ]
            for name, fn in cases:
                took, page = timed(fn)
                shown = page if isinstance(page, int) else len(page.rows)  # type: ignore[attr-defined]
                examined = "" if isinstance(page, int) else page.examined  # type: ignore[attr-defined]
                rows.append((name, took * 1000, shown, examined))
        print(f"{'query':28} {'ms':>10} {'rows':>9} {'examined':>9}")
        for name, ms, shown, examined in rows:
            print(f"{name:28} {ms:10.1f} {shown:9} {examined!s:>9}")
        print(f"load {os.getloadavg()}")


if __name__ == "__main__":
    main()
