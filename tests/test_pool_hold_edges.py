"""Holding quick attempts at its edges (found by review): a slow attempt behind a held
quick one, a quick action that blocks with nothing else answering (the real-time line
check), an agent whose quick action hung, a slot whose worker died before its attempt
was told. The stand-in Scheduler of test_pool_host drives the host directly where it
can; a FakeClock runtime checks the promise end to end."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_pool_hold import Gated, _quick, make_steady, one_turn
from test_pool_host import WAIT, Line, Scheduler, _host, _Port, _send

from herder.actors import Agent, FakeClock, StepContext, _pool_agents
from herder.actors._messages import Run
from herder.actors._pool_host import PoolHost
from herder.runtime import Runtime, Workflow


@pytest.fixture
def linger(monkeypatch: pytest.MonkeyPatch) -> None:
    """Held work waits for its busy worker however slow the machine, and quick agents
    stay quick (test_pool_hold.make_steady)."""
    make_steady(monkeypatch)


def _started(workers: int) -> Iterator[Scheduler]:
    """A pool capped at ``workers``, each started and free; agents a, s, b.. (Line)."""
    Line.ran, Line.entered, Line.gate = [], threading.Semaphore(0), threading.Event()
    scheduler = _host("pool", FakeClock(), max_workers=workers, min_workers=workers)
    names = "asbcdefg"[:workers]
    for name in names:
        scheduler.host.add(name, Line, 1)
    for name in names:
        scheduler.start(name, "hold")
    Line.gate.set()
    for _ in names:
        scheduler.outcome()
    assert scheduler.host.host_stats()["workers"] == workers
    Line.ran, Line.gate = [], threading.Event()
    yield scheduler
    Line.gate.set()
    for gate in Gated.gates.values():
        gate.set()


@pytest.fixture
def two(linger: None) -> Iterator[Scheduler]:
    yield from _started(2)


@pytest.fixture
def four(linger: None) -> Iterator[Scheduler]:
    yield from _started(4)


def test_a_slow_attempt_behind_a_held_quick_one_does_not_wait_with_a_worker_free(
    two: Scheduler,
) -> None:
    """A slow attempt that joined the line when no worker was free (after a held quick
    one) stayed there when a worker freed: _wake stopped at the line's first work if that
    one was held (WorkerPool.held looks at line[0] only), so the slow one waited for the
    quick worker (here hung), or the next tick (5 s), with a worker idle. A worker that
    frees now takes the line in its order, held or not."""
    Gated.gates = {token: threading.Event() for token in (101, 103)}
    two.host.add("q", Gated, 1)
    two.host.add("z", Gated, 1)
    _quick(two, "q", "a")
    with one_turn():
        _send(two, "q", "wait", 101)  # a quick action that blocks: it holds worker 1
        _send(two, "a", "ok", 102)  # quick: held for q's worker although worker 2 is free
    assert Gated.entered.acquire(timeout=WAIT)
    _send(two, "z", "wait", 103)  # (slow, unknown) takes worker 2
    assert Gated.entered.acquire(timeout=WAIT)
    _send(two, "s", "ok", 104)  # slow: no worker free, it joins the line after a's
    assert two.host.host_stats()["line"] == 2
    two.host.remove("z")  # (z's worker takes nothing from the line after its attempt)
    Gated.gates[103].set()
    assert two.outcome().token == 103  # worker 2 is free again: it takes the line
    assert {two.outcome().token for _ in range(2)} == {102, 104}  # while q's still hangs


class Quick(Agent):
    """``go`` returns at once; ``block`` waits for :attr:`gate`."""

    entered = threading.Event()
    gate = threading.Event()

    def go(self, ctx: StepContext) -> Any:
        return ctx.input

    def block(self, ctx: StepContext) -> str:
        Quick.entered.set()
        Quick.gate.wait(6 * WAIT)  # (past any wait of the test: the test lets it go)
        return "late"


@pytest.fixture
def quick_threshold(monkeypatch: pytest.MonkeyPatch) -> None:
    """Quick is under 10 ms here, not 0.2 ms: a few warm-up actions make an agent quick
    however loaded the shared machine (what counts is that it is quick, not why)."""
    monkeypatch.setattr(_pool_agents, "QUICK", 0.01)


def test_work_held_behind_a_quick_action_that_blocks_runs_at_the_line_check(
    tmp_path: Path, quick_threshold: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A quick attempt held for a busy worker whose quick action blocks, with nothing
    else answering, goes to a free worker at the line check (CHECK, real time). It used
    to wait for the next Tick (tick_every, 5 s on the runtime's clock), so a FakeClock
    runtime advanced by less never ran it."""
    Quick.entered, Quick.gate = threading.Event(), threading.Event()
    clock = FakeClock()
    with Runtime(tmp_path / "s", clock=clock, prefetch=0, sweep_interval=0.25) as rt:
        try:
            for name in ("q", "r"):
                rt.add_agent(name, Quick, concurrency=1)
            warm = Workflow("warm")
            for i in range(20):  # each agent's recorded action time decays under QUICK
                warm = warm.step(f"q{i}", agent="q", action="go").step(
                    f"r{i}", agent="r", action="go"
                )
            rt.add_workflow(warm)
            rt.add_workflow(Workflow("hang").step("s", agent="q", action="block"))
            rt.add_workflow(Workflow("short").step("s", agent="r", action="go"))
            rt.start("warm", {}, workflow_id="warm").result(timeout=WAIT)
            rt.start("hang", {}, workflow_id="hang")
            assert Quick.entered.wait(WAIT)  # q's quick action blocks its worker
            # Noted as the host holds it: the line check runs it 10 ms later with no
            # commit in between, so a wait_until on stats' "line" could miss it (it did,
            # under load).
            held_now, acquire = threading.Event(), PoolHost.acquire

            def acquire_noting(host: PoolHost, name: str, token: int, backlog: int = 1) -> Any:
                before = host._unstarted
                out = acquire(host, name, token, backlog)
                if name == "r" and host._unstarted > before:
                    held_now.set()
                return out

            monkeypatch.setattr(PoolHost, "acquire", acquire_noting)
            held = rt.start("short", 7, workflow_id="short")
            assert held_now.wait(WAIT)  # held in the line, with a worker free
            assert held.result(timeout=WAIT) == {"s": 7}  # (the clock never moved)
        finally:
            Quick.gate.set()


