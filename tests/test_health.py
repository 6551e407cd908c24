"""Agent health checks: the Supervisor runs ``health()``; an unhealthy agent takes no work.

On a FakeClock: a check runs when the test advances time past its interval (the sweep
starts it on its own thread) and the test waits for its verdict, never sleeps.
"""

from __future__ import annotations

import asyncio
import functools
import io
import socketserver
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
from herder.runtime.testing import FakeClock, advance, settle

WAIT = 10.0
MAX_CHECKS = 64  # checks running at once at most (actors/_health.py)
ONE = Workflow("one").step("call", agent="svc", action="call", timeout=5.0)


class Resource:
    """A fake remote resource whose health the test sets; counts calls and checks."""

    def __init__(self) -> None:
        self.well: BaseException | None = None  # what health() raises; None: healthy
        self.calls = 0
        self.release = threading.Event()
        self.hang = False

    def health(self) -> None:
        if self.hang:
            self.release.wait(WAIT)
        if self.well is not None:
            raise self.well


class Checked(Agent):
    def __init__(self, resource: Resource) -> None:
        self.resource = resource

    def call(self, ctx: StepContext) -> str:
        self.resource.calls += 1
        return "ok"

    def health(self) -> None:
        self.resource.health()


def runtime(path: Path, clock: FakeClock, resource: Resource, **options: Any) -> Runtime:
    rt = Runtime(path, clock=clock, sweep_interval=0.05)
    options.setdefault("health_interval", 10.0)
    rt.add_agent("svc", functools.partial(Checked, resource), **options)
    rt.add_workflow(ONE)
    return rt


def health(rt: Runtime) -> dict[str, Any]:
    return rt.stats()["resources"]["svc"]  # type: ignore[no-any-return]


def check(rt: Runtime, clock: FakeClock, count: int, seconds: float = 10.0) -> None:
    """Advance past one interval and wait for the agent's ``count``-th verdict."""
    advance(rt, clock, seconds)
    assert rt._ctx.health.checked("svc", count, WAIT), f"no verdict #{count}"
    settle(rt)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def test_an_unhealthy_agent_takes_no_work_until_a_check_passes(
    tmp_path: Path, clock: FakeClock
) -> None:
    resource = Resource()
    with runtime(tmp_path / "s", clock, resource) as rt:
        check(rt, clock, 1, 0.0)  # the first check runs at the first sweep
        assert health(rt)["healthy"] is True
        resource.well = ConnectionError("db down")
        check(rt, clock, 2)
        stats = health(rt)
        assert stats["healthy"] is False
        assert "db down" in stats["health_error"]
        assert stats["health_failures"] == 1
        rt.start("one", workflow_id="w1")
        for _ in range(3):  # well past the step's timeout: it never ran, so never lapsed
            advance(rt, clock, 3.0)
        assert resource.calls == 0
        step = rt.status("w1").steps["call"]
        assert (step.state, step.attempt) == (StepState.PENDING, 0)
        assert health(rt)["sick_holds"] >= 1
        resource.well = None
        check(rt, clock, 3)
        assert rt.handle("w1").result(timeout=WAIT) == {"call": "ok"}
        assert rt.status("w1").steps["call"].attempt == 1
        assert health(rt)["healthy"] is True


@pytest.mark.parametrize("raised", [KeyboardInterrupt(), SystemExit(3), GeneratorExit()])
def test_whatever_health_raises_is_contained_and_means_unhealthy(
    tmp_path: Path, clock: FakeClock, raised: BaseException
) -> None:
    resource = Resource()
    resource.well = raised
    with runtime(tmp_path / "s", clock, resource) as rt:
        check(rt, clock, 1, 0.0)
        assert health(rt)["healthy"] is False
        assert type(raised).__name__ in health(rt)["health_error"]
        resource.well = None
        check(rt, clock, 2)
        rt.start("one", workflow_id="w1")
        assert rt.handle("w1").result(timeout=WAIT) == {"call": "ok"}


