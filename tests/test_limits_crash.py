"""Timers and crash-loop protection survive a real SIGKILL of the process.

A child (``limits_child.py``) runs on the real clock; the parent kills it with SIGKILL at
a known point and then reopens the store, either in another child or itself on a
FakeClock set to the present, so hour-long waits are checked without waiting.
"""

from __future__ import annotations

import errno
import json
import os
import pathlib
import signal
import threading
import time
from pathlib import Path

from _child_kit import Child

from herder.runtime import Agent, Runtime, StepContext, StepState, Workflow
from herder.runtime._check import check_store
from herder.runtime._inspect import store_stats
from herder.runtime.testing import FakeClock, advance, crash_scheduler, settle
from herder.store import Store

CHILD = pathlib.Path(__file__).with_name("limits_child.py")
WAIT = 30.0
HOUR = 3600.0


def run_child(store: Path, mode: str, until: str) -> list[str]:
    """Start the child, collect its lines until one starts with ``until``, SIGKILL it."""
    child = Child([str(CHILD), str(store), mode])
    seen: list[str] = []
    try:
        while True:
            line = child.next_line(time.monotonic() + WAIT)
            if line is None:
                raise AssertionError(f"child ended early: {seen}\n{child.stderr()}")
            seen.append(line)
            if line.startswith(until):
                return seen
    finally:
        os.kill(child.proc.pid, signal.SIGKILL)
        assert child.kill(WAIT) == -signal.SIGKILL


class Recorder(Agent):
    def __init__(self, log: list[tuple[str, str]]) -> None:
        self.log = log

    def call(self, ctx: StepContext) -> str:
        self.log.append((ctx.workflow_id, ctx.step))
        return ctx.step


def test_a_delayed_start_and_a_wait_between_steps_survive_sigkill(tmp_path: Path) -> None:
    store = tmp_path / "store"
    run_child(store, "timers", "ready")
    with Store(store, readonly=True) as s:
        assert check_store(s).problems == [], "waiting steps and their timers agree"
    log: list[tuple[str, str]] = []
    clock = FakeClock(start=time.time())  # the present, moved only by the test
    with Runtime(store, clock=clock, sweep_interval=0.05) as rt:
        rt.add_agent("svc", lambda: Recorder(log))
        rt.add_workflow(Workflow("one").step("call", agent="svc", action="call"))
        rt.add_workflow(
            Workflow("pair")
            .step("first", agent="svc", action="call")
            .step("second", agent="svc", action="call", after=["first"], delay=HOUR)
        )
        settle(rt)
        advance(rt, clock, HOUR - 120.0)  # the child started both less than 120 s ago
        settle(rt)
        assert log == []
        assert rt.status("later").steps["call"].state is StepState.PENDING
        assert rt.status("pair").steps["second"].state is StepState.PENDING
        advance(rt, clock, 240.0)
        rt.handle("later").result(timeout=WAIT)
        rt.handle("pair").result(timeout=WAIT)
    assert sorted(log) == [("later", "call"), ("pair", "second")]


def test_a_first_steps_own_delay_counts_from_the_start_across_sigkill(tmp_path: Path) -> None:
    """docs/scheduling.md: a step without dependencies waits its ``delay`` after the
    workflow's start, and a runtime opened later waits only for the rest. The process
    is killed after the start's commit, before anything else was written."""
    store = tmp_path / "store"
    created = float(run_child(store, "lone", "created")[-1].split()[1])
    log: list[tuple[str, str]] = []
    clock = FakeClock(start=created + 60.0)  # reopened a minute after the start
    with Runtime(store, clock=clock, sweep_interval=0.05) as rt:
        rt.add_agent("svc", lambda: Recorder(log))
        rt.add_workflow(Workflow("lone").step("call", agent="svc", action="call", delay=HOUR))
        settle(rt)
        waits = rt.status("lone").steps["call"].waits_until
        assert waits is not None
        assert abs(waits - (created + HOUR)) < 1.0, waits - created
        advance(rt, clock, HOUR - 60.0 + 1.0)
        rt.handle("lone").result(timeout=WAIT)
    assert log == [("lone", "call")]


def test_a_crash_loop_opens_the_breaker_across_restarts(tmp_path: Path) -> None:
    store = tmp_path / "store"
    for _ in range(2):  # each run dispatches the step and dies with it in flight
        run_child(store, "crashloop", "running")
    for expected_lost in (2, 2):  # the loop is seen: nothing is dispatched any more
        lines = run_child(store, "crashloop", "attempt")
        assert "running" not in lines
        stats = json.loads(next(x for x in lines if x.startswith("stats "))[6:])
        assert stats["svc"]["breaker"] == "OPEN"
        assert stats["svc"]["lost"] == expected_lost
        assert lines[-1] == "attempt 2"
    with Store(store, readonly=True) as s:
        stored = store_stats(s)["resources"]["svc"]
    assert stored["breaker"] == "OPEN"
    assert stored["opens"] == 1
    assert stored["lost"] == 2


