"""An attempt about to start checks that this runtime still holds the lease: a process
paused past its lease (SIGSTOP, a VM suspended) must start nothing it had queued, since a
standby may have taken over and be running those steps (actors/_engine.AttemptPort)."""

from __future__ import annotations

import asyncio
import threading
import time
from types import SimpleNamespace
from typing import Any

import pytest

from herder.actors import FakeClock, StepContext, run_attempt, run_attempt_async
from herder.actors._engine import AttemptPort
from herder.actors._messages import UNSTARTED, Outcome, Run
from herder.store import LeaseLost

pytestmark = pytest.mark.timeout(30)


class Entered(threading.Condition):
    """A condition that says when someone waits on it."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()

    def wait_for(self, predicate: Any, timeout: float | None = None) -> Any:
        self.entered.set()
        return super().wait_for(predicate, timeout)


class Agent:
    def __init__(self) -> None:
        self.calls = 0

    def act(self, ctx: StepContext) -> str:
        self.calls += 1
        return "done"


def attempt(until: float) -> tuple[SimpleNamespace, Run]:
    ctx = SimpleNamespace(
        lost=None, lease_until=until, leased=Entered(), clock=FakeClock(), tell_scheduler=print
    )
    port = AttemptPort(ctx, 7, 1.0)  # type: ignore[arg-type]
    context = StepContext("w", "s", "act", 1, None, {}, "w/s", 7, False, port)
    return ctx, Run("a", "i", "act", 7, context)


def test_an_attempt_starts_while_the_lease_is_held() -> None:
    _, run = attempt(float("inf"))
    agent = Agent()
    assert run_attempt(agent, "a", "i", run, 1024).ok
    assert agent.calls == 1


def test_an_attempt_does_not_start_once_the_lease_is_lost() -> None:
    ctx, run = attempt(time.monotonic() - 1.0)  # paused past the lease
    agent = Agent()
    done: list[Outcome] = []
    worker = threading.Thread(target=lambda: done.append(run_attempt(agent, "a", "i", run, 1024)))
    worker.start()
    assert ctx.leased.entered.wait(10)  # it waits for a renewal, which is refused:
    with ctx.leased:
        ctx.lost = LeaseLost("another runtime took the lease")
        ctx.leased.notify_all()
    worker.join(10)
    [outcome] = done
    assert (outcome.ok, outcome.kind, agent.calls) == (False, UNSTARTED, 0)
    assert "may no longer hold the lease" in str(outcome.error)


def test_an_attempt_waits_for_the_renewal_after_a_pause_then_starts() -> None:
    ctx, run = attempt(time.monotonic() - 1.0)
    agent = Agent()
    done: list[Outcome] = []
    worker = threading.Thread(target=lambda: done.append(run_attempt(agent, "a", "i", run, 1024)))
    worker.start()
    assert ctx.leased.entered.wait(10)
    assert agent.calls == 0
    with ctx.leased:  # the renewal went through: the lease is still ours
        ctx.lease_until = time.monotonic() + 5.0
        ctx.leased.notify_all()
    worker.join(10)
    assert done[0].ok
    assert agent.calls == 1


class AsyncAgent:
    def __init__(self) -> None:
        self.calls = 0

    async def act(self, ctx: StepContext) -> str:
        self.calls += 1
        return "done"


def test_an_async_attempt_waits_for_the_renewal_after_a_pause_then_starts() -> None:
    # The asyncio host answered "not started" at once, before the renewal the thread hosts
    # wait for came: after a pause past the lease, steps of async agents failed (and their
    # workflows compensated) while the runtime still held its lease.
    ctx, run = attempt(time.monotonic() - 1.0)
    agent = AsyncAgent()
    done: list[Outcome] = []

    def on_a_loop() -> None:
        done.append(asyncio.run(run_attempt_async(agent, "a", "i", run, 1024)))

    worker = threading.Thread(target=on_a_loop)
    worker.start()
    assert ctx.leased.entered.wait(10)  # waiting, off the loop, for a renewal
    assert agent.calls == 0
    with ctx.leased:
        ctx.lease_until = time.monotonic() + 5.0
        ctx.leased.notify_all()
    worker.join(10)
    assert done[0].ok
    assert agent.calls == 1
