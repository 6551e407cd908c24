"""At most ``concurrency`` attempts of an agent run at once across a crash of the
Scheduler: the tree's restart cannot stop an attempt's thread (a thread cannot be
killed), so the new Scheduler holds that attempt's slot until its (stale) answer comes,
or its deadline passes, before it runs the step again."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest
from _child_kit import Child

from herder.runtime import (
    Agent,
    InstanceCrash,
    RetryPolicy,
    Runtime,
    State,
    StepContext,
    Workflow,
    WorkflowFailed,
)
from herder.runtime.testing import FakeClock, advance, crash_scheduler, settle

WAIT = 10.0
FAST = RetryPolicy(max_attempts=3, initial_interval=0.0, jitter=0.0)

pytestmark = pytest.mark.timeout(60)


class Tally:
    """What a resource sees: which attempts ran, and the most at once."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.running = self.peak = 0
        self.seen: list[tuple[str, str, int]] = []
        self.first = threading.Event()  # the first attempt is in the action
        self.release = threading.Event()  # the first attempt may return

    def enter(self, ctx: StepContext) -> None:
        with self.lock:
            self.running += 1
            self.peak = max(self.peak, self.running)
            self.seen.append(("start", ctx.workflow_id, ctx.attempt))

    def leave(self, ctx: StepContext) -> None:
        with self.lock:
            self.running -= 1
            self.seen.append(("end", ctx.workflow_id, ctx.attempt))


def held_agent(tally: Tally) -> type[Agent]:
    class Held(Agent):
        def work(self, ctx: StepContext) -> int:
            tally.enter(ctx)
            try:
                if ctx.workflow_id == "w1" and ctx.attempt == 1:
                    tally.first.set()
                    tally.release.wait(WAIT)  # (held across the crash)
            finally:
                tally.leave(ctx)
            return ctx.attempt

    return Held


@pytest.mark.parametrize("host", ["pool", "thread"])
def test_a_crashed_schedulers_attempt_still_running_holds_its_slot(
    tmp_path: Path, host: str
) -> None:
    # The new Scheduler ran the step again at once, and the other workflow's step beside
    # it: three attempts of an agent of concurrency 1 at the same time, the step twice.
    tally = Tally()
    with Runtime(tmp_path / "s", agent_host=host, default_retry=FAST) as rt:
        rt.add_agent("a", held_agent(tally), concurrency=1)
        rt.add_workflow(Workflow("w").step("s", agent="a", action="work"))
        first = rt.start("w", workflow_id="w1")
        assert tally.first.wait(WAIT)
        second = rt.start("w", workflow_id="w2")
        crash_scheduler(rt, timeout=WAIT)
        settle(rt)  # (what the new Scheduler would start, it has started)
        assert tally.seen == [("start", "w1", 1)]
        assert rt.stats()["agents"]["a"]["busy"] == 1  # the old attempt, still running
        tally.release.set()
        assert first.result(timeout=WAIT) == {"s": 2}  # its answer came too late
        assert second.result(timeout=WAIT) == {"s": 1}
    assert tally.peak == 1
    assert tally.seen[:2] == [("start", "w1", 1), ("end", "w1", 1)]


@pytest.mark.parametrize("host", ["pool", "thread"])
def test_an_attempt_fenced_while_it_runs_holds_its_slot_across_a_crash(
    tmp_path: Path, host: str
) -> None:
    # Fenced by an abandon, it held its slot until it returned (or its timeout passed);
    # the new Scheduler forgot it and ran the next workflow's step beside it.
    tally = Tally()
    with Runtime(tmp_path / "s", agent_host=host, default_retry=FAST) as rt:
        rt.add_agent("a", held_agent(tally), concurrency=1)
        rt.add_workflow(Workflow("w").step("s", agent="a", action="work"))
        first = rt.start("w", workflow_id="w1")
        assert tally.first.wait(WAIT)
        rt.abandon(first.id, why="test")  # (its attempt runs on, fenced out)
        second = rt.start("w", workflow_id="w2")
        crash_scheduler(rt, timeout=WAIT)
        settle(rt)
        assert tally.seen == [("start", "w1", 1)]
        tally.release.set()
        assert second.result(timeout=WAIT) == {"s": 1}
        assert rt.status(first.id).state is State.ABANDONED
    assert tally.peak == 1


