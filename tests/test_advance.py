"""``advance(rt, clock, seconds)`` fires the timers that fall due within it, including
those armed by what fired before them (a retry's next backoff, a schedule's next slot)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from herder.runtime import (
    Agent,
    InvalidInput,
    RateLimit,
    RetryPolicy,
    Runtime,
    State,
    StepContext,
    StepState,
    Workflow,
)
from herder.runtime.testing import FakeClock, advance, fail_first, hang_until, wait_until

pytestmark = pytest.mark.timeout(60)
T0 = 1_800_000_000.0  # (on a minute)


class Flaky(Agent):
    def charge(self, ctx: StepContext) -> Any:
        fail_first(ctx, attempts=3)
        return ctx.attempt


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(start=T0)


@pytest.fixture
def rt(tmp_path: Path, clock: FakeClock) -> Iterator[Runtime]:
    retry = RetryPolicy(initial_interval=5.0, jitter=0.0, max_attempts=10)
    with Runtime(tmp_path / "s", clock=clock) as runtime:
        runtime.add_agent("p", Flaky)
        runtime.add_workflow(
            Workflow("pay").step("charge", agent="p", action="charge", retry=retry)
        )
        yield runtime


def test_one_advance_runs_a_chain_of_backoffs(rt: Runtime, clock: FakeClock) -> None:
    rt.start("pay", None, workflow_id="p1")
    wait_until(rt, lambda: rt.status("p1").steps["charge"].state is StepState.RETRY_WAIT)
    advance(rt, clock, 3600)  # the backoffs (5, 10, 20 s) each fall due within the hour
    assert rt.status("p1").state is State.SUCCEEDED
    assert rt.handle("p1").result(timeout=10) == {"charge": 4}


def test_one_advance_fires_every_slot_on_the_way(rt: Runtime, clock: FakeClock) -> None:
    rt.schedule("tick", "pay", every=60, catch_up="latest", overlap="allow")
    advance(rt, clock, 600)  # ten slots, each on time: none is a missed one
    [status] = rt.schedules()
    assert (status.fired, status.skipped) == (10, 0)


def test_advance_refuses_to_go_back(rt: Runtime, clock: FakeClock) -> None:
    with pytest.raises(InvalidInput, match="backwards"):
        advance(rt, clock, -1)


def test_advance_refuses_a_runtime_on_the_real_clock(tmp_path: Path) -> None:
    # Its own clock passed (rt.clock), a runtime made without clock=FakeClock() got
    # through the check that the clock is the runtime's, then failed with an
    # AttributeError: the real clock has no advance().
    with Runtime(tmp_path / "s") as rt:
        refused = pytest.raises(InvalidInput, match=r"clock=FakeClock\(\)\); this runtime has none")
        with refused:
            advance(rt, rt.clock, 1.0)  # type: ignore[arg-type]


class Hands(Agent):
    def hand(self, ctx: StepContext) -> Any:
        return ctx.complete_later() if ctx.attempt == 1 else ctx.attempt


def test_a_timeout_overdue_when_advance_begins_is_reacted_to_before_the_clock_moves(
    tmp_path: Path, clock: FakeClock
) -> None:
    """The clock jumped past a step's timeout with no sweep (clock.advance, or the periodic
    sweep not yet run: a loaded machine). advance() took no stop for the overdue timer and
    moved the clock to its end first; the sweep there lapsed the step, whose 1 s backoff
    then fell due past the advance: never retried (test_dormant_waiting's completion
    after the deadline, about one run in two under load)."""
    retry = RetryPolicy(initial_interval=1.0, jitter=0.0, max_attempts=2)
    with Runtime(tmp_path / "s", clock=clock, sweep_interval=3600.0) as rt:
        rt.add_agent("h", Hands)
        rt.add_workflow(Workflow("w").step("s", agent="h", action="hand", timeout=20, retry=retry))
        rt.start("w", None, workflow_id="w1")
        wait_until(rt, lambda: rt.status("w1").steps["s"].state is StepState.WAITING)
        clock.advance(30.0)  # past the timeout; no sweep comes (an hour apart)
        advance(rt, clock, 10.0)  # the lapse at its start, the retry 1 s later
        assert rt.status("w1").state is State.SUCCEEDED, rt.history("w1")
        assert rt.handle("w1").result(timeout=10) == {"s": 2}


class Quick(Agent):
    def go(self, ctx: StepContext) -> int:
        return 1


def test_one_advance_lets_a_rate_limited_agent_run_at_its_rate(
    tmp_path: Path, clock: FakeClock
) -> None:
    # A rate limit's next token is a wake-up in memory, not a durable timer: advance
    # jumped past it, the Scheduler armed the next one after the jump, and 4.5 s ran two
    # steps of an agent limited to one a second (real time: five). It stops at each
    # wake-up of an agent's gate now, as at a retry's backoff.
    with Runtime(tmp_path / "s", clock=clock) as rt:
        rt.add_agent("q", Quick, rate_limit=RateLimit(per_second=1, burst=1))
        rt.add_workflow(Workflow("one").step("s", agent="q", action="go"))
        for i in range(5):
            rt.start("one", {}, workflow_id=f"w{i}")
        advance(rt, clock, 4.5)
        states = [rt.status(f"w{i}").state for i in range(5)]
        assert states == [State.SUCCEEDED] * 5, states


WAIT = 30.0


class Hangs(Agent):
    """Its first attempt hangs until the test's event; a retry returns at once."""

    release = threading.Event()

    def go(self, ctx: StepContext) -> int:
        if ctx.attempt == 1:
            hang_until(Hangs.release, WAIT)
        return ctx.attempt


