"""The SQLite-backed peers: DBOS Transact (system database on SQLite) and Huey (SqliteHuey).

Both come from the ``bench`` extra; importing this module never imports them, each run
function does, so a missing peer raises ImportError there and is reported as skipped.

- DBOS: ``travel`` is a ``@DBOS.workflow`` calling three ``@DBOS.step`` functions; each
  step's output is committed to the system database before the next step runs (DBOS's
  checkpoint), and the workflow's status row is written at start and at the end. Client
  threads each run workflows one after another (closed loop), so ``clients`` workflows
  are in flight.
- Huey: the three steps are a pipeline (``flight.s(n).then(hotel).then(car)``) on
  SqliteHuey with an in-process thread consumer. A task's enqueue and dequeue are SQLite
  commits, and so is each result. A window of ``in_flight`` pipelines is kept enqueued;
  completion is seen through Huey's ``complete`` signal on the last task.

"Durable" for both: SQLite committed the row; whether that fsyncs depends on the
connection's ``synchronous`` pragma, which each run reads back and reports.
"""

from __future__ import annotations

import collections
import pathlib
import sqlite3
import threading
import time
from typing import Any

from _workload import RETRY_INTERVAL, STEPS, Meter, Workload, book, result_row

WAIT = 600.0


class Attempts:
    """Counts attempts per (workflow, step), since neither peer hands one to every call."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: collections.Counter[tuple[int, str]] = collections.Counter()

    def next(self, n: int, step: str) -> int:
        """The number of this attempt (1 for the first)."""
        with self._lock:
            self._counts[n, step] += 1
            return self._counts[n, step]


def sqlite_pragmas(path: pathlib.Path) -> dict[str, Any]:
    """journal_mode (stored in the file) and a fresh connection's default synchronous."""
    con = sqlite3.connect(path)
    try:
        journal = con.execute("pragma journal_mode").fetchone()[0]
        synchronous = con.execute("pragma synchronous").fetchone()[0]
    finally:
        con.close()
    names = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}
    return {"journal_mode": journal, "synchronous": names.get(synchronous, synchronous)}


def _fsyncs(pragmas: dict[str, Any]) -> str:
    sync = pragmas["synchronous"]
    if sync in ("FULL", "EXTRA"):
        return f"yes: every commit (journal={pragmas['journal_mode']}, synchronous={sync})"
    if sync == "NORMAL" and pragmas["journal_mode"] == "wal":
        return "no: WAL with synchronous=NORMAL fsyncs only at checkpoints"
    return f"no (journal={pragmas['journal_mode']}, synchronous={sync})"


# -- DBOS ----------------------------------------------------------------------------------


def run_dbos(
    root: pathlib.Path,
    workflows: int,
    workload: Workload,
    *,
    wal: bool,
    clients: int,
    warmup: int,
    meter: Meter,
) -> dict[str, Any]:
    """DBOS Transact with its SQLite system database (default journal, or WAL)."""
    from dbos import DBOS

    db = root / "dbos.sqlite"
    if wal:  # journal_mode=wal is stored in the file: set it before DBOS opens it
        con = sqlite3.connect(db)
        con.execute("pragma journal_mode=wal")
        con.close()
    DBOS(
        config={
            "name": "herder-bench",
            "system_database_url": f"sqlite:///{db}",
            "log_level": "WARNING",
        }
    )
    attempts = Attempts()

    @DBOS.step(retries_allowed=True, interval_seconds=RETRY_INTERVAL, max_attempts=3)
    def step(n: int, name: str) -> dict[str, Any]:
        return book(workload, n, name, attempts.next(n, name))

    @DBOS.workflow()
    def travel(n: int) -> dict[str, Any]:
        return {name: step(n, name) for name in STEPS}

    DBOS.launch()
    try:
        for i in range(warmup):
            travel(-1 - i)
        meter.begin()
        spans = _closed_loop(travel, workflows, clients)
        meter.end()
    finally:
        DBOS.destroy()
    row = result_row(workflows, spans.elapsed, spans.spans)
    pragmas = sqlite_pragmas(db)
    row["driver"] = f"{clients} client threads, each runs a workflow and waits (closed loop)"
    row["durable"] = (
        "each step's output and the workflow status committed to SQLite before the next step"
    )
    row["fsync"] = _fsyncs(pragmas)
    row["sqlite"] = pragmas
    return row


