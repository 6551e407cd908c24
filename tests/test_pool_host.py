"""The pooled host's own rules: per-agent crash rules (backoff, intensity), a supervised and
elastic worker pool, abandoned threads counted. The test thread plays the Scheduler, as
in test_host_contract; restart pacing runs on a FakeClock, so nothing here sleeps."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from herder.actors import (
    Agent,
    FakeClock,
    InstanceCrash,
    InstanceEvent,
    PoolHost,
    StepContext,
    Strategy,
    SystemClock,
    ThreadHost,
    agents_listener,
    start_supervisor,
)
from herder.actors._messages import UNSTARTED, Outcome, Run
from herder.actors._pool_worker import SUPERSEDED
from herder.actors._supervision_specs import ChildEventKind
from herder.runtime import InvalidInput, Runtime, Workflow

WAIT = 10.0


class Flaky(Agent):
    gate = threading.Event()

    def ok(self, ctx: StepContext) -> Any:
        return ctx.input

    def crash(self, ctx: StepContext) -> None:
        raise InstanceCrash("connection reset")

    def hang(self, ctx: StepContext) -> str:
        Flaky.gate.wait(WAIT)
        return "late"


class _Port:
    cancelled = superseded = False

    def heartbeat(self, details: Any) -> None:
        pass


class Scheduler:
    """The test's stand-in for the Scheduler: drives the host, collects what it says."""

    def __init__(self, host: Any, inbox: queue.Queue[Any]) -> None:
        self.host = host
        self.inbox = inbox
        self.lost: list[int] = []
        self.events: list[InstanceEvent] = []
        self.outcomes: list[Outcome] = []
        self._tokens = iter(range(1, 1_000_000))

    def handle_one(self) -> Outcome | None:
        msg = self.inbox.get(timeout=WAIT)
        if isinstance(msg, InstanceEvent):
            self.events.append(msg)
            self.lost += self.host.on_event(msg, 0.0)
            return None
        assert isinstance(msg, Outcome), msg
        if not msg.next_token or not self.host.moved_on(
            msg.agent, msg.instance, msg.token, msg.next_token
        ):
            self.host.release(msg.agent, msg.instance, msg.token, 0.0)
        self.outcomes.append(msg)
        return msg

    def drain(self) -> None:
        """Handle every message already sent (none of these tests has one in flight)."""
        while not self.inbox.empty():
            self.handle_one()

    def start(self, agent: str, action: str, value: Any = None, *, wait: bool = True) -> int:
        """Acquire (handling messages until capacity comes) and send one attempt; then,
        if it waits in the line (``wait``), handle messages until a worker has it."""
        token = next(self._tokens)
        while (instance := self.host.acquire(agent, token)) is None:
            self.handle_one()
        ctx = StepContext("w", "s", action, 1, value, {}, "w/s", token, False, _Port())
        assert self.host.send(agent, instance, Run(agent, instance, action, token, ctx))
        while wait and self.host.host_stats().get("line"):
            self.handle_one()
        return token

    def until_lost(self, token: int) -> None:
        while token not in self.lost:
            self.handle_one()

    def outcome(self) -> Outcome:
        while (found := self.handle_one()) is None:
            pass
        return found


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def _host(kind: str, clock: FakeClock, **options: Any) -> Scheduler:
    Flaky.gate = threading.Event()
    inbox: queue.Queue[Any] = queue.Queue()
    agents = start_supervisor(
        "agents", Strategy.ONE_FOR_ONE, listener=agents_listener(inbox.put), clock=SystemClock()
    )
    if kind == "pool":
        options["clock"] = clock
    options.setdefault("shutdown", 0.1)
    host = {"pool": PoolHost, "thread": ThreadHost}[kind](
        agents, reply=inbox.put, events=inbox.put, max_result_bytes=1024, **options
    )
    return Scheduler(host, inbox)


@pytest.fixture
def pool(clock: FakeClock) -> Iterator[Scheduler]:
    scheduler = _host("pool", clock, max_restarts=2, restart_period=10.0)
    yield scheduler
    Flaky.gate.set()


