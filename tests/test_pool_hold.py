"""Holding quick attempts: a quick attempt sent while a worker runs a quick one waits in
the line for that worker instead of waking one of its own, for at most LINGER while the
Scheduler hears from the workers, and until the next tick if none does
(actors/_worker_pool.py).

The test thread plays the Scheduler (test_pool_host's stand-in). A Scheduler's turn holds
the GIL from the first hand-over to the last, so a worker it wakes cannot begin until the
turn is over; the sends here are made under a switch interval long enough that the test
thread keeps the GIL the same way."""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from test_pool_host import WAIT, Line, Scheduler, _host, _Port, _send

from herder.actors import Agent, FakeClock, StepContext, _pool_agents, _worker_pool
from herder.actors._messages import Run
from herder.actors._worker_pool import QUICK_WORKERS


@contextmanager
def one_turn() -> Iterator[None]:
    """No other Python thread runs until the block ends (as in one Scheduler turn)."""
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1000.0)
    try:
        yield
    finally:
        sys.setswitchinterval(interval)


QUICK_HERE = 0.05
"""Quick in these tests: an agent timed quick stays quick on a loaded machine, where an
action preempted midway can take longer than QUICK."""


def make_steady(monkeypatch: pytest.MonkeyPatch) -> None:
    """Held work waits for its busy worker however slow the machine (a test that needs
    the limit sets it), and quick agents stay quick (QUICK_HERE)."""
    monkeypatch.setattr(_worker_pool, "LINGER", 60.0)
    monkeypatch.setattr(_pool_agents, "QUICK", QUICK_HERE)
    # The line check's timer thread, started: its start (on the first hold) waits for
    # the new thread, which gives the GIL away inside a one_turn.
    _worker_pool._TIMERS.call_later(0.0, lambda: None)


@pytest.fixture(autouse=True)
def steady(monkeypatch: pytest.MonkeyPatch) -> None:
    make_steady(monkeypatch)


@pytest.fixture
def warm() -> Iterator[Scheduler]:
    """A pool whose workers are started and free; agents a..f (Line, one instance each)."""
    Line.ran, Line.entered, Line.gate = [], threading.Semaphore(0), threading.Event()
    scheduler = _host("pool", FakeClock(), max_workers=8, min_workers=8)
    names = "abcdef"
    for name in names:
        scheduler.host.add(name, Line, 1)
    for name in names:  # all at once: the pool grows a worker for each
        scheduler.start(name, "hold")
    Line.gate.set()
    for _ in names:
        scheduler.outcome()
    assert scheduler.host.host_stats()["workers"] >= len(names)
    Line.ran, Line.gate = [], threading.Event()
    yield scheduler
    Line.gate.set()


def _quick(scheduler: Scheduler, *names: str, took: float = 0.0) -> None:
    for name in names:
        scheduler.host._agents[name].took = took


def _answers(scheduler: Scheduler, tokens: set[int]) -> list[int]:
    """Handle messages until each of ``tokens`` answered; the tokens that answered with
    a ``next_token`` (their worker went on with another attempt)."""
    went_on = []
    while tokens:
        outcome = scheduler.outcome()
        tokens.discard(outcome.token)
        if outcome.next_token:
            went_on.append(outcome.token)
    return went_on


def test_quick_attempts_sent_while_a_quick_one_runs_wait_for_its_worker(
    warm: Scheduler,
) -> None:
    assert QUICK_WORKERS == 1  # (the counts below)
    _quick(warm, "a", "b", "c")
    fed = warm.host.host_stats()["fed_from_line"]
    with one_turn():
        for token, name in zip((101, 102, 103), "abc", strict=True):
            _send(warm, name, "ok", token)
        stats = warm.host.host_stats()
    assert (stats["busy_workers"], stats["line"]) == (1, 2)  # one worker woken, not three
    assert _answers(warm, {101, 102, 103}) == [101, 102]  # it ran the lined ones after
    stats = warm.host.host_stats()
    assert (stats["busy_workers"], stats["line"]) == (0, 0)
    assert stats["fed_from_line"] == fed + 2
    assert [token for _, token in Line.ran[-3:]] == [101, 102, 103]
    for name in "abc":  # each slot is free again
        assert warm.host.busy_tokens(name) == []