def test_a_check_past_its_timeout_fails_and_its_late_answer_is_ignored(
    tmp_path: Path, clock: FakeClock
) -> None:
    resource = Resource()
    resource.hang = True
    with runtime(tmp_path / "s", clock, resource, health_timeout=2.0) as rt:
        advance(rt, clock, 0.0)  # the check starts and hangs
        check(rt, clock, 1, 2.0)  # the sweep after its timeout fails it
        assert health(rt)["healthy"] is False
        assert "timed out after 2s" in health(rt)["health_error"]
        check(rt, clock, 1, 10.0)  # no second check while the hung one still runs
        assert health(rt)["health_checks"] == 1
        resource.hang = False
        resource.release.set()  # the hung check returns: too late to count
        assert rt._ctx.health.settle(WAIT)  # (its thread has ended)
        settle(rt)
        check(rt, clock, 2, 10.0)
        assert health(rt)["healthy"] is True
        assert health(rt)["health_checks"] == 2


def test_health_interval_none_turns_checks_off(tmp_path: Path, clock: FakeClock) -> None:
    resource = Resource()
    resource.well = ConnectionError("never asked")
    with runtime(tmp_path / "s", clock, resource, health_interval=None) as rt:
        advance(rt, clock, 30.0)
        rt.start("one", workflow_id="w1")
        assert rt.handle("w1").result(timeout=WAIT) == {"call": "ok"}
        assert "healthy" not in rt.stats()["resources"].get("svc", {})


def test_health_shows_in_the_metrics_and_herder_stats(tmp_path: Path, clock: FakeClock) -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from herder.runtime._inspect import show_stats

    resource = Resource()
    resource.well = ConnectionError("down")
    with runtime(tmp_path / "s", clock, resource) as rt:
        check(rt, clock, 1, 0.0)
        registry = CollectorRegistry()
        registry.register(rt.prometheus_collector())
        text = generate_latest(registry).decode()
        assert 'herder_agent_healthy{agent="svc"} 0.0' in text
        assert 'herder_agent_health_failures_total{agent="svc"} 1.0' in text
        advance(rt, clock, 5.0)  # a Tick: the facts are published for herder stats
        out = io.StringIO()
        show_stats(out, rt._store, as_json=False)
        assert "healthy" in out.getvalue()
        assert "False" in out.getvalue()


def test_a_factory_that_hides_its_class_is_watched_only_if_its_agent_has_health(
    tmp_path: Path, clock: FakeClock
) -> None:
    class Plain(Agent):
        def call(self, ctx: StepContext) -> str:
            return "ok"

    with Runtime(tmp_path / "s", clock=clock, sweep_interval=0.05) as rt:
        hidden = lambda: Plain()  # noqa: E731, PLW0108 - hides the class, as factories may
        rt.add_agent("svc", hidden, health_interval=10.0)
        rt.add_workflow(ONE)
        assert rt._ctx.health.watched("svc")  # a lambda: its class is unknown until built
        advance(rt, clock, 0.0)
        assert not rt._ctx.health.checked("svc", 1, WAIT)  # no verdict: it has no health()
        assert not rt._ctx.health.watched("svc")
        rt.start("one", workflow_id="w1")
        assert rt.handle("w1").result(timeout=WAIT) == {"call": "ok"}