@pytest.mark.parametrize("host", ["pool", "thread"])
def test_a_hung_attempts_retry_runs_within_advance(tmp_path: Path, host: str) -> None:
    # docs/testing.md said the hung instance is replaced after instance_shutdown of real
    # time, which advance() does not wait for: on either host its thread is abandoned
    # once its timeout fires, and advance (settle) waits for a replacement instance.
    Hangs.release = threading.Event()
    clock = FakeClock()
    retry = RetryPolicy(initial_interval=1.0, jitter=0.0)
    try:
        with Runtime(tmp_path / "s", clock=clock, agent_host=host) as rt:
            rt.add_agent("h", Hangs)
            rt.add_workflow(
                Workflow("h").step("s", agent="h", action="go", timeout=5.0, retry=retry)
            )
            rt.start("h", {}, workflow_id="w")
            advance(rt, clock, 6.1)  # past the timeout and the backoff
            step = rt.status("w").steps["s"]
            assert (step.state, step.attempt) == (StepState.SUCCEEDED, 2)
            assert rt.stats()["host"]["abandoned_threads"] == 1
    finally:
        Hangs.release.set()


def test_a_slot_overdue_when_advance_begins_fires_before_the_clock_moves(
    tmp_path: Path, clock: FakeClock
) -> None:
    # The wall clock stepped past a slot (NTP; or clock.advance() jumped past it). advance()
    # took no stop for a slot already due and fired it only at its end, together with the
    # next slot on the way, which then found it running and was skipped (overlap "skip"):
    # in real time the firer catches the missed slot up at once and the next fires on time.
    with Runtime(tmp_path / "s", clock=clock) as rt:
        rt.add_agent("q", Quick)
        rt.add_workflow(Workflow("q").step("s", agent="q", action="go"))
        rt.schedule("tick", "q", every=60, catch_up="all")  # overlap="skip", the default
        advance(rt, clock, 50.0)  # the first slot is at T0 + 60
        clock.step_wall(30.0)  # the wall passes it, no firing
        advance(rt, clock, 60.0)  # it is caught up at once; T0 + 120 fires on time
        [status] = rt.schedules()
        assert (status.fired, status.skipped) == (2, 0)