class Gated(Agent):
    """``wait`` blocks until the test sets the event of its token."""

    gates: dict[int, threading.Event] = {}
    entered = threading.Semaphore(0)

    def wait(self, ctx: StepContext) -> str:
        Gated.entered.release()
        Gated.gates[ctx.token].wait(WAIT)
        return "done"


def test_work_held_past_linger_goes_to_a_free_worker_when_a_worker_moves_on(
    warm: Scheduler, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A busy worker feeds itself its own agent's ready attempts before it looks at the
    line, and a quick action may hang after all: work held in the line past LINGER goes
    to a free worker the next time the Scheduler hears that a worker went on."""
    Gated.gates = {token: threading.Event() for token in (101, 103)}
    warm.host.add("q", Gated, 1)
    _quick(warm, "q", "b")
    with one_turn():
        _send(warm, "q", "wait", 101)
        _send(warm, "b", "ok", 102)
    assert Gated.entered.acquire(timeout=WAIT)  # q's action holds its worker
    assert warm.host.host_stats()["line"] == 1  # b's is held for it
    ctx = StepContext("w", "s", "wait", 1, None, {}, "w/s", 103, False, _Port())
    warm.host.ready_queue("q").append(Run("q", "", "wait", 103, ctx))
    monkeypatch.setattr(_worker_pool, "LINGER", 0.0)
    Gated.gates[101].set()  # q's worker goes on with 103, which holds it too
    first = warm.outcome()
    assert (first.token, first.next_token) == (101, 103)
    assert warm.outcome().token == 102  # handed to a free worker while 103 holds
    Gated.gates[103].set()
    assert warm.outcome().token == 103


@pytest.mark.parametrize("took", [QUICK_HERE, 1.0], ids=["slow", "unknown"])
def test_a_slow_agents_attempts_each_wake_a_worker(warm: Scheduler, took: float) -> None:
    """Its actions may block (I/O): none waits behind another attempt, nor does another
    wait behind one of its own."""
    _quick(warm, "a", "b", "c")
    _quick(warm, "b", took=took)
    with one_turn():
        for token, name in zip((101, 102, 103), "bac", strict=True):
            _send(warm, name, "ok", token)  # b's is not quick: a's takes a worker too
        stats = warm.host.host_stats()
    assert (stats["busy_workers"], stats["line"]) == (2, 1)  # c's waits for a's worker
    with one_turn():
        _send(warm, "d", "ok", 104)  # d is unknown: slow until one of its actions is timed
        stats = warm.host.host_stats()
    assert (stats["busy_workers"], stats["line"]) == (3, 1)
    _answers(warm, {101, 102, 103, 104})


def test_a_worker_times_its_agents_actions(warm: Scheduler) -> None:
    """Unknown is slow (1 s); each action that took less lowers it by a quarter (a
    decaying max), so a quick agent counts as quick after a few dozen attempts."""
    warm.host.add("g", Line, 1)
    assert warm.host._agents["g"].took == 1.0
    warm.start("g", "ok")
    warm.outcome()
    assert warm.host._agents["g"].took == pytest.approx(0.75)


def test_attempts_held_behind_a_quick_action_that_hangs_go_to_free_workers_at_a_tick(
    warm: Scheduler,
) -> None:
    """A quick agent's action may hang after all: what waits behind it is handed to a
    free worker the next time the host hands the line out regardless (a tick), however
    young it is."""
    _quick(warm, "a", "b", "c")
    with one_turn():
        _send(warm, "a", "hold", 101)
        _send(warm, "b", "ok", 102)
        _send(warm, "c", "ok", 103)
    assert Line.entered.acquire(timeout=WAIT)  # a's action holds its worker
    assert warm.host.host_stats()["line"] == 2
    warm.host.passivate(idle_before=-1.0)  # (drops nothing: every worker is younger)
    assert sorted(_answers_of(warm, 2)) == [102, 103]  # while a's still holds
    Line.gate.set()
    assert warm.outcome().token == 101


def _answers_of(scheduler: Scheduler, n: int) -> list[int]:
    return [scheduler.outcome().token for _ in range(n)]
