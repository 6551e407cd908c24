"""The engine's upward line (actors/_wiring.py): one listener the runtime hands down.

Downward, a Scheduler copies what was registered when it starts and then learns of
registrations only from its messages, never from dicts another thread writes.

The runtime counts the unfinished workflows its first recovery finds, chunk by chunk,
and no others: a Scheduler the supervision tree restarts recovers them again, and
counting them twice would make start() wait for capacity that is free.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from herder.actors import AgentEntry, EngineConfig, EngineContext, QuietListener, Scheduler
from herder.runtime import Agent, RetryPolicy, Runtime, StepContext, Workflow
from herder.runtime._listener import RuntimeListener
from herder.runtime.testing import FakeClock, crash_scheduler, settle, wait_until
from herder.runtime.testing._inline_host import InlineHost
from herder.store import Store

HOUR = RetryPolicy(max_attempts=2, initial_interval=3600.0, max_interval=3600.0, jitter=0.0)
WAIT = 30.0


class _Counted:
    def __init__(self) -> None:
        self.recovered: list[int] = []

    def _on_recovered(self, unfinished: int) -> None:
        self.recovered.append(unfinished)


def test_only_the_recovery_armed_on_taking_the_lease_is_counted_in_all_its_chunks() -> None:
    rt: Any = _Counted()
    listener = RuntimeListener(rt)
    listener.on_recovered(5, done=True)  # before the lease: nobody asked
    listener.count_next_recovery()
    listener.on_recovered(3, done=False)
    listener.on_recovered(2, done=False)
    listener.on_recovered(0, done=True)
    listener.on_recovered(5, done=True)  # a restarted Scheduler's: counted already
    assert rt.recovered == [3, 2, 0]


def test_a_failing_sweeper_does_not_keep_the_others_from_running() -> None:
    listener = RuntimeListener(_Counted())  # type: ignore[arg-type]
    ran: list[str] = []

    def broken() -> None:
        raise RuntimeError("a sweeper's bug")

    listener.sweepers[:] = [broken, lambda: ran.append("renewed")]
    listener.on_sweep()
    listener.on_sweep()
    assert ran == ["renewed", "renewed"]


class FailsFirst(Agent):
    def work(self, ctx: StepContext) -> int:
        if ctx.attempt == 1:
            raise RuntimeError("transient")
        return ctx.attempt


def test_a_restarted_scheduler_does_not_count_recovered_workflows_twice(tmp_path: Path) -> None:
    one = Workflow("one").step("s", agent="svc", action="work", retry=HOUR)
    path = tmp_path / "s"
    with Runtime(path, clock=FakeClock(), max_active_workflows=3) as rt:
        rt.add_agent("svc", FailsFirst, concurrency=4)
        rt.add_workflow(one)
        for i in range(2):
            rt.start("one", workflow_id=f"w{i}")
        wait_until(rt, lambda: rt.stats()["steps"]["retried"] == 2, timeout=WAIT)
    with Runtime(path, clock=FakeClock(), max_active_workflows=3) as rt:
        rt.add_agent("svc", FailsFirst, concurrency=4)
        rt.add_workflow(one)
        crash_scheduler(rt, WAIT)  # the new Scheduler recovers w0 and w1 again
        settle(rt)  # its recovery has run
        rt.start("one", workflow_id="third", timeout=5.0)  # 2 recovered + 1: room for it
        with pytest.raises(TimeoutError, match="3 workflows are unfinished"):
            rt.start("one", workflow_id="fourth", timeout=0.2)


def test_a_scheduler_serves_what_its_messages_say_not_what_another_thread_wrote(
    tmp_path: Path,
) -> None:
    store = Store(tmp_path / "s", inline_writes=True)
    try:
        ctx = EngineContext(store, FakeClock(), EngineConfig(), QuietListener())
        ctx.agents["early"] = (FailsFirst, 3)
        ctx.make_host = lambda: InlineHost(
            ctx.tell_scheduler, max_result_bytes=1 << 20, queue_aging=10.0
        )
        scheduler = Scheduler(ctx)
        scheduler.on_start()  # as pykka starts it; never given a thread
        ctx.agents["ghost"] = (FailsFirst, 5)  # behind its back: not served
        ctx.agents["early"] = (FailsFirst, 9)
        scheduler.add_agent("late", AgentEntry(FailsFirst, 2))
        served = scheduler._dispatch.facts()["agents"]  # what the console shows
        assert {name: served[name]["concurrency"] for name in served} == {"early": 3, "late": 2}
    finally:
        store.close()