def test_a_second_crash_carries_it_again(tmp_path: Path) -> None:
    tally = Tally()
    with Runtime(tmp_path / "s", default_retry=FAST) as rt:
        rt.add_agent("a", held_agent(tally), concurrency=1)
        rt.add_workflow(Workflow("w").step("s", agent="a", action="work"))
        first = rt.start("w", workflow_id="w1")
        assert tally.first.wait(WAIT)
        crash_scheduler(rt, timeout=WAIT)
        settle(rt)
        crash_scheduler(rt, timeout=WAIT)  # (the first attempt still runs)
        settle(rt)
        assert tally.seen == [("start", "w1", 1)]
        tally.release.set()
        assert first.result(timeout=WAIT) == {"s": 2}  # (queued, not dispatched, at the 2nd)
    assert tally.peak == 1
    assert tally.seen == [
        ("start", "w1", 1),
        ("end", "w1", 1),
        ("start", "w1", 2),
        ("end", "w1", 2),
    ]


@pytest.mark.parametrize("host", ["pool", "thread"])
def test_a_carried_slot_outlives_its_agents_give_up(tmp_path: Path, host: str) -> None:
    # The pool host's give-up (too many instance crashes) dropped the carried slot with
    # the others: three attempts of an agent of concurrency 2 ran at once.
    tally = Tally()
    crashes = [0]

    class Flaky(Agent):
        def work(self, ctx: StepContext) -> int:
            tally.enter(ctx)
            try:
                if ctx.workflow_id == "w1" and ctx.attempt == 1:
                    tally.first.set()
                    tally.release.wait(WAIT)
                elif ctx.workflow_id == "w2" and crashes[0] < 3:
                    crashes[0] += 1
                    raise InstanceCrash("broken connection")
                elif ctx.workflow_id in ("w3", "w4"):
                    tally.release.wait(WAIT)
            finally:
                tally.leave(ctx)
            return ctx.attempt

    retry = RetryPolicy(max_attempts=10, initial_interval=0.0, jitter=0.0)
    options = {"agent_host": host, "default_retry": retry, "agent_restarts": (2, 10.0)}
    with Runtime(tmp_path / "s", **options) as rt:
        rt.add_agent("a", Flaky, concurrency=2)
        rt.add_workflow(Workflow("w").step("s", agent="a", action="work"))
        first = rt.start("w", workflow_id="w1")
        assert tally.first.wait(WAIT)
        crash_scheduler(rt, timeout=WAIT)  # w1's attempt runs on, carried, in one slot
        assert rt.start("w", workflow_id="w2").result(timeout=WAIT) == {"s": 4}  # given up on
        others = [rt.start("w", workflow_id=f"w{i}") for i in (3, 4)]
        settle(rt)
        assert tally.peak == 2
        tally.release.set()
        assert first.result(timeout=WAIT) == {"s": 2}  # run again once the carried one ended
        for handle in others:
            assert handle.result(timeout=WAIT) == {"s": 1}
    assert tally.peak == 2


@pytest.mark.parametrize("host", ["pool", "thread"])
def test_a_removed_agents_attempt_holds_its_slot_for_its_next_add(
    tmp_path: Path, host: str
) -> None:
    # remove_agent lets a running attempt run on, holding its instance, so that the name
    # added again never runs more than concurrency at once; a Scheduler crash forgot it.
    tally = Tally()
    with Runtime(tmp_path / "s", agent_host=host, default_retry=FAST) as rt:
        rt.add_agent("a", held_agent(tally), concurrency=1)
        rt.add_workflow(Workflow("w").step("s", agent="a", action="work"))
        first = rt.start("w", workflow_id="w1")
        assert tally.first.wait(WAIT)
        rt.remove_agent("a")
        crash_scheduler(rt, timeout=WAIT)
        rt.add_agent("a", held_agent(tally), concurrency=1)
        second = rt.start("w", workflow_id="w2")
        settle(rt)
        assert tally.seen == [("start", "w1", 1)]
        tally.release.set()
        assert second.result(timeout=WAIT) == {"s": 1}
        assert first.result(timeout=WAIT) == {"s": 2}
    assert tally.peak == 1


def test_an_agent_moved_to_asyncio_while_its_old_attempt_runs(tmp_path: Path) -> None:
    # Its thread's actor was handed to the asyncio host, which waits only on its own
    # tasks: the new Scheduler crashed at its start, and the next ran the step beside it.
    tally = Tally()

    class Now(Agent):
        async def work(self, ctx: StepContext) -> int:
            tally.enter(ctx)
            tally.leave(ctx)
            return 0

    with Runtime(tmp_path / "s", default_retry=FAST) as rt:
        rt.add_agent("a", held_agent(tally), concurrency=1)
        rt.add_workflow(Workflow("w").step("s", agent="a", action="work"))
        first = rt.start("w", workflow_id="w1")
        assert tally.first.wait(WAIT)
        rt.add_agent("a", Now, concurrency=1)  # (async def now: the asyncio host)
        crash_scheduler(rt, timeout=WAIT)
        settle(rt)
        assert tally.seen == [("start", "w1", 1)]
        tally.release.set()
        assert first.result(timeout=WAIT) == {"s": 0}
        assert rt.stats()["restarts"]["scheduler"] == 1
    assert tally.peak == 1


