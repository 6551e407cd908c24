"""Reserve-ahead dispatch (``Runtime(prefetch=)``, actors/_ahead.py) and the pool host's
self-feed: attempts recorded before an instance is free run the moment one frees, never
more than ``concurrency`` at once, never before they are durable, and within the guards
(timeouts, heartbeat timeouts, gated agents, superseded attempts)."""

from __future__ import annotations

import contextlib
import queue
import threading
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from herder.actors import (
    Agent,
    ChildEventKind,
    InstanceEvent,
    PoolHost,
    StepContext,
    Strategy,
    SystemClock,
    agents_listener,
    start_supervisor,
)
from herder.actors._ahead import MIN_SAMPLES, Lane, next_ready
from herder.actors._messages import Outcome, Run
from herder.runtime import (
    CircuitBreaker,
    InvalidInput,
    RetryPolicy,
    Runtime,
    StepState,
    Workflow,
)
from herder.runtime._config import DEFAULT_PREFETCH
from herder.runtime.testing import (
    FakeClock,
    advance,
    settle,
    simulate,
    simulate_exact,
    wait_until,
)

WAIT = 30.0


class Port:
    cancelled = False

    def __init__(self, superseded: bool = False) -> None:
        self.superseded = superseded

    def heartbeat(self, details: Any) -> None:
        pass


def _run(token: int, *, superseded: bool = False, action: str = "ok") -> Run:
    ctx = StepContext("w", "s", action, 1, token, {}, "w/s", token, False, Port(superseded))
    return Run("worker", "", action, token, ctx)


# -- the lane's guards ----------------------------------------------------------------


def _timed(lane: Lane, seconds: float, count: int) -> None:
    for token in range(count):
        lane.started(token, 100.0)
        lane.ended(token, 100.0 + seconds)


def test_nothing_is_reserved_ahead_before_an_action_of_the_agent_was_timed() -> None:
    lane = Lane(concurrency=2, prefetch=3)
    assert not lane.allows(300.0)
    assert not lane.open()
    _timed(lane, 0.01, 1)
    assert lane.allows(300.0)
    assert lane.open()
    assert lane.room == 6


def test_a_lane_configured_again_keeps_its_room_in_step() -> None:
    lane = Lane()
    lane.configure(2, 3)
    assert not lane.open()  # nothing timed yet
    _timed(lane, 0.01, 1)
    lane.configure(1, 0)  # a limit was added: no prefetch
    assert not lane.open()
    assert not lane.allows(300.0)
    lane.configure(3, 2)
    lane.ahead = 5
    assert lane.open()
    lane.ahead = 6
    assert not lane.open()


def test_at_most_concurrency_times_prefetch_wait_ahead() -> None:
    lane = Lane(concurrency=2, prefetch=3)
    _timed(lane, 0.001, MIN_SAMPLES)
    lane.ahead = 5
    assert lane.allows(300.0)
    lane.ahead = 6
    assert not lane.allows(300.0)


def test_the_prefetch_is_capped_so_waiting_stays_under_a_tenth_of_the_timeout() -> None:
    lane = Lane(concurrency=2, prefetch=7)
    _timed(lane, 1.0, MIN_SAMPLES)  # p95 1 s
    lane.ahead = 6
    assert lane.allows(60.0)  # a tenth is 6 s: 6 actions per instance, 12 in all
    assert not lane.allows(30.0)  # a tenth is 3 s: 3 per instance, 6 in all
    lane.ahead = 5
    assert lane.allows(30.0)
    assert not lane.allows(9.0)  # not even one action fits in a tenth of 9 s


def test_steps_with_a_heartbeat_timeout_are_never_reserved_ahead() -> None:
    lane = Lane(concurrency=2, prefetch=3)
    _timed(lane, 0.001, MIN_SAMPLES)
    assert not lane.allows(0.0)  # the dispatcher's window for such a step


def test_the_p95_follows_the_recent_action_times() -> None:
    lane = Lane(concurrency=1, prefetch=1)
    _timed(lane, 5.0, MIN_SAMPLES)
    assert lane.p95 == pytest.approx(5.0)
    _timed(lane, 0.01, 64)  # the slow ones age out of the window
    assert lane.p95 == pytest.approx(0.01)