def test_a_crash_loop_stores_its_failures_without_a_breaker(tmp_path: Path) -> None:
    # An agent without a breaker writes its consecutive failures only with its lost and
    # crash counters, which were written before the failure was counted: a crash loop
    # kept 0 failures in the store beside `lost` growing.
    store = tmp_path / "store"
    for _ in range(3):  # each run dispatches the step and dies with it in flight
        run_child(store, "crashloop-plain", "running")
    with Store(store, readonly=True) as s:
        stored = store_stats(s)["resources"]["svc"]
    assert (stored["lost"], stored["failures"], stored["breaker"]) == (2, 2, "CLOSED")


def test_an_attempt_lost_with_a_holder_that_reserved_incarnations_is_counted(
    tmp_path: Path,
) -> None:
    # A holder whose fencing tokens run on raises the store's incarnation counter ahead of
    # them (reserve_incarnations), and the next take starts above that. Recovery counted
    # an attempt lost only if its token was of the incarnation right before its own: none
    # of that holder's were, so its attempts dying with it went unseen by the agent's
    # `lost` (rt.stats(), herder stats) and its breaker.
    store = tmp_path / "store"
    run_child(store, "reserved", "running")
    log: list[tuple[str, str]] = []
    with Runtime(store, sweep_interval=0.05) as rt:
        rt.add_agent("svc", lambda: Recorder(log))
        rt.add_workflow(Workflow("one").step("call", agent="svc", action="call", timeout=HOUR))
        rt.handle("w").result(timeout=WAIT)
        assert rt.stats()["resources"]["svc"]["lost"] == 1
    assert log == [("w", "call")]
    with Store(store, readonly=True) as s:
        assert store_stats(s)["resources"]["svc"]["lost"] == 1


class FailNext:
    """The writer's fault hook: the next commit once armed fails (ENOSPC), then all pass."""

    def __init__(self) -> None:
        self.armed = False
        self.fired = threading.Event()

    def __call__(self) -> None:
        if self.armed:
            self.armed = False
            self.fired.set()
            raise OSError(errno.ENOSPC, "No space left on device (injected)")


def test_an_attempt_lost_is_counted_once_when_a_commit_fails_after_recovery(
    tmp_path: Path,
) -> None:
    # Recovery counts an attempt that died with the previous process as lost (the
    # agent's `lost`, a breaker failure). Its re-run's commit failed, so the workflow was
    # read back (a reload after a failed batch), and the reload found the same
    # DISPATCHED record and counted it lost again: once per failed commit.
    store = tmp_path / "store"
    run_child(store, "crashloop-plain", "running")
    log: list[tuple[str, str]] = []
    fault = FailNext()
    clock = FakeClock(start=time.time())  # no sweep, no backoff timer moves meanwhile
    with Runtime(store, clock=clock, sweep_interval=0.05) as rt:
        rt.add_agent("svc", lambda: Recorder(log))
        settle(rt)  # (w waits for its definition: nothing of it runs yet)
        rt._store.writer.fault = fault
        fault.armed = True
        rt.add_workflow(Workflow("one").step("call", agent="svc", action="call", timeout=HOUR))
        assert fault.fired.wait(WAIT)  # the re-run's DISPATCHED: w is read back at once
        rt.handle("w").result(timeout=WAIT)
        settle(rt)
        assert rt.stats()["resources"]["svc"]["lost"] == 1
    assert log == [("w", "call")]
    with Store(store, readonly=True) as s:
        assert store_stats(s)["resources"]["svc"]["lost"] == 1


def test_an_attempt_lost_and_deferred_is_counted_once_across_a_scheduler_restart(
    tmp_path: Path,
) -> None:
    # At the second crash in a row recovery defers the attempt that died (poison work
    # suspect) and counts it lost. A Scheduler restarted meanwhile (supervision, after a
    # bug) recovered the workflow again, found the same record, still DISPATCHED by the
    # previous process, and counted it lost once more.
    store = tmp_path / "store"
    for _ in range(2):
        run_child(store, "crashloop-plain", "running")
    log: list[tuple[str, str]] = []
    clock = FakeClock(start=time.time())  # the deferral's stagger never passes here
    with Runtime(store, clock=clock, sweep_interval=0.05) as rt:
        rt.add_agent("svc", lambda: Recorder(log))
        rt.add_workflow(Workflow("one").step("call", agent="svc", action="call", timeout=HOUR))
        settle(rt)
        step = rt.status("w").steps["call"]
        assert (step.state, step.attempt) == (StepState.DISPATCHED, 2)  # deferred
        assert rt.stats()["resources"]["svc"]["lost"] == 2  # one per crash
        crash_scheduler(rt, WAIT)
        settle(rt)
        assert rt.stats()["resources"]["svc"]["lost"] == 2
        advance(rt, clock, 5.0)  # its stagger: it runs
        rt.handle("w").result(timeout=WAIT)
    assert log == [("w", "call")]