def test_a_crashed_instance_waits_out_its_backoff_before_it_serves_again(
    pool: Scheduler, clock: FakeClock
) -> None:
    pool.host.add("flaky", Flaky, 1)
    crashed = pool.start("flaky", "crash")
    pool.until_lost(crashed)
    assert pool.host.acquire("flaky", 99) is None  # its only slot is restarting
    pool.drain()
    assert not any(e.kind is ChildEventKind.RESTARTED for e in pool.events)
    clock.advance(0.001)  # the first restart's backoff
    assert pool.host.busy_tokens("flaky") == []
    token = pool.start("flaky", "ok", 5)  # waits for the "restarted" event
    assert any(e.kind is ChildEventKind.RESTARTED for e in pool.events)
    assert pool.outcome().token == token


def test_the_backoff_grows_with_the_crashes_in_the_window(
    pool: Scheduler, clock: FakeClock
) -> None:
    pool.host.add("flaky", Flaky, 1)
    pool.until_lost(pool.start("flaky", "crash"))
    clock.advance(0.001)
    pool.until_lost(pool.start("flaky", "crash"))  # the second crash within 10 s
    pool.drain()
    clock.advance(0.001)
    pool.drain()
    assert pool.host.acquire("flaky", 99) is None  # backs off 2 ms this time
    clock.advance(0.001)
    token = pool.start("flaky", "ok", 6)
    assert pool.outcome().token == token


def test_too_many_crashes_give_up_on_every_instance_of_the_agent(
    pool: Scheduler, clock: FakeClock
) -> None:
    pool.host.add("flaky", Flaky, 2)
    hung = pool.start("flaky", "hang")  # on the other instance, when the agent gives up
    for _ in range(2):
        pool.until_lost(pool.start("flaky", "crash"))
        clock.advance(1.0)
    third = pool.start("flaky", "crash")  # 3 crashes within 10 s: more than max_restarts=2
    pool.until_lost(third)
    assert hung not in pool.lost  # it runs on (a worker is not stopped), holding its slot
    assert len(pool.lost) == len(set(pool.lost))  # each lost attempt reported once
    assert pool.host.stats()["flaky"] == {"instances": 1, "busy": 1, "queued": 0}
    Flaky.gate.set()
    assert pool.outcome().token == hung  # its answer counts; its instance goes with it
    assert pool.host.stats()["flaky"]["instances"] == 0
    assert pool.host.host_stats()["busy_workers"] == 0
    again = pool.start("flaky", "ok", 7)  # afresh: no backoff left over
    assert pool.outcome().token == again


def test_crashes_older_than_the_period_do_not_count(pool: Scheduler, clock: FakeClock) -> None:
    pool.host.add("flaky", Flaky, 1)
    for _ in range(5):
        pool.until_lost(pool.start("flaky", "crash"))
        clock.advance(11.0)  # each crash alone in its window: never more than 2
    assert pool.host.stats()["flaky"]["instances"] == 1  # restarting, not given up on


def test_the_supervision_tree_restarts_a_crashed_worker(clock: FakeClock) -> None:
    inbox: queue.Queue[Any] = queue.Queue()

    def reply(outcome: Outcome) -> None:
        if outcome.result == "break the worker":
            raise RuntimeError("a bug in the reply path")  # escapes the worker's handler
        inbox.put(outcome)

    agents = start_supervisor(
        "agents", Strategy.ONE_FOR_ONE, listener=agents_listener(inbox.put), clock=SystemClock()
    )
    scheduler = Scheduler(
        PoolHost(agents, reply, inbox.put, max_result_bytes=1024, shutdown=0.1, min_workers=1),
        inbox,
    )
    scheduler.host.add("w", Flaky, 1)
    broken = scheduler.start("w", "ok", "break the worker")
    scheduler.until_lost(broken)  # the attempt went with the worker's thread
    pool_news = lambda: [(e.instance, e.kind) for e in scheduler.events if e.agent == "*pool"]  # noqa: E731
    assert ("worker-0", ChildEventKind.CRASHED) in pool_news()
    while ("worker-0", ChildEventKind.RESTARTED) not in pool_news():
        scheduler.handle_one()
    token = scheduler.start("w", "ok", 8)
    assert scheduler.outcome().token == token
    assert scheduler.host.stats()["w"]["instances"] == 1  # no backoff: the clock never moved