def test_superseded_attempts_waiting_in_a_lane_are_dropped_when_met() -> None:
    ready = deque([_run(1, superseded=True), _run(2), _run(3, superseded=True)])
    first = next_ready(ready)
    assert first is not None
    assert first.token == 2
    assert next_ready(ready) is None
    assert not ready


# -- the pool host's self-feed ----------------------------------------------------------


class Worker(Agent):
    gate = threading.Event()
    built = 0

    def __init__(self) -> None:
        Worker.built += 1

    def ok(self, ctx: StepContext) -> Any:
        return ctx.input

    def hang(self, ctx: StepContext) -> Any:
        Worker.gate.wait(WAIT)
        return ctx.input


@pytest.fixture
def pool() -> Iterator[tuple[PoolHost, queue.Queue[Any]]]:
    Worker.gate, Worker.built = threading.Event(), 0
    inbox: queue.Queue[Any] = queue.Queue()
    agents = start_supervisor(
        "agents", Strategy.ONE_FOR_ONE, listener=agents_listener(inbox.put), clock=SystemClock()
    )
    host = PoolHost(agents, reply=inbox.put, events=inbox.put, max_result_bytes=1024, shutdown=0.1)
    host.add("worker", Worker, 1)
    yield host, inbox
    Worker.gate.set()


def _outcome(host: PoolHost, inbox: queue.Queue[Any]) -> Outcome:
    while True:
        msg = inbox.get(timeout=WAIT)
        if isinstance(msg, InstanceEvent):
            host.on_event(msg, 0.0)
            continue
        assert isinstance(msg, Outcome)
        return msg


def _start(host: PoolHost, inbox: queue.Queue[Any], run: Run) -> str:
    while (instance := host.acquire("worker", run.token)) is None:
        host.on_event(inbox.get(timeout=WAIT), 0.0)
    run.instance = instance
    assert host.send("worker", instance, run)
    while host.host_stats()["line"]:  # it waits in the line for the workers being started
        host.on_event(inbox.get(timeout=WAIT), 0.0)
    return instance


def test_an_agent_holds_no_ready_deque_until_one_is_asked_for(
    pool: tuple[PoolHost, queue.Queue[Any]],
) -> None:
    """An empty deque is 760 bytes, and most of 10,000 names never reserve ahead: a
    quarter of the 4 KiB an idle agent may cost (issue 16)."""
    host, inbox = pool
    instance = _start(host, inbox, _run(1))  # it ran an attempt, none waited
    assert _outcome(host, inbox).token == 1
    assert host.release("worker", instance, 1, 0.0)
    assert host._agents["worker"].ready is None
    ready = host.ready_queue("worker")  # the Scheduler reserves one ahead
    assert ready is not None
    assert host.ready_queue("worker") is ready  # then its workers self-feed from it


def test_a_worker_goes_on_with_the_next_ready_attempt_on_the_same_instance(
    pool: tuple[PoolHost, queue.Queue[Any]],
) -> None:
    host, inbox = pool
    ready = host.ready_queue("worker")
    assert ready is not None
    instance = _start(host, inbox, _run(1, action="hang"))
    ready.extend([_run(2, superseded=True), _run(3)])  # durable, waiting for an instance
    Worker.gate.set()
    first = _outcome(host, inbox)
    assert (first.token, first.next_token, first.instance) == (1, 3, instance)
    host.moved_on("worker", instance, 1, 3)  # what the Scheduler does with that answer
    assert host.busy_tokens("worker") == [3]
    second = _outcome(host, inbox)
    assert (second.token, second.next_token, second.result) == (3, 0, 3)
    assert host.release("worker", instance, 3, 0.0)
    assert Worker.built == 1  # one agent object served both
    assert not ready  # the superseded one was dropped, never run


