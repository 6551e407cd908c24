"""The one workload every benchmark runs: the travel booking (flight -> hotel -> car).

Three steps, each a trivial action on its own agent (``airline``, ``hotels``, ``cars``)
returning a small dict. Two knobs, the same for every engine:

- ``fail_rate``: the share of steps whose *first* attempt raises (chosen by a hash of
  workflow number and step, so every engine fails the same steps); the retry succeeds.
- ``latency``: seconds each action sleeps, standing in for a remote call.

Engines import :func:`book` (the action body) and :func:`travel` (herder's definition)
from here, and report through :func:`result_row`, so every row means the same thing.
"""

from __future__ import annotations

import collections
import dataclasses
import re
import resource
import threading
import time
import zlib
from typing import Any

from _harness import rss_mb, summary

from herder.runtime import Agent, RetryPolicy, StepContext, Workflow

STEPS = ("flight", "hotel", "car")
AGENTS = {"flight": "airline", "hotel": "hotels", "car": "cars"}
RETRY_INTERVAL = 0.01  # seconds before the retry of an injected failure, every engine


@dataclasses.dataclass(frozen=True)
class Workload:
    """The workload's knobs (see the module docstring)."""

    fail_rate: float = 0.0
    latency: float = 0.0

    def as_dict(self) -> dict[str, float]:
        """The knobs for the JSON report."""
        return dataclasses.asdict(self)


class InjectedFailure(Exception):
    """The failure a step's first attempt raises when the workload says so."""


class Meter:
    """Marks the measured window of a run; the peer suite's child process reads CPU time.

    Engines call :meth:`begin` right before the timed part and :meth:`end` right after, so
    set-up and warm-up stay out of the CPU figure. ``by_thread`` is the window's CPU
    seconds (user + system) per group of threads, named as Python names them without
    their numbers (Linux only, else empty): the threads alive at :meth:`end`, read from
    ``/proc``, plus what threads that ended in the window reported with :meth:`exited`.
    ``switches`` counts the same groups' voluntary context switches: each is a thread
    that blocked (a lock, a queue, the GIL) and was woken again, which costs CPU of its
    own, ~6 us uncontended and ~30 us while another thread holds the GIL on the 2-core
    VM of RESULTS.md (two threads handing a lock back and forth, with and without a
    third spinning).
    """

    def __init__(self) -> None:
        self.cpu = 0.0
        self.rss_mb = 0.0
        self.threads = 0
        self.by_thread: dict[str, float] = {}
        self.switches: dict[str, int] = {}
        self._began = 0.0
        self._at_begin: dict[int, tuple[float, int]] = {}
        self._exited: collections.Counter[str] = collections.Counter()
        self._exited_switches: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()

    def begin(self) -> None:
        """The timed part starts."""
        self._at_begin = {tid: (cpu, sw) for tid, (_, cpu, sw) in _thread_cpu().items()}
        self._began = time.process_time()

    def end(self) -> None:
        """The timed part ended: note its CPU seconds (every thread), RSS and threads."""
        self.cpu = time.process_time() - self._began
        self.rss_mb = rss_mb()
        self.threads = threading.active_count()
        groups = collections.Counter(self._exited)
        switches = collections.Counter(self._exited_switches)
        for tid, (group, cpu, sw) in _thread_cpu().items():
            cpu0, sw0 = self._at_begin.get(tid, (0.0, 0))
            groups[group] += cpu - cpu0
            switches[group] += sw - sw0
        self.by_thread = dict(groups.most_common())
        self.switches = dict(switches.most_common())

    def exited(self, group: str) -> None:
        """Called by a thread of the window as it ends: its own CPU seconds so far."""
        usage = resource.getrusage(resource.RUSAGE_THREAD)
        with self._lock:
            self._exited[group] += usage.ru_utime + usage.ru_stime
            self._exited_switches[group] += usage.ru_nvcsw