@pytest.mark.parametrize("kind", ["pool", "thread"])
def test_a_hung_action_costs_an_abandoned_thread_shown_in_stats(
    kind: str, clock: FakeClock
) -> None:
    scheduler = _host(kind, clock)
    scheduler.host.add("solo", Flaky, 1)
    hung = scheduler.start("solo", "hang")
    assert scheduler.host.host_stats()["abandoned_threads"] == 0
    scheduler.host.replace_token("solo", hung)
    assert scheduler.host.host_stats()["abandoned_threads"] == 1
    fresh = scheduler.start("solo", "ok", 9)  # on a fresh thread
    assert scheduler.outcome().token == fresh
    Flaky.gate.set()


@pytest.mark.parametrize(("kind", "pseudo"), [("pool", "*pool"), ("thread", "solo")])
def test_hung_workers_are_replaced_at_once_not_one_shutdown_after_another(
    clock: FakeClock, kind: str, pseudo: str
) -> None:
    # The pool's supervisor replaced a hung worker only after waiting out its shutdown
    # for a thread that cannot stop (its action is blocked), one restart_child after
    # another: N hung workers took N x shutdown to replace, the pool short of them all
    # along. A worker is abandoned once its attempt overran: nothing is left to wait for.
    # The thread host's instances of one agent the same (their supervisor: "solo").
    stuck = threading.Event()  # (held past WAIT: only their replacement frees the pool)

    class Stuck(Flaky):
        def hang(self, ctx: StepContext) -> str:
            stuck.wait(6 * WAIT)
            return "late"

    scheduler = _host(kind, clock, shutdown=6 * WAIT)
    try:
        scheduler.host.add("solo", Stuck, 2)
        hung = [scheduler.start("solo", "hang") for _ in range(2)]
        before = len(scheduler.events)
        for token in hung:
            scheduler.host.replace_token("solo", token)

        def restarted() -> set[str | None]:
            news = scheduler.events[before:]
            restart = ChildEventKind.RESTARTED
            return {e.instance for e in news if e.agent == pseudo and e.kind is restart}

        while len(restarted()) < 2:
            scheduler.handle_one()  # (each waits up to WAIT: far less than one shutdown)
        token = scheduler.start("solo", "ok", 9)
        assert scheduler.outcome().token == token
    finally:
        stuck.set()


def test_the_pool_grows_to_the_attempts_running_and_shrinks_when_idle(
    pool: Scheduler,
) -> None:
    pool.host.add("many", Flaky, 5)
    hung = [pool.start("many", "hang") for _ in range(5)]
    assert pool.host.host_stats()["busy_workers"] == 5
    assert pool.host.host_stats()["workers"] in (5, 6)  # and perhaps one spare starting
    Flaky.gate.set()
    assert {pool.outcome().token for _ in hung} == set(hung)
    assert pool.host.host_stats()["busy_workers"] == 0
    started = lambda: {e.instance for e in pool.events if e.agent == "*pool" and e.instance}  # noqa: E731
    while len(started()) < pool.host.host_stats()["workers"]:  # the spare, if any
        pool.handle_one()
    pool.host.passivate(idle_before=0.0)  # every worker went idle at time 0.0
    assert pool.host.host_stats()["workers"] == 2  # min_workers


def test_the_pool_never_grows_past_its_cap_and_waiting_agents_get_freed_workers(
    clock: FakeClock,
) -> None:
    scheduler = _host("pool", clock, max_workers=2, line=0)
    for name in ("a", "b", "c"):
        scheduler.host.add(name, Flaky, 1)
    first = scheduler.start("a", "hang")
    scheduler.start("b", "ok", 1)
    assert scheduler.outcome().result == 1
    second = scheduler.start("b", "hang")
    assert scheduler.host.acquire("c", 99) is None  # both workers busy: c waits
    assert scheduler.host.host_stats()["workers"] == 2
    Flaky.gate.set()
    late = scheduler.start("c", "ok", 2)  # woken once a worker frees
    while not {first, second, late} <= {o.token for o in scheduler.outcomes}:
        scheduler.handle_one()
    assert scheduler.host.host_stats()["workers"] == 2


