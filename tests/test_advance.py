"""``advance(rt, clock, seconds)`` fires the timers that fall due within it, including
those armed by what fired before them (a retry's next backoff, a schedule's next slot)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from herder.runtime import (
    Agent,
    InvalidInput,
    RetryPolicy,
    Runtime,
    State,
    StepContext,
    StepState,
    Workflow,
)
from herder.runtime.testing import FakeClock, advance, fail_first, wait_until

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
