"""Supervision overhead against bare pykka, measured in the same run.

1. Restart latency: from just before the crashing ``tell`` to the replacement answering
   an ask. Supervised: a one_for_one supervisor restarts the child (the listener hands the
   new ref over). Baseline: a bare pykka actor whose ``on_failure`` starts its successor.
2. Start cost per child, for pools of each size, every variant measured in every round
   (rounds rotate the order; the table shows medians over the rounds):

   - ``bare``: ``ThreadingActor.start()`` alone; returns before the actor's ``on_start``
     ran, so it guarantees less than ``start_child`` does.
   - ``bare+ready``: the same, then a wait until ``on_start`` finished (a lock the actor
     releases at the end of ``on_start``, the handshake the supervisor uses). This is the
     apples-to-apples baseline: ``start_child`` returns only after ``on_start`` finished.
     The ratios divide by this column.
   - ``start_child seq``: one ``start_child`` ask at a time (ask, wait, next): the honest
     cost of the single-child API, including the caller -> supervisor -> caller round trip.
   - ``start_child pipe``: every ``start_child`` ask sent first, then the replies awaited
     in order (what this benchmark measured before it had the other columns).
   - ``start_children``: one ``start_children`` ask with every spec (the batched API).

   Supervised variants build their ``ChildSpec`` values inside the timed region. All
   actors run on daemon threads on both sides. Everything is stopped after each variant.

Usage: python benchmarks/supervision.py [--crashes N] [--pools 1000,10000] [--rounds R]
       [--out PATH]
"""

from __future__ import annotations

import argparse
import logging
import queue
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pykka
from _harness import machine, render_table, summary, write_report
from _harness import progress as _progress
from pykka.messages import ProxyCall

from herder.actors import ChildEvent, ChildSpec, Strategy, SupervisedActor, start_supervisor
from herder.actors._ask import call

WAIT = 30.0


def progress(message: str) -> None:
    """A progress line on stderr, so stdout stays the table."""
    _progress("supervision bench", message)


class Child(SupervisedActor):
    """A supervised child: crashes on "crash", answers anything else."""

    def on_receive(self, message: Any) -> Any:
        if message == "crash":
            raise RuntimeError("crash on purpose")
        return "pong"


class Bare(pykka.ThreadingActor):
    """The baseline: a bare pykka actor that starts its own successor in on_failure.

    Given ``ready`` (a held lock), it releases it at the end of ``on_start``.
    """

    use_daemon_thread = True

    def __init__(
        self,
        successors: queue.Queue[pykka.ActorRef[Any]] | None = None,
        ready: threading.Lock | None = None,
    ) -> None:
        super().__init__()
        self.successors = successors
        self.ready = ready

    def on_start(self) -> None:
        if self.ready is not None:
            self.ready.release()

    def on_receive(self, message: Any) -> Any:
        if message == "crash":
            raise RuntimeError("crash on purpose")
        return "pong"

    def on_failure(self, *_exc_info: object) -> None:
        if self.successors is not None:
            self.successors.put(Bare.start(self.successors))


def restart_supervised(crashes: int) -> list[float]:
    """Crash-to-ready latency of a supervised child, one crash at a time."""
    events: queue.Queue[ChildEvent] = queue.Queue()

    def listener(event: ChildEvent) -> None:
        if event.kind == "restarted":
            events.put(event)

    sup = start_supervisor(
        "bench",
        children=[ChildSpec("c", Child.start)],
        max_restarts=crashes + 1,
        period=3600.0,
        listener=listener,
    )
    ref = sup.proxy().which_children().get(timeout=WAIT)[0].ref
    samples = []
    for i in range(crashes):
        began = time.perf_counter()
        ref.tell("crash")
        ref = events.get(timeout=WAIT).ref
        ref.ask("ping", timeout=WAIT)
        samples.append(time.perf_counter() - began)
        if i % 500 == 499:
            progress(f"supervised restarts: {i + 1}/{crashes}")
    sup.stop(timeout=WAIT)
    return samples


def restart_bare(crashes: int) -> list[float]:
    """Crash-to-ready latency of the bare pykka baseline."""
    successors: queue.Queue[pykka.ActorRef[Any]] = queue.Queue()
    ref = Bare.start(successors)
    samples = []
    for i in range(crashes):
        began = time.perf_counter()
        ref.tell("crash")
        ref = successors.get(timeout=WAIT)
        ref.ask("ping", timeout=WAIT)
        samples.append(time.perf_counter() - began)
        if i % 500 == 499:
            progress(f"bare restarts: {i + 1}/{crashes}")
    ref.stop(timeout=WAIT)
    return samples


def _stop_all(refs: list[pykka.ActorRef[Any]]) -> None:
    for future in [ref.stop(block=False) for ref in refs]:
        future.get(timeout=WAIT)


def start_bare(n: int) -> float:
    """Seconds to start n bare pykka actors (without waiting for their on_start)."""
    began = time.perf_counter()
    refs = [Bare.start() for _ in range(n)]
    elapsed = time.perf_counter() - began
    _stop_all(refs)
    return elapsed