def test_a_worker_whose_instance_was_let_go_takes_no_ready_attempt(
    pool: tuple[PoolHost, queue.Queue[Any]],
) -> None:
    host, inbox = pool
    ready = host.ready_queue("worker")
    assert ready is not None
    instance = _start(host, inbox, _run(1, action="hang"))
    host.replace("worker", instance)  # it hangs: the host abandons its worker
    ready.append(_run(2))
    Worker.gate.set()
    late = _outcome(host, inbox)
    assert (late.token, late.next_token) == (1, 0)
    assert [r.token for r in ready] == [2]  # still there for a live instance


def test_an_agent_given_up_on_keeps_the_attempt_a_worker_fed_itself_unheard_counted() -> None:
    # Too many crashes: the host drops every instance, but one still running an attempt
    # runs on and holds its slot. Its worker had already gone on with a ready attempt
    # the Scheduler has not heard of: that one runs on too, counted against concurrency
    # (reported lost, it ran again beside itself, the agent over its concurrency).
    Worker.gate = threading.Event()
    inbox: queue.Queue[Any] = queue.Queue()
    agents = start_supervisor(
        "agents", Strategy.ONE_FOR_ONE, listener=agents_listener(inbox.put), clock=SystemClock()
    )
    host = PoolHost(
        agents,
        reply=inbox.put,
        events=inbox.put,
        max_result_bytes=1024,
        shutdown=0.1,
        max_restarts=0,  # the first crash is one too many
    )
    host.add("worker", Worker, 2)
    ready = host.ready_queue("worker")
    assert ready is not None
    other = _start(host, inbox, _run(3, action="hang"))
    ready.append(_run(2, action="hang"))  # durable, waiting for an instance
    feeding = _start(host, inbox, _run(1))
    first = _outcome(host, inbox)  # not handed to moved_on: the Scheduler has not seen it
    assert (first.token, first.next_token, first.instance) == (1, 2, feeding)
    lost = host.on_event(InstanceEvent("worker", other, ChildEventKind.CRASHED), 0.0)
    assert lost == [3]  # the crash's own attempt only
    assert host.moved_on("worker", feeding, 1, 2)  # the dropped instance runs 2 now
    assert host.acquire("worker", 4) is not None  # the crashed instance's slot
    assert host.acquire("worker", 5) is None  # the other is still 2's
    Worker.gate.set()
    while (second := _outcome(host, inbox)).token != 2:  # (3's worker ran on too)
        host.release("worker", second.instance, second.token, 0.0)
    assert second.instance == feeding
    assert host.release("worker", feeding, 2, 0.0)
    assert not host.owns("worker", feeding)  # given up on: not kept once its attempt ended
    assert host.acquire("worker", 5) is not None


# -- end to end ------------------------------------------------------------------------


class Counted(Agent):
    """Counts the attempts of each agent running at once."""

    lock = threading.Lock()
    gate = threading.Event()  # actions wait for it: work queues up behind the instances
    running: dict[str, int] = {}
    most: dict[str, int] = {}

    def __init__(self, name: str) -> None:
        self.name = name

    def go(self, ctx: StepContext) -> int:
        with Counted.lock:
            now = Counted.running[self.name] = Counted.running.get(self.name, 0) + 1
            Counted.most[self.name] = max(Counted.most.get(self.name, 0), now)
        try:
            Counted.gate.wait(WAIT)
            return ctx.attempt
        finally:
            with Counted.lock:
                Counted.running[self.name] -= 1


def _flow(*, heartbeat: float | None = None) -> Workflow:
    flow = Workflow("three", version=1)
    after: list[str] = []
    for step in ("a", "b", "c"):
        flow = flow.step(step, agent=step, action="go", after=after, heartbeat_timeout=heartbeat)
        after = [step]
    return flow


def _run_many(rt: Runtime, count: int, concurrency: int, **agent: Any) -> None:
    Counted.running, Counted.most, Counted.gate = {}, {}, threading.Event()
    for name in "abc":
        rt.add_agent(name, lambda name=name: Counted(name), concurrency=concurrency, **agent)
    handles = [rt.start("three", {}, workflow_id=f"w{i}") for i in range(count)]
    Counted.gate.set()
    for handle in handles:
        assert handle.result(timeout=WAIT) == {"a": 1, "b": 1, "c": 1}
    assert all(most <= concurrency for most in Counted.most.values()), Counted.most


