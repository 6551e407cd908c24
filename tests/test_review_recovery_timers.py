"""Review (issue 15, per-batch deadline timers): a deadline that comes due while recovery
is still reading the store, chunk by chunk, must not be dropped for the workflows it has
not reached yet.

A WAITING step (its action returned ``complete_later()``) is not run again by recovery:
only its deadline wakes it, and that deadline is an item of a batch entry. Recovery
admits the unfinished workflows ``RESUME_CHUNK`` at a time, one Scheduler message each,
so a sweep's Due lands between two chunks. A workflow of a later chunk is then neither
in memory nor awaiting its definition, and the Due handler took its timer for one no
step wants: it dropped the item from the batch entry (a step's own entry it deleted),
and once recovery reached the workflow nothing woke its step again: WAITING forever
(and ``herder check`` said so)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import herder.actors._recovery as recovery_module
from herder.actors._messages import Due
from herder.runtime import Agent, RetryPolicy, Runtime, StepContext, StepState, Workflow
from herder.runtime._listener import RuntimeListener
from herder.runtime.testing import FakeClock, advance, check_store, settle, store_of
from herder.store import ms

WAIT = 10.0

HANDOFF = Workflow("handoff").step(
    "approve", agent="desk", action="wait", timeout=5.0, retry=RetryPolicy(max_attempts=1)
)


class Desk(Agent):
    def wait(self, ctx: StepContext) -> Any:
        return ctx.complete_later()


def register(rt: Runtime) -> None:
    rt.add_agent("desk", Desk, concurrency=2)
    rt.add_workflow(HANDOFF)


def waiting(rt: Runtime, wid: str) -> bool:
    st = store_of(rt).get_step(wid, "approve")
    return st is not None and st.state is StepState.WAITING


def test_a_deadline_due_between_recovery_chunks_still_times_its_step_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeClock()
    path = tmp_path / "s"
    ids = ["w1", "w2", "w3"]
    with Runtime(path, clock=clock, sweep_interval=0.05, setup=register) as rt:
        for wid in ids:
            rt.start("handoff", workflow_id=wid)
        for _ in range(200):  # each settle waits for the messages in flight
            settle(rt)
            if all(waiting(rt, wid) for wid in ids):
                break
        assert all(waiting(rt, wid) for wid in ids)
    clock.advance(10.0)  # every hand-off's deadline passed while no runtime ran

    # Recovery admits one workflow per message; after its first chunk the due deadlines
    # reach the Scheduler as the watchdog's sweep reports them, so that Due is handled
    # before the next chunk (as a sweep may land at any point of a long recovery).
    monkeypatch.setattr(recovery_module, "RESUME_CHUNK", 1)
    told: list[int] = []
    on_recovered = RuntimeListener.on_recovered

    def due_after_first_chunk(self: RuntimeListener, unfinished: int, *, done: bool) -> None:
        if not done and not told:
            rt = self._rt
            due = rt._store.due_timers(ms(clock.time()))
            told.append(len(due))
            rt._ctx.tell_scheduler(Due(due))  # queued before the next chunk's Recover
        on_recovered(self, unfinished, done=done)

    monkeypatch.setattr(RuntimeListener, "on_recovered", due_after_first_chunk)
    with Runtime(path, clock=clock, sweep_interval=0.05, setup=register) as rt:
        assert len(told) == 1
        assert told[0] > 0, "the due deadlines reached the Scheduler"
        advance(rt, clock, 6.0)  # past the sweep's resend_after, too
        states = {wid: store_of(rt).get_step(wid, "approve") for wid in ids}
        found = {wid: st.state for wid, st in states.items() if st is not None}
        assert found == dict.fromkeys(ids, StepState.FAILED)  # none waits forever
        settle(rt)
        assert check_store(store_of(rt)).problems == []
