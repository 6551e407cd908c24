"""herder at the edges of scale a user reaches (found by review): many schedules, a
wide workflow that compensates. Each test counts work (records read, steps looked at)
rather than timing it, so a cost that grows with n per operation fails at any speed."""

from __future__ import annotations

from pathlib import Path

import pytest

from herder.runtime import Agent, Runtime, StepContext, Workflow
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

    def counted(store: object) -> list:  # type: ignore[type-arg]
        records = real(store)  # type: ignore[arg-type]
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
