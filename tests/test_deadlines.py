"""Workflow deadlines: past it no new attempt starts, running attempts are superseded and
the workflow is compensated; ``ctx.deadline`` shows it. On a FakeClock."""

from __future__ import annotations

import datetime
import decimal
import fractions
import functools
import io
import threading
from pathlib import Path
from typing import Any

import pytest

from herder.runtime import (
    Agent,
    InvalidInput,
    RetryPolicy,
    Runtime,
    StepContext,
    StepState,
    Workflow,
    WorkflowFailed,
)
from herder.runtime._inspect import show_workflow
from herder.runtime.testing import FakeClock, advance, check_store, settle, wait_until

WAIT = 10.0
UTC = datetime.UTC


class Service:
    """Counts calls per step, records what actions saw; ``slow`` steps hang until released."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls: list[tuple[str, bool]] = []  # (step, compensating)
        self.deadlines: list[float | None] = []
        self.fail: set[str] = set()
        self.slow: set[str] = set()
        self.running = threading.Event()
        self.release = threading.Event()
        self.superseded: list[bool] = []
        self.returned = threading.Event()


class Worker(Agent):
    def __init__(self, service: Service) -> None:
        self.service = service

    def do(self, ctx: StepContext) -> str:
        s = self.service
        with s.lock:
            s.calls.append((ctx.step, False))
            s.deadlines.append(ctx.deadline)
        if ctx.step in s.fail:
            raise ConnectionError("try later")
        if ctx.step in s.slow:
            s.running.set()
            s.release.wait(WAIT)
            s.superseded.append(ctx.superseded)
            s.returned.set()
        return ctx.step

    def undo(self, ctx: StepContext) -> None:
        with self.service.lock:
            self.service.calls.append((ctx.step, True))


SLOW = RetryPolicy(max_attempts=5, initial_interval=60.0, backoff_coefficient=1.0, jitter=0.0)
TWO = (
    Workflow("two")
    .step("a", agent="w", action="do", compensate="undo", timeout=600.0, retry=SLOW)
    .step("b", agent="w", action="do", compensate="undo", after=["a"], timeout=600.0)
)


def runtime(path: Path, clock: FakeClock, service: Service, *flows: Workflow) -> Runtime:
    rt = Runtime(path, clock=clock, sweep_interval=0.05)
    rt.add_agent("w", lambda: Worker(service), concurrency=2)
    for flow in flows or (TWO,):
        rt.add_workflow(flow)
    return rt


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def test_past_the_deadline_a_running_attempt_is_superseded_and_all_is_undone(
    tmp_path: Path, clock: FakeClock
) -> None:
    service = Service()
    service.slow.add("b")
    with runtime(tmp_path / "s", clock, service) as rt:
        start = clock.time()
        h = rt.start("two", workflow_id="w1", deadline=30.0)
        assert service.running.wait(WAIT)
        settle(rt)
        assert service.deadlines == [start + 30.0, start + 30.0]  # ctx.deadline
        assert rt.status("w1").deadline == start + 30.0
        out = io.StringIO()
        show_workflow(out, rt._store, "w1", as_json=False)
        assert "deadline" in out.getvalue()
        advance(rt, clock, 29.0)
        assert rt.status("w1").state == "RUNNING"
        advance(rt, clock, 2.0)
        with pytest.raises(WorkflowFailed) as failed:
            h.result(timeout=WAIT)
        status = failed.value.status
        assert status.state == "COMPENSATED"
        at = datetime.datetime.fromtimestamp(start + 30.0, datetime.UTC)
        stamp = at.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        assert f"deadline passed (it was {stamp} on the runtime's clock)" in (status.error or "")
        assert status.steps["b"].state is StepState.COMPENSATED  # it may have taken effect
        assert status.steps["a"].state is StepState.COMPENSATED
        assert sorted(c for c in service.calls if c[1]) == [("a", True), ("b", True)]
        service.release.set()  # the superseded attempt returns: its answer is stale
        assert service.returned.wait(WAIT)
        assert service.superseded == [True]
        settle(rt)
        assert rt.status("w1").state == "COMPENSATED"
        assert check_store(rt._store).ok, check_store(rt._store).problems


def test_no_new_attempt_starts_past_the_deadline(tmp_path: Path, clock: FakeClock) -> None:
    service = Service()
    service.fail.add("a")
    with runtime(tmp_path / "s", clock, service) as rt:
        h = rt.start("two", workflow_id="w1", deadline=10.0)
        wait_until(rt, lambda: rt.status("w1").steps["a"].state is StepState.RETRY_WAIT)
        advance(rt, clock, 11.0)  # before the 60 s backoff ends
        with pytest.raises(WorkflowFailed, match="deadline passed"):
            h.result(timeout=WAIT)
        advance(rt, clock, 120.0)
        assert service.calls.count(("a", False)) == 1
        assert ("b", False) not in service.calls
        assert service.calls.count(("a", True)) == 1  # its failure may have taken effect
        assert check_store(rt._store).ok


def test_the_workflow_default_applies_and_start_overrides_it(
    tmp_path: Path, clock: FakeClock
) -> None:
    service = Service()
    flow = Workflow("one", deadline=5.0).step("a", agent="w", action="do")
    with runtime(tmp_path / "s", clock, service, flow) as rt:
        start = clock.time()
        rt.start("one", workflow_id="w1").result(timeout=WAIT)
        rt.start("one", workflow_id="w2", deadline=50.0).result(timeout=WAIT)
        assert service.deadlines == [start + 5.0, start + 50.0]


def test_a_deadline_and_a_delay_take_any_number_a_timeout_takes(
    tmp_path: Path, clock: FakeClock
) -> None:
    # A Decimal or a Fraction was a fine timeout= (seconds()) but a refused deadline=.
    service = Service()
    flow = Workflow("one", deadline=fractions.Fraction(5)).step("a", agent="w", action="do")
    with runtime(tmp_path / "s", clock, service, flow) as rt:
        start = clock.time()
        rt.start("one", workflow_id="w1", timeout=decimal.Decimal("9")).result(timeout=WAIT)
        rt.start("one", workflow_id="w2", deadline=decimal.Decimal("50")).result(timeout=WAIT)
        later = rt.start("one", workflow_id="w3", delay=decimal.Decimal("2"), deadline=50)
        advance(rt, clock, 2.0)
        later.result(timeout=WAIT)
        assert service.deadlines == [start + 5.0, start + 50.0, start + 50.0]


def test_an_aware_datetime_is_a_deadline(tmp_path: Path, clock: FakeClock) -> None:
    service = Service()
    with runtime(tmp_path / "s", clock, service) as rt:
        when = datetime.datetime.fromtimestamp(clock.time() + 20.0, tz=UTC)
        rt.start("two", workflow_id="w1", deadline=when).result(timeout=WAIT)
        assert service.deadlines[0] == pytest.approx(clock.time() + 20.0)


def test_a_workflow_that_ends_first_leaves_no_deadline_behind(
    tmp_path: Path, clock: FakeClock
) -> None:
    service = Service()
    with runtime(tmp_path / "s", clock, service) as rt:
        rt.start("two", workflow_id="w1", deadline=30.0).result(timeout=WAIT)
        settle(rt)
        assert check_store(rt._store).ok, check_store(rt._store).problems
        advance(rt, clock, 60.0)
        assert rt.status("w1").state == "SUCCEEDED"
        assert [c for c in service.calls if c[1]] == []


class Raising(datetime.tzinfo):
    """A tzinfo whose offset raises: user code, whatever it raises is refused."""

    def utcoffset(self, dt: datetime.datetime | None) -> datetime.timedelta:
        raise RuntimeError("its offset is unknown")

    def dst(self, dt: datetime.datetime | None) -> None:
        return None


@pytest.mark.parametrize(
    ("deadline", "match"),
    [
        (-1.0, "deadline must be a number of seconds > 0"),
        (0, "deadline must be a number of seconds > 0"),
        (float("nan"), "deadline must be"),
        (True, "deadline must be"),
        ("10", "deadline must be"),
        (datetime.datetime(2030, 1, 1), "naive datetime"),
        (datetime.datetime(1970, 1, 2, tzinfo=UTC), "already past"),  # FakeClock: 12 Jan 1970
        (datetime.datetime(9999, 1, 1, tzinfo=UTC), r"9999-01-01T00:00:00\+00:00 is more than 100"),
        (datetime.datetime(2030, 1, 1, tzinfo=Raising()), "not a usable time: its offset"),
    ],
)
def test_bad_deadlines_are_refused_and_nothing_is_stored(
    tmp_path: Path, clock: FakeClock, deadline: Any, match: str
) -> None:
    with runtime(tmp_path / "s", clock, Service()) as rt:
        with pytest.raises(InvalidInput, match=match):
            rt.start("two", workflow_id="w1", deadline=deadline)
        assert rt.list() == []


def test_a_start_at_whose_tzinfo_raises_is_refused(tmp_path: Path, clock: FakeClock) -> None:
    with runtime(tmp_path / "s", clock, Service()) as rt:
        with pytest.raises(InvalidInput, match=r"start_at .* not a usable time: its offset"):
            rt.start(
                "two", workflow_id="w1", start_at=datetime.datetime(2030, 1, 1, tzinfo=Raising())
            )
        assert rt.list() == []


def test_a_deadline_before_the_delayed_start_is_refused_and_nothing_is_stored(
    tmp_path: Path, clock: FakeClock
) -> None:
    # It was accepted, and the workflow ended COMPENSATED before its first step could run.
    with runtime(tmp_path / "s", clock, Service()) as rt:
        with pytest.raises(InvalidInput, match=r"deadline \(in 1 s\) comes before its delayed"):
            rt.start("two", workflow_id="w1", delay=5, deadline=1)
        with pytest.raises(InvalidInput, match="comes before its delayed start"):
            rt.start("two", workflow_id="w1", delay=5, deadline=5)
        assert rt.list() == []
        rt.start("two", workflow_id="w2", delay=5, deadline=6)  # later: fine


def test_a_bad_default_deadline_is_refused_at_definition() -> None:
    with pytest.raises(InvalidInput, match="deadline must be"):
        Workflow("x", deadline=-5)


class Unsure(Agent):
    """Step b's first answer is lost (handed off, never completed) and its probe fails:
    the workflow parks with b UNKNOWN. Later attempts answer."""

    def __init__(self, calls: list[str]) -> None:
        self.calls = calls

    def do(self, ctx: StepContext) -> Any:
        self.calls.append(ctx.step)
        if ctx.step == "b" and self.calls.count("b") == 1:
            return ctx.complete_later()
        return ctx.step

    def probe_do(self, ctx: StepContext) -> Any:
        raise ConnectionError("the probe cannot reach the service")


@pytest.mark.parametrize("action", ["retry", "skip"])
def test_a_parked_workflow_resumed_by_an_operator_runs_on_without_its_deadline(
    tmp_path: Path, clock: FakeClock, action: str
) -> None:
    # Its deadline's timer went when it parked, but the deadline stayed on the record:
    # once past, every dispatch was refused ("its timer compensates") and no timer did,
    # so a retried or skipped workflow stayed RUNNING for good, and check flagged it.
    once = RetryPolicy(max_attempts=1)
    flow = (
        Workflow("three")
        .step("a", agent="u", action="do", timeout=10.0)
        .step("b", agent="u", action="do", after=["a"], timeout=10.0, retry=once)
        .step("c", agent="u", action="do", after=["b"])
    )
    with Runtime(tmp_path / "s", clock=clock, probe_timeout=5.0) as rt:
        rt.add_agent("u", functools.partial(Unsure, []))  # (a class it can see: the probe)
        rt.add_workflow(flow)
        h = rt.start("three", workflow_id="w1", deadline=200.0)
        wait_until(rt, lambda: rt.status("w1").steps["b"].state is StepState.WAITING)
        advance(rt, clock, 30.0)  # b lapses, its probe fails: parked
        wait_until(rt, lambda: rt.status("w1").state == "NEEDS_ATTENTION")
        # Spent once it parked: status() and herder show said it must end by then still
        # (and, once past, showed a deadline passed on a workflow it never compensated).
        assert rt.status("w1").deadline is None
        advance(rt, clock, 300.0)  # the deadline passes while it is parked
        if action == "skip":
            rt.skip("w1", result="done by hand", who="op", why="checked by phone")
        else:
            rt.retry("w1", who="op", why="the service is back")
        assert h.result(timeout=WAIT)["c"] == "c"
        assert rt.status("w1").deadline is None
        assert check_store(rt._store).ok, check_store(rt._store).problems