@pytest.mark.parametrize("host", ["pool", "thread"])
def test_with_prefetch_every_workflow_completes_within_the_concurrency(
    tmp_path: Path, host: str
) -> None:
    with Runtime(tmp_path / "s", prefetch=3, agent_host=host) as rt:
        rt.add_workflow(_flow())
        _run_many(rt, 120, concurrency=2)
        stats = rt.stats()
    assert stats["steps"]["reserved_ahead"] > 0  # it did reserve ahead
    assert stats["steps"]["ahead"] == 0  # and every one it reserved ran
    assert stats["steps"]["stale"] == 0


def test_steps_with_a_heartbeat_timeout_and_gated_agents_wait_for_an_instance(
    tmp_path: Path,
) -> None:
    with Runtime(tmp_path / "hb", prefetch=3) as rt:
        rt.add_workflow(_flow(heartbeat=30.0))
        _run_many(rt, 40, concurrency=1)
        assert rt.stats()["steps"]["reserved_ahead"] == 0
    with Runtime(tmp_path / "gated", prefetch=3) as rt:
        rt.add_workflow(_flow())
        _run_many(rt, 40, concurrency=1, breaker=CircuitBreaker(failures=5))
        assert rt.stats()["steps"]["reserved_ahead"] == 0


def test_prefetch_must_be_a_small_int(tmp_path: Path) -> None:
    for bad in (-1, 65, 1.5, True):
        with pytest.raises(InvalidInput, match="prefetch"):
            Runtime(tmp_path / "bad", prefetch=bad)


# -- the simulations with prefetch on -------------------------------------------------


@pytest.mark.timeout(180)
def test_the_exact_simulation_holds_with_prefetch(tmp_path: Path) -> None:
    for seed in range(150):
        report = simulate_exact(seed, tmp_path / f"e{seed}", prefetch=3)
        assert report.problems == [], (seed, report.problems)


@pytest.mark.timeout(180)
@pytest.mark.parametrize("host", ["pool", "thread"])
@pytest.mark.parametrize("prefetch", [3, DEFAULT_PREFETCH])
def test_the_threaded_simulation_holds_with_prefetch(
    tmp_path: Path, host: str, prefetch: int
) -> None:
    # 2534: an instance crashes again and again; what waits ahead of it waits for it.
    for seed in (*range(15), 2534):
        report = simulate(seed, tmp_path / f"t{seed}", agent_host=host, prefetch=prefetch)
        assert report.problems == [], (seed, report.problems)


# -- the deadline of an attempt that waited ---------------------------------------------


class Gated(Agent):
    """Each workflow's action starts (``started``) and then waits for its own event."""

    started: dict[str, threading.Event] = {}
    go: dict[str, threading.Event] = {}

    def act(self, ctx: StepContext) -> int:
        Gated.started.setdefault(ctx.workflow_id, threading.Event()).set()
        Gated.go.setdefault(ctx.workflow_id, threading.Event()).wait(WAIT)
        return ctx.attempt

    def beat_once(self, ctx: StepContext) -> int:
        """As ``act``, with one heartbeat as it starts (then none: it hangs)."""
        ctx.heartbeat()
        return self.act(ctx)


@contextlib.contextmanager
def gated(
    tmp_path: Path, clock: FakeClock, host: str = "pool", **timeouts: float
) -> Iterator[Runtime]:
    """A runtime on ``host`` reserving ahead (prefetch 3) for the one-instance agent
    ``gated``, with a one-step workflow per ``name=timeout``; the first one ran once (w0),
    so its action was timed and attempts may be reserved ahead from now on."""
    Gated.started, Gated.go = {}, {}
    with Runtime(tmp_path / "s", clock=clock, prefetch=3, agent_host=host) as rt:
        rt.add_agent("gated", Gated, concurrency=1)
        for name, timeout in timeouts.items():
            step = Workflow(name, version=1).step("s", agent="gated", action="act", timeout=timeout)
            rt.add_workflow(step)
        Gated.go.setdefault("w0", threading.Event()).set()
        assert rt.start(next(iter(timeouts)), {}, workflow_id="w0").result(timeout=WAIT) == {"s": 1}
        yield rt


