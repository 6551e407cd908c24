"""``herder demo``: the travel-booking example (seed 004) under injected faults.

Three agents (airline, hotels, cars) wrap fake remote services that deduplicate requests
by idempotency key. Faults are drawn from a seeded RNG per (workflow, step, attempt), so a
run is repeatable: slow answers, transient errors, one hotel request that hangs until its
timeout (the instance is replaced), agent instances that crash, and cars that are sold
out for good, which makes the workflow compensate its flight and hotel in reverse order.

The demo checks the invariants at the end and exits 0 only if they held: every workflow
finished; a succeeded trip holds all three bookings; a compensated trip holds none; no
booking was applied twice.
"""

from __future__ import annotations

import argparse
import functools
import logging
import random
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from herder.actors._agent import Agent, StepContext
from herder.actors._agent_host import InstanceCrash
from herder.actors._errors import Permanent
from herder.runtime._runtime import Runtime
from herder.runtime._status import WorkflowFailed
from herder.runtime._workflow import Workflow
from herder.store._records import RetryPolicy, WorkflowState


class BookingService:
    """A fake remote booking API that is idempotent by key (thread-safe)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._lock = threading.Lock()
        self.booked: dict[str, int] = {}
        self.cancelled: set[str] = set()
        self.requests = 0
        self.applied_twice = 0

    def book(self, key: str) -> str:
        """Book once per key; a repeated request returns the same confirmation."""
        with self._lock:
            self.requests += 1
            if key in self.booked and key not in self.cancelled:
                return f"{self.name}-{self.booked[key]}"
            if key in self.cancelled:
                self.applied_twice += 1  # booking again after a cancel would be a bug
            self.booked[key] = len(self.booked) + 1
            return f"{self.name}-{self.booked[key]}"

    def cancel(self, key: str) -> None:
        """Cancel a booking (idempotent; cancelling nothing is fine)."""
        with self._lock:
            self.requests += 1
            if key in self.booked:
                self.cancelled.add(key)

    def holds(self, key: str) -> bool:
        """True if ``key`` is booked and not cancelled."""
        with self._lock:
            return key in self.booked and key not in self.cancelled


@dataclass(frozen=True)
class FaultPlan:
    """How often each fault happens; decisions are seeded per (workflow, step, attempt)."""

    seed: int = 7
    slow: float = 0.05  # chance of a slow answer (a few ms)
    transient: float = 0.08  # chance of a transient error
    crash: float = 0.01  # chance the agent instance crashes
    sold_out: float = 0.05  # chance (per workflow) that cars are sold out for good
    hang_workflow: str = "trip-13"  # this workflow's first hotel request hangs

    def rng(self, ctx: StepContext) -> random.Random:
        """The RNG deciding this attempt's fate."""
        return random.Random(f"{self.seed}/{ctx.workflow_id}/{ctx.step}/{ctx.attempt}")


class TravelAgent(Agent):
    """One agent per remote service: books and cancels through it, under the fault plan."""

    def __init__(self, service: BookingService, faults: FaultPlan, release: threading.Event):
        self.service = service
        self.faults = faults
        self.release = release

    def book(self, ctx: StepContext) -> dict[str, Any]:
        """Book this step's part of the trip."""
        rng = self.faults.rng(ctx)
        first_hotel_try = ctx.step == "hotel" and ctx.attempt == 1
        if ctx.workflow_id == self.faults.hang_workflow and first_hotel_try:
            self.release.wait(30)  # hangs until the Supervisor replaces this attempt
        if ctx.step == "car" and _sold_out(self.faults, ctx.workflow_id):
            raise Permanent("no cars left at the destination")
        if rng.random() < self.faults.crash:
            raise InstanceCrash("the agent's connection pool blew up")
        if rng.random() < self.faults.slow:
            time.sleep(rng.uniform(0.001, 0.005))  # simulated network latency
        if rng.random() < self.faults.transient:
            raise ConnectionError(f"{self.service.name} timed out (simulated)")
        confirmation = self.service.book(ctx.idempotency_key)
        return {"confirmation": confirmation, "who": ctx.input["who"]}

    def cancel(self, ctx: StepContext) -> None:
        """Undo this step's booking."""
        self.service.cancel(ctx.idempotency_key.removesuffix("/compensate"))


def _sold_out(faults: FaultPlan, workflow_id: str) -> bool:
    return random.Random(f"{faults.seed}/{workflow_id}/sold-out").random() < faults.sold_out


def travel_workflow() -> Workflow:
    """The demo's workflow: flight, then hotel, then car, each undone by ``cancel``."""
    retry = RetryPolicy(max_attempts=6, initial_interval=0.01, max_interval=0.2, jitter=0.2)
    return (
        Workflow("trip", version=1)
        .step(
            "flight", agent="airline", action="book", compensate="cancel", retry=retry, timeout=2.0
        )
        .step(
            "hotel",
            agent="hotels",
            action="book",
            compensate="cancel",
            after=["flight"],
            retry=retry,
            timeout=1.0,
        )
        .step(
            "car",
            agent="cars",
            action="book",
            compensate="cancel",
            after=["hotel"],
            retry=retry,
            timeout=2.0,
        )
    )


