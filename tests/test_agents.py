"""Agent pools: added and removed at run time, lazy, passivated, bounded."""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import gc
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pykka
import pytest

from herder.actors import PoolWorker, _hosted
from herder.actors._thread_host import AgentInstance
from herder.runtime import (
    Agent,
    InstanceCrash,
    RetryPolicy,
    Runtime,
    StepContext,
    Workflow,
    WorkflowFailed,
)
from herder.runtime.testing import FakeClock, advance, settle

WAIT = 10.0


class Host(Agent):
    """One agent per remote host, as a daemon would register them."""

    def __init__(self, host: str) -> None:
        self.host = host

    def ping(self, ctx: StepContext) -> str:
        return f"{self.host}:{ctx.input}"


def instances_alive() -> int:
    return len(pykka.ActorRegistry.get_by_class(AgentInstance))


def workers_alive() -> int:
    return len(pykka.ActorRegistry.get_by_class(PoolWorker))


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def rt(tmp_path: Path, clock: FakeClock) -> Iterator[Runtime]:
    with Runtime(tmp_path / "s", clock=clock, instance_idle_timeout=60.0) as runtime:
        yield runtime


@pytest.fixture(params=["pool", "thread"])
def host(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def rt_on(tmp_path: Path, clock: FakeClock, host: str) -> Iterator[Runtime]:
    """A runtime on each agent host."""
    with Runtime(
        tmp_path / "s", clock=clock, instance_idle_timeout=60.0, agent_host=host
    ) as runtime:
        yield runtime


def test_instances_start_only_when_work_arrives(rt: Runtime) -> None:
    rt.add_agent("h1", functools.partial(Host, "h1"), concurrency=4)
    rt.add_workflow(Workflow("ping").step("p", agent="h1", action="ping"))
    assert rt.stats()["agents"]["h1"]["instances"] == 0
    assert instances_alive() == 0
    assert rt.start("ping", "x").result(timeout=WAIT) == {"p": "h1:x"}
    assert rt.stats()["agents"]["h1"]["instances"] == 1  # one step needed one instance


def test_idle_instances_are_passivated_and_come_back_on_demand(
    rt_on: Runtime, clock: FakeClock, host: str
) -> None:
    rt = rt_on
    alive = instances_alive if host == "thread" else lambda: rt.stats()["agents"]["h1"]["instances"]
    rt.add_agent("h1", functools.partial(Host, "h1"))
    rt.add_workflow(Workflow("ping").step("p", agent="h1", action="ping"))
    rt.start("ping", 1).result(timeout=WAIT)
    assert alive() == 1
    threads = pykka.ActorRegistry.get_by_class(AgentInstance)  # (none on the pool)
    advance(rt, clock, 30.0)
    assert alive() == 1  # not idle long enough
    advance(rt, clock, 40.0)
    settle(rt)
    assert rt.stats()["steps"]["passivated"] == 1
    # The thread host's instance actor ends on its own thread after the Scheduler let it
    # go, which settle() does not wait for: wait for its end, then count.
    assert all(ref.actor_stopped.wait(WAIT) for ref in threads)
    assert alive() == 0
    assert rt.start("ping", 2).result(timeout=WAIT) == {"p": "h1:2"}


@pytest.mark.parametrize(
    ("first", "then"),
    [
        (55.0, 5.0),  # the tick at 60 s finds it idle exactly the timeout: it goes
        (55.1, 4.95),  # a tick late at 55.1 s does not push the next one past 60.05 s
    ],
)
def test_an_instance_goes_at_the_first_tick_once_idle_the_timeout(
    tmp_path: Path, clock: FakeClock, first: float, then: float
) -> None:
    # No periodic sweeps inside the advances: only advance()'s own, at the times given.
    with Runtime(
        tmp_path / "s", clock=clock, instance_idle_timeout=60.0, sweep_interval=1000.0
    ) as rt:
        rt.add_agent("h1", functools.partial(Host, "h1"))
        rt.add_workflow(Workflow("ping").step("p", agent="h1", action="ping"))
        rt.start("ping", 1).result(timeout=WAIT)
        advance(rt, clock, first)  # ticks every 5 s of the watchdog's clock
        assert rt.stats()["steps"]["passivated"] == 0
        advance(rt, clock, then)  # 60 s or more idle, a 5 s grid point passed: a tick
        assert rt.stats()["steps"]["passivated"] == 1


def threads() -> set[threading.Thread]:
    """Live threads, but for clock timer threads: those of runtimes stopped by earlier
    tests end on their own a second after their last timer, at any moment."""
    return {t for t in threading.enumerate() if t.name != "herder-timers"}


def test_a_thousand_agent_names_hold_no_threads_once_idle(
    rt_on: Runtime, clock: FakeClock, host: str
) -> None:
    rt = rt_on
    baseline = threads()
    names = [f"host-{n}" for n in range(1000)]
    for name in names:
        rt.add_agent(name, functools.partial(Host, name))
        rt.add_workflow(Workflow(f"ping-{name}").step("p", agent=name, action="ping"))
    assert threads() == baseline  # registering starts nothing
    # Started from a few threads so their durable commits share fsyncs (one at a time,
    # the starts alone took ~10 s); the pool's threads have ended before `started`.
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        handles = list(pool.map(lambda name: rt.start(f"ping-{name}", 0), names))
    for name, handle in zip(names, handles, strict=True):
        assert handle.result(timeout=WAIT) == {"p": f"{name}:0"}
    started = threads() - baseline
    if host == "thread":
        assert len(started) >= 1000  # an instance (and a supervisor) per agent name
    else:  # the pool's workers (32 at most) and its supervisor
        assert 1 < len(started) <= 33
        assert workers_alive() == rt.stats()["host"]["workers"]
    advance(rt, clock, 61.0)
    assert rt.stats()["steps"]["passivated"] == 256  # bounded per pass: no stop storm
    # While a pass lets go of that many, the next comes 0.2 s later, not at the next tick
    # (5 s): thousands of names left idle for minutes (two threads each on the thread host).
    for went in (512, 768, 1000):
        advance(rt, clock, 0.25)
        assert rt.stats()["steps"]["passivated"] == went
    if host == "pool":  # idle workers stop too, down to the pool's minimum of two
        assert rt.stats()["host"]["workers"] == 2
        for supervisor in pykka.ActorRegistry.get_by_class_name("_Supervisor"):
            supervisor.proxy().which_children().get(timeout=WAIT)  # past its delete_child
        assert workers_alive() == 2
        return
    for thread in started:  # passivation stops them: every one of those threads ends
        thread.join(WAIT)
        assert not thread.is_alive(), f"{thread.name} still runs after passivation"
    assert instances_alive() == 0
    assert threads() <= baseline


def test_a_removed_agent_holds_its_steps_until_it_is_added_again(rt: Runtime) -> None:
    entered, go = threading.Event(), threading.Event()

    class Gate(Agent):
        def ping(self, ctx: StepContext) -> str:
            entered.set()
            go.wait(WAIT)
            return "gate"

    rt.add_agent("gate", Gate)
    rt.add_agent("h1", functools.partial(Host, "old"))
    rt.add_workflow(
        Workflow("two")
        .step("a", agent="gate", action="ping")
        .step("b", agent="h1", action="ping", after=["a"])
    )
    handle = rt.start("two", 7, workflow_id="w")
    assert entered.wait(WAIT)
    rt.remove_agent("h1")  # while the workflow runs
    go.set()
    with pytest.raises(TimeoutError):
        handle.result(timeout=0.3)  # b waits: nobody serves h1
    assert rt.status("w").steps["b"].state == "PENDING"
    rt.add_agent("h1", functools.partial(Host, "new"))
    assert handle.result(timeout=WAIT) == {"a": "gate", "b": "new:7"}


def test_start_blocks_while_the_active_limit_is_reached(tmp_path: Path) -> None:
    release = threading.Event()

    class Slow(Agent):
        def work(self, ctx: StepContext) -> int:
            release.wait(WAIT)
            return 1

    with Runtime(tmp_path / "s", clock=FakeClock(), max_active_workflows=2) as rt:
        rt.add_agent("slow", Slow, concurrency=4)
        rt.add_workflow(Workflow("w").step("s", agent="slow", action="work"))
        first = rt.start("w", workflow_id="1")
        rt.start("w", workflow_id="2")
        with pytest.raises(TimeoutError, match="max_active_workflows=2"):
            rt.start("w", workflow_id="3", timeout=0.2)
        assert rt.start("w", workflow_id="1").id == "1"  # an existing id never waits
        release.set()
        first.result(timeout=WAIT)
        assert rt.start("w", workflow_id="3", timeout=WAIT).result(timeout=WAIT) == {"s": 1}


def test_an_agent_removed_while_it_starts_runs_the_step_once_added_again(
    rt: Runtime, clock: FakeClock
) -> None:
    starting, fail = threading.Event(), threading.Event()

    class NeverStarts(Agent):
        def __init__(self) -> None:
            starting.set()
            fail.wait(WAIT)  # (its start fails only once the agent was removed)
            raise RuntimeError("cannot connect")

        def ping(self, ctx: StepContext) -> str:
            return "unreachable"

    rt.add_agent("flaky", NeverStarts)
    rt.add_workflow(Workflow("p").step("s", agent="flaky", action="ping"))
    rt.remove_agent("flaky")  # before any start could finish... or fail
    rt.add_agent("flaky", NeverStarts)
    handle = rt.start("p", workflow_id="w")
    assert starting.wait(WAIT)
    rt.remove_agent("flaky")
    fail.set()
    settle(rt)
    rt.add_agent("flaky", functools.partial(Host, "fixed"))
    # Its start had begun: the failure is the attempt's, charged, and its retry waits for
    # the policy's backoff as a failed start's does on every host (it never ran: nothing
    # to undo).
    advance(rt, clock, 60.0)
    assert handle.result(timeout=WAIT) == {"s": "fixed:None"}
    assert rt.status("w").steps["s"].attempt == 2


class Closing(Agent):
    """Closes its connection when let go: a ``__del__`` (user code) that takes its time."""

    gone = threading.Event()
    release = threading.Event()
    where: list[str] = []

    def ping(self, ctx: StepContext) -> str:
        return "closing"

    def __del__(self) -> None:
        type(self).where.append(threading.current_thread().name)
        type(self).gone.set()
        type(self).release.wait(WAIT)


class AsyncClosing(Closing):
    async def ping(self, ctx: StepContext) -> str:  # type: ignore[override]
        return "closing"


@pytest.mark.parametrize("kind", ["pool", "thread", "asyncio"])
def test_an_agent_object_let_go_is_dropped_off_the_schedulers_thread(
    tmp_path: Path, clock: FakeClock, kind: str
) -> None:
    # The pool and asyncio hosts dropped a passivated agent object on the Scheduler's
    # thread, so its __del__ ran there: one that took 3 s to close a connection stalled
    # every workflow of the runtime for 3 s.
    base = AsyncClosing if kind == "asyncio" else Closing
    closing = type("Closing", (base,), {"gone": threading.Event(),
                                        "release": threading.Event(), "where": []})  # fmt: skip
    host = "thread" if kind == "thread" else "pool"
    try:
        with Runtime(
            tmp_path / "s", clock=clock, instance_idle_timeout=60.0, agent_host=host
        ) as rt:
            rt.add_agent("closing", closing)
            rt.add_agent("h1", functools.partial(Host, "h1"))
            rt.add_workflow(Workflow("close").step("c", agent="closing", action="ping"))
            rt.add_workflow(Workflow("ping").step("p", agent="h1", action="ping"))
            assert rt.start("close", 1).result(timeout=WAIT) == {"c": "closing"}
            advance(rt, clock, 70.0)  # it idled past the timeout: let go
            assert closing.gone.wait(WAIT)
            assert rt.start("ping", 2).result(timeout=WAIT) == {"p": "h1:2"}  # not stalled
            assert not any(name.startswith("Scheduler") for name in closing.where)
    finally:
        closing.release.set()


@pytest.mark.parametrize("kind", ["pool", "asyncio"])
def test_an_agent_object_let_go_is_dropped_while_another_ones_del_hangs(
    tmp_path: Path, clock: FakeClock, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One thread dropped every object let go, in turn: one agent's __del__ that never
    # returned (closing a connection to a dead host, no timeout) held every object let
    # go after it, of every agent, and their connections, for good.
    monkeypatch.setattr(_hosted, "STUCK", 0.0)  # (a __del__ running counts as stuck)
    base = AsyncClosing if kind == "asyncio" else Closing
    stuck, later = (
        type(name, (base,), {"gone": threading.Event(), "release": threading.Event(), "where": []})
        for name in ("Stuck", "Later")
    )
    later.release.set()  # its __del__ returns at once
    try:
        with Runtime(tmp_path / "s", clock=clock, instance_idle_timeout=60.0) as rt:
            rt.add_agent("stuck", stuck)
            rt.add_agent("later", later)
            for name in ("stuck", "later"):
                rt.add_workflow(Workflow(name).step("c", agent=name, action="ping"))
            assert rt.start("stuck", 1).result(timeout=WAIT) == {"c": "closing"}
            advance(rt, clock, 70.0)  # it idled past the timeout: let go
            assert stuck.gone.wait(WAIT)  # its __del__ runs, and hangs
            assert rt.start("later", 2).result(timeout=WAIT) == {"c": "closing"}
            advance(rt, clock, 70.0)
            assert later.gone.wait(WAIT / 2)  # dropped all the same (while stuck's waits)
    finally:
        stuck.release.set()


class Crashing(Closing):
    def ping(self, ctx: StepContext) -> str:
        if ctx.attempt == 1:
            raise InstanceCrash("connection reset")
        return "closing"


class AsyncCrashing(Closing):
    async def ping(self, ctx: StepContext) -> str:  # type: ignore[override]
        if ctx.attempt == 1:
            raise InstanceCrash("connection reset")
        return "closing"


@pytest.mark.parametrize("kind", ["pool", "thread", "asyncio"])
def test_an_agent_object_that_crashed_is_dropped_at_once_off_the_runtimes_threads(
    tmp_path: Path, kind: str
) -> None:
    # The InstanceCrash's traceback held the frames that held the object, in a cycle (on
    # the thread host with the instance actor too): it went only when the garbage
    # collector ran, on whichever thread that was (a Scheduler's, a WorkflowSupervisor's,
    # a pool worker's), so its __del__ stalled that thread. Without the collector it
    # never went at all.
    base = AsyncCrashing if kind == "asyncio" else Crashing
    closing = type("Crashing", (base,), {"gone": threading.Event(),
                                         "release": threading.Event(), "where": []})  # fmt: skip
    gc.disable()
    try:
        with Runtime(tmp_path / "s", agent_host="thread" if kind == "thread" else "pool") as rt:
            rt.add_agent("closing", closing)
            rt.add_workflow(Workflow("close").step("c", agent="closing", action="ping"))
            assert rt.start("close", 1).result(timeout=WAIT) == {"c": "closing"}
            assert closing.gone.wait(WAIT)
            ours = ("Scheduler", "WorkflowSupervisor", "PoolWorker", "herder-asyncio")
            assert not any(name.startswith(ours) for name in closing.where)
    finally:
        closing.release.set()
        gc.enable()


def test_an_async_agent_object_let_go_while_its_attempt_ran_is_dropped_off_the_loop(
    tmp_path: Path,
) -> None:
    # Added again while an attempt ran on it, the old object's last reference was that
    # attempt's task: its __del__ ran on the loop, stalling every async agent.
    gate, began = threading.Event(), threading.Event()

    class Old(Closing):
        async def ping(self, ctx: StepContext) -> str:  # type: ignore[override]
            began.set()
            await asyncio.to_thread(gate.wait, WAIT)
            return "old"

    closing = type("Old", (Old,), {"gone": threading.Event(),
                                   "release": threading.Event(), "where": []})  # fmt: skip
    gc.disable()
    try:
        with Runtime(tmp_path / "s") as rt:
            rt.add_agent("closing", closing)
            rt.add_workflow(Workflow("close").step("c", agent="closing", action="ping"))
            handle = rt.start("close", 1)
            assert began.wait(WAIT)
            rt.add_agent("closing", AsyncClosing)
            gate.set()
            assert handle.result(timeout=WAIT) == {"c": "old"}
            assert closing.gone.wait(WAIT)
            assert closing.where == ["herder-let-go"]
    finally:
        gate.set()
        closing.release.set()
        gc.enable()


def test_a_factory_that_fails_counts_as_a_crash_on_every_host(rt_on: Runtime) -> None:
    # On the thread host an instance whose factory raised was counted in the agent's
    # resource record but not in stats()["steps"]["crashes"], which stayed 0 while the
    # pool host counted every one (the hosts review, session 22).
    def broken() -> Agent:
        raise ConnectionError("cannot connect")

    rt_on.add_agent("down", broken)
    once = RetryPolicy(max_attempts=2, initial_interval=0.0, jitter=0.0)
    rt_on.add_workflow(Workflow("down").step("s", agent="down", action="ping", retry=once))
    with pytest.raises(WorkflowFailed) as failed:
        rt_on.start("down", 1).result(timeout=WAIT)
    assert "cannot connect" in (failed.value.status.steps["s"].error or "")
    stats = rt_on.stats()
    assert stats["resources"]["down"]["crashes"] == 2
    assert stats["steps"]["crashes"] == 2


def test_a_process_whose_runtime_let_go_of_objects_exits(tmp_path: Path) -> None:
    # Objects let go at interpreter exit must not start the dropping thread then: a
    # thread started while the interpreter finalizes never runs, and its start() waited
    # for it for ever (the process hung at exit).
    script = f"""
from herder.runtime import Agent, Runtime, Workflow
class Async(Agent):
    async def ping(self, ctx):
        return 1
with Runtime({str(tmp_path / "s")!r}) as rt:
    rt.add_agent("a", Async)
    rt.add_workflow(Workflow("w").step("s", agent="a", action="ping"))
    assert rt.start("w").result(timeout=10) == {{"s": 1}}
print("stopped")
"""
    done = subprocess.run(
        [sys.executable, "-c", script], check=False, capture_output=True, text=True, timeout=30
    )
    assert (done.returncode, done.stdout) == (0, "stopped\n"), done.stderr


def test_the_largest_concurrency_taken_serves_and_survives_the_ticks(tmp_path: Path) -> None:
    """A concurrency past 2**64 - 1 was taken, and the agents' facts each tick publishes
    could not be stored: the Scheduler crashed at every tick. 2**53 is the most any
    limit takes (Adaptive.max); it serves, and its facts are stored."""
    clock = FakeClock()
    with Runtime(tmp_path / "s", clock=clock) as rt:
        rt.add_agent("d", functools.partial(Host, "h"), concurrency=2**53)
        rt.add_workflow(Workflow("w").step("s", agent="d", action="ping", timeout=30))
        assert rt.start("w").result(timeout=WAIT) == {"s": "h:None"}
        advance(rt, clock, 5.0)  # a tick publishes the agents' facts
        assert rt.stats()["restarts"]["scheduler"] == 0


def test_an_idle_instance_stopped_past_instance_shutdown_is_no_abandoned_thread(
    tmp_path: Path, clock: FakeClock
) -> None:
    """instance_shutdown=0: the thread host's idle instance, passivated, cannot have
    stopped within 0 s and is abandoned, though it runs nothing and ends at once: it was
    counted in abandoned_threads (an operator's sign of hung actions), for good."""
    from herder.actors._dispatch import Dispatcher
    from herder.actors._supervision_specs import ChildEventKind

    gone = threading.Event()  # the news of its stop, whatever it says, was handled
    original = Dispatcher.instance_event
    stops = (ChildEventKind.ABANDONED, ChildEventKind.EXITED, ChildEventKind.TERMINATED)

    def instance_event(self: Dispatcher, msg: Any) -> Any:
        out = original(self, msg)
        if msg.agent == "h1" and msg.instance is not None and msg.kind in stops:
            gone.set()
        return out

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Dispatcher, "instance_event", instance_event)
        with Runtime(
            tmp_path / "s",
            clock=clock,
            agent_host="thread",
            instance_idle_timeout=60.0,
            instance_shutdown=0.0,
        ) as rt:
            rt.add_agent("h1", functools.partial(Host, "h1"))
            rt.add_workflow(Workflow("ping").step("p", agent="h1", action="ping"))
            assert rt.start("ping", 1).result(timeout=WAIT) == {"p": "h1:1"}
            advance(rt, clock, 70.0)  # passivated
            assert gone.wait(WAIT)
            assert rt.stats()["host"]["abandoned_threads"] == 0