class Spans:
    """Wall time and (start, [end]) per workflow of one measured run."""

    def __init__(self) -> None:
        self.spans: list[tuple[float, list[float]]] = []
        self.elapsed = 0.0


def _closed_loop(run_one: Any, workflows: int, clients: int) -> Spans:
    """``clients`` threads each run workflows to completion one after another."""
    out = Spans()
    counter = iter(range(workflows))
    lock = threading.Lock()
    errors: list[BaseException] = []

    def client() -> None:
        mine = []
        try:
            while True:
                with lock:
                    n = next(counter, None)
                if n is None:
                    break
                began = time.perf_counter()
                run_one(n)
                mine.append((began, [time.perf_counter()]))
        except BaseException as exc:
            errors.append(exc)
        with lock:
            out.spans.extend(mine)

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT)
    out.elapsed = time.perf_counter() - t0
    if errors:
        raise RuntimeError(f"{len(errors)} client threads failed") from errors[0]
    if len(out.spans) != workflows:
        raise RuntimeError(f"{len(out.spans)} of {workflows} workflows finished")
    return out


# -- Huey ----------------------------------------------------------------------------------


def run_huey(
    root: pathlib.Path,
    workflows: int,
    workload: Workload,
    *,
    workers: int,
    in_flight: int,
    warmup: int,
    meter: Meter,
) -> dict[str, Any]:
    """Huey with SqliteHuey and a thread consumer, the three steps as a pipeline."""
    from huey import SqliteHuey, signals

    db = root / "huey.sqlite"
    huey = SqliteHuey("herder-bench", filename=str(db))
    attempts = Attempts()

    def make(name: str) -> Any:
        @huey.task(retries=2, retry_delay=RETRY_INTERVAL, name=name)
        def task(n: int) -> int:
            book(workload, n, name, attempts.next(n, name))
            return n

        return task

    tasks = [make(name) for name in STEPS]
    window = threading.Semaphore(in_flight)
    lock = threading.Lock()
    started: dict[int, float] = {}
    done: dict[int, list[float]] = collections.defaultdict(list)
    finished = threading.Event()
    target = {"count": 0, "seen": 0}

    @huey.signal(signals.SIGNAL_COMPLETE)
    def on_complete(signal: str, task: Any, *_: Any) -> None:
        now = time.perf_counter()
        n = task.args[0]
        with lock:
            done[n].append(now)
            if task.name != STEPS[-1]:
                return
            target["seen"] += 1
            if target["seen"] == target["count"]:
                finished.set()
        window.release()

    consumer = huey.create_consumer(workers=workers, worker_type="thread", periodic=False)
    consumer.start()
    try:

        def go(numbers: range) -> float:
            with lock:
                target["count"], target["seen"] = len(numbers), 0
                finished.clear()
            t0 = time.perf_counter()
            for n in numbers:
                window.acquire()
                started[n] = time.perf_counter()
                huey.enqueue(tasks[0].s(n).then(tasks[1]).then(tasks[2]))
            if not finished.wait(WAIT):
                raise TimeoutError(f"huey finished {target['seen']} of {len(numbers)}")
            return time.perf_counter() - t0

        if warmup:
            go(range(-warmup, 0))
        meter.begin()
        elapsed = go(range(workflows))
        meter.end()
    finally:
        consumer.stop(graceful=True)
    spans = [(started[n], done[n][-len(STEPS) :]) for n in range(workflows)]
    row = result_row(workflows, elapsed, spans)
    pragmas = sqlite_pragmas(db)
    pragmas["huey_fsync_option"] = "default (not set: the connection's default applies)"
    row["driver"] = (
        f"one enqueuer keeps {in_flight} pipelines queued; {workers} consumer worker threads"
    )
    row["durable"] = "each task's enqueue, dequeue and result committed to SQLite"
    row["fsync"] = _fsyncs(pragmas)
    row["sqlite"] = pragmas
    return row
