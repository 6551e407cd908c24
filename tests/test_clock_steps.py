"""Wall-clock steps (an NTP correction, a VM resumed from a snapshot) in a running
process and between two processes: deadlines follow the monotonic clock, persisted ones
are re-based when a store is opened (issue 14, defect 5).

FakeClock.step_wall moves the wall clock alone; FakeClock.advance moves both.
"""

from __future__ import annotations

import datetime
import threading
from pathlib import Path

import pytest

from herder.actors import SteadyClock
from herder.runtime import (
    Agent,
    CircuitBreaker,
    RetryPolicy,
    Runtime,
    StepContext,
    StepState,
    Workflow,
)
from herder.runtime.testing import FakeClock, advance, check_store, settle, wait_until

WAIT = 10.0
HOUR = 3600.0
ONE = RetryPolicy(max_attempts=3, initial_interval=0.5, backoff_coefficient=1.0, jitter=0.0)


class Hanging(Agent):
    """Attempt 1 hangs until released (so it times out); later attempts answer."""

    def __init__(self, started: threading.Event, release: threading.Event) -> None:
        self.started = started
        self.release = release

    def work(self, ctx: StepContext) -> int:
        if ctx.attempt == 1:
            self.started.set()
            self.release.wait(WAIT)
        return ctx.attempt


def hanging_runtime(
    path: Path, clock: FakeClock, timeout: float
) -> tuple[Runtime, threading.Event]:
    started, release = threading.Event(), threading.Event()
    rt = Runtime(path, clock=clock, sweep_interval=0.1, instance_shutdown=0.05)
    rt.add_agent("a", lambda: Hanging(started, release))
    rt.add_workflow(Workflow("w").step("s", agent="a", action="work", timeout=timeout, retry=ONE))
    rt.start("w", workflow_id="x")
    assert started.wait(WAIT)
    return rt, release


@pytest.mark.parametrize("step", [-HOUR, HOUR])
def test_a_wall_clock_step_neither_stalls_a_timeout_and_backoff_nor_fires_them_early(
    tmp_path: Path, step: float
) -> None:
    clock = FakeClock()
    rt, release = hanging_runtime(tmp_path / "s", clock, timeout=1.0)
    try:
        clock.step_wall(step)
        advance(rt, clock, 0.5)  # half the timeout: a forward step must not fire it
        assert rt.status("x").steps["s"].state is StepState.DISPATCHED
        advance(rt, clock, 0.7)  # past the timeout (on the monotonic clock, +-5% slew)
        assert rt.status("x").steps["s"].state is StepState.RETRY_WAIT
        advance(rt, clock, 0.6)  # past the 0.5 s backoff
        assert rt.handle("x").result(timeout=WAIT) == {"s": 2}
    finally:
        release.set()
        rt.stop()


def test_a_backward_wall_clock_step_does_not_hold_an_open_breaker_for_an_hour(
    tmp_path: Path,
) -> None:
    clock = FakeClock()
    healthy = threading.Event()

    class Service(Agent):
        def call(self, ctx: StepContext) -> str:
            if not healthy.is_set():
                raise ConnectionError("unavailable")
            return "ok"

    retry = RetryPolicy(max_attempts=10, initial_interval=0.1, backoff_coefficient=1.0, jitter=0)
    with Runtime(tmp_path / "s", clock=clock, sweep_interval=0.05, default_retry=retry) as rt:
        rt.add_agent("svc", Service, breaker=CircuitBreaker(failures=1, cooldown=0.5))
        rt.add_workflow(Workflow("one").step("call", agent="svc", action="call"))
        rt.start("one", workflow_id="w")
        wait_until(rt, lambda: rt.stats()["resources"]["svc"]["breaker"] == "OPEN")
        healthy.set()
        clock.step_wall(-HOUR)
        for _ in range(3):  # the cool-down and the backoff, on the monotonic clock
            advance(rt, clock, 0.4)
        assert rt.handle("w").result(timeout=WAIT) == {"call": "ok"}
        assert rt.stats()["resources"]["svc"]["breaker"] == "CLOSED"