def run_demo(argv: Sequence[str] | None = None) -> int:
    """Run the demo; returns the process exit code."""
    parser = argparse.ArgumentParser(prog="herder demo", description=__doc__.split("\n")[0])
    parser.add_argument("--workflows", type=int, default=2000, help="trips to book")
    parser.add_argument("--store", type=Path, help="store directory (default: a temp dir)")
    parser.add_argument("--seed", type=int, default=7, help="fault RNG seed")
    parser.add_argument("--concurrency", type=int, default=8, help="instances per agent")
    args = parser.parse_args(argv)
    # The demo crashes agent instances on purpose and reports them in its summary; the
    # tree's per-crash tracebacks would only bury that summary.
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("pykka", "herder.supervision"):
        logging.getLogger(noisy).setLevel(logging.CRITICAL)
    with tempfile.TemporaryDirectory(prefix="herder-demo-") as tmp:
        store = args.store or Path(tmp) / "store"
        return _run(store, args.workflows, FaultPlan(seed=args.seed), args.concurrency)


def _run(store: Path, count: int, faults: FaultPlan, concurrency: int) -> int:
    out = sys.stdout
    services = {name: BookingService(name) for name in ("airline", "hotels", "cars")}
    release = threading.Event()
    began = time.monotonic()
    out.write(f"herder demo: booking {count} trips in {store}\n")
    with Runtime(store, sweep_interval=0.05, seed=faults.seed) as rt:
        for name, service in services.items():
            factory = functools.partial(TravelAgent, service, faults, release)
            rt.add_agent(name, factory, concurrency=concurrency)
        rt.add_workflow(travel_workflow())
        handles = [
            rt.start("trip", {"who": f"traveller {n}"}, workflow_id=f"trip-{n}")
            for n in range(count)
        ]
        _show_progress(rt, handles, out)
        release.set()
        stats = rt.stats()
        statuses = {h.id: rt.status(h.id) for h in handles}
    elapsed = time.monotonic() - began
    return _summarise(statuses, services, stats, elapsed, out)


def _show_progress(rt: Runtime, handles: list[Any], out: Any) -> None:
    pending = list(handles)
    total = len(handles)
    while pending:
        pending = [h for h in pending if not _wait_briefly(h)]
        done = total - len(pending)
        width = 30
        bar = "#" * (done * width // total) + "." * (width - done * width // total)
        out.write(f"\r  [{bar}] {done}/{total} finished")
        out.flush()
    out.write("\n")


def _wait_briefly(handle: Any) -> bool:
    try:
        handle.result(timeout=0.2)
    except TimeoutError:
        return False
    except WorkflowFailed:
        return True  # compensated or parked: an expected ending in this demo
    return True


def _summarise(
    statuses: dict[str, Any],
    services: dict[str, BookingService],
    stats: dict[str, Any],
    elapsed: float,
    out: Any,
) -> int:
    by_state = dict.fromkeys(WorkflowState, 0)
    problems: list[str] = []
    step_agent = {"flight": "airline", "hotel": "hotels", "car": "cars"}
    for wid, status in statuses.items():
        by_state[status.state] += 1
        held = {s for s, a in step_agent.items() if services[a].holds(f"{wid}/{s}")}
        if status.state is WorkflowState.SUCCEEDED and held != set(step_agent):
            problems.append(f"{wid} succeeded but holds only {sorted(held)}")
        if status.state is WorkflowState.COMPENSATED and held:
            problems.append(f"{wid} was compensated but still holds {sorted(held)}")
        if not status.state.is_final:
            problems.append(f"{wid} did not finish: {status.state}")
    duplicates = sum(s.applied_twice for s in services.values())
    if duplicates:
        problems.append(f"{duplicates} bookings were applied twice")
    steps = stats["steps"]
    rows = [
        ("workflows", len(statuses)),
        ("succeeded", by_state[WorkflowState.SUCCEEDED]),
        ("compensated", by_state[WorkflowState.COMPENSATED]),
        ("needing attention", by_state[WorkflowState.NEEDS_ATTENTION]),
        ("steps dispatched", steps["dispatched"]),
        ("retries", steps["retried"]),
        ("timeouts", steps["timed_out"]),
        ("instance crashes", steps["crashes"]),
        ("stale answers ignored", steps["stale"]),
        ("compensations", steps["compensated"]),
        ("duplicate effects", duplicates),
        ("seconds", f"{elapsed:.1f}"),
    ]
    out.write("\n  summary\n")
    for label, value in rows:
        out.write(f"  {label:<24}{value:>10}\n")
    if problems:
        out.write("\ninvariants violated:\n" + "".join(f"  - {p}\n" for p in problems[:20]))
        return 1
    out.write("\ninvariants held: every trip finished whole or was undone whole.\n")
    return 0
