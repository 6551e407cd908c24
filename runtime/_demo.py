"""``herder demo``: book trips under injected faults, SIGKILL the worker midway, resume.

The demo is two processes. The *worker* (``herder demo --worker``) opens a Runtime on the
store, registers three agents (airline, hotels, cars) over durable idempotent fake
services (``_demo_services``: every request is fsync'd to a log before it is answered)
and starts the trips. Faults are drawn from a seeded RNG per attempt, so a run is
repeatable: slow answers, transient errors, answers lost after the service applied them,
agent instances that crash, one hotel request that hangs past its timeout, and cars that
are sold out for good, which makes those trips compensate hotel and flight.

The *parent* shows progress by reading the store read-only, kills the worker with SIGKILL
once about half the trips are done, starts it again on the same store (starting is
idempotent, so it simply starts every trip again) and, when the worker is done, audits
the store against the services' logs. It exits 0 only if the guarantees held: every trip
finished whole or was undone whole, nothing applied twice.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import logging
import math
import os
import pathlib
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Sequence
from typing import TextIO

from herder.actors import StepContext
from herder.runtime._cli_args import positive_arg
from herder.runtime._console import ProgressLine, print_table
from herder.runtime._demo_services import Booking, audit, open_services, travel_workflow
from herder.runtime._runtime import Runtime
from herder.runtime._status import WorkflowFailed, workflow_counts
from herder.store import RetryPolicy, Store, StoreError, WorkflowState

STEP_TIMEOUT = 1.0
HANG = 1.5  # seconds the hung hotel request blocks: past STEP_TIMEOUT
HUNG_TRIP = "trip-13"  # this trip's first hotel attempt hangs
SOLD_OUT = 0.05  # chance per trip that cars are sold out for good
POLL = 0.1  # seconds between the parent's progress reads
GUARD = 120.0  # seconds the parent waits for a trip to finish before giving up on a worker
LOG_TAIL = 15  # lines of a failed worker's log the parent shows


def sold_out(seed: int, workflow_id: str) -> bool:
    """True for the trips whose car booking can never succeed (they compensate)."""
    return random.Random(f"{seed}/{workflow_id}/sold-out").random() < SOLD_OUT


def pick_fault(seed: int, ctx: StepContext) -> str | None:
    """The fault this attempt meets, decided by a seeded RNG per attempt."""
    if ctx.workflow_id == HUNG_TRIP and ctx.step == "hotel" and ctx.attempt == 1:
        return "hang"
    r = random.Random(f"{seed}/{ctx.idempotency_key}/{ctx.attempt}").random()
    for kind, chance in (("crash", 0.01), ("before", 0.05), ("after", 0.03), ("slow", 0.05)):
        if r < chance:
            return kind
        r -= chance
    return None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="herder demo",
        description="Book trips under injected faults, SIGKILL the worker midway, resume.",
    )
    parser.add_argument(
        "--workflows", type=positive_arg, default=2000, help="trips to book (default: %(default)s)"
    )
    parser.add_argument("--dir", type=pathlib.Path, help="where the store and service logs go")
    parser.add_argument("--seed", type=int, default=7, help="fault RNG seed (default: %(default)s)")
    parser.add_argument(
        "--concurrency",
        type=positive_arg,
        default=8,
        help="instances per agent (default: %(default)s)",
    )
    parser.add_argument(
        "--kill-at",
        type=_fraction,
        default=0.5,
        help="fraction of trips done when to SIGKILL (default: %(default)s; 0 or 1: never)",
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    return parser


def _fraction(text: str) -> float:
    """A fraction from 0 to 1 (``--kill-at``); anything else is a usage error."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 <= value <= 1:  # (NaN too)
        raise argparse.ArgumentTypeError(f"{text!r} is not a fraction from 0 to 1")
    return value


