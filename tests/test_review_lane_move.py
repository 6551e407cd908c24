"""An agent added again on another host while a worker of its old host may still pop
from its old ready deque (review finding, session 4): every waiting attempt moves over
exactly once, whatever that worker takes meanwhile."""

from __future__ import annotations

import types
from collections import deque
from typing import Any

import pytest

from herder.actors._ahead import Lanes
from herder.actors._clock import FakeClock, MessageClock

pytestmark = pytest.mark.timeout(30)


class SelfFeeding:
    """A host whose workers self-feed from one ready deque per agent name."""

    def __init__(self) -> None:
        self.queues: dict[str, deque[Any]] = {}

    def ready_queue(self, name: str) -> deque[Any]:
        return self.queues.setdefault(name, deque())


class Moved:
    """The router after the agent moved: every call about it goes to the new host."""

    def __init__(self, new: SelfFeeding) -> None:
        self.new = new

    def route(self, name: str) -> SelfFeeding:
        return self.new

    def ready_queue(self, name: str) -> deque[Any]:
        return self.new.ready_queue(name)


class Contended(deque):  # type: ignore[type-arg]
    """The old host's deque: its worker pops one attempt while the Scheduler moves them."""

    def __init__(self, items: list[str], taken: list[str]) -> None:
        super().__init__(items)
        self.taken = taken

    def _worker_pops(self) -> None:
        if not self.taken and len(self):
            self.taken.append(super().popleft())

    def clear(self) -> None:
        self._worker_pops()
        super().clear()

    def popleft(self) -> Any:
        self._worker_pops()
        return super().popleft()


def test_an_attempt_waiting_on_a_moved_agent_is_run_by_one_host_only() -> None:
    config = types.SimpleNamespace(prefetch=7, probe_timeout=60, default_timeout=300)
    lanes = Lanes(None, MessageClock(FakeClock()), config, room=lambda name: None)  # type: ignore[arg-type]
    old = SelfFeeding()
    lanes.attach(old)  # type: ignore[arg-type]
    lanes.configure("a", 2, limited=False)
    lane = lanes.get("a")
    assert lane is not None
    taken: list[str] = []
    lane.ready = Contended(["r1", "r2", "r3"], taken)  # the old host's workers feed on it
    new = SelfFeeding()
    lanes.attach(Moved(new))  # type: ignore[arg-type]
    lanes.configure("a", 2, limited=False)  # added again, on the new host
    moved = list(new.queues["a"])
    assert taken == ["r1"]  # the old host's worker ran that one
    assert sorted(moved + taken) == ["r1", "r2", "r3"]  # each attempt once, none lost
