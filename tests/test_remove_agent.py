"""``remove_agent``: its queued steps wait until the name is added again (agents.md), and
a removed name of which nothing is left costs nothing. Every layer kept a record of every
name ever added (the router's placement, the Dispatcher's lane, the host's record with
its factory): adding and removing 20,000 names four times grew RSS by 121 MB and
``stats()["agents"]`` listed 80,000 names. And attempts were still reserved ahead for a
removed agent (DISPATCHED, in flight) while its other steps waited PENDING."""

from __future__ import annotations

import functools
import gc
import threading
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _held_news import hold_commit_news
from _supervision_kit import Abandoned

from herder.actors._hosted import Hosted, HostedAgents, Instance
from herder.runtime import (
    Agent,
    CircuitBreaker,
    InstanceCrash,
    RateLimit,
    RetryPolicy,
    Runtime,
    State,
    StepContext,
    Workflow,
)
from herder.runtime._inspect import store_stats
from herder.runtime.testing import FakeClock, advance, fail_first, settle
from herder.store import Store

WAIT = 30.0
pytestmark = pytest.mark.timeout(120)


class Dev(Agent):
    def __init__(self, i: int) -> None:
        self.i = i

    def go(self, ctx: StepContext) -> int:
        return self.i


class AsyncDev(Agent):
    def __init__(self, i: int) -> None:
        self.i = i

    async def go(self, ctx: StepContext) -> int:
        return self.i


class Gated(Agent):
    """Each attempt says it began, then waits for the gate; counts runs per workflow."""

    def __init__(self, began: threading.Semaphore, gate: threading.Event, runs: dict[str, int]):
        self.began, self.gate, self.runs = began, gate, runs

    def go(self, ctx: StepContext) -> str:
        self.runs[ctx.workflow_id] = self.runs.get(ctx.workflow_id, 0) + 1
        self.began.release()
        self.gate.wait(WAIT)
        return "done"


def _dispatcher(rt: Runtime) -> Any:
    return rt._scheduler._actor_weakref()._dispatch  # type: ignore[attr-defined]


def _records_of(rt: Runtime, name: str) -> list[str]:
    """Where the Scheduler's side still keeps ``name`` (read once the runtime settled)."""
    d = _dispatcher(rt)
    where = {
        "routes": d._routes,
        "unserved": getattr(getattr(d, "_names", None), "unserved", {}),
        "lanes": d.lanes._lanes,
        "router": d.host._by_name,
        "host": d.host._local._agents,
        "stats": rt.stats()["agents"],
    }
    return [layer for layer, names in where.items() if name in names]


@pytest.mark.parametrize("host", ["pool", "thread", "async"])
def test_a_removed_agent_of_which_nothing_is_left_is_forgotten_by_every_layer(
    tmp_path: Path, host: str
) -> None:
    cls = AsyncDev if host == "async" else Dev
    with Runtime(tmp_path / "s", agent_host="thread" if host == "thread" else "pool") as rt:
        rt.add_workflow(Workflow("w").step("s", agent="d:{i}", action="go", timeout=30))
        factories = [functools.partial(cls, i) for i in range(40)]
        unused = [weakref.ref(f) for f in factories[20:]]
        for i, factory in enumerate(factories):
            rt.add_agent(f"d:{i}", factory)
        del factories, factory
        handles = [rt.start("w", {"i": i}) for i in range(20)]
        assert [h.result(timeout=WAIT) for h in handles] == [{"s": i} for i in range(20)]
        for i in range(40):
            rt.remove_agent(f"d:{i}")
        settle(rt)
        assert {f"d:{i}": _records_of(rt, f"d:{i}") for i in range(40)} == {
            f"d:{i}": [] for i in range(40)
        }
        gc.collect()
        assert [ref() for ref in unused] == [None] * 20  # no record holds their factory
        rt.add_agent("d:3", functools.partial(cls, 3))  # a name forgotten serves again
        assert rt.start("w", {"i": 3}).result(timeout=WAIT) == {"s": 3}


