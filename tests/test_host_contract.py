"""The AgentHost contract, run against every host: the test thread plays the Scheduler.

A host is driven from one thread (acquire, send, release, replace, on_event) and answers
by messages (Outcome, InstanceEvent) that the Scheduler would receive; here they land in
a queue the test reads.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from herder.actors import (
    Agent,
    AgentHost,
    AgentUnavailable,
    AsyncHost,
    EventLoop,
    InstanceCrash,
    InstanceEvent,
    Permanent,
    PoolHost,
    ProbeResult,
    StepContext,
    Strategy,
    SystemClock,
    ThreadHost,
    agents_listener,
    start_supervisor,
)
from herder.actors._host import moved_on
from herder.actors._messages import Outcome, Run
from herder.actors.engine import UNSTORABLE_ERROR
from herder.runtime import InvalidInput, Runtime, Workflow
from herder.runtime.testing import simulate

WAIT = 10.0
HostFactory = Callable[..., AgentHost]
HOSTS: dict[str, HostFactory] = {"thread": ThreadHost, "pool": PoolHost, "asyncio": AsyncHost}


class Port:
    cancelled = False
    superseded = False

    def heartbeat(self, details: Any) -> None:
        pass


class Worker(Agent):
    release = threading.Event()

    def ok(self, ctx: StepContext) -> Any:
        return ctx.input

    def boom(self, ctx: StepContext) -> None:
        raise ValueError(f"no {ctx.input}")

    def refuse(self, ctx: StepContext) -> None:
        raise Permanent("never")

    def exit(self, ctx: StepContext) -> None:
        raise SystemExit(3)

    def later(self, ctx: StepContext) -> Any:
        return ctx.complete_later()

    def probe_ok(self, ctx: StepContext) -> ProbeResult:
        return ProbeResult.done({"found": True})

    def crash(self, ctx: StepContext) -> None:
        raise InstanceCrash("client broke")

    def hang(self, ctx: StepContext) -> str:
        Worker.release.wait(WAIT)
        return "late"


class AsyncWorker(Agent):
    """:class:`Worker`'s actions as ``async def``, for the asyncio host (whose loop a
    blocking action would stall)."""

    cancelled = threading.Event()
    hanging = threading.Event()

    async def ok(self, ctx: StepContext) -> Any:
        await asyncio.sleep(0)  # (a yield to the loop, as an awaiting action makes: no wait)
        return ctx.input

    async def boom(self, ctx: StepContext) -> None:
        raise ValueError(f"no {ctx.input}")

    async def refuse(self, ctx: StepContext) -> None:
        raise Permanent("never")

    async def exit(self, ctx: StepContext) -> None:
        raise SystemExit(3)

    async def later(self, ctx: StepContext) -> Any:
        return ctx.complete_later()

    async def probe_ok(self, ctx: StepContext) -> ProbeResult:
        return ProbeResult.done({"found": True})

    async def crash(self, ctx: StepContext) -> None:
        raise InstanceCrash("client broke")

    async def hang(self, ctx: StepContext) -> str:
        AsyncWorker.hanging.set()
        try:
            await asyncio.to_thread(Worker.release.wait, WAIT)
        except asyncio.CancelledError:
            AsyncWorker.cancelled.set()
            raise
        return "late"


def broken_factory() -> Agent:
    raise RuntimeError("cannot connect")


@dataclass
class Driver:
    """The test's stand-in for the Scheduler."""

    host: AgentHost
    inbox: queue.Queue[Any]
    worker: type[Agent]
    lost: list[int] = field(default_factory=list)
    tokens: Iterator[int] = field(default_factory=lambda: iter(range(1, 1_000_000)))
    answers: list[Outcome] = field(default_factory=list)  # heard while waiting for a start

    def _handle(self, msg: Any) -> Outcome | None:
        if isinstance(msg, InstanceEvent):
            self.lost += self.host.on_event(msg, 0.0)
            return None
        assert isinstance(msg, Outcome), msg
        return msg

    def acquire(self, agent: str, token: int) -> str:
        while (instance := self.host.acquire(agent, token)) is None:
            answer = self._handle(self.inbox.get(timeout=WAIT))  # (a slot frees: an event)
            if answer is not None:
                self.answers.append(answer)
        return instance

    def send(self, agent: str, action: str, value: Any = None) -> tuple[str, int]:
        token = next(self.tokens)
        instance = self.acquire(agent, token)
        ctx = StepContext("w", "s", action, 1, value, {}, "w/s", token, False, Port())
        assert self.host.send(agent, instance, Run(agent, instance, action, token, ctx))
        # The pool host's first attempts wait in its line for the workers it starts.
        while self.host.host_stats().get("line"):
            answer = self._handle(self.inbox.get(timeout=WAIT))
            if answer is not None:
                self.answers.append(answer)
        return instance, token

    def outcome(self) -> Outcome:
        found = self.answers.pop(0) if self.answers else None
        while found is None:
            found = self._handle(self.inbox.get(timeout=WAIT))
        if not found.next_token or not moved_on(
            self.host, found.agent, found.instance, found.token, found.next_token
        ):
            self.host.release(found.agent, found.instance, found.token, 0.0)
        return found

    def run(self, agent: str, action: str, value: Any = None) -> Outcome:
        _, token = self.send(agent, action, value)
        outcome = self.outcome()
        assert outcome.token == token
        return outcome


