"""Priorities with aging, delayed starts and durable waits between steps (FakeClock)."""

from __future__ import annotations

import datetime
import functools
import threading
from pathlib import Path
from typing import Any

import pytest

from herder.actors._ask import call
from herder.actors._queue import JobQueue
from herder.runtime import (
    Agent,
    InvalidDefinition,
    InvalidInput,
    RateLimit,
    Runtime,
    StepContext,
    StepState,
    Workflow,
)
from herder.runtime._check import check_store
from herder.runtime.testing import FakeClock, advance, settle, wait_until
from herder.store import BATCH_TIMER, Store

WAIT = 10.0


class Recorder(Agent):
    """Records (workflow id, step, clock time) of every call."""

    def __init__(self, clock: FakeClock, log: list[tuple[str, str, float]]) -> None:
        self.clock = clock
        self.log = log

    def call(self, ctx: StepContext) -> str:
        self.log.append((ctx.workflow_id, ctx.step, self.clock.time()))
        return ctx.step


def open_runtime(
    path: Path,
    clock: FakeClock,
    log: list[tuple[str, str, float]],
    *workflows: Workflow,
    **agent_options: Any,
) -> Runtime:
    rt = Runtime(path, clock=clock, sweep_interval=0.05, **agent_options.pop("runtime", {}))
    rt.add_agent("svc", functools.partial(Recorder, clock, log), **agent_options)
    for wf in workflows:
        rt.add_workflow(wf)
    return rt


def caught_up(rt: Runtime, log: list[Any]) -> None:
    def done() -> bool:
        counters = call(rt._ctx.scheduler, "stats", timeout=WAIT)
        return counters["in_flight_attempts"] == 0 and counters["dispatched"] == len(log)

    settle(rt)
    wait_until(rt, done)
    settle(rt)


ONE = Workflow("one").step("call", agent="svc", action="call")
PAIR = (
    Workflow("pair")
    .step("first", agent="svc", action="call")
    .step("second", agent="svc", action="call", after=["first"], delay=30.0)
)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def test_aging_lets_low_priority_work_through_a_stream_of_higher_priority_work(
    tmp_path: Path, clock: FakeClock
) -> None:
    """priority_aging=1: one second of waiting is worth one level. A priority-0 job meets a
    new priority-3 job every second on an agent that runs one per second; jobs that
    arrived less than 3 s after it overtake it, then it runs."""
    log: list[tuple[str, str, float]] = []
    rate = RateLimit(per_second=1.0, burst=1)
    options: dict[str, Any] = {"rate_limit": rate, "runtime": {"priority_aging": 1.0}}
    with open_runtime(tmp_path / "s", clock, log, ONE, **options) as rt:
        rt.start("one", workflow_id="filler").result(timeout=WAIT)  # takes the only token
        rt.start("one", workflow_id="low")
        for n in range(10):
            rt.start("one", workflow_id=f"high{n}", priority=3)
            advance(rt, clock, 1.0)
            caught_up(rt, log)
        order = [wid for wid, _, _ in log]
    assert order[0] == "filler"
    assert "low" in order, "aging must let the low-priority job run"
    overtook = order.index("low") - 1
    assert overtook == 3, order


def test_without_aging_to_speak_of_priority_wins_for_as_long_as_higher_work_comes(
    tmp_path: Path, clock: FakeClock
) -> None:
    log: list[tuple[str, str, float]] = []
    rate = RateLimit(per_second=1.0, burst=1)
    options: dict[str, Any] = {"rate_limit": rate, "runtime": {"priority_aging": 1000.0}}
    with open_runtime(tmp_path / "s", clock, log, ONE, **options) as rt:
        rt.start("one", workflow_id="filler").result(timeout=WAIT)
        rt.start("one", workflow_id="low")
        for n in range(10):
            rt.start("one", workflow_id=f"high{n}", priority=3)
            advance(rt, clock, 1.0)
            caught_up(rt, log)
        order = [wid for wid, _, _ in log]
    assert "low" not in order


def test_a_delayed_start_runs_when_its_time_comes_and_not_before(
    tmp_path: Path, clock: FakeClock
) -> None:
    log: list[tuple[str, str, float]] = []
    with open_runtime(tmp_path / "s", clock, log, ONE) as rt:
        begin = clock.time()
        rt.start("one", workflow_id="later", delay=60.0)
        at = datetime.datetime.fromtimestamp(begin + 90.0, tz=datetime.UTC)
        rt.start("one", workflow_id="at", start_at=at)
        rt.start("one", workflow_id="now")
        rt.handle("now").result(timeout=WAIT)
        advance(rt, clock, 59.0)
        caught_up(rt, log)
        assert [wid for wid, _, _ in log] == ["now"]
        waiting = rt.status("later").steps["call"]
        assert waiting.state is StepState.PENDING
        assert waiting.waits_until == begin + 60.0
        advance(rt, clock, 1.0)
        rt.handle("later").result(timeout=WAIT)
        advance(rt, clock, 29.0)
        caught_up(rt, log)
        assert rt.status("at").steps["call"].state is StepState.PENDING
        advance(rt, clock, 1.0)
        rt.handle("at").result(timeout=WAIT)
    times = {wid: t - begin for wid, _, t in log}
    assert times == {"now": 0.0, "later": 60.0, "at": 90.0}