def test_an_attempt_that_waited_for_an_instance_gets_its_whole_timeout(tmp_path: Path) -> None:
    clock = FakeClock()
    with gated(tmp_path, clock, one=10) as rt:
        rt.start("one", {}, workflow_id="w1")  # runs, and holds the one instance
        Gated.started.setdefault("w1", threading.Event()).wait(WAIT)
        rt.start("one", {}, workflow_id="w2")  # recorded ahead, at t=0: deadline t=10
        wait_until(rt, lambda: rt.stats()["steps"]["reserved_ahead"] == 1)
        lapses_from_its_start(rt, clock, "timed out")


def lapses_from_its_start(rt: Runtime, clock: FakeClock, lapsed: str) -> None:
    """w1 runs (a Gated action) and w2, recorded at t=0 with a 10 s timeout, waits for
    what w1 holds: w2 starts at t=8, when w1 is let go, and lapses (``lapsed``: why) only
    once 10 s have passed since then, not since it was recorded."""
    advance(rt, clock, 8.0)
    Gated.go.setdefault("w1", threading.Event()).set()  # w2 starts now, at t=8
    assert Gated.started.setdefault("w2", threading.Event()).wait(WAIT)
    settle(rt)
    advance(rt, clock, 4.0)  # t=12: past the deadline recorded, within its timeout
    step = rt.status("w2").steps["s"]
    assert (step.state, step.attempt, step.error) == (StepState.DISPATCHED, 1, None)
    advance(rt, clock, 7.0)  # t=19: its timeout from t=8 has passed
    wait_until(rt, lambda: lapsed in (rt.status("w2").steps["s"].error or ""))
    Gated.go["w2"].set()


@pytest.mark.parametrize("host", ["pool", "thread"])
def test_an_attempt_waiting_past_its_recorded_deadline_waits_on_then_has_its_whole_timeout(
    tmp_path: Path, host: str
) -> None:
    """Its time counts from its hand-over: the timers of the deadline recorded with it
    neither time it out nor spend an attempt while the instance is held; each restamps it,
    and once handed over (and hung) it times out when its timeout from then has passed."""
    clock = FakeClock()
    try:
        with gated(tmp_path, clock, host, short=10, long=100) as rt:
            rt.start("long", {}, workflow_id="w1")  # holds the one instance for 100 s
            assert Gated.started.setdefault("w1", threading.Event()).wait(WAIT)
            rt.start("short", {}, workflow_id="w2")  # recorded ahead: deadline t=10
            wait_until(rt, lambda: rt.stats()["steps"]["reserved_ahead"] == 1)
            for _ in range(3):  # t=30: its recorded deadline passed long ago, unstarted
                advance(rt, clock, 10.0)
            step = rt.status("w2").steps["s"]
            assert (step.state, step.attempt, step.error) == (StepState.DISPATCHED, 1, None)
            assert rt.stats()["agents"]["gated"]["ahead"] == 1
            Gated.go.setdefault("w1", threading.Event()).set()  # w2 starts at t=30, hangs
            assert Gated.started.setdefault("w2", threading.Event()).wait(WAIT)
            settle(rt)
            advance(rt, clock, 5.0)  # t=35: within its timeout from its hand-over
            step = rt.status("w2").steps["s"]
            assert (step.state, step.attempt, step.error) == (StepState.DISPATCHED, 1, None)
            advance(rt, clock, 6.0)  # t=41: past it (the batch entry is reported again)
            wait_until(rt, lambda: "timed out" in (rt.status("w2").steps["s"].error or ""))
    finally:
        for event in Gated.go.values():
            event.set()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("action", ["act", "beat_once"])