def test_a_slot_whose_worker_died_before_its_attempt_was_told_serves_again(
    linger: None,
) -> None:
    """PoolHost.send: a worker that died just now (its exit's news on its way: the pool
    supervisor gave up, say) refuses the attempt; "the slot is free (the Scheduler fails
    the attempt)". The slot is left with no attempt but neither idle-listed nor dropped:
    it still counts against the agent's concurrency, and one never released before is
    never passivated either. The Scheduler releases nothing after a failed send
    (AttemptLost), so an agent of concurrency 1 never runs again."""
    Line.ran, Line.entered, Line.gate = [], threading.Semaphore(0), threading.Event()
    scheduler = _host("pool", FakeClock(), max_workers=2, min_workers=2)
    scheduler.host.add("a", Line, 1)
    scheduler.host.add("c", Line, 1)
    scheduler.start("a", "ok")  # the pool's workers are started
    scheduler.outcome()
    pool = scheduler.host._pool
    worker_id = list(pool._free)[-1]  # the worker acquire takes next
    doomed = pool._workers[worker_id].ref
    assert doomed is not None
    doomed.stop()  # dead; the host has not heard yet
    instance = scheduler.host.acquire("c", 50)
    assert instance is not None
    ctx = StepContext("w", "s", "ok", 1, None, {}, "w/s", 50, False, _Port())
    assert not scheduler.host.send("c", instance, Run("c", instance, "ok", 50, ctx))
    while not any(e.instance == worker_id for e in scheduler.events):
        scheduler.handle_one()  # the news of its exit
    scheduler.drain()
    assert scheduler.host.stats()["c"] == {"instances": 0, "busy": 0, "queued": 0}  # (gone)
    scheduler.host.passivate(idle_before=float("inf"))  # (a tick: nothing of c is idle)
    assert scheduler.host.acquire("c", 51) is not None, "c's only slot is lost for good"


def test_an_agent_whose_quick_action_hung_past_its_timeout_is_quick_no_more(
    four: Scheduler,
) -> None:
    """Quick is measured when an action returns: one that hangs until it is replaced
    (its timeout) is never measured, so its agent stays quick. Each of its next attempts
    then holds the quick attempts sent while it runs, and when it hangs as the last did
    (the resource is down), holds them until the next tick (5 s) or its own timeout."""
    Gated.gates = {token: threading.Event() for token in (101, 103)}
    four.host.add("q", Gated, 1)
    _quick(four, "q", "a")
    _send(four, "q", "wait", 101)
    assert Gated.entered.acquire(timeout=WAIT)
    four.host.replace_token("q", 101)  # it timed out: its worker is abandoned
    assert four.host.host_stats()["abandoned_threads"] == 1
    with one_turn():
        _send(four, "q", "wait", 103)  # its retry, on a worker still free
        _send(four, "a", "ok", 102)
        line = four.host.host_stats()["line"]
    assert line == 0, "a's attempt is held behind an agent that just hung"
