"""The pooled host past its edges (found by review): quick attempts held in the line
count against its cap, and a worker of a pool that is gone takes no more work from the
line. The stand-in Scheduler of test_pool_host drives the host directly."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from test_pool_hold import Gated, _quick, make_steady, one_turn
from test_pool_host import WAIT, Flaky, Line, Scheduler, _host, _send

from herder.actors import FakeClock, InstanceEvent
from herder.actors._worker_pool import POOL


@pytest.fixture
def two(monkeypatch: pytest.MonkeyPatch) -> Iterator[Scheduler]:
    """Two workers, started and free; a line of one place; agents a, b (Line) and q."""
    make_steady(monkeypatch)
    Line.ran, Line.entered, Line.gate = [], threading.Semaphore(0), threading.Event()
    Gated.gates = {101: threading.Event()}
    scheduler = _host("pool", FakeClock(), max_workers=2, min_workers=2, line=1)
    for name in "ab":
        scheduler.host.add(name, Line, 1)
    scheduler.host.add("q", Gated, 1)
    for name in "ab":
        scheduler.start(name, "hold")
    Line.gate.set()
    for _ in "ab":
        scheduler.outcome()
    assert scheduler.host.host_stats()["workers"] == 2
    yield scheduler
    for gate in Gated.gates.values():
        gate.set()


def test_quick_attempts_held_for_a_busy_worker_fit_in_the_line(two: Scheduler) -> None:
    """acquire held a quick attempt if the line had a place for it *or* a worker was free
    (the rule of an attempt that waits for a worker to free): with a line of one place two
    were held, and had a slow attempt then taken the free worker, two would wait in a
    line of one. One that finds the line full takes the free worker."""
    _quick(two, "q", "a", "b")
    with one_turn():
        _send(two, "q", "wait", 101)  # a quick action that blocks: it holds worker 1
        _send(two, "a", "ok", 102)  # quick: held for q's worker, in the line's one place
        _send(two, "b", "ok", 103)  # quick too, but the line is full: it takes worker 2
        stats = two.host.host_stats()
    assert (stats["line"], stats["busy_workers"]) == (1, 2)
    assert Gated.entered.acquire(timeout=WAIT)
    assert two.outcome().token == 103  # (its worker may go on with a's, from the line)
    Gated.gates[101].set()
    assert {two.outcome().token for _ in range(2)} == {101, 102}


@pytest.fixture
def one() -> Iterator[Scheduler]:
    """One worker, started, blocked in hung's action until ``Flaky.gate``; agents b, c."""
    Line.ran, Line.entered, Line.gate = [], threading.Semaphore(0), threading.Event()
    scheduler = _host("pool", FakeClock(), max_workers=1, min_workers=1)
    for name in "bc":
        scheduler.host.add(name, Line, 1)
    scheduler.host.add("hung", Flaky, 1)
    yield scheduler
    Flaky.gate.set()
    Line.gate.set()


def test_a_worker_of_a_pool_that_is_gone_takes_nothing_more_from_the_line(
    one: Scheduler,
) -> None:
    """Every pool's workers are handed the host's one line. A worker blocked in an action
    when its pool went (the pool supervisor gave up, or was stopped) cannot stop: its
    attempt was reported lost, but once the action returned the thread took the line's
    next work, and the next, beside the new pool's workers and counted by none of them
    (here two attempts ran on a pool of one)."""
    hung = one.start("hung", "hang")
    old = one.host._pool._sup
    assert old is not None
    _send(one, "b", "hold", 101)  # no worker free: it waits in the line
    old.stop(block=False)  # the pool goes; its worker's thread is blocked in hang
    one.until_lost(hung)
    while one.host.host_stats()["line"]:
        one.handle_one()  # a new pool starts, for the line: its worker takes b's
    assert Line.entered.acquire(timeout=WAIT)
    _send(one, "c", "hold", 201)  # and c's waits in the line for it
    assert one.host.host_stats()["line"] == 1
    Flaky.gate.set()  # hung's action returns on the old pool's thread
    late = one.outcome()
    assert late.token == hung
    assert late.next_token == 0, "a thread of the pool that went took c's attempt"
    assert one.host.host_stats()["line"] == 1  # c's waits for the new pool's worker
    Line.gate.set()
    assert [one.outcome().token for _ in range(2)] == [101, 201]
    assert one.host.host_stats()["busy_workers"] == 0


def test_what_a_worker_took_from_the_line_unheard_of_is_lost_with_its_pool(
    one: Scheduler,
) -> None:
    """The pool goes while the Scheduler has not yet heard that its blocked worker, once
    free, ran b's attempt from the line and went on with c's: both are lost with it (it
    was only b's, one taking deep), and the thread takes nothing after c's."""
    hung = one.start("hung", "hang")
    old = one.host._pool._sup
    assert old is not None
    _send(one, "b", "ok", 101)
    _send(one, "c", "hold", 201)
    assert one.host.host_stats()["line"] == 2
    old.stop(block=False)
    unheard: list[InstanceEvent] = []  # the news of the pool: handled once c's runs
    while not any(m.agent == POOL and m.instance is None for m in unheard):
        unheard.append(one.inbox.get(timeout=WAIT))
    Flaky.gate.set()  # hung's returns: its thread runs b's, then c's, unheard of
    assert Line.entered.acquire(timeout=WAIT)
    for message in unheard:
        one.lost += one.host.on_event(message, 0.0)
    assert {hung, 101, 201} <= set(one.lost)
    Line.gate.set()
    while 201 not in {o.token for o in one.outcomes}:
        one.handle_one()
    assert one.outcomes[-1].next_token == 0
    one.drain()
    assert one.host.host_stats()["line"] == 0
    assert one.host.busy_tokens("b") == one.host.busy_tokens("c") == []