@pytest.mark.parametrize("host", ["pool", "thread"])
def test_with_room_for_two_the_step_waits_for_its_carried_attempt_to_end(
    tmp_path: Path, host: str
) -> None:
    # The carried attempt held one slot, and recovery ran the same step again in the
    # other at once: the step twice at the same time.
    tally = Tally()
    with Runtime(tmp_path / "s", agent_host=host, default_retry=FAST) as rt:
        rt.add_agent("a", held_agent(tally), concurrency=2)
        rt.add_workflow(Workflow("w").step("s", agent="a", action="work"))
        first = rt.start("w", workflow_id="w1")
        assert tally.first.wait(WAIT)
        crash_scheduler(rt, timeout=WAIT)
        settle(rt)
        second = rt.start("w", workflow_id="w2")  # (the other slot is free)
        assert second.result(timeout=WAIT) == {"s": 1}
        crash_scheduler(rt, timeout=WAIT)  # a second crash holds it back again
        settle(rt)
        assert ("start", "w1", 2) not in tally.seen
        tally.release.set()
        assert first.result(timeout=WAIT) == {"s": 2}  # run again once the old one ended
    steps = [event for event in tally.seen if event[1] == "w1"]
    assert steps == [("start", "w1", 1), ("end", "w1", 1), ("start", "w1", 2), ("end", "w1", 2)]


@pytest.mark.parametrize(("host", "concurrency"), [("pool", 1), ("pool", 2), ("thread", 2)])
def test_a_held_back_step_whose_attempt_hangs_runs_again_at_its_deadline(
    tmp_path: Path, host: str, concurrency: int
) -> None:
    # As a timed-out hung attempt's: its thread is left to it, its slot freed, and the
    # step runs again.
    tally = Tally()
    clock = FakeClock()
    with Runtime(tmp_path / "s", agent_host=host, clock=clock, default_retry=FAST) as rt:
        rt.add_agent("a", held_agent(tally), concurrency=concurrency)
        rt.add_workflow(Workflow("w").step("s", agent="a", action="work", timeout=30.0))
        first = rt.start("w", workflow_id="w1")
        assert tally.first.wait(WAIT)
        crash_scheduler(rt, timeout=WAIT)
        advance(rt, clock, 29.0)
        assert tally.seen == [("start", "w1", 1)]
        advance(rt, clock, 2.0)  # past the old attempt's deadline
        assert first.result(timeout=WAIT) == {"s": 2}
        assert tally.seen == [("start", "w1", 1), ("start", "w1", 2), ("end", "w1", 2)]
        tally.release.set()


@pytest.mark.parametrize("cancel", ["before the crash", "after the crash"])
@pytest.mark.parametrize("host", ["pool", "thread"])
def test_a_cancelled_workflows_carried_step_is_given_up_not_run_again(
    tmp_path: Path, host: str, cancel: str
) -> None:
    # Cancelled while its step ran, then a crash: the step ran again (attempt 2) once
    # the old attempt ended, then was undone; docs/operator.md: a cancel runs no step
    # again. Now it is given up once the old attempt ends, and undone after it.
    # Cancelled after the crash: the held-back step was given up at once, as an orphan
    # no attempt runs, and its undo ran beside the attempt still running.
    tally = Tally()
    undone: list[int] = []

    class Undo(held_agent(tally)):  # type: ignore[misc, valid-type]
        def undo(self, ctx: StepContext) -> None:
            with tally.lock:
                undone.append(tally.running)  # (attempts running beside the undo)

    with Runtime(tmp_path / "s", agent_host=host, default_retry=FAST) as rt:
        rt.add_agent("a", Undo, concurrency=2)
        rt.add_workflow(Workflow("w").step("s", agent="a", action="work", compensate="undo"))
        first = rt.start("w", workflow_id="w1")
        assert tally.first.wait(WAIT)
        if cancel == "before the crash":
            rt.cancel(first.id)
        crash_scheduler(rt, timeout=WAIT)
        settle(rt)
        if cancel == "after the crash":
            rt.cancel(first.id)
            settle(rt)
        assert undone == []  # (not beside the attempt still running)
        tally.release.set()
        with pytest.raises(WorkflowFailed):
            first.result(timeout=WAIT)
        assert rt.status(first.id).state is State.CANCELLED
    assert tally.seen == [("start", "w1", 1), ("end", "w1", 1)]
    assert undone == [0]


