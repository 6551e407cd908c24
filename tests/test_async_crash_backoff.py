"""The asyncio host backs off after an instance crash, as the pool host does: the attempt
that raised ``InstanceCrash`` is lost and its slot waits out :data:`INSTANCE_BACKOFF`
(growing with the agent's crashes within the restart period) before it serves again, so
under ``concurrency=1`` the object is built again only then. The slot was free at once,
so an agent whose object kept breaking spent every retry of every step within
milliseconds. The test thread plays the Scheduler, on a FakeClock, as in
test_pool_host."""

from __future__ import annotations

import queue
from collections.abc import Iterator
from typing import Any

import pytest

from herder.actors import AsyncHost, EventLoop, FakeClock, InstanceCrash, InstanceEvent
from herder.actors._messages import Outcome, Run
from herder.actors._supervision_specs import ChildEventKind
from herder.runtime import Agent, StepContext

WAIT = 10.0


class Port:
    cancelled = superseded = False

    def heartbeat(self, details: Any) -> None:
        pass


class Flaky(Agent):
    built = 0

    def __init__(self) -> None:
        Flaky.built += 1

    async def ok(self, ctx: StepContext) -> str:
        return "ok"

    async def crash(self, ctx: StepContext) -> None:
        raise InstanceCrash("client broke")


class Driver:
    """The Scheduler's part: acquire, send, hear back."""

    def __init__(self, clock: FakeClock, **options: Any) -> None:
        self.loop = EventLoop()
        self.inbox: queue.Queue[Any] = queue.Queue()
        self.host = AsyncHost(
            self.loop, self.inbox.put, self.inbox.put, max_result_bytes=1024, clock=clock, **options
        )
        self.tokens = iter(range(1, 1000))

    def send(self, action: str) -> int:
        token = next(self.tokens)
        instance = self.host.acquire("flaky", token)
        assert instance is not None
        ctx = StepContext("w", "s", action, 1, None, {}, "w/s", token, False, Port())
        assert self.host.send("flaky", instance, Run("flaky", instance, action, token, ctx))
        return token

    def hear(self) -> Any:
        msg = self.inbox.get(timeout=WAIT)
        if isinstance(msg, InstanceEvent):
            return self.host.on_event(msg, 0.0)
        assert isinstance(msg, Outcome)
        self.host.release("flaky", msg.instance, msg.token, 0.0)
        return msg

    def crash(self) -> None:
        token = self.send("crash")
        assert self.hear() == [token]

    def restart(self) -> None:
        """Hear the slot's backoff end."""
        msg = self.inbox.get(timeout=WAIT)
        assert isinstance(msg, InstanceEvent)
        assert msg.kind is ChildEventKind.RESTARTED
        assert self.host.on_event(msg, 0.0) == []


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def driver(clock: FakeClock) -> Iterator[Driver]:
    Flaky.built = 0
    driver = Driver(clock, max_restarts=2)
    driver.host.add("flaky", Flaky, 1)
    yield driver
    driver.loop.close()


def test_a_crashed_attempt_holds_its_slot_for_the_backoff(driver: Driver, clock: FakeClock) -> None:
    driver.crash()
    assert driver.host.acquire("flaky", 99) is None  # its only slot waits out its backoff
    assert driver.host.stats()["flaky"] == {"instances": 1, "busy": 0, "queued": 0}
    assert driver.inbox.empty()
    clock.advance(0.001)  # the first crash's backoff
    driver.restart()
    token = driver.send("ok")
    assert driver.hear().token == token
    assert Flaky.built == 2  # built again once the backoff was over


def test_the_backoff_grows_with_the_crashes_in_the_restart_period(
    driver: Driver, clock: FakeClock
) -> None:
    driver.crash()
    clock.advance(0.001)
    driver.restart()
    driver.crash()  # the second within 10 s: 2 ms
    clock.advance(0.001)
    assert driver.host.acquire("flaky", 99) is None
    clock.advance(0.001)
    driver.restart()
    token = driver.send("ok")
    assert driver.hear().token == token


def test_past_max_restarts_the_count_starts_afresh(driver: Driver, clock: FakeClock) -> None:
    for _ in range(2):
        driver.crash()
        clock.advance(1.0)
        driver.restart()
    driver.crash()  # the third within 10 s, past max_restarts=2: no backoff, afresh
    token = driver.send("ok")
    assert driver.hear().token == token
    driver.crash()  # the first of a new count: 1 ms
    assert driver.host.acquire("flaky", 99) is None
    clock.advance(0.001)
    driver.restart()
