"""The pooled host past its edges (found by review): quick attempts held in the line
count against its cap, and a worker of a pool that is gone takes no more work from the
line. The stand-in Scheduler of test_pool_host drives the host directly."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from test_pool_hold import Gated, _quick, make_steady, one_turn
from test_pool_host import WAIT, Line, Scheduler, _host, _send

from herder.actors import FakeClock


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