@pytest.mark.parametrize("host", ["pool", "thread"])
def test_a_removed_agent_is_forgotten_at_the_tick_after_its_last_attempt_ended(
    tmp_path: Path, host: str
) -> None:
    began, gate, runs = threading.Semaphore(0), threading.Event(), {}
    clock = FakeClock()
    with Runtime(tmp_path / "s", agent_host=host, clock=clock) as rt:
        rt.add_agent("a", functools.partial(Gated, began, gate, runs))
        rt.add_workflow(Workflow("w").step("s", agent="a", action="go", timeout=60))
        handle = rt.start("w", workflow_id="w1")
        assert began.acquire(timeout=WAIT)
        rt.remove_agent("a")  # while its attempt runs
        settle(rt)
        if host == "pool":  # its instance is busy (the thread host stopped its thread)
            assert _records_of(rt, "a") == ["unserved", "lanes", "router", "host", "stats"]
        gate.set()
        assert handle.result(timeout=WAIT) == {"s": "done"}
        advance(rt, clock, 5.0)  # the tick
        assert _records_of(rt, "a") == []
        assert runs == {"w1": 1}


@pytest.mark.parametrize("host", ["pool", "thread"])
def test_a_removed_agent_keeps_its_queued_steps_pending_and_reserves_none_ahead(
    tmp_path: Path, host: str
) -> None:
    # Its first attempt, timed, lets the next ones be reserved ahead (prefetch): once the
    # agent is removed none may be, and ticks forget none of its waiting work.
    began, gate, runs = threading.Semaphore(0), threading.Event(), {}
    clock = FakeClock()
    with Runtime(tmp_path / "s", agent_host=host, clock=clock) as rt:
        rt.add_agent("a", functools.partial(Gated, began, gate, runs), concurrency=1)
        rt.add_workflow(Workflow("w").step("s", agent="a", action="go", timeout=60))
        first = rt.start("w", workflow_id="w0")
        assert began.acquire(timeout=WAIT)
        rest = [rt.start("w", workflow_id=f"w{i}") for i in range(1, 5)]
        settle(rt)
        rt.remove_agent("a")
        gate.set()
        assert first.result(timeout=WAIT) == {"s": "done"}
        settle(rt)
        advance(rt, clock, 5.0)  # a tick: the agent still has work, nothing is forgotten
        stats = rt.stats()
        assert stats["agents"]["a"]["queued"] == 4
        assert stats["agents"]["a"]["ahead"] == 0
        assert stats["steps"].get("in_flight_attempts", 0) == 0
        assert [rt.status(h.id).steps["s"].state for h in rest] == ["PENDING"] * 4
        rt.add_agent("a", functools.partial(Gated, began, gate, runs), concurrency=1)
        assert [h.result(timeout=WAIT) for h in rest] == [{"s": "done"}] * 4
        assert runs == {f"w{i}": 1 for i in range(5)}


def test_a_host_forgets_a_name_only_once_it_serves_no_more_and_nothing_of_it_is_left() -> None:
    host: HostedAgents[Hosted[Instance]] = HostedAgents(Hosted)
    host.add("a", Dev, 1)
    assert not host.forget("a")  # served
    record = host._agents["a"]
    record.concurrency = 0  # removed
    record.queue.push("job", 0, 0.0)
    assert not host.forget("a")  # a job waits for it
    record.queue.pop()
    record.instances["a#0"] = Instance(busy_token=7)
    assert not host.forget("a")  # an attempt runs
    first = record.new_instance_id()
    record.instances.clear()
    assert host.forget("a")
    assert host.queue("a") is None
    host.add("a", Dev, 1)  # late news of its last life's instances names none of the new
    assert (first, host._agents["a"].new_instance_id()) == ("a#0", "a#1")


def test_a_name_removed_while_its_attempt_commits_is_kept_for_that_attempt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On the thread host the remove lets the reserved instance go at once; the name was
    then forgotten (its lane dropped) while the engine still held the attempt, and the
    commit's effect (send it) raised KeyError on the Scheduler, which crashed."""
    armed, held, release = hold_commit_news(monkeypatch)
    with Runtime(tmp_path / "s", agent_host="thread") as rt:
        rt.add_agent("d", functools.partial(Dev, 1))
        rt.add_workflow(Workflow("w").step("s", agent="d", action="go", timeout=30))
        assert rt.start("w", workflow_id="w0").result(timeout=WAIT) == {"s": 1}
        armed.set()
        handle = rt.start("w", workflow_id="w1")
        assert held.wait(WAIT)  # its DISPATCHED is in the writer, the Scheduler unaware
        rt.remove_agent("d")
        armed.clear()
        release.set()
        rt._store.writer.flush(WAIT)  # the commit's news is told to the Scheduler
        settle(rt)  # and handled there, while the agent is away
        rt.add_agent("d", functools.partial(Dev, 2))
        assert handle.result(timeout=WAIT)["s"] in (1, 2)
        assert rt.stats()["restarts"]["scheduler"] == 0


