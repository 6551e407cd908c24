"""What one thread wake-up costs in CPU, with the GIL free and with it held: the floor
under every hand-off between herder's threads (a ``start()`` caller woken by the store
writer, a worker woken by the Scheduler, the writer reacquiring the GIL after each LMDB
call).

Two threads hand a lock back and forth ``--rounds`` times; each round blocks each of
them once (one voluntary context switch each). Cases, in the same run:

- ``idle``: nothing else runs.
- ``N spinning``: N more threads run pure Python meanwhile, as the Scheduler and the
  workers do under load, so a woken thread must also wait for the GIL.

Per case: CPU microseconds per wake-up (both threads' CPU over both threads' wake-ups),
wall microseconds per round, and voluntary context switches per wake-up. Read against
``benchmarks/throughput.py``'s "voluntary context switches/step by thread" line: at 256
in flight herder makes ~1.9 per step, ~2.7 of them per ``start()`` caller.

Usage: python benchmarks/gil_handoff.py [--rounds 20000] [--spinners 0,1,2] [--out PATH]
"""

from __future__ import annotations

import argparse
import pathlib
import resource
import threading
import time
from typing import Any

from _harness import machine, progress, render_table, write_report

TAG = "gil_handoff"


def one_case(rounds: int, spinners: int) -> dict[str, Any]:
    """Hand a lock back and forth ``rounds`` times while ``spinners`` threads spin."""
    stop = threading.Event()

    def spin() -> None:
        n = 0
        while not stop.is_set():
            n += 1

    ping, pong = threading.Lock(), threading.Lock()
    ping.acquire()
    pong.acquire()
    used: list[tuple[float, int]] = []

    def usage() -> tuple[float, int]:
        r = resource.getrusage(resource.RUSAGE_THREAD)
        return r.ru_utime + r.ru_stime, r.ru_nvcsw

    def answer() -> None:
        cpu, switches = usage()
        for _ in range(rounds):
            ping.acquire()
            pong.release()
        end = usage()
        used.append((end[0] - cpu, end[1] - switches))

    spinning = [threading.Thread(target=spin, daemon=True) for _ in range(spinners)]
    for t in spinning:
        t.start()
    other = threading.Thread(target=answer)
    other.start()
    cpu, switches = usage()
    began = time.perf_counter()
    for _ in range(rounds):
        ping.release()
        pong.acquire()
    wall = time.perf_counter() - began
    end = usage()
    other.join()
    stop.set()
    for t in spinning:
        t.join()
    wakes = 2 * rounds
    total_cpu = end[0] - cpu + used[0][0]
    total_switches = end[1] - switches + used[0][1]
    return {
        "spinners": spinners,
        "rounds": rounds,
        "cpu_us_per_wake": total_cpu * 1e6 / wakes,
        "wall_us_per_round": wall * 1e6 / rounds,
        "switches_per_wake": total_switches / wakes,
    }


def main(argv: list[str] | None = None) -> None:
    here = pathlib.Path(__file__).resolve().parent
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20_000)
    parser.add_argument("--spinners", default="0,1,2", help="comma-separated thread counts")
    parser.add_argument("--out", type=pathlib.Path, default=here / "out" / "gil_handoff.json")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    try:
        counts = [int(n) for n in args.spinners.split(",") if n.strip()]
    except ValueError:
        parser.error(f"--spinners {args.spinners!r}: give whole numbers, e.g. 0,1,2")
    if not counts or min(counts) < 0:
        parser.error("--spinners needs one or more counts of 0 or more")
    cases = []
    for n in counts:
        rounds = args.rounds if n == 0 else max(1, args.rounds // 40)  # ~5 ms per round
        progress(TAG, f"{rounds:,} rounds, {n} spinning")
        cases.append(one_case(rounds, n))
    header = ["case", "rounds", "CPU us/wake", "wall us/round", "switches/wake"]
    rows = [
        [
            "idle" if c["spinners"] == 0 else f"{c['spinners']} spinning",
            c["rounds"],
            f"{c['cpu_us_per_wake']:.1f}",
            f"{c['wall_us_per_round']:,.0f}",
            f"{c['switches_per_wake']:.2f}",
        ]
        for c in cases
    ]
    print(render_table(header, rows))
    write_report(args.out, {"benchmark": TAG, "machine": machine(), "cases": cases})


if __name__ == "__main__":
    main()
