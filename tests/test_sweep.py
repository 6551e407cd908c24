"""The watchdog's sweep: which due timer entries it reports to the Scheduler, and when
it reports one again."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from herder.actors._messages import Due
from herder.actors._supervisor import WorkflowSupervisor
from herder.runtime.testing import FakeClock
from herder.store import Put, Store, Transition, encode, ms, timer_entry, timer_key

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    store = Store(tmp_path / "s")
    yield store
    store.close()


def put_timer(store: Store, due_ms: int, token: int) -> None:
    put = Put("timers", timer_key(due_ms, "w", "pay"), encode(timer_entry(token)))
    store.writer.submit(Transition((put,))).result(timeout=10)


def sweeper(store: Store, clock: FakeClock, told: list[Any]) -> WorkflowSupervisor:
    """The sweep's object, driven by direct calls (no actor thread, no timer)."""
    ctx = SimpleNamespace(
        store=store, clock=clock, tell_scheduler=told.append, listener=SimpleNamespace()
    )
    ctx.listener.on_sweep = lambda: None
    return WorkflowSupervisor(ctx, 1.0, resend_after=5.0)  # type: ignore[arg-type]


def reported(told: list[Any]) -> list[tuple[int, str, str, Any]]:
    return [timer for msg in told if isinstance(msg, Due) for timer in msg.timers]


def test_an_entry_is_reported_once_then_again_only_after_resend_after(store: Store) -> None:
    clock, told = FakeClock(), []
    due = ms(clock.time())
    put_timer(store, due, token=7)
    sweep = sweeper(store, clock, told)
    assert sweep.sweep() == 1
    assert sweep.sweep() == 0  # the Scheduler has it; it ignores a repeat anyway
    clock.advance(5.0)
    assert sweep.sweep() == 1  # still due: its report may have been lost
    assert [t[3] for t in reported(told)] == [{"token": 7}, {"token": 7}]


def test_a_new_timer_under_a_reported_key_is_reported_at_once(store: Store) -> None:
    """A step's timer was reported, and the step moved on and armed its next timer in the
    same millisecond (a lapse, then its probe lost at once, retried without backoff): same
    key, new token. Held back as a repeat, it waited out ``resend_after`` (5 s) in real
    time, and forever under a FakeClock that no longer moved."""
    clock, told = FakeClock(), []
    due = ms(clock.time())
    put_timer(store, due, token=7)
    sweep = sweeper(store, clock, told)
    assert sweep.sweep() == 1
    put_timer(store, due, token=8)  # (replaces the entry: one key)
    assert sweep.sweep() == 1
    assert [t[3] for t in reported(told)] == [{"token": 7}, {"token": 8}]
