"""Supervision overhead against bare pykka, measured in the same run.

1. Restart latency: from just before the crashing ``tell`` to the replacement answering
   an ask. Supervised: a one_for_one supervisor restarts the child (the listener hands the
   new ref over). Baseline: a bare pykka actor whose ``on_failure`` starts its successor.
2. Start cost per child: a simple_one_for_one pool filled with ``start_child`` (asks
   pipelined, each confirmed only after the child's ``on_start``) against bare
   ``ThreadingActor.start()`` of the same number of actors. Everything is stopped after
   each measurement.

Usage: python benchmarks/supervision.py [--crashes N] [--pools 1000,10000] [--out PATH]
"""

from __future__ import annotations

import argparse
import logging
import queue
import time
from pathlib import Path
from typing import Any

import pykka
from _harness import machine, summary, write_report
from _harness import progress as _progress

from herder.actors import ChildEvent, ChildSpec, Strategy, SupervisedActor, start_supervisor

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
    """The baseline: a bare pykka actor that starts its own successor in on_failure."""

    use_daemon_thread = True

    def __init__(self, successors: queue.Queue[pykka.ActorRef[Any]] | None = None) -> None:
        super().__init__()
        self.successors = successors

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


def start_supervised(n: int) -> float:
    """Seconds to fill a pool of n children through start_child (pipelined asks)."""
    pool = start_supervisor("pool", Strategy.SIMPLE_ONE_FOR_ONE)
    proxy = pool.proxy()
    began = time.perf_counter()
    futures = [proxy.start_child(ChildSpec(f"w{i}", Child.start)) for i in range(n)]
    for future in futures:
        future.get(timeout=WAIT)
    elapsed = time.perf_counter() - began
    pool.stop(timeout=WAIT)
    return elapsed


def start_bare(n: int) -> float:
    """Seconds to start n bare pykka actors."""
    began = time.perf_counter()
    refs = [Bare.start() for _ in range(n)]
    elapsed = time.perf_counter() - began
    for future in [ref.stop(block=False) for ref in refs]:
        future.get(timeout=WAIT)
    return elapsed


def main() -> None:
    """Run both measurements, print the table, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--crashes", type=int, default=2000)
    parser.add_argument("--pools", default="1000,10000")
    parser.add_argument("--out", default="benchmarks/out/supervision.json")
    args = parser.parse_args()
    # Both sides log every crash through pykka; keep the handler cost out of the numbers.
    logging.disable(logging.CRITICAL)

    progress("warm-up")
    restart_bare(50)
    restart_supervised(50)
    bare_restart = restart_bare(args.crashes)
    sup_restart = restart_supervised(args.crashes)

    starts: list[dict[str, Any]] = []
    for n in (int(x) for x in args.pools.split(",")):
        progress(f"starting pools of {n}")
        bare = start_bare(n)
        supervised = start_supervised(n)
        starts.append(
            {
                "children": n,
                "bare_us_per_child": bare / n * 1e6,
                "supervised_us_per_child": supervised / n * 1e6,
                "ratio": supervised / bare,
            }
        )

    result = {
        "machine": machine(),
        "restart_latency": {
            "bare": summary(bare_restart),
            "supervised": summary(sup_restart),
        },
        "start_cost": starts,
        "targets": {"restart_p50_us": 1000, "start_ratio_max": 1.5},
    }
    out = Path(args.out)

    rl = result["restart_latency"]
    print(f"\nrestart latency, crash -> replacement answers an ask ({args.crashes} crashes)")
    print(f"{'':24}{'p50 us':>10}{'p99 us':>10}{'mean us':>10}")
    for name in ("bare", "supervised"):
        s = rl[name]
        print(f"{name:24}{s['p50_us']:>10.0f}{s['p99_us']:>10.0f}{s['mean_us']:>10.0f}")
    print("\nstart cost per child")
    print(f"{'children':>10}{'bare us':>12}{'supervised us':>16}{'ratio':>8}")
    for row in starts:
        print(
            f"{row['children']:>10}{row['bare_us_per_child']:>12.1f}"
            f"{row['supervised_us_per_child']:>16.1f}{row['ratio']:>8.2f}"
        )
    print()
    write_report(out, result)


if __name__ == "__main__":
    main()