@pytest.fixture(params=sorted(HOSTS))
def driver(request: pytest.FixtureRequest) -> Iterator[Driver]:
    Worker.release = threading.Event()
    AsyncWorker.cancelled = threading.Event()
    inbox: queue.Queue[Any] = queue.Queue()
    if request.param == "asyncio":
        loop = EventLoop()
        host: AgentHost = AsyncHost(loop, inbox.put, inbox.put, max_result_bytes=1024)
        host.add("worker", AsyncWorker, 2)
        yield Driver(host, inbox, AsyncWorker)
        Worker.release.set()
        loop.close()
        return
    agents = start_supervisor(
        "agents", Strategy.ONE_FOR_ONE, listener=agents_listener(inbox.put), clock=SystemClock()
    )
    host = HOSTS[request.param](
        agents, reply=inbox.put, events=inbox.put, max_result_bytes=1024, shutdown=0.1
    )
    host.add("worker", Worker, 2)
    yield Driver(host, inbox, Worker)


def test_a_result_comes_back_as_plain_data(driver: Driver) -> None:
    outcome = driver.run("worker", "ok", (1, "a"))
    assert outcome.ok
    assert outcome.result == [1, "a"]
    assert outcome.kind == ""


def test_errors_are_described_and_permanent_ones_marked(driver: Driver) -> None:
    failed = driver.run("worker", "boom", 7)
    assert not failed.ok
    assert not failed.permanent
    assert failed.error == "ValueError: no 7"
    assert "builtins.ValueError" in failed.error_types
    assert driver.run("worker", "refuse").permanent
    assert driver.run("worker", "missing").permanent
    too_big = driver.run("worker", "ok", "x" * 2000)
    assert not too_big.permanent  # the action ran: its step is undone, though not retried
    assert too_big.error_types[0] == UNSTORABLE_ERROR
    assert "EncodeError" in (too_big.error or "")


def test_a_base_exception_from_an_action_is_contained(driver: Driver) -> None:
    exited = driver.run("worker", "exit")
    assert not exited.ok
    assert exited.error == "SystemExit: 3"
    assert driver.run("worker", "ok", 1).result == 1  # the host still runs attempts


def test_hand_offs_and_probe_verdicts_are_reported_as_kinds(driver: Driver) -> None:
    assert driver.run("worker", "later").kind == "later"
    probed = driver.run("worker", "probe_ok")
    assert probed.kind == "done"
    assert probed.result == {"found": True}


def test_a_crashed_instance_loses_its_attempt_and_is_replaced(
    driver: Driver, caplog: pytest.LogCaptureFixture
) -> None:
    _, token = driver.send("worker", "crash")
    while token not in driver.lost:
        driver._handle(driver.inbox.get(timeout=WAIT))
    assert driver.run("worker", "ok", 2).result == 2
    assert _pykka_errors(caplog) == []  # the Scheduler reports the lost attempt, once


