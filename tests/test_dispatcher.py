"""The Dispatcher's contract with its agent host, driven without threads (a stub host)."""

from __future__ import annotations

import types
from pathlib import Path
from typing import Any

from herder.actors._clock import FakeClock, MessageClock
from herder.actors._dispatch import Dispatcher
from herder.actors._engine import EngineConfig, EngineContext
from herder.actors._messages import InstanceEvent
from herder.actors._supervision_specs import ChildEventKind
from herder.actors.engine import Engine
from herder.store import Store


class PumpedHost:
    """Serves no agent; counts the ``pumped()`` calls."""

    def __init__(self) -> None:
        self.pumps = 0

    def queue(self, name: str) -> None:
        return None

    def on_event(self, event: InstanceEvent, now: float) -> list[int]:
        return []

    def pumped(self) -> None:
        self.pumps += 1


def test_the_host_hears_pumped_after_the_pump_that_follows_an_instance_event(
    tmp_path: Path,
) -> None:
    # A pool host holds a worker for an agent whose wake-up landed until that agent's
    # pump is over; nothing else needs the call, so other pumps (one per step) skip it.
    with Store(tmp_path / "s") as store:
        clock = FakeClock()
        ctx = EngineContext(store, clock, EngineConfig(), types.SimpleNamespace())  # type: ignore[arg-type]
        engine = Engine(ctx.config.defaults(), {}, ctx.next_token, lambda *a: False, ctx.store)
        dispatcher = Dispatcher(ctx, engine, MessageClock(clock))
        host: Any = PumpedHost()
        dispatcher.attach(host, {})
        dispatcher.dirty.add("svc")
        dispatcher.pump_dirty()
        assert host.pumps == 0
        dispatcher.instance_event(InstanceEvent("svc", None, ChildEventKind.STARTED))
        assert dispatcher.dirty == {"svc"}  # the woken agent is pumped next
        dispatcher.pump_dirty()
        assert host.pumps == 1
        dispatcher.dirty.add("svc")
        dispatcher.pump_dirty()
        assert host.pumps == 1