@pytest.mark.parametrize("host", ["pool", "thread"])
def test_a_carried_thread_is_counted_in_abandoned_threads(tmp_path: Path, host: str) -> None:
    # The tree's news of its abandon came while no Scheduler ran: it was counted nowhere.
    tally = Tally()
    with Runtime(tmp_path / "s", agent_host=host, default_retry=FAST) as rt:
        rt.add_agent("a", held_agent(tally), concurrency=1)
        rt.add_workflow(Workflow("w").step("s", agent="a", action="work"))
        first = rt.start("w", workflow_id="w1")
        assert tally.first.wait(WAIT)
        assert rt.stats()["host"]["abandoned_threads"] == 0
        crash_scheduler(rt, timeout=WAIT)
        settle(rt)
        assert rt.stats()["host"]["abandoned_threads"] == 1
        tally.release.set()
        assert first.result(timeout=WAIT) == {"s": 2}


HELD_CHILD = """
import sys, threading
from herder.runtime import Agent, Runtime, Workflow
from herder.runtime.testing import crash_scheduler, settle
store, log = sys.argv[1:3]
entered = threading.Event()
class Held(Agent):
    def work(self, ctx):
        with open(log, "a") as f:
            f.write(f"work {ctx.attempt}\\n")
        entered.set()
        threading.Event().wait()  # still running when the process is killed
rt = Runtime(store)
rt.add_agent("a", Held, concurrency=2)
rt.add_workflow(Workflow("w").step("s", agent="a", action="work"))
rt.start("w", workflow_id="w1")
assert entered.wait(30)
crash_scheduler(rt, timeout=30)
settle(rt)
print("held", flush=True)
threading.Event().wait()
"""


def test_after_a_process_death_a_held_back_step_runs_again_at_once(tmp_path: Path) -> None:
    # What is held back is in memory only: the next process runs the step as before.
    store, log = tmp_path / "store", tmp_path / "calls.log"
    child = Child(["-c", HELD_CHILD, str(store), str(log)], label="held")
    child.wait_for("held", timeout=30)
    assert log.read_text().splitlines() == ["work 1"]  # (held back, not run again)
    child.kill(timeout=10)

    class Quick(Agent):
        def work(self, ctx: StepContext) -> int:
            return ctx.attempt

    with Runtime(store) as rt:
        rt.add_agent("a", Quick, concurrency=2)
        rt.add_workflow(Workflow("w").step("s", agent="a", action="work"))
        assert rt.handle("w1").result(timeout=WAIT) == {"s": 2}


@pytest.mark.parametrize("cancel", [False, True])
@pytest.mark.parametrize("concurrency", [1, 2])
def test_on_the_asyncio_host_the_step_waits_for_the_cancelled_tasks_end(
    tmp_path: Path, concurrency: int, cancel: bool
) -> None:
    # The new Scheduler's host cancelled the task its predecessor left, but ran the step
    # again at once, beside the cleanup the cancel started (an await in a finally): in
    # its slot (no slot was held for the task), or with a free place beside it; in a
    # cancelled workflow it ran forward again (attempt 2), its undo beside it too.
    seen: list[tuple[str, int]] = []
    started, cleaned = threading.Event(), threading.Event()

    class Held(Agent):
        async def work(self, ctx: StepContext) -> int:
            seen.append(("start", ctx.attempt))
            started.set()
            try:
                if ctx.attempt == 1:
                    await asyncio.Event().wait()  # only a cancel ends it
            finally:
                if ctx.attempt == 1:
                    seen.append(("cleanup", 1))
                    await asyncio.to_thread(cleaned.wait, WAIT)
                    seen.append(("cleaned", 1))
            return ctx.attempt

        async def undo(self, ctx: StepContext) -> None:
            seen.append(("undo", ctx.attempt))

    with Runtime(tmp_path / "s", default_retry=FAST, instance_shutdown=WAIT) as rt:
        rt.add_agent("h", Held, concurrency=concurrency)
        rt.add_workflow(Workflow("w").step("s", agent="h", action="work", compensate="undo"))
        handle = rt.start("w")
        assert started.wait(WAIT)
        if cancel:
            rt.cancel(handle.id)
        crash_scheduler(rt, timeout=WAIT)
        settle(rt)
        assert seen == [("start", 1), ("cleanup", 1)]
        cleaned.set()
        if cancel:
            with pytest.raises(WorkflowFailed):
                handle.result(timeout=WAIT)
        else:
            assert handle.result(timeout=WAIT) == {"s": 2}
    then = ("undo", 1) if cancel else ("start", 2)
    assert seen == [("start", 1), ("cleanup", 1), ("cleaned", 1), then]