def test_a_step_delay_waits_after_its_dependencies_and_survives_a_restart(
    tmp_path: Path, clock: FakeClock
) -> None:
    log: list[tuple[str, str, float]] = []
    path = tmp_path / "s"
    with open_runtime(path, clock, log, PAIR) as rt:
        begin = clock.time()
        rt.start("pair", workflow_id="p")
        wait_until(
            rt, lambda: rt.status("p").steps["second"].state is StepState.PENDING and bool(log)
        )
        advance(rt, clock, 10.0)
        caught_up(rt, log)
        assert [step for _, step, _ in log] == ["first"]
    with Store(path, readonly=True) as store:
        own = [t for t in store.due_timers(2**62) if t[1] != BATCH_TIMER]
        assert [(wf, step) for _, wf, step, _ in own] == [("p", "second")], "the wait's timer"
        assert check_store(store).problems == []
    clock.advance(15.0)  # time passes while no runtime runs
    later: list[tuple[str, str, float]] = []
    with open_runtime(path, clock, later, PAIR) as rt:
        caught_up(rt, later)
        assert later == []
        advance(rt, clock, 5.0)
        rt.handle("p").result(timeout=WAIT)
    assert [(step, t - begin) for _, step, t in log + later] == [
        ("first", 0.0),
        ("second", 30.0),
    ]


def test_a_delayed_start_runs_after_a_restart_that_comes_too_late(
    tmp_path: Path, clock: FakeClock
) -> None:
    log: list[tuple[str, str, float]] = []
    path = tmp_path / "s"
    begin = clock.time()
    with open_runtime(path, clock, log, ONE) as rt:
        rt.start("one", workflow_id="later", delay=60.0)
    clock.advance(120.0)
    with open_runtime(path, clock, log, ONE) as rt:
        assert rt.handle("later").result(timeout=WAIT) == {"call": "call"}
    assert [(wid, step) for wid, step, _ in log] == [("later", "call")]  # once, after
    assert log[0][2] >= begin + 120.0


def test_a_cancelled_waiting_workflow_never_runs(tmp_path: Path, clock: FakeClock) -> None:
    log: list[tuple[str, str, float]] = []
    with open_runtime(tmp_path / "s", clock, log, ONE) as rt:
        rt.start("one", workflow_id="later", delay=60.0)
        rt.cancel("later")
        advance(rt, clock, 61.0)
        caught_up(rt, log)
        assert rt.status("later").state == "CANCELLED"
    assert log == []
    with Store(tmp_path / "s", readonly=True) as store:
        assert store.count("timers") == 0, "a cancelled wait leaves no timer behind"
        assert check_store(store).problems == []


def test_timing_arguments_are_validated(tmp_path: Path, clock: FakeClock) -> None:
    with pytest.raises(InvalidDefinition, match="delay"):
        Workflow("w").step("s", agent="svc", action="call", delay=0)
    with pytest.raises(InvalidDefinition, match="delay"):
        Workflow("w").step("s", agent="svc", action="call", delay=float("inf"))
    log: list[tuple[str, str, float]] = []
    with open_runtime(tmp_path / "s", clock, log, ONE) as rt:
        now = datetime.datetime.now(tz=datetime.UTC)
        with pytest.raises(InvalidInput, match="not both"):
            rt.start("one", delay=1.0, start_at=now)
        with pytest.raises(InvalidInput, match="delay"):
            rt.start("one", delay=-1.0)
        with pytest.raises(InvalidInput, match="start_at must be a datetime"):
            rt.start("one", start_at=12.0)  # type: ignore[arg-type]
        with pytest.raises(InvalidInput, match="priority"):
            rt.start("one", priority=1.5)  # type: ignore[arg-type]
        assert rt.list() == []
    for aging in (0, float("inf"), float("nan")):
        with pytest.raises(InvalidInput, match="priority_aging"):
            Runtime(tmp_path / "other", clock=clock, priority_aging=aging)


def test_equal_priorities_run_first_come_first_served(tmp_path: Path, clock: FakeClock) -> None:
    gate = threading.Event()
    blocked = threading.Event()
    tokens: dict[str, int] = {}

    class Busy(Agent):
        def call(self, ctx: StepContext) -> None:
            tokens[ctx.workflow_id] = ctx.token
            blocked.set()
            gate.wait(WAIT)

    with Runtime(tmp_path / "s", clock=clock) as rt:
        rt.add_agent("svc", Busy, concurrency=1)
        rt.add_workflow(ONE)
        handles = [rt.start("one", workflow_id="blocker")]
        assert blocked.wait(WAIT)
        handles += [rt.start("one", workflow_id=f"w{n}", priority=2) for n in range(5)]
        assert rt.status("w0").priority == 2
        gate.set()
        for handle in handles:
            handle.result(timeout=WAIT)
    assert sorted(tokens, key=tokens.__getitem__) == ["blocker"] + [f"w{n}" for n in range(5)]


def test_taking_jobs_from_a_queue_keeps_their_order_and_the_queue_its_heap() -> None:
    source: JobQueue[str] = JobQueue(aging=10.0)
    for n, (job, priority) in enumerate([("a", 0), ("b", 5), ("c", 0), ("d", 5)]):
        source.push(job, priority, now=100.0 + n)
    heap = source.heap  # the dispatcher's pump holds the list itself
    target: JobQueue[str] = JobQueue(aging=10.0)
    target.push("x", 0, now=90.0)
    assert target.take(source, lambda job: job in ("b", "c")) == 2
    assert source.heap is heap
    assert [source.pop(), source.pop()] == ["d", "a"]
    assert not source
    assert [target.pop() for _ in range(3)] == ["b", "x", "c"]
