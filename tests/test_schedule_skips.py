"""catch_up="all" with overlap="skip" after a long downtime while the last firing runs:
every due slot is passed over, counted in one write (not one commit per slot)."""

from __future__ import annotations

import datetime
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path

import pytest

from herder.runtime import Agent, Runtime, StepContext, Workflow
from herder.runtime._check import check_store
from herder.runtime.testing import FakeClock, advance, wait_until
from herder.store import Put, Transition

T0 = datetime.datetime(2027, 1, 15, 8, 0, 0, 500000, tzinfo=datetime.UTC).timestamp()
WEEK = 7 * 86400


class Gated(Agent):
    """Its first run waits for the gate (the firing that is still running)."""

    def __init__(self, gate: threading.Event) -> None:
        self.gate = gate

    def run(self, ctx: StepContext) -> str:
        self.gate.wait(30)
        return ctx.workflow_id


@pytest.fixture
def gate() -> Iterator[threading.Event]:
    event = threading.Event()
    yield event
    event.set()


def schedule_writes(rt: Runtime, monkeypatch: pytest.MonkeyPatch) -> list[Transition]:
    """The transitions submitted from now on that write a schedule record."""
    writer, seen = rt._store.writer, []
    real = writer.submit

    def submit(transition: Transition) -> Future[None]:
        if any(isinstance(op, Put) and op.db == "schedules" for op in transition.ops):
            seen.append(transition)
        return real(transition)

    monkeypatch.setattr(writer, "submit", submit)
    return seen


@pytest.mark.parametrize(
    ("cadence", "down", "skipped"),
    [({"every": 60}, WEEK, WEEK // 60), ({"cron": "* * * * *"}, 86400, 1440)],
)
def test_a_long_catch_up_skipped_behind_a_running_firing_is_one_write(
    tmp_path: Path,
    gate: threading.Event,
    monkeypatch: pytest.MonkeyPatch,
    *,
    cadence: dict[str, object],
    down: int,
    skipped: int,
) -> None:
    clock = FakeClock(start=T0)
    with Runtime(tmp_path, clock=clock, sweep_interval=0.05) as rt:
        rt.add_agent("job", lambda: Gated(gate), concurrency=2)
        # (a step timeout past the downtime: the running firing outlives it)
        step = Workflow("job").step("run", agent="job", action="run", timeout=2 * WEEK)
        rt.add_workflow(step)
        rt.schedule("tick", "job", catch_up="all", overlap="skip", **cadence)  # type: ignore[arg-type]
        advance(rt, clock, 60)  # 08:01 fires; its step waits on the gate
        [first] = [s.id for s in rt.list()]
        writes = schedule_writes(rt, monkeypatch)
        clock.advance(down)  # (a jump, as downtime): every minute since fell due
        for _ in range(2 + skipped // 100):  # (one pass did at most 100 slots)
            rt._fire_now()
            [status] = rt.schedules()
            assert status.next_at is not None
            if status.next_at > clock.time():
                break
        assert (status.fired, status.skipped, status.last_id) == (1, skipped, first)
        assert status.next_at == T0 - 0.5 + 60 + down + 60  # the slot after now
        assert len(writes) == 1
        gate.set()
        wait_until(rt, lambda: rt.status(first).state.is_final)
        advance(rt, clock, 60)  # the next slot fires as usual
        assert len(rt.list()) == 2
        assert check_store(rt._store).ok