def _b_then_c_wait(clock: FakeClock) -> Scheduler:
    """One worker, busy with a's hung attempt; b, then c, wait for it (no line)."""
    scheduler = _host("pool", clock, max_workers=1, line=0)
    for name in ("a", "b", "c"):
        scheduler.host.add(name, Flaky, 1)
    scheduler.start("a", "hang")
    assert scheduler.host.acquire("b", 98) is None  # b waits first, then c
    assert scheduler.host.acquire("c", 99) is None
    return scheduler


def test_an_agent_woken_for_a_worker_it_has_no_work_for_passes_the_worker_on(
    clock: FakeClock,
) -> None:
    scheduler = _b_then_c_wait(clock)
    Flaky.gate.set()  # a's worker frees: b is woken, finds its queue empty, wakes c
    woken = lambda: {e.agent for e in scheduler.events if e.kind is ChildEventKind.STARTED}  # noqa: E731
    while "c" not in woken():
        scheduler.handle_one()
    assert scheduler.host.acquire("c", 99) is not None


def test_an_agent_woken_whose_pump_takes_no_worker_passes_it_on_after_the_pump(
    clock: FakeClock,
) -> None:
    """It has work, but its pump takes none of it (its breaker opened meanwhile, say). It
    used to keep the worker held for it, idle while c waited, until the next tick."""
    scheduler = _b_then_c_wait(clock)
    queue = scheduler.host.queue("b")
    assert queue is not None
    queue.push("a job its gate holds back", 0, 0.0)
    Flaky.gate.set()
    scheduler.outcome()  # a's worker frees: b is woken for it
    scheduler.handle_one()  # b's wake-up lands: it keeps the worker for its pump...
    woken = lambda: {e.agent for e in scheduler.events if e.kind is ChildEventKind.STARTED}  # noqa: E731
    assert "c" not in woken()
    scheduler.host.pumped()  # ...which took nothing: the worker goes on to c
    scheduler.handle_one()
    assert "c" in woken()
    assert scheduler.host.acquire("c", 99) is not None


def test_an_agent_woken_with_ready_attempts_but_no_queue_keeps_the_worker(
    clock: FakeClock,
) -> None:
    """Its work waits durable in its ready deque (reserved ahead), not in its queue. It
    used to pass the worker on as if it had none, and the next agent woken did the same:
    with 100 names on 32 workers every worker ended held for a wake-up on its way, the
    wake-ups went round for ever and nothing ran (found by ``benchmarks/scale.py``)."""
    scheduler = _b_then_c_wait(clock)
    ctx = StepContext("w", "s", "ok", 1, 3, {}, "w/s", 97, False, _Port())
    scheduler.host.ready_queue("b").append(Run("b", "", "ok", 97, ctx))
    Flaky.gate.set()
    scheduler.outcome()  # a's worker frees: b is woken for it
    scheduler.handle_one()  # b's wake-up lands
    assert scheduler.host.acquire("b", 97) is not None  # the worker is b's
    woken = {e.agent for e in scheduler.events if e.kind is ChildEventKind.STARTED}
    assert "c" not in woken


def test_a_worker_freed_for_a_waiting_agent_is_held_for_it_until_its_wake_up(
    clock: FakeClock,
) -> None:
    """An agent asking between a wake-up and the woken agent's pump waits its turn. It
    used to take the worker, sending the woken agent to the back of the line: with
    10,000 names that was ~4 wake-ups (a Scheduler message and a pump each) per attempt."""
    scheduler = _host("pool", clock, max_workers=1, line=0)
    for name in ("a", "b", "c"):
        scheduler.host.add(name, Flaky, 1)
    scheduler.start("a", "hang")
    assert scheduler.host.acquire("b", 98) is None  # b waits for the only worker
    Flaky.gate.set()
    scheduler.outcome()  # a's worker frees: b is woken (its wake-up on its way)
    assert scheduler.host.acquire("c", 99) is None  # c waits: that worker is b's
    assert scheduler.host.acquire("b", 98) is not None