@pytest.mark.parametrize("host", ["thread", "pool"])
def test_a_hidden_factory_that_fails_gives_no_verdict_and_holds_no_work(
    tmp_path: Path, clock: FakeClock, host: str
) -> None:
    """A factory that hides its class may build an agent with no health(): its failure in
    a check is not a verdict (it held the step in RETRY_WAIT for good, as the agent stayed
    'unhealthy' until a check passed); the step's own attempts meet it instead."""

    def cannot_connect() -> Agent:
        raise ConnectionError("cannot connect")

    once = RetryPolicy(max_attempts=2, initial_interval=0.0, jitter=0.0)
    with Runtime(tmp_path / "s", clock=clock, sweep_interval=0.05, agent_host=host) as rt:
        rt.add_agent("svc", cannot_connect, health_interval=10.0)
        rt.add_workflow(Workflow("one").step("call", agent="svc", action="call", retry=once))
        advance(rt, clock, 0.0)  # the first check runs at the first sweep
        assert rt._ctx.health.settle(WAIT)
        assert health(rt)["healthy"] is True
        assert health(rt)["health_failures"] == 0
        with pytest.raises(WorkflowFailed, match="failed to start"):
            rt.start("one", workflow_id="w1").result(timeout=WAIT)
        assert rt.status("w1").steps["call"].attempt == 2
        # Every attempt the start failures spent is in the history, from the state it
        # left (the thread host's first read "DISPATCHED -> RETRY_WAIT" with no
        # "PENDING -> DISPATCHED" before it: the protection review, D7).
        moves = [(e["from"], e["to"]) for e in rt.history("w1") if e["kind"] == "step"]
        assert moves[:2] == [("PENDING", "DISPATCHED"), ("DISPATCHED", "RETRY_WAIT")]


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), "10", True, 10**400, 1e10])
def test_a_bad_health_interval_or_timeout_is_refused(tmp_path: Path, bad: Any) -> None:
    with Runtime(tmp_path / "s") as rt:
        with pytest.raises(InvalidInput, match="health_interval must be"):
            rt.add_agent("svc", functools.partial(Checked, Resource()), health_interval=bad)
        with pytest.raises(InvalidInput, match="health_timeout must be"):
            rt.add_agent("svc", functools.partial(Checked, Resource()), health_timeout=bad)
        with pytest.raises(InvalidInput, match="health_timeout must be"):  # (checks off)
            rt.add_agent("svc", Checked, health_interval=None, health_timeout=bad)


def test_an_async_health_check_runs_like_the_asyncio_hosts_actions(
    tmp_path: Path, clock: FakeClock
) -> None:
    resource = Resource()
    resource.well = ConnectionError("async down")

    class Async(Agent):
        async def call(self, ctx: StepContext) -> str:
            return "ok"

        async def health(self) -> None:
            resource.health()

    with Runtime(tmp_path / "s", clock=clock, sweep_interval=0.05) as rt:
        rt.add_agent("svc", Async, health_interval=10.0)
        rt.add_workflow(ONE)
        check(rt, clock, 1, 0.0)
        assert health(rt)["healthy"] is False
        assert "async down" in health(rt)["health_error"]
        resource.well = None
        check(rt, clock, 2)
        assert health(rt)["healthy"] is True
        rt.start("one", workflow_id="w1")
        assert rt.handle("w1").result(timeout=WAIT) == {"call": "ok"}


def test_an_async_health_check_past_its_timeout_is_cancelled_and_the_next_one_runs(
    tmp_path: Path, clock: FakeClock
) -> None:
    # A coroutine, unlike a thread, can be cut: left to run, one check awaiting a peer
    # that never answers held every later check of its agent (none starts while one
    # runs), so the agent stayed unhealthy, its work held, for as long as it hung.
    cut = threading.Event()
    checks = []

    class Async(Agent):
        async def call(self, ctx: StepContext) -> str:
            return "ok"

        async def health(self) -> None:
            checks.append(1)
            if len(checks) == 1:
                try:
                    await asyncio.Event().wait()  # a read the peer never answers
                except asyncio.CancelledError:
                    cut.set()
                    raise

    with Runtime(tmp_path / "s", clock=clock, sweep_interval=0.05) as rt:
        rt.add_agent("svc", Async, health_interval=10.0, health_timeout=2.0)
        rt.add_workflow(ONE)
        advance(rt, clock, 0.0)  # the check starts and hangs
        check(rt, clock, 1, 2.0)  # the sweep after its timeout fails it
        assert health(rt)["healthy"] is False
        assert cut.wait(WAIT), "the hung check was left running"
        assert rt._ctx.health.settle(WAIT)
        check(rt, clock, 2, 10.0)
        assert (health(rt)["healthy"], health(rt)["health_failures"]) == (True, 1)
        rt.start("one", workflow_id="w1")
        assert rt.handle("w1").result(timeout=WAIT) == {"call": "ok"}


