"""A pool survives 1,000 crash/restart cycles without losing a restart or leaking a thread."""

from __future__ import annotations

import threading
from typing import Any

import pykka
from _supervision_kit import WAIT, Events, children_of, spec

from herder.actors import Strategy, start_supervisor

CHILDREN = 50
ROUNDS = 20


def test_a_pool_survives_a_thousand_crashes_without_lost_restarts_or_leaked_threads() -> None:
    baseline = set(threading.enumerate())
    events = Events()
    pool = start_supervisor(
        "pool", Strategy.SIMPLE_ONE_FOR_ONE, max_restarts=10_000, period=1.0, listener=events
    )
    refs: dict[str, pykka.ActorRef[Any]] = {
        f"w{i}": pool.proxy().start_child(spec(f"w{i}")).get(timeout=WAIT) for i in range(CHILDREN)
    }
    for _ in range(ROUNDS):
        for ref in refs.values():
            ref.tell("crash")
        for _ in range(CHILDREN):
            event = events.wait("restarted")
            assert event.ref is not None
            refs[event.child_id] = event.ref
    infos = children_of(pool)
    assert len(infos) == CHILDREN
    assert sum(info.restarts for info in infos.values()) == CHILDREN * ROUNDS
    assert all(info.restarts == ROUNDS and info.alive for info in infos.values())
    assert all(ref.ask("ping", timeout=WAIT) == "pong" for ref in refs.values())

    assert pool.stop(timeout=WAIT)
    for thread in set(threading.enumerate()) - baseline:
        thread.join(WAIT)  # the actors' threads end right after their stop was answered
    assert set(threading.enumerate()) <= baseline
    assert pykka.ActorRegistry.get_all() == []
