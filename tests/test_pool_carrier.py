"""The pool's carrier: a quick attempt sent while a worker told a quick one has not begun
waits in the line for that worker instead of waking one of its own (actors/_worker_pool.py).

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
from test_pool_host import WAIT, Line, Scheduler, _host, _send

from herder.actors import FakeClock
from herder.actors._worker_pool import CHAIN, QUICK


@contextmanager
def one_turn() -> Iterator[None]:
    """No other Python thread runs until the block ends (as in one Scheduler turn)."""
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1000.0)
    try:
        yield
    finally:
        sys.setswitchinterval(interval)


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


def test_quick_attempts_sent_before_the_carrier_begins_wait_for_its_worker(
    warm: Scheduler,
) -> None:
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


def test_at_most_chain_attempts_wait_behind_one_carrier(warm: Scheduler) -> None:
    names = "abcdef"[: CHAIN + 2]
    _quick(warm, *names)
    tokens = set(range(101, 101 + len(names)))
    with one_turn():
        for token, name in zip(sorted(tokens), names, strict=True):
            _send(warm, name, "ok", token)
        stats = warm.host.host_stats()
    # The first is the carrier, CHAIN wait for it, the next is told a worker (a carrier).
    assert (stats["busy_workers"], stats["line"]) == (2, CHAIN)
    _answers(warm, tokens)
    assert warm.host.host_stats()["line"] == 0


@pytest.mark.parametrize("took", [QUICK, 1.0], ids=["slow", "unknown"])
def test_a_slow_agents_attempts_each_wake_a_worker(warm: Scheduler, took: float) -> None:
    """Its actions may block (I/O): none waits behind another attempt, nor does another
    wait behind one of its own."""
    _quick(warm, "a", "b", "c")
    _quick(warm, "b", took=took)
    with one_turn():
        for token, name in zip((101, 102, 103), "bac", strict=True):
            _send(warm, name, "ok", token)  # b's is no carrier: a's wakes a worker too
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


def test_attempts_behind_a_carrier_that_hangs_go_to_free_workers_at_the_next_hand_out(
    warm: Scheduler,
) -> None:
    """A quick agent's action may hang after all: what waits behind it is handed to a
    free worker the next time the host hands the line out (here the Scheduler's tick)."""
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
