"""Due firings go out in batches (runtime/_firing_batch.py): one group commit for many
slots, each slot still fired once with its cursor in the transaction that creates its
workflow. (A SIGKILL mid-batch: tests/test_schedules_crash.py with many schedules.)"""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest

from herder.runtime import Agent, Runtime, StepContext, Workflow, _firing_batch
from herder.runtime._check import check_store
from herder.runtime._schedules import slot_id
from herder.runtime.testing import FakeClock, advance

T0 = datetime.datetime(2027, 1, 15, 8, 0, 0, 500000, tzinfo=datetime.UTC).timestamp()
SLOT = int(T0 // 60 + 1) * 60 * 1000  # 08:01, the first slot of an every=60 schedule


class Job(Agent):
    def run(self, ctx: StepContext) -> str:
        return ctx.workflow_id


# A workflow whose step waits an hour: nothing ends (and writes) while the test looks.
SLOW = Workflow("slow").step("run", agent="job", action="run", delay=3600)


def open_runtime(path: Path, clock: FakeClock, **kwargs: object) -> Runtime:
    rt = Runtime(path, clock=clock, sweep_interval=0.05, **kwargs)  # type: ignore[arg-type]
    rt.add_agent("job", Job, concurrency=4)
    rt.add_agent("other", Job)
    rt.add_workflow(SLOW)
    rt.add_workflow(Workflow("elsewhere").step("run", agent="other", action="run"))
    return rt


@pytest.mark.timeout(120)
def test_many_schedules_due_at_once_fire_once_each_in_one_commit(tmp_path: Path) -> None:
    """300 schedules due at the same slot (a restart after it): one firing each, all of
    them in one write transaction (one commit per slot took 10 s for 6,000)."""
    clock = FakeClock(start=T0)
    with open_runtime(tmp_path, clock) as rt:
        names = [f"s{i:03d}" for i in range(300)]
        for name in names:
            rt.schedule(name, "slow", every=60, input={"n": name})
        clock.advance(60)
        rt._fire_now()
        assert sorted(s.id for s in rt.list()) == sorted(slot_id(n, SLOT) for n in names)
        assert [(s.fired, s.last_id) for s in rt.schedules()] == [
            (1, slot_id(n, SLOT)) for n in names
        ]
        assert rt._store.writer.stats()["max_batch"] >= 300
        assert all(rt.status(slot_id(n, SLOT)).input == {"n": n} for n in names[:3])
        report = check_store(rt._store)
        assert report.ok, report.problems


@pytest.mark.timeout(60)
def test_a_catch_up_fires_its_slots_in_batches_once_each(tmp_path: Path) -> None:
    clock = FakeClock(start=T0)
    with open_runtime(tmp_path, clock) as rt:
        rt.schedule("tick", "slow", every=1, catch_up="all", overlap="allow")
        clock.advance(250)
        for _ in range(3):  # (at most MAX_BATCH=100 slots of one schedule per pass)
            rt._fire_now()
        [status] = rt.schedules()
        first = int(T0) * 1000 + 1000
        expected = {slot_id("tick", first + 1000 * i) for i in range(250)}
        assert {s.id for s in rt.list()} == expected
        assert status.fired == 250
        assert rt._store.writer.stats()["max_batch"] >= 100


@pytest.mark.timeout(60)
def test_ids_started_by_hand_in_a_batch_count_as_its_firings(tmp_path: Path) -> None:
    """A slot's id that exists (an operator started it, with the same input or other
    input) counts as that slot's firing and not in ``fired``; the others of the batch
    fire, and the cursor ends at the last slot."""
    clock = FakeClock(start=T0)
    with open_runtime(tmp_path, clock) as rt:
        rt.schedule("tick", "slow", every=1, catch_up="all", overlap="allow")
        first = int(T0) * 1000 + 1000
        ids = [slot_id("tick", first + 1000 * i) for i in range(5)]
        rt.start("slow", None, workflow_id=ids[2])  # the same start
        rt.start("slow", {"by": "hand"}, workflow_id=ids[4])  # another input
        clock.advance(5)
        rt._fire_now()
        [status] = rt.schedules()
        assert {s.id for s in rt.list()} == set(ids)
        assert status.fired == 3
        assert status.last_id == ids[4]
        rt._fire_now()  # nothing more is due
        assert len(rt.list()) == 5


@pytest.mark.timeout(60)
def test_a_schedule_that_cannot_start_does_not_stop_the_others_of_its_batch(
    tmp_path: Path,
) -> None:
    clock = FakeClock(start=T0)
    with open_runtime(tmp_path, clock) as rt:
        rt.schedule("a", "slow", every=60)
        rt.schedule("b", "elsewhere", every=60)
        rt.schedule("c", "slow", every=60)
        rt.remove_agent("other")  # "b" can start nothing now
        clock.advance(60)
        rt._fire_now()
        assert sorted(s.id for s in rt.list()) == [slot_id("a", SLOT), slot_id("c", SLOT)]
        assert [s.fired for s in rt.schedules()] == [1, 0, 1]


@pytest.mark.timeout(60)
def test_a_catch_up_whose_later_slot_cannot_start_does_not_stop_the_others_of_its_batch(
    tmp_path: Path,
) -> None:
    # Only a schedule's first due slot was checked before it joined the batch: a later
    # one of a catch-up ("all" and "allow") whose start was refused (by a router that
    # fails every other call, here) failed the whole batch, and every other schedule in
    # it fired nothing, at every pass. Each slot is checked now; the schedule fires the
    # slots before the refused one, the rest at its next pass.
    calls: list[object] = []

    def pick(value: object) -> str:
        calls.append(value)
        if len(calls) % 2 and len(calls) > 1:  # (the first: rt.schedule's own check)
            raise LookupError("no agent free")
        return "job"

    clock = FakeClock(start=T0)
    with open_runtime(tmp_path, clock) as rt:
        rt.add_router("pick", pick)
        rt.add_workflow(Workflow("routed").step("run", agent="{@pick}", action="run", delay=3600))
        rt.schedule("a", "routed", every=60, catch_up="all", overlap="allow")
        rt.schedule("b", "slow", every=60)
        clock.advance(180)  # three slots of "a" due at once
        rt._fire_now()
        assert slot_id("b", SLOT + 120_000) in {s.id for s in rt.list()}
        for _ in range(2):  # (one slot of "a" a pass at the least)
            rt._fire_now()
        assert sorted(s.id for s in rt.list() if s.id.startswith("a@")) == [
            slot_id("a", SLOT + n * 60_000) for n in range(3)
        ]
        assert [s.fired for s in rt.schedules()] == [3, 1]
        assert check_store(rt._store).ok


@pytest.mark.timeout(120)
def test_firings_wait_for_room_under_max_active_workflows(tmp_path: Path) -> None:
    """With room for 10 workflows, 30 due schedules fire in batches that fit as room
    frees: none fires twice and none is lost."""
    clock = FakeClock(start=T0)
    with open_runtime(tmp_path, clock, max_active_workflows=10) as rt:
        rt.add_workflow(Workflow("quick").step("run", agent="job", action="run"))
        names = [f"s{i:02d}" for i in range(30)]
        for name in names:
            rt.schedule(name, "quick", every=3600)
        clock.advance(3600)
        for _ in range(30):  # (a pass that found no room for a second tries next pass)
            rt._fire_now()
            if len(rt.list()) == 30:
                break
        slot = SLOT + 59 * 60_000
        assert sorted(s.id for s in rt.list()) == sorted(slot_id(n, slot) for n in names)
        assert [s.fired for s in rt.schedules()] == [1] * 30


@pytest.mark.timeout(60)
def test_room_that_changes_between_batches_loses_no_slot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The room under max_active_workflows changes while a pass fires (workflows end):
    each batch is cut to the room read once, so no slot is left out between two."""
    rooms = iter([100, 3, 5, 2, 4, 1, 6] + [100] * 20)  # (the first: is the batch full?)
    monkeypatch.setattr(_firing_batch.Firings, "_room", lambda self: next(rooms))
    clock = FakeClock(start=T0)
    with open_runtime(tmp_path, clock) as rt:
        rt.schedule("tick", "slow", every=1, catch_up="all", overlap="allow")
        clock.advance(12)
        rt._fire_now()
        first = int(T0) * 1000 + 1000
        assert sorted(s.id for s in rt.list()) == [
            slot_id("tick", first + 1000 * i) for i in range(12)
        ]
        assert [s.fired for s in rt.schedules()] == [12]


@pytest.mark.timeout(120)
def test_advance_fires_a_whole_catch_up_that_fell_due_in_a_downtime(tmp_path: Path) -> None:
    """docs/testing.md: a slot that fell due in a jump is reacted to when advance()
    begins; catch_up="all" fires 100 a pass and "the rest at once after", which the
    firer does with a timer due now, which a FakeClock runs only when it moves: advance
    fired a few hundred of them and left the rest for later advances."""
    clock = FakeClock(start=T0)

    def setup(rt: Runtime) -> None:
        rt.add_agent("job", Job, concurrency=4)
        rt.add_workflow(SLOW)

    with Runtime(tmp_path, clock=clock, sweep_interval=0.05, setup=setup) as rt:
        rt.schedule("tick", "slow", every=1, catch_up="all", overlap="allow")
    clock.advance(1000)
    with Runtime(tmp_path, clock=clock, sweep_interval=0.05, setup=setup) as rt:
        advance(rt, clock, 0)
        [status] = rt.schedules()
        assert status.fired == 1000
        assert len(rt.list()) == 1000