def test_a_runtime_caps_its_pool_at_pool_workers(tmp_path: Path) -> None:
    entered, gate = threading.Semaphore(0), threading.Event()

    class Slow(Agent):
        def work(self, ctx: StepContext) -> int:
            entered.release()
            gate.wait(WAIT)
            return 1

    with Runtime(tmp_path / "s", pool_workers=1) as rt:
        rt.add_agent("slow", Slow, concurrency=2)
        rt.add_workflow(Workflow("w").step("s", agent="slow", action="work"))
        first, second = rt.start("w", workflow_id="1"), rt.start("w", workflow_id="2")
        assert entered.acquire(timeout=WAIT)
        assert not entered.acquire(timeout=0.3)  # the second waits for the only worker
        assert rt.stats()["host"]["workers"] == 1
        gate.set()
        assert first.result(timeout=WAIT) == second.result(timeout=WAIT) == {"s": 1}
    with pytest.raises(InvalidInput, match="pool_workers"):
        Runtime(tmp_path / "t", pool_workers=0)


# -- the line: attempts holding an instance slot, waiting for a worker ---------------------


class Line(Agent):
    """Records what it runs; ``hold`` blocks until the test lets it go."""

    ran: list[tuple[str, int]] = []
    entered = threading.Semaphore(0)
    gate = threading.Event()

    def ok(self, ctx: StepContext) -> Any:
        Line.ran.append((ctx.workflow_id, ctx.token))
        return ctx.input

    def hold(self, ctx: StepContext) -> str:
        Line.ran.append((ctx.workflow_id, ctx.token))
        Line.entered.release()
        Line.gate.wait(WAIT)
        return "held"


@pytest.fixture
def one_worker(clock: FakeClock) -> Iterator[Scheduler]:
    """A pool of one worker, busy with a's attempt until ``Flaky.gate`` is set."""
    Line.ran, Line.entered, Line.gate = [], threading.Semaphore(0), threading.Event()
    scheduler = _host("pool", clock, max_workers=1, min_workers=1)
    for name in ("a", "b", "c"):
        scheduler.host.add(name, Line, 1)
    scheduler.host.add("hung", Flaky, 1)
    scheduler.start("hung", "hang")
    yield scheduler
    Flaky.gate.set()
    Line.gate.set()


def _send(scheduler: Scheduler, agent: str, action: str, token: int, port: Any = None) -> str:
    instance = scheduler.host.acquire(agent, token)
    assert instance is not None
    ctx = StepContext("w", "s", action, 1, token, {}, "w/s", token, False, port or _Port())
    assert scheduler.host.send(agent, instance, Run(agent, instance, action, token, ctx))
    return instance


def test_a_freed_worker_takes_another_agents_lined_attempt_without_a_scheduler_message(
    one_worker: Scheduler,
) -> None:
    _send(one_worker, "b", "ok", 101)  # no worker free: it holds b's slot, in the line
    assert one_worker.host.host_stats()["line"] == 1
    Flaky.gate.set()
    hung = one_worker.outcome()
    assert hung.next_token == 101  # the worker went on with b's attempt, and said so
    assert one_worker.outcome().token == 101
    assert one_worker.host.host_stats()["fed_from_line"] == 1
    assert not [e for e in one_worker.events if e.agent == "b"]  # b was never woken
    assert one_worker.host.host_stats()["busy_workers"] == 0
    assert one_worker.host.busy_tokens("hung") == one_worker.host.busy_tokens("b") == []


def test_an_agent_runs_no_more_attempts_than_its_concurrency_through_the_line(
    one_worker: Scheduler,
) -> None:
    _send(one_worker, "b", "ok", 101)
    assert one_worker.host.acquire("b", 102) is None  # its only slot waits in the line
    _send(one_worker, "c", "ok", 201)
    Flaky.gate.set()
    one_worker.outcome()  # hung's: the worker goes on with b, then with c
    assert one_worker.host.acquire("b", 102) is None  # b's attempt runs, or its answer is due
    assert {one_worker.outcome().token, one_worker.outcome().token} == {101, 201}
    assert one_worker.host.acquire("b", 102) is not None  # b's answer freed its slot
    assert [t for _, t in Line.ran] == [101, 201]  # in the order they joined the line