@pytest.fixture
def abandoned() -> Iterator[Abandoned]:
    with Abandoned.watch("a") as handler:
        yield handler


class Crashes(Agent):
    """Its first attempt waits for the gate, then crashes its instance."""

    def __init__(self, began: threading.Event, gate: threading.Event) -> None:
        self.began, self.gate = began, gate

    def go(self, ctx: StepContext) -> int:
        if ctx.attempt == 1:
            self.began.set()
            self.gate.wait(WAIT)
            raise InstanceCrash("late")
        return ctx.attempt


def test_a_thread_left_running_by_remove_agent_is_counted_and_its_answer_taken(
    tmp_path: Path, abandoned: Abandoned
) -> None:
    began, gate, runs = threading.Semaphore(0), threading.Event(), {}
    try:
        with Runtime(tmp_path / "s", agent_host="thread", instance_shutdown=0.1) as rt:
            rt.add_agent("a", functools.partial(Gated, began, gate, runs))
            rt.add_workflow(Workflow("w").step("s", agent="a", action="go"))
            handle = rt.start("w", workflow_id="w0")
            assert began.acquire(timeout=WAIT)
            rt.remove_agent("a")  # its supervisor stops; the busy instance's thread runs on
            assert abandoned.seen.wait(WAIT)
            gate.set()
            assert handle.result(timeout=WAIT) == {"s": "done"}
            assert rt.stats()["host"]["abandoned_threads"] == 1
            assert runs == {"w0": 1}
    finally:
        gate.set()