def run_demo(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    """Run the demo (or, with ``--worker``, its worker); returns the exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    out = out or sys.stdout
    if args.worker:
        return _worker(args.dir, args.workflows, args.seed, args.concurrency)
    if args.dir is not None:
        # A second run would find its trips finished, kill nothing and audit the first
        # run's store: its summary would be about neither.
        used = [p.name for p in (args.dir / "store", args.dir / "effects") if p.exists()]
        if used:
            parser.error(
                f"--dir {args.dir} holds an earlier demo's {' and '.join(used)}; "
                "give a new or empty directory, or delete that one first"
            )
        try:
            args.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:  # a file there, or no right to make it: say so, no traceback
            reason = "a file is there" if args.dir.exists() else exc.strerror
            parser.error(f"--dir {args.dir} cannot be made a directory ({reason}); give another")
        return _parent(args, args.dir, out)
    with tempfile.TemporaryDirectory(prefix="herder-demo-") as tmp:
        return _parent(args, pathlib.Path(tmp), out)


# -- the worker ------------------------------------------------------------------------


def _worker(root: pathlib.Path, count: int, seed: int, concurrency: int) -> int:
    # The demo crashes agent instances on purpose and counts them in its summary; the
    # tree's per-crash tracebacks would only bury it.
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("pykka", "herder.supervision"):
        logging.getLogger(noisy).setLevel(logging.CRITICAL)
    retry = RetryPolicy(max_attempts=8, initial_interval=0.01, max_interval=0.2, jitter=0.2)
    services = open_services(root / "effects")
    fault = functools.partial(pick_fault, seed)

    def no_cars(ctx: StepContext) -> bool:
        return sold_out(seed, ctx.workflow_id)

    def register(rt: Runtime) -> None:  # before recovery: the restarted worker resumes at once
        for agent, service in services.items():
            factory = functools.partial(Booking, service, fault, no_cars, HANG)
            rt.add_agent(agent, factory, concurrency=concurrency)
        rt.add_workflow(travel_workflow(retry, STEP_TIMEOUT))

    with Runtime(root / "store", sweep_interval=0.05, seed=seed, setup=register) as rt:
        _say("ready")
        stop = threading.Event()
        reporter = threading.Thread(target=_report, args=(rt, stop), daemon=True)
        reporter.start()
        handles = [
            rt.start("travel", {"who": f"traveller {n}"}, workflow_id=f"trip-{n}")
            for n in range(count)
        ]
        _say("started")
        for handle in handles:
            with contextlib.suppress(WorkflowFailed):
                handle.result(timeout=GUARD)
        stop.set()
        reporter.join()
        _say("steps " + json.dumps(rt.stats()["steps"]))
    _say("finished")
    return 0


def _report(rt: Runtime, stop: threading.Event) -> None:
    """Print the engine's step counters now and then: the parent keeps the last ones a
    killed worker reported."""
    while not stop.wait(0.2):
        _say("steps " + json.dumps(rt.stats()["steps"]))


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


# -- the parent ------------------------------------------------------------------------


class _Worker:
    """One worker subprocess; its stdout lines arrive through a pump thread."""

    def __init__(self, args: argparse.Namespace, root: pathlib.Path) -> None:
        # -P: the working directory is not searched first, so a herder.py or herder/ of
        # the user's there cannot stand in for the herder the parent runs
        cmd = [sys.executable, "-P", "-m", "herder.runtime", "demo", "--worker"]
        cmd += ["--dir", str(root)]
        cmd += ["--workflows", str(args.workflows), "--seed", str(args.seed)]
        cmd += ["--concurrency", str(args.concurrency)]
        self.stderr = open(root / "worker.log", "ab")  # noqa: SIM115 (closed in wait)
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self.stderr, text=True)
        self.lines: list[str] = []
        self.steps: dict[str, int] = {}  # the last step counters it reported
        self.ended = threading.Event()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("steps "):
                self.steps = json.loads(line.removeprefix("steps "))
            else:
                self.lines.append(line.strip())
        self.ended.set()

    def kill(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)

    def wait(self) -> int:
        code = self.proc.wait(timeout=GUARD)
        self.ended.wait(GUARD)
        self.stderr.close()
        return code


def _count_final(store_path: pathlib.Path) -> int:
    """Trips finished, from the store's ``recent`` index: decoding every record instead
    took 0.09 s a poll at 20,000 trips, most of a core beside the worker it slowed."""
    try:
        with Store(store_path, readonly=True) as store:
            by_state, _ = workflow_counts(store)
    except StoreError:
        return 0  # not created yet
    return sum(n for state, n in by_state.items() if WorkflowState(state).is_final)


def _parent(args: argparse.Namespace, root: pathlib.Path, out: TextIO) -> int:
    began = time.monotonic()
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    out.write(f"herder demo: booking {args.workflows} trips (flight, hotel, car) in {root}\n")
    progress = ProgressLine(out, args.workflows)
    workers: list[_Worker] = []
    # SIGTERM (`timeout`, a cancelled job) as Ctrl-C: else the parent died at once and
    # left the temporary directory behind
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        watched = _watch(args, root, progress, workers)
    except KeyboardInterrupt:  # Ctrl-C: say so without a traceback
        watched = None
    finally:  # whatever ended the watch (Ctrl-C, the reader of a pipe left), no worker
        signal.signal(signal.SIGTERM, previous)
        for worker in workers:  # outlives it to write on into a deleted directory
            if worker.proc.poll() is None:
                worker.kill()
                worker.wait()
    if watched is None:
        progress.note("interrupted: the worker is stopped")
        return 130
    if not watched:
        return 1
    kills = len(workers) - 1  # each SIGKILL starts the next worker
    progress.close()
    steps: Counter[str] = Counter()
    for w in workers:
        steps.update(w.steps)
    return _summarise(args, root, kills, steps, elapsed=time.monotonic() - began, out=out)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _watch(
    args: argparse.Namespace, root: pathlib.Path, progress: ProgressLine, workers: list[_Worker]
) -> bool:
    """Run the worker (into ``workers``), SIGKILL it at ``--kill-at`` and start the next,
    until one finishes: True, or False (said why) if one failed or overran."""
    total = args.workflows
    worker = _Worker(args, root)
    workers.append(worker)
    kill_at = int(total * args.kill_at) if 0 < args.kill_at < 1 else None
    # A worker is given up on when no trip finishes for GUARD seconds, not GUARD after the
    # start: a run of many trips (--workflows 30000 takes minutes) was killed midway.
    deadline, seen = time.monotonic() + GUARD, -1
    while True:
        ended = worker.ended.wait(POLL)
        done = _count_final(root / "store")
        progress.update(done, "finished")
        if done > seen:
            deadline, seen = time.monotonic() + GUARD, done
        if ended:
            code = worker.wait()
            if "finished" not in worker.lines or code != 0:
                _worker_failed(args, root, code, progress)
                return False
            return True
        if kill_at is not None and len(workers) == 1 and done >= kill_at:
            worker.kill()
            worker.wait()
            progress.note(
                f"SIGKILLed the worker (pid {worker.proc.pid}) with {done}/{total} trips "
                "finished; restarting it on the same store"
            )
            worker = _Worker(args, root)
            workers.append(worker)
        if time.monotonic() > deadline:
            worker.kill()
            worker.wait()
            progress.note(f"no trip finished in {GUARD}s; killed the worker")
            return False


def _worker_failed(
    args: argparse.Namespace, root: pathlib.Path, code: int, progress: ProgressLine
) -> None:
    """Show why: the end of the worker's log (a temporary --dir goes when the demo ends)."""
    log = root / "worker.log"
    tail = log.read_text(errors="replace").strip().splitlines()[-LOG_TAIL:]
    where = f" (all of it: {log})" if args.dir is not None else ""
    lines = "".join(f"\n    {line}" for line in tail) or "\n    (empty)"
    progress.note(f"the worker exited {code}; the end of its log{where}:{lines}")


def _summarise(
    args: argparse.Namespace,
    root: pathlib.Path,
    kills: int,
    steps: Counter[str],
    *,
    elapsed: float,
    out: TextIO,
) -> int:
    def expected(wid: str) -> WorkflowState:
        failing = sold_out(args.seed, wid)
        return WorkflowState.COMPENSATED if failing else WorkflowState.SUCCEEDED

    found = audit(root / "store", root / "effects", expected)
    problems = list(found.problems)
    if len(found.workflows) != args.workflows:
        problems.append(f"{len(found.workflows)} of {args.workflows} trips are in the store")
    killing = 0 < args.kill_at < 1  # (else --kill-at asked for no kill)
    if killing and kills > 1:
        problems.append(f"the worker was killed {kills} times, not once")
    # A small run can finish between two progress reads, before the kill point was seen:
    # no crash to recover from is no broken invariant (it failed `--workflows 10`).
    unkilled = killing and kills == 0
    rows = [
        ("trips", len(found.workflows)),
        ("succeeded", found.outcome[WorkflowState.SUCCEEDED]),
        ("compensated", found.outcome[WorkflowState.COMPENSATED]),
        ("needing attention", found.outcome[WorkflowState.NEEDS_ATTENTION]),
        ("retries", found.retries),
        ("worker SIGKILLs / restarts", kills),
        ("agent instance crashes", steps["crashes"]),
        ("timeouts", steps["timed_out"]),
        ("service requests", found.requests),
        ("repeats absorbed", found.requests - found.effects),
        ("duplicate effects", found.duplicated),
        ("seconds", round(elapsed, 1)),
    ]
    out.write("\n")
    print_table(out, "summary", ("", "count"), rows)
    if problems:
        out.write("\ninvariants violated:\n" + "".join(f"  - {p}\n" for p in problems[:20]))
        return 1
    if unkilled:
        out.write(
            "\nthe worker finished before the kill point was seen, so it was not killed: "
            "more --workflows give it time\n"
        )
    out.write(
        "\ninvariants held: every trip finished whole or was undone whole, "
        "no booking applied twice.\n"
    )
    return 0
