"""herder at the edges of scale a user reaches (found by review): many schedules, a
wide workflow that compensates. Each test counts work (records read, steps looked at)
rather than timing it, so a cost that grows with n per operation fails at any speed."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from herder.actors.engine import _states
from herder.runtime import (
    Agent,
    Permanent,
    RetryPolicy,
    Runtime,
    StepContext,
    Workflow,
    WorkflowFailed,
)
from herder.runtime import _firing as firing
from herder.runtime._schedules import slot_time
from herder.runtime.testing import FakeClock, advance, settle


class Job(Agent):
    def run(self, ctx: StepContext) -> str:
        return ctx.workflow_id


@pytest.mark.timeout(120)
def test_defining_n_schedules_reads_each_schedule_a_few_times_not_n_times(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each rt.schedule() woke the firer, whose pass reads every stored schedule: n
    schedules cost n passes over up to n records (2,000 took 24 s to define). A new
    schedule whose first slot comes after the pass already armed needs no pass now; one
    due earlier still wakes it and fires on time."""
    read = [0]
    real = firing.read_schedules

    def counted(store: object, *rest: object) -> list:  # type: ignore[type-arg]
        records = real(store, *rest)  # type: ignore[arg-type]
        read[0] += len(records)
        return records

    monkeypatch.setattr(firing, "read_schedules", counted)
    n = 300
    clock = FakeClock()
    with Runtime(tmp_path, clock=clock) as rt:
        rt.add_agent("job", Job, concurrency=4)
        rt.add_workflow(Workflow("job").step("run", agent="job", action="run"))
        for i in range(n):
            rt.schedule(f"hourly-{i}", "job", every=3600)
        settle(rt)
        assert read[0] < 3 * n, read[0]  # (it was about n * n / 2)
        rt.schedule("often", "job", every=1)  # due before the pass armed for the hour
        advance(rt, clock, 1.5)
        assert [s.id for s in rt.list()] == [f"often@{_slot(clock, 1)}"]


def _slot(clock: FakeClock, every: int) -> str:
    return slot_time(int(clock.time()) // every * every * 1000)


class Undoable(Agent):
    def __init__(self) -> None:
        self.undone: list[str] = []

    def do(self, ctx: StepContext) -> int:
        return 1

    def undo(self, ctx: StepContext) -> None:
        self.undone.append(ctx.step)

    def refuse(self, ctx: StepContext) -> None:
        raise Permanent("sold out")


@pytest.mark.timeout(120)
def test_compensating_a_wide_workflow_looks_at_each_step_a_few_times_not_n_times(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A workflow of n parallel steps whose join fails undoes all n, latest first. The
    Scheduler looked at every step twice per undo (``to_undo`` n * n times: 3.3 s of its
    time for 4,000 steps, minutes for 20,000); now a few times per step in all."""
    looked = [0]
    real = _states.to_undo

    def counted(st: Any) -> bool:
        looked[0] += 1
        return real(st)

    for name, module in list(sys.modules.items()):  # each engine module's own binding
        if name.startswith("herder.actors") and getattr(module, "to_undo", None) is real:
            monkeypatch.setattr(module, "to_undo", counted)
    n = 600
    once = RetryPolicy(max_attempts=1)
    wf = Workflow("wide")
    for i in range(n):
        wf.step(f"s{i}", agent="svc", action="do", compensate="undo", retry=once)
    wf.step("join", agent="svc", action="refuse", after=[f"s{i}" for i in range(n)])
    agent = Undoable()
    with Runtime(tmp_path) as rt:
        rt.add_agent("svc", lambda: agent, concurrency=4)
        rt.add_workflow(wf)
        with pytest.raises(WorkflowFailed):
            rt.start("wide", {}, workflow_id="w").result(timeout=60)
        history = rt.history("w")
    succeeded = [e["step"] for e in history if e["kind"] == "step" and e["to"] == "SUCCEEDED"]
    assert sorted(succeeded) == sorted(f"s{i}" for i in range(n))
    assert agent.undone == succeeded[::-1]  # each once, the latest to succeed first
    assert looked[0] < 10 * n, looked[0]  # (it was about n * n)


@pytest.mark.timeout(120)
def test_a_firing_pass_decodes_only_the_schedules_that_changed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each pass of the firer decoded every stored schedule (~40 us each: 0.4 s a pass for
    10,000), and a pass runs every 5 s while any queued slot waits or any schedule cannot
    fire. A record whose stored bytes did not change since the last pass is not decoded
    again; one that changed (fired, redefined) is."""
    from herder.store import ScheduleRecord

    decoded = [0]
    real = ScheduleRecord.from_dict.__func__  # type: ignore[attr-defined]

    def counted(cls: type, data: Any) -> Any:
        decoded[0] += 1
        return real(cls, data)

    monkeypatch.setattr(ScheduleRecord, "from_dict", classmethod(counted))
    n = 200
    clock = FakeClock()
    with Runtime(tmp_path, clock=clock) as rt:
        rt.add_agent("job", Job, concurrency=4)
        rt.add_workflow(Workflow("job").step("run", agent="job", action="run"))
        for i in range(n):
            rt.schedule(f"daily-{i}", "job", every=86400)
        rt.schedule("often", "job", every=10, overlap="allow")
        rt._fire_now()  # (a pass that reads them all once)
        decoded[0] = 0
        for _ in range(5):
            clock.advance(10)  # "often" falls due, the rest are not
            rt._fire_now()
        settle(rt)
        assert len(rt.list()) == 5
        assert decoded[0] < 5 * 4, decoded[0]  # (it was 5 * (n + 1) and more)


@pytest.mark.timeout(120)
def test_schedules_created_and_deleted_leave_nothing_behind_in_the_firer(
    tmp_path: Path,
) -> None:
    """The firer kept each schedule's last catch-up count by name and never forgot a
    deleted one: a daemon that makes and deletes schedules (one per customer, per
    order) grew by a few hundred bytes per schedule it ever fired, for months."""
    clock = FakeClock()
    with Runtime(tmp_path, clock=clock) as rt:
        rt.add_agent("job", Job, concurrency=4)
        rt.add_workflow(Workflow("job").step("run", agent="job", action="run"))
        for round_ in range(3):
            names = [f"r{round_}-{i}" for i in range(50)]
            for name in names:
                rt.schedule(name, "job", every=60)
            clock.advance(60)
            rt._fire_now()
            for name in names:
                rt.delete_schedule(name)
            rt._fire_now()
        settle(rt)
        assert len(rt.list()) == 150
        firer = rt._firer
        assert firer is not None
        kept = firer._slots  # (next slots and catch-up counts, by schedule name)
        assert not kept._counted, len(kept._counted)  # (it was 150)
        assert not kept._kept, len(kept._kept)


@pytest.mark.timeout(60)
def test_what_the_firer_keeps_between_passes_is_not_a_copy_of_each_records_bytes(
    tmp_path: Path,
) -> None:
    """What a pass keeps to know the records that did not change is a digest of each,
    not its bytes: a schedule's input may be up to a MiB, and the decoded record is
    kept as well."""
    with Runtime(tmp_path, clock=FakeClock()) as rt:
        rt.add_agent("job", Job, concurrency=4)
        rt.add_workflow(Workflow("job").step("run", agent="job", action="run"))
        rt.schedule("big", "job", every=86400, input={"blob": "x" * 500_000})
        rt._fire_now()
        firer = rt._firer
        assert firer is not None
        kept = sum(len(seen) for seen, _ in firer._known.values())
        assert 0 < kept < 100, kept