def test_an_async_health_check_leaves_plain_def_actions_on_threads(
    tmp_path: Path, clock: FakeClock
) -> None:
    # `health` is no action: an `async def health` moved an agent whose actions are all
    # plain `def` onto the event loop, where two blocking actions could not run at once
    # (each stalled the loop), and `asyncio=False` refused it as "an async def".
    both = threading.Barrier(2, timeout=5.0)
    resource = Resource()

    class Blocking(Agent):
        def call(self, ctx: StepContext) -> str:
            both.wait()  # blocks until the other attempt runs too: threads only
            return "ok"

        async def health(self) -> None:
            resource.health()

    with Runtime(tmp_path / "s", clock=clock, sweep_interval=0.05) as rt:
        rt.add_agent("svc", Blocking, concurrency=2, health_interval=10.0, asyncio=False)
        rt.add_agent("svc", Blocking, concurrency=2, health_interval=10.0)
        rt.add_workflow(ONE)
        check(rt, clock, 1, 0.0)  # the async check still runs, on its own thread
        assert health(rt)["healthy"] is True
        handles = [rt.start("one", workflow_id=f"w{i}") for i in range(2)]
        assert [h.result(timeout=WAIT) for h in handles] == [{"call": "ok"}] * 2


def test_adding_an_agent_again_while_its_check_hangs_counts_that_check_once(
    tmp_path: Path, clock: FakeClock
) -> None:
    """add_agent again forgot that the hung check had already timed out: the sweep timed
    it out a second time, one more failed check in the counters (and the metric)."""
    resource = Resource()
    resource.hang = True
    with runtime(tmp_path / "s", clock, resource, health_timeout=2.0) as rt:
        advance(rt, clock, 0.0)  # the check starts and hangs
        check(rt, clock, 1, 2.0)  # the sweep after its timeout fails it
        factory = functools.partial(Checked, resource)
        rt.add_agent("svc", factory, health_interval=10.0, health_timeout=2.0)
        advance(rt, clock, 3.0)
        settle(rt)
        assert (health(rt)["health_checks"], health(rt)["health_failures"]) == (1, 1)
        assert health(rt)["healthy"] is False  # (re-registering heals nothing)
        resource.hang = False
        resource.release.set()
        assert rt._ctx.health.settle(WAIT)
        check(rt, clock, 2, 10.0)
        assert (health(rt)["healthy"], health(rt)["health_failures"]) == (True, 1)


def test_an_agent_removed_and_added_again_keeps_its_health_verdict(
    tmp_path: Path, clock: FakeClock
) -> None:
    """remove_agent + add_agent forgot that the agent's last check failed: it took work
    again until its next check, as if re-registering had healed it (the breaker's state
    and the rate limit's bucket are kept across remove and add)."""
    resource = Resource()
    resource.well = ConnectionError("db down")
    with runtime(tmp_path / "s", clock, resource) as rt:
        check(rt, clock, 1, 0.0)
        assert health(rt)["healthy"] is False
        rt.remove_agent("svc")
        rt.add_agent("svc", functools.partial(Checked, resource), health_interval=10.0)
        rt.start("one", workflow_id="w1")
        settle(rt)
        assert resource.calls == 0
        assert (health(rt)["healthy"], health(rt)["health_failures"]) == (False, 1)
        assert "db down" in health(rt)["health_error"]
        resource.well = None
        check(rt, clock, 2)
        assert rt.handle("w1").result(timeout=WAIT) == {"call": "ok"}
        assert health(rt)["healthy"] is True


def test_an_agent_added_again_without_health_checks_forgets_its_verdict(
    tmp_path: Path, clock: FakeClock
) -> None:
    resource = Resource()
    resource.well = ConnectionError("db down")
    with runtime(tmp_path / "s", clock, resource) as rt:
        check(rt, clock, 1, 0.0)
        rt.remove_agent("svc")
        rt.add_agent("svc", functools.partial(Checked, resource), health_interval=None)
        rt.remove_agent("svc")
        rt.add_agent("svc", functools.partial(Checked, resource), health_interval=10.0)
        rt.start("one", workflow_id="w1")
        assert rt.handle("w1").result(timeout=WAIT) == {"call": "ok"}