def _pykka_errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    """pykka's "Unhandled exception" tracebacks: on the thread host they came on top of
    the Scheduler's report of the attempt, showing herder's frames."""
    return [r.getMessage() for r in caplog.records if r.name == "pykka" and r.levelname == "ERROR"]


def test_a_hung_attempt_is_replaced_by_its_token_and_its_late_answer_is_fenced(
    driver: Driver,
) -> None:
    driver.host.add("solo", driver.worker, 1)
    instance, hung = driver.send("solo", "hang")
    assert driver.host.busy_tokens("solo") == [hung]
    if driver.worker is AsyncWorker:  # (cancelled before it ran, it would never answer)
        assert AsyncWorker.hanging.wait(WAIT)
    driver.host.replace_token("solo", hung)
    assert driver.host.busy_tokens("solo") == []
    if driver.worker is AsyncWorker:  # a task is cancelled, where a thread is abandoned
        # (its slot serves again once the task has ended: the driver waits for that)
        _, fresh_token = driver.send("solo", "ok", 3)
        outcomes = {o.token: o for o in (driver.outcome(), driver.outcome())}
        assert outcomes[fresh_token].result == 3
        late = outcomes[hung]
        assert AsyncWorker.cancelled.is_set()  # the action saw CancelledError
        assert late.error is not None
        assert late.error.startswith("CancelledError")
    else:
        fresh = driver.run("solo", "ok", 3)  # on a fresh instance: the hung one still blocks
        assert fresh.result == 3
        Worker.release.set()
        late = driver.outcome()
        assert late.token == hung
        assert late.result == "late"
    assert not driver.host.release("solo", instance, hung, 0.0)  # frees nothing


def test_no_more_instances_than_the_concurrency_run_at_once(driver: Driver) -> None:
    first = driver.send("worker", "hang")
    second = driver.send("worker", "hang")
    assert first[0] != second[0]
    assert driver.host.acquire("worker", 99) is None
    assert driver.host.stats()["worker"]["instances"] == 2
    Worker.release.set()
    assert {driver.outcome().token, driver.outcome().token} == {first[1], second[1]}


def test_an_agent_whose_factory_fails_is_unavailable_or_loses_the_attempt(
    driver: Driver, caplog: pytest.LogCaptureFixture
) -> None:
    """A host builds agent objects before an attempt (AgentUnavailable, nothing charged)
    or with it (the attempt fails as a failed start does, or is lost, as in a crash);
    either way the host serves on."""
    driver.host.add("broken", broken_factory, 1)
    refused = ""
    try:
        _, token = driver.send("broken", "ok")
    except AgentUnavailable as exc:
        refused = str(exc)
    if refused:
        assert "cannot connect" in refused
    else:
        while token not in driver.lost:
            answer = driver._handle(driver.inbox.get(timeout=WAIT))
            if answer is not None and answer.token == token:  # (failed, on the asyncio host)
                assert not answer.ok, answer
                assert "failed to start" in (answer.error or ""), answer
                assert "cannot connect" in (answer.error or ""), answer
                driver.host.release(answer.agent, answer.instance, token, 0.0)
                break
        assert driver.host.busy_tokens("broken") == []
    assert driver.run("worker", "ok", 4).result == 4
    assert _pykka_errors(caplog) == []


@pytest.mark.slow
def test_the_fault_simulation_holds_on_the_thread_host(tmp_path: Path) -> None:
    for seed in range(30):  # the simulation suite itself runs on the default, the pool
        report = simulate(seed, tmp_path / f"seed-{seed}", agent_host="thread")
        assert report.problems == [], (seed, report.problems)


def test_a_runtime_runs_its_agents_on_the_host_it_is_given(tmp_path: Path) -> None:
    with Runtime(tmp_path / "s", agent_host="pool") as rt:
        rt.add_agent("worker", Worker, concurrency=2)
        rt.add_workflow(Workflow("w").step("s", agent="worker", action="ok"))
        assert rt.start("w", 5).result(timeout=WAIT) == {"s": 5}
        assert rt.stats()["host"]["workers"] >= 1
    with pytest.raises(InvalidInput, match="agent_host"):
        Runtime(tmp_path / "t", agent_host="ray")