@pytest.mark.parametrize("host", ["pool", "thread"])
def test_a_hung_attempts_abandoned_thread_is_logged_as_fenced_out(
    tmp_path: Path, host: str, caplog: pytest.LogCaptureFixture
) -> None:
    # The instance of an attempt fenced out (here its timeout) is replaced without waiting
    # for its thread, which was logged as "did not stop within 0.0 s; abandoning its
    # thread": true, but it reads as if a shutdown timeout of zero were configured.
    Hangs.release = threading.Event()
    clock = FakeClock()
    retry = RetryPolicy(initial_interval=1.0, jitter=0.0)
    try:
        with (
            caplog.at_level(logging.WARNING, logger="herder.supervision"),
            Runtime(tmp_path / "s", clock=clock, agent_host=host) as rt,
        ):
            rt.add_agent("h", Hangs)
            rt.add_workflow(
                Workflow("h").step("s", agent="h", action="go", timeout=5.0, retry=retry)
            )
            rt.start("h", {}, workflow_id="w")
            advance(rt, clock, 6.1)  # past the timeout and the backoff
            assert rt.status("w").steps["s"].state is StepState.SUCCEEDED
    finally:
        Hangs.release.set()
    said = [r.getMessage() for r in caplog.records if "abandon" in r.getMessage()]
    assert len(said) == 1, said
    assert "within 0.0 s" not in said[0]
    assert "fenced out" in said[0]
    assert "its thread" in said[0]


class Sick(Agent):
    """Its health check computes for 30 ms and fails while ``down`` is set; its action
    answers with the fake time it ran at."""

    down = True
    clock: FakeClock

    def health(self) -> None:
        done = time.perf_counter() + 0.03  # it computes: settle waits for what runs
        while time.perf_counter() < done:
            pass
        if Sick.down:
            raise ConnectionError("resource down")

    def go(self, ctx: StepContext) -> float:
        return Sick.clock.monotonic()


def test_one_advance_runs_an_unhealthy_agents_work_at_the_check_that_heals_it(
    tmp_path: Path, clock: FakeClock
) -> None:
    # A failed health check holds the agent's work until the next check passes, as a
    # breaker's cool-down does. advance() neither stopped at that check (it ran at the
    # advance's end, 30 s late) nor waited for it: it returned while the check ran, its
    # verdict and the work it freed still to come.
    Sick.down, Sick.clock = True, clock
    with Runtime(tmp_path / "s", clock=clock) as rt:
        rt.add_agent("sick", Sick, health_interval=10.0)
        rt.add_workflow(Workflow("one").step("s", agent="sick", action="go"))
        advance(rt, clock, 0.0)  # the first check runs at the first sweep, and fails
        assert rt.stats()["resources"]["sick"]["healthy"] is False
        rt.start("one", {}, workflow_id="w")
        Sick.down = False
        advance(rt, clock, 40.0)  # the next check, at T0 + 10, heals it
        step = rt.status("w").steps["s"]
        assert step.state is StepState.SUCCEEDED
        assert T0 + 10 <= step.result < T0 + 11  # ran at the check, not at the end


def test_one_advance_runs_a_chain_of_backoffs_shorter_than_a_millisecond(
    tmp_path: Path, clock: FakeClock
) -> None:
    # A timer is due by the millisecond: a backoff under 1 ms (initial_interval=0.001
    # with the default jitter, every tenth run or so) armed at a stop was due at once,
    # so no stop of its own, and was swept only at the next stop, or left for the next
    # advance() once armed at its end. In real time the next sweep fires it.
    retry = RetryPolicy(initial_interval=0.0005, jitter=0.0, max_attempts=10)
    with Runtime(tmp_path / "s", clock=clock) as rt:
        rt.add_agent("p", Flaky)
        rt.add_workflow(Workflow("pay").step("charge", agent="p", action="charge", retry=retry))
        rt.start("pay", None, workflow_id="p1")
        advance(rt, clock, 1.0)
        step = rt.status("p1").steps["charge"]
        assert (step.state, step.attempt) == (StepState.SUCCEEDED, 4)