@pytest.mark.parametrize("host", ["pool", "thread"])
def test_a_heartbeat_step_behind_a_busy_instance_is_not_reserved_and_lapses_on_time(
    tmp_path: Path, host: str, action: str
) -> None:
    """A step with a heartbeat timeout is never reserved ahead (agents.md): it waits
    unrecorded behind the busy instance, so its heartbeat deadline counts from its
    dispatch when the instance frees, and a hang (with one beat or none) times it out
    and retries it at that deadline, not at a sweep's resend seconds later."""
    clock = FakeClock()
    retry = RetryPolicy(max_attempts=2, initial_interval=1.0, jitter=0.0)
    try:
        with gated(tmp_path, clock, host, one=100) as rt:  # w0 ran: prefetch applies
            rt.add_workflow(
                Workflow("hb", version=1).step(
                    "s", agent="gated", action=action, heartbeat_timeout=2.0, retry=retry
                )
            )
            rt.start("one", {}, workflow_id="w1")  # holds the one instance
            assert Gated.started.setdefault("w1", threading.Event()).wait(WAIT)
            rt.start("hb", {}, workflow_id="w2")
            settle(rt)
            assert rt.status("w2").steps["s"].state is StepState.PENDING
            assert rt.stats()["steps"]["reserved_ahead"] == 0
            advance(rt, clock, 4.0)
            Gated.go.setdefault("w1", threading.Event()).set()  # w2 starts at t=4, hangs
            assert Gated.started.setdefault("w2", threading.Event()).wait(WAIT)
            settle(rt)
            advance(rt, clock, 1.5)  # t=5.5: within its heartbeat timeout
            step = rt.status("w2").steps["s"]
            assert (step.state, step.attempt, step.error) == (StepState.DISPATCHED, 1, None)
            advance(rt, clock, 0.7)  # t=6.2: 2.2 s without a beat
            step = rt.status("w2").steps["s"]
            assert step.state is StepState.RETRY_WAIT, step
            assert "no heartbeat" in (step.error or ""), step
            advance(rt, clock, 1.0)  # its retry's backoff
            wait_until(rt, lambda: rt.status("w2").steps["s"].attempt == 2)
    finally:
        for event in Gated.go.values():
            event.set()


class Fragile(Agent):
    """Builds until ``broken`` is set; then its factory fails."""

    broken = False

    def __init__(self) -> None:
        if Fragile.broken:
            raise ConnectionError("cannot connect")

    def ok(self, ctx: StepContext) -> int:
        return ctx.attempt


def test_attempts_reserved_ahead_for_an_agent_that_cannot_start_pay_their_attempts(
    tmp_path: Path,
) -> None:
    """An instance that fails to start costs the next job waiting for it an attempt; with
    none queued, the oldest attempt waiting ahead pays: none waits for ever."""
    clock = FakeClock()
    Fragile.broken = False
    with Runtime(
        tmp_path / "s", clock=clock, prefetch=3, agent_host="thread", instance_idle_timeout=5
    ) as rt:
        rt.add_agent("fragile", Fragile, concurrency=1)
        rt.add_workflow(
            Workflow("one", version=1).step(
                "s", agent="fragile", action="ok", timeout=60, retry=RetryPolicy(max_attempts=2)
            )
        )
        assert rt.start("one", {}, workflow_id="w0").result(timeout=WAIT) == {"s": 1}  # timed
        advance(rt, clock, 6.0)  # its instance idled past the idle timeout: stopped
        wait_until(rt, lambda: rt.stats()["agents"]["fragile"]["instances"] == 0)
        Fragile.broken = True
        rt.start("one", {}, workflow_id="w1")  # reserved ahead of the instance it starts
        wait_until(rt, lambda: rt.status("w1").steps["s"].state is StepState.RETRY_WAIT)
        advance(rt, clock, 2.0)  # its backoff, as for any failed start (not its timeout)
        wait_until(rt, lambda: rt.status("w1").state.is_final)
        step = rt.status("w1").steps["s"]
        assert step.attempt == 2, step
        assert "failed to start" in (step.error or ""), step
        settle(rt)
        stats = rt.stats()
        assert stats["steps"]["reserved_ahead"] >= 1
        # The attempts charged left their lane: none is counted as waiting there.
        assert stats["steps"]["ahead"] == stats["agents"]["fragile"]["ahead"] == 0