def start_bare_ready(n: int) -> float:
    """Seconds to start n bare pykka actors, each confirmed after its on_start."""
    refs = []
    began = time.perf_counter()
    for _ in range(n):
        ready = threading.Lock()
        ready.acquire()
        refs.append(Bare.start(ready=ready))
        if not ready.acquire(timeout=WAIT):
            raise TimeoutError("a bare actor did not finish on_start")
    elapsed = time.perf_counter() - began
    _stop_all(refs)
    return elapsed


def _start_child_ask(pool: pykka.ActorRef[Any], spec: ChildSpec) -> pykka.Future[Any]:
    return pool.ask(ProxyCall(attr_path=("start_child",), args=(spec,), kwargs={}), block=False)


def _in_pool(fill: Callable[[pykka.ActorRef[Any], int], None]) -> Callable[[int], float]:
    def run(n: int) -> float:
        pool = start_supervisor("pool", Strategy.SIMPLE_ONE_FOR_ONE)
        began = time.perf_counter()
        fill(pool, n)
        elapsed = time.perf_counter() - began
        pool.stop(timeout=WAIT)
        return elapsed

    return run


@_in_pool
def start_child_sequential(pool: pykka.ActorRef[Any], n: int) -> None:
    """One start_child ask at a time."""
    for i in range(n):
        call(pool, "start_child", ChildSpec(f"w{i}", Child.start), timeout=WAIT)


@_in_pool
def start_child_pipelined(pool: pykka.ActorRef[Any], n: int) -> None:
    """Every start_child ask first, then the replies in order."""
    futures = [_start_child_ask(pool, ChildSpec(f"w{i}", Child.start)) for i in range(n)]
    for future in futures:
        future.get(timeout=WAIT)


@_in_pool
def start_children_batched(pool: pykka.ActorRef[Any], n: int) -> None:
    """One start_children ask for the whole pool."""
    specs = [ChildSpec(f"w{i}", Child.start) for i in range(n)]
    call(pool, "start_children", specs, timeout=WAIT + n * 0.01)


# column name -> how to fill a pool of n; "bare+ready" is the denominator of the ratios
START_VARIANTS: dict[str, Callable[[int], float]] = {
    "bare": start_bare,
    "bare+ready": start_bare_ready,
    "start_child seq": start_child_sequential,
    "start_child pipe": start_child_pipelined,
    "start_children": start_children_batched,
}
BASELINE = "bare+ready"


def start_costs(n: int, rounds: int) -> dict[str, Any]:
    """Per-child start cost of every variant over ``rounds`` rotated rounds."""
    names = list(START_VARIANTS)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        progress(f"pools of {n}: round {r + 1}/{rounds}")
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            samples[name].append(START_VARIANTS[name](n) / n * 1e6)
    medians = {name: statistics.median(v) for name, v in samples.items()}
    return {
        "children": n,
        "rounds": rounds,
        "median_us_per_child": medians,
        "ratio_to_bare_ready": {name: medians[name] / medians[BASELINE] for name in names},
        "ratio_to_bare": {name: medians[name] / medians["bare"] for name in names},
        "samples_us_per_child": samples,
    }


def main() -> None:
    """Run both measurements, print the tables, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--crashes", type=int, default=2000)
    parser.add_argument("--pools", default="1000,10000")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", default="benchmarks/out/supervision.json")
    args = parser.parse_args()
    # Both sides log every crash through pykka; keep the handler cost out of the numbers.
    logging.disable(logging.CRITICAL)

    progress("warm-up")
    restart_bare(50)
    restart_supervised(50)
    for fill in START_VARIANTS.values():
        fill(200)
    bare_restart = restart_bare(args.crashes)
    sup_restart = restart_supervised(args.crashes)
    starts = [start_costs(int(x), args.rounds) for x in args.pools.split(",")]

    result = {
        "machine": machine(),
        "restart_latency": {
            "bare": summary(bare_restart),
            "supervised": summary(sup_restart),
        },
        "start_cost": starts,
        "targets": {"restart_p50_us": 1000, "start_ratio_max": 1.5, "ratio_baseline": BASELINE},
    }

    rl = result["restart_latency"]
    print(f"\nrestart latency, crash -> replacement answers an ask ({args.crashes} crashes)")
    print(
        render_table(
            ["", "p50 us", "p99 us", "mean us"],
            [[name, *(rl[name][k] for k in ("p50_us", "p99_us", "mean_us"))] for name in rl],
        )
    )
    names = list(START_VARIANTS)
    supervised = names[names.index(BASELINE) + 1 :]
    print(f"\nstart cost per child, us (median of {args.rounds} rounds)")
    print(
        render_table(
            ["children", *names],
            [[row["children"], *row["median_us_per_child"].values()] for row in starts],
        )
    )
    print(f"\nratio to {BASELINE} (target <= 1.5); in brackets: ratio to bare")
    print(
        render_table(
            ["children", *supervised],
            [
                [
                    row["children"],
                    *(
                        f"{row['ratio_to_bare_ready'][name]:.2f} ({row['ratio_to_bare'][name]:.2f})"
                        for name in supervised
                    ),
                ]
                for row in starts
            ],
        )
    )
    print()
    write_report(Path(args.out), result)


if __name__ == "__main__":
    main()