def test_a_thread_abandoned_after_its_answer_was_taken_is_counted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The instance's ABANDONED news and its attempt's answer come from two threads:
    here the news is held back until the answer was taken (the instance is gone from
    its pool by then), and the thread left running must still be counted."""
    from herder.actors._dispatch import Dispatcher
    from herder.actors._supervision_specs import ChildEventKind

    held: list[Any] = []
    heard, handled = threading.Event(), threading.Event()
    original = Dispatcher.instance_event

    def instance_event(self: Dispatcher, msg: Any) -> Any:
        ours = msg.kind is ChildEventKind.ABANDONED and msg.instance is not None
        if ours and not held:
            held.append(msg)  # told again below, once the answer was taken
            heard.set()
            return []
        out = original(self, msg)
        if ours:
            handled.set()
        return out

    monkeypatch.setattr(Dispatcher, "instance_event", instance_event)
    began, gate, runs = threading.Semaphore(0), threading.Event(), {}
    try:
        with Runtime(tmp_path / "s", agent_host="thread", instance_shutdown=0.1) as rt:
            rt.add_agent("a", functools.partial(Gated, began, gate, runs))
            rt.add_workflow(Workflow("w").step("s", agent="a", action="go"))
            handle = rt.start("w", workflow_id="w0")
            assert began.acquire(timeout=WAIT)
            rt.remove_agent("a")
            assert heard.wait(WAIT)
            gate.set()
            assert handle.result(timeout=WAIT) == {"s": "done"}
            rt._scheduler.tell(held[0])
            assert handled.wait(WAIT)
            assert rt.stats()["host"]["abandoned_threads"] == 1
    finally:
        gate.set()


def test_an_instance_left_running_by_remove_agent_that_crashes_loses_its_attempt(
    tmp_path: Path, abandoned: Abandoned
) -> None:
    # No supervisor is left to hear of the crash: the instance reports it itself, else
    # the attempt (no timeout) waited for an answer forever.
    began, gate = threading.Event(), threading.Event()
    try:
        with Runtime(tmp_path / "s", agent_host="thread", instance_shutdown=0.1) as rt:
            rt.add_agent("a", functools.partial(Crashes, began, gate))
            rt.add_workflow(Workflow("w").step("s", agent="a", action="go"))
            handle = rt.start("w")
            assert began.wait(WAIT)
            rt.remove_agent("a")
            assert abandoned.seen.wait(WAIT)
            rt.add_agent("a", functools.partial(Crashes, began, gate))
            gate.set()
            assert handle.result(timeout=WAIT) == {"s": 2}
    finally:
        gate.set()


class Counts(Agent):
    """Counts its runs; returns the attempt."""

    runs: list[int] = []

    def go(self, ctx: StepContext) -> int:
        Counts.runs.append(ctx.attempt)
        return ctx.attempt


class AsyncCounts(Agent):
    async def go(self, ctx: StepContext) -> int:
        Counts.runs.append(ctx.attempt)
        return ctx.attempt


@pytest.mark.parametrize("host", ["pool", "thread", "async"])
def test_an_attempt_whose_commit_was_on_its_way_at_remove_agent_never_starts_nor_is_charged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, host: str
) -> None:
    """remove_agent while an attempt's DISPATCHED was being written: on the pool and asyncio
    hosts it started once durable, after remove_agent returned; on the thread host it was lost as
    a crash, charged (with max_attempts=1 its workflow failed, its action never run). It
    goes back uncharged, and runs once the agent is added again."""
    armed, held, release = hold_commit_news(monkeypatch)
    Counts.runs = []
    once = RetryPolicy(max_attempts=1)
    cls = AsyncCounts if host == "async" else Counts
    with Runtime(tmp_path / "s", agent_host="pool" if host == "async" else host) as rt:
        rt.add_agent("d", cls)
        rt.add_workflow(Workflow("w").step("s", agent="d", action="go", timeout=30, retry=once))
        assert rt.start("w", workflow_id="w0").result(timeout=WAIT) == {"s": 1}
        armed.set()
        handle = rt.start("w", workflow_id="w1")
        assert held.wait(WAIT)  # its DISPATCHED is in the writer, the Scheduler unaware
        rt.remove_agent("d")
        armed.clear()
        release.set()
        rt._store.writer.flush(WAIT)  # the commit's news is told to the Scheduler
        settle(rt)  # and handled there, while the agent is away
        assert Counts.runs == [1]  # w0's only
        assert rt.status("w1").state is State.RUNNING
        rt.add_agent("d", cls)
        assert handle.result(timeout=WAIT) == {"s": 1}
        assert Counts.runs == [1, 1]


class Flaky(Agent):
    """Fails its first attempt, then succeeds; checked for health."""

    def go(self, ctx: StepContext) -> str:
        fail_first(ctx, 1)
        return "ok"

    def health(self) -> None:
        return None


@pytest.mark.parametrize("limits", ["none", "limits"])
def test_a_removed_agent_leaves_no_resource_record_that_holds_nothing(
    tmp_path: Path, limits: str
) -> None:
    # A resource record was made for every agent with a health check (at each stats(),
    # and so at each Tick) or with limits, and for every one that failed once and then
    # succeeded (written to the store too), and kept for ever: the names of devices added
    # and removed long ago filled stats()["resources"], the metrics and the console.
    kept = {"breaker": CircuitBreaker(failures=5), "rate_limit": RateLimit(per_second=1e3)}
    retry = RetryPolicy(max_attempts=2, initial_interval=0.001, jitter=0.0)
    with Runtime(tmp_path / "s", default_retry=retry) as rt:
        rt.add_workflow(Workflow("w").step("s", agent="d:{i}", action="go", timeout=30))
        for i in range(3):
            rt.add_agent(f"d:{i}", Flaky, **(kept if limits == "limits" else {}))
        handles = [rt.start("w", {"i": i}) for i in range(3)]
        assert [h.result(timeout=WAIT) for h in handles] == [{"s": "ok"}] * 3
        assert sorted(rt.stats()["resources"]) == ["d:0", "d:1", "d:2"]  # served, checked
        for i in range(3):
            rt.remove_agent(f"d:{i}")
        settle(rt)
        assert rt.stats()["resources"] == {}
    with Store(tmp_path / "s", readonly=True) as store:
        assert store_stats(store)["resources"] == {}