def _thread_cpu() -> dict[int, tuple[str, float, int]]:
    """Each live Python thread's group name, CPU seconds and voluntary context switches
    (Linux ``/proc``; CPU in ns: a thread's ``stat`` counts 10 ms ticks, too coarse for
    a pool worker; else none)."""
    out = {}
    for t in threading.enumerate():
        task = f"/proc/self/task/{t.native_id}"
        try:
            with open(f"{task}/schedstat") as f:
                ns = int(f.read().split()[0])
            with open(f"{task}/status") as f:
                found = _VOLUNTARY.search(f.read())
        except (OSError, ValueError, IndexError):
            continue
        group = re.sub(r"[-_]?\d+$", "", t.name.split(" (")[0])
        out[t.native_id or 0] = (group, ns / 1e9, int(found.group(1)) if found else 0)
    return out


_VOLUNTARY = re.compile(r"^voluntary_ctxt_switches:\s+(\d+)", re.M)


def fails_first(n: int, step: str, fail_rate: float) -> bool:
    """Whether workflow ``n``'s ``step`` fails its first attempt (stable across processes)."""
    if fail_rate <= 0:
        return False
    return zlib.crc32(f"{n}/{step}".encode()) % 10_000 < fail_rate * 10_000


def book(workload: Workload, n: int, step: str, attempt: int) -> dict[str, Any]:
    """The action every engine runs for a step: maybe sleep, maybe fail once, answer."""
    if workload.latency > 0:
        time.sleep(workload.latency)
    if attempt == 1 and fails_first(n, step, workload.fail_rate):
        raise InjectedFailure(f"injected failure of {step} in workflow {n}")
    return {"ok": True, "step": step, "ref": n & 0xFFFF}


class Booking(Agent):
    """herder's agent for every step: runs :func:`book` with the configured workload."""

    workload = Workload()

    def book(self, ctx: StepContext) -> dict[str, Any]:
        n = ctx.input.get("n", 0) if isinstance(ctx.input, dict) else 0
        return book(self.workload, n, ctx.step, ctx.attempt)


def booking_agent(workload: Workload) -> type[Booking]:
    """A Booking subclass bound to ``workload`` (an agent factory for ``add_agent``)."""
    return type("Booking", (Booking,), {"workload": workload})


def travel(agents: dict[str, str] | None = None, name: str = "travel") -> Workflow:
    """flight -> hotel -> car, one agent each (``agents`` maps step -> agent name)."""
    agents = agents or AGENTS
    retry = RetryPolicy(max_attempts=3, initial_interval=RETRY_INTERVAL, jitter=0.0)
    wf = Workflow(name, version=1)
    previous: list[str] = []
    for step in STEPS:
        wf = wf.step(step, agent=agents[step], action="book", after=previous, retry=retry)
        previous = [step]
    return wf


def latencies(spans: list[tuple[float, list[float]]]) -> tuple[list[float], list[float]]:
    """Step and workflow latencies from (created, [completion of each step]) pairs."""
    steps, flows = [], []
    for created, done in spans:
        previous = created
        for t in done:
            steps.append(t - previous)
            previous = t
        flows.append(done[-1] - created)
    return steps, flows


def result_row(
    workflows: int, elapsed: float, spans: list[tuple[float, list[float]]]
) -> dict[str, Any]:
    """Throughput and latency of one run from its wall time and per-workflow spans.

    A span without per-step completions (an engine that only sees the end) is given as
    ``(created, [finished])``; its step latency is then left out.
    """
    per_step = [s for s in spans if len(s[1]) == len(STEPS)]
    step_lat, _ = latencies(per_step)
    _, flow_lat = latencies(spans)
    return {
        "workflows": workflows,
        "seconds": elapsed,
        "workflows_per_s": workflows / elapsed,
        "steps_per_s": len(STEPS) * workflows / elapsed,
        "step_latency": summary(step_lat, 1e3, "ms") if step_lat else None,
        "workflow_latency": summary(flow_lat, 1e3, "ms"),
        # Little's law: how many workflows were unfinished on average.
        "mean_in_flight": sum(flow_lat) / elapsed,
    }