def test_deadlines_persisted_before_a_backward_step_are_rebased_when_the_store_is_opened(
    tmp_path: Path,
) -> None:
    # A step waits out a 5 s backoff when the process stops; the wall clock is then
    # stepped back an hour and a new process opens the store: its clock starts where the
    # old one left off, so the backoff ends 5 s later, not an hour and 5 s.
    clock = FakeClock()
    failed = threading.Event()

    class Flaky(Agent):
        def work(self, ctx: StepContext) -> int:
            if not failed.is_set():
                failed.set()
                raise ConnectionError("down")
            return ctx.attempt

    def opened() -> Runtime:
        rt = Runtime(tmp_path / "s", clock=clock, sweep_interval=0.1)
        rt.add_agent("a", Flaky)
        slow = RetryPolicy(max_attempts=3, initial_interval=5.0, jitter=0.0)
        rt.add_workflow(Workflow("w").step("s", agent="a", action="work", retry=slow))
        return rt

    with opened() as rt:
        rt.start("w", workflow_id="x")
        wait_until(rt, lambda: rt.status("x").steps["s"].state is StepState.RETRY_WAIT)
    clock.step_wall(-HOUR)
    with opened() as rt:
        advance(rt, clock, 5.5)  # the backoff, on the monotonic clock (+-5% slew)
        assert rt.handle("x").result(timeout=WAIT) == {"s": 2}
        settle(rt)
        report = check_store(rt._store)
        assert report.ok, report.problems


def test_the_steady_clock_follows_the_monotonic_clock_and_slews_towards_the_wall() -> None:
    fake = FakeClock(start=1000.0)
    steady = SteadyClock(fake, slew=0.05)
    assert steady.time() == 1000.0
    fake.step_wall(-HOUR)
    fake.advance(10.0)
    assert steady.time() == pytest.approx(1000.0 + 10.0 * 0.95)  # 5% slower, never back
    fake.step_wall(2 * HOUR)  # now an hour ahead
    fake.advance(10.0)
    assert steady.time() == pytest.approx(1009.5 + 10.0 * 1.05)  # 5% faster, no jump
    assert SteadyClock(fake, floor=5000.0).time() == max(fake.time(), 5000.0)
    later = FakeClock(start=1000.0)
    assert SteadyClock(later, floor=2000.0).time() == 2000.0  # re-based on the floor


def test_start_at_is_a_wall_clock_time_even_after_a_step(tmp_path: Path) -> None:
    clock = FakeClock()

    class Idle(Agent):
        def work(self, ctx: StepContext) -> None:
            return None

    with Runtime(tmp_path / "s", clock=clock, sweep_interval=0.1) as rt:
        rt.add_agent("a", Idle)
        rt.add_workflow(Workflow("w").step("s", agent="a", action="work"))
        clock.step_wall(HOUR)  # the engine's clock converges on it slowly
        at = datetime.datetime.fromtimestamp(clock.time() + 10.0, tz=datetime.UTC)
        rt.start("w", workflow_id="x", start_at=at)
        advance(rt, clock, 9.0)
        assert rt.status("x").steps["s"].state is StepState.PENDING  # not an hour early
        advance(rt, clock, 2.0)
        rt.handle("x").result(timeout=WAIT)


CHILD = """
import sys, threading, time
from herder.actors import SystemClock
from herder.runtime import Agent, RetryPolicy, Runtime, StepState, Workflow
from herder.runtime.testing import wait_until

class Ahead(SystemClock):  # this process's wall clock runs an hour ahead
    def time(self):
        return time.time() + 3600.0

class Down(Agent):
    def work(self, ctx):
        raise ConnectionError("down")

rt = Runtime(sys.argv[1], clock=Ahead(), lease=600.0)  # no lease renewal before the kill
rt.add_agent("a", Down)
retry = RetryPolicy(max_attempts=3, initial_interval=2.0, jitter=0.0)
rt.add_workflow(Workflow("w").step("s", agent="a", action="work", retry=retry))
rt.start("w", workflow_id="x")
wait_until(rt, lambda: rt.status("x").steps["s"].state is StepState.RETRY_WAIT)
print("waiting", flush=True)
threading.Event().wait()  # until the test kills this process
"""


def test_a_process_killed_before_its_first_lease_renewal_still_sets_the_next_clock(
    tmp_path: Path,
) -> None:
    # The killed process recorded a 2 s backoff on a wall clock an hour ahead of ours and
    # died before any lease renewal could note its time. The next holder's clock starts
    # no earlier than the store's newest update, so the backoff ends seconds later, not
    # an hour later.
    import subprocess
    import sys

    store = tmp_path / "s"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(store)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "waiting"
    finally:
        child.kill()
        child.wait(WAIT)

    class Up(Agent):
        def work(self, ctx: StepContext) -> int:
            return ctx.attempt

    def register(rt: Runtime) -> None:
        rt.add_agent("a", Up)
        retry = RetryPolicy(max_attempts=3, initial_interval=2.0, jitter=0.0)
        rt.add_workflow(Workflow("w").step("s", agent="a", action="work", retry=retry))

    with Runtime(store, setup=register) as rt:
        assert rt.handle("x").result(timeout=WAIT) == {"s": 2}