def test_a_check_thread_past_its_timeout_counts_as_abandoned_until_it_returns(
    tmp_path: Path, clock: FakeClock
) -> None:
    """A hung check (in health(), or in the factory building its instance) leaves a
    thread running, as a hung action does; stats() counted only the hosts' threads."""
    resource = Resource()
    resource.hang = True
    with runtime(tmp_path / "s", clock, resource, health_timeout=2.0) as rt:
        advance(rt, clock, 0.0)  # the check starts and hangs
        check(rt, clock, 1, 2.0)  # the sweep after its timeout fails it
        assert rt.stats()["host"]["abandoned_threads"] == 1
        resource.release.set()
        assert rt._ctx.health.settle(WAIT)
        assert rt.stats()["host"]["abandoned_threads"] == 0


class _Echo(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        for line in self.rfile:  # one keep-alive connection: a line back for each line
            self.wfile.write(line)


def test_an_async_health_check_keeps_its_instances_connections(
    tmp_path: Path, clock: FakeClock
) -> None:
    """Each check ran its coroutine with asyncio.run, on a fresh event loop: a client the
    check instance held (its keep-alive connection, the one client per agent of the
    asyncio host) belonged to the loop of the check before, and failed ('attached to a
    different loop'). The agent went unhealthy every other check, holding its work
    (the failure built a new instance, which passed once)."""
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    connections = []

    class Connected(Agent):
        def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.reader, self.writer = reader, writer

        async def call(self, ctx: StepContext) -> str:
            return "ok"

        async def health(self) -> None:
            self.writer.write(b"ping\n")
            await self.writer.drain()
            if await self.reader.readline() != b"ping\n":
                raise ConnectionError("no answer")

        async def close(self) -> None:
            self.writer.close()
            await self.writer.wait_closed()

    async def connect() -> Connected:
        connections.append(1)
        return Connected(*await asyncio.open_connection(*server.server_address[:2]))

    try:
        with Runtime(tmp_path / "s", clock=clock, sweep_interval=0.05) as rt:
            rt.add_agent("svc", connect, asyncio=True, health_interval=10.0)
            for n in range(1, 5):
                check(rt, clock, n, 0.0 if n == 1 else 10.0)
                assert health(rt)["healthy"], health(rt)["health_error"]
            assert health(rt)["health_failures"] == 0
            assert len(connections) == 1  # one instance, one connection, for every check
            checker = rt._ctx.health._watches["svc"].instance  # (its connection closed)
            assert checker is not None
            assert checker.loop is not None
            checker.loop.run_until_complete(checker.obj.close())  # type: ignore[attr-defined]
    finally:
        server.shutdown()
        server.server_close()


def test_the_checks_of_thousands_of_agents_run_a_bounded_number_at_once(
    tmp_path: Path, clock: FakeClock
) -> None:
    # With 10,000 agents (one per device) one sweep started 10,000 check threads; starting
    # them outlasted the checks' timeout, so thousands of agents were held as unhealthy
    # ("health check timed out after 5s") although every check passed.
    lock, gate = threading.Lock(), threading.Event()
    running, peak = [0], [0]

    class Device(Agent):
        def call(self, ctx: StepContext) -> None: ...

        def health(self) -> None:
            with lock:
                running[0] += 1
                peak[0] = max(peak[0], running[0])
            assert gate.wait(WAIT)
            with lock:
                running[0] -= 1

    names = [f"device:{i}" for i in range(3 * MAX_CHECKS)]
    with Runtime(tmp_path / "s", clock=clock, sweep_interval=0.05) as rt:
        for name in names:
            rt.add_agent(name, Device)
        rt._ctx.health.on_sweep()  # every check is due: the sweep starts what it may
        started = [t for t in threading.enumerate() if t.name.startswith("herder-health-")]
        assert len(started) <= MAX_CHECKS
        gate.set()  # the others start as checks end, without waiting for a sweep
        assert all(rt._ctx.health.checked(name, 1, WAIT) for name in names)
        assert peak[0] <= MAX_CHECKS
        assert all(rt.stats()["resources"][name]["healthy"] for name in names)