def test_an_attempt_fenced_while_it_waits_in_the_line_never_starts(
    one_worker: Scheduler,
) -> None:
    port = _Port()
    _send(one_worker, "b", "ok", 101, port)
    port.superseded = True  # its workflow ended meanwhile (the Scheduler fences it)
    Flaky.gate.set()
    one_worker.outcome()
    fenced = one_worker.outcome()
    assert (fenced.token, fenced.ok, fenced.error) == (101, False, SUPERSEDED)
    assert fenced.kind == UNSTARTED  # no news of b's resource: its gates ignore it
    assert Line.ran == []  # b's action never ran (nor was its agent object built)
    assert one_worker.host.busy_tokens("b") == []


def test_replacing_a_lined_attempt_no_worker_took_withdraws_it(
    one_worker: Scheduler,
) -> None:
    _send(one_worker, "b", "ok", 101)
    one_worker.host.replace_token("b", 101)  # it timed out in the line, say
    assert one_worker.host.host_stats()["line"] == 0
    assert one_worker.host.busy_tokens("b") == []
    Flaky.gate.set()
    assert one_worker.outcome().next_token == 0  # nothing left in the line to go on with
    assert one_worker.host.host_stats()["abandoned_threads"] == 0
    assert Line.ran == []


def test_replacing_a_lined_attempt_a_worker_took_abandons_that_worker_once_heard_of(
    one_worker: Scheduler,
) -> None:
    _send(one_worker, "b", "hold", 101)
    Flaky.gate.set()  # the worker ends hung's attempt and takes b's from the line...
    assert Line.entered.acquire(timeout=WAIT)  # ...which runs, its taking not yet heard of
    one_worker.host.replace_token("b", 101)
    assert one_worker.host.host_stats()["abandoned_threads"] == 0
    assert one_worker.outcome().next_token == 101  # heard of now: that worker is abandoned
    assert one_worker.host.host_stats()["abandoned_threads"] == 1
    assert one_worker.host.busy_tokens("b") == []
    fresh = one_worker.start("c", "ok", 7)  # on the fresh thread that replaced it
    assert one_worker.outcome().token == fresh


def test_a_worker_that_crashes_after_taking_a_lined_attempt_loses_that_one_too(
    clock: FakeClock,
) -> None:
    inbox: queue.Queue[Any] = queue.Queue()

    def reply(outcome: Outcome) -> None:
        if outcome.next_token == 101:  # the worker took b's attempt from the line...
            raise RuntimeError("a bug in the reply path")  # ...and dies telling of it
        inbox.put(outcome)

    Flaky.gate = threading.Event()
    agents = start_supervisor(
        "agents", Strategy.ONE_FOR_ONE, listener=agents_listener(inbox.put), clock=SystemClock()
    )
    host = PoolHost(agents, reply, inbox.put, max_result_bytes=1024, shutdown=0.1, max_workers=1)
    scheduler = Scheduler(host, inbox)
    host.add("hung", Flaky, 1)
    host.add("b", Flaky, 1)
    hung = scheduler.start("hung", "hang")
    _send(scheduler, "b", "ok", 101)
    Flaky.gate.set()
    scheduler.until_lost(101)  # reported lost with the worker, though never heard of
    assert hung in scheduler.lost
    assert host.busy_tokens("b") == []  # its slot freed
    assert host.host_stats()["line"] == 0
    token = scheduler.start("b", "ok", 5)  # on the restarted worker
    assert scheduler.outcome().token == token


def test_giving_up_on_an_agent_frees_the_worker_of_its_attempt_not_sent_yet(
    pool: Scheduler, clock: FakeClock
) -> None:
    """An attempt reserved on an instance (a worker taken for it) whose DISPATCHED is not
    durable yet is lost when the agent is given up on, and never sent: its worker stayed
    busy for good, one worker fewer for every agent."""
    pool.host.add("flaky", Flaky, 2)
    pool.start("flaky", "ok")  # (the pool's workers start)
    pool.outcome()
    unsent = 999_999
    assert pool.host.acquire("flaky", unsent) is not None  # its commit on its way
    assert pool.host.host_stats()["busy_workers"] == 1  # (a worker taken for it)
    for _ in range(3):  # 3 crashes within 10 s: more than max_restarts=2
        pool.until_lost(pool.start("flaky", "crash"))
        clock.advance(1.0)
    assert unsent in pool.lost  # given up on, with the rest
    pool.drain()
    assert pool.host.host_stats()["busy_workers"] == 0
    assert pool.host.stats()["flaky"]["instances"] == 0
