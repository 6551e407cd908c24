"""Many schedules: what a firing pass and the testing kit's advance() look up of each one
that is not due (its next slot kept, not computed again; its record not decoded again)."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

import pytest

from herder.runtime import Agent, Runtime, StepContext, Workflow, _schedule_status, _schedules
from herder.runtime.testing import FakeClock, advance

T0 = datetime.datetime(2027, 1, 15, 8, 0, 0, 500000, tzinfo=datetime.UTC).timestamp()


class Job(Agent):
    def run(self, ctx: StepContext) -> str:
        return ctx.workflow_id


def open_runtime(path: Path, clock: FakeClock) -> Runtime:
    rt = Runtime(path, clock=clock, sweep_interval=0.05)
    rt.add_agent("job", Job, concurrency=4)
    rt.add_workflow(Workflow("job").step("run", agent="job", action="run"))
    return rt


@pytest.mark.timeout(60)
def test_a_pass_keeps_each_schedules_next_slot_beyond_any_cache_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The next slot of a cron schedule was kept in an LRU cache of 32,768 entries, one per
    # schedule: with more cron schedules than that, each pass evicted every entry before
    # the next pass asked for it again, and looked every one up anew (40,000 schedules:
    # 2.5 s a pass, against 0.05 s for 10,000). Emptying the cache between two passes
    # stands in for those 32,768 others: the pass still finds each slot kept.
    with open_runtime(tmp_path, FakeClock(start=T0)) as rt:
        for i in range(20):
            rt.schedule(f"nightly{i}", "job", cron=f"{i} 2 * * *", timezone="Europe/Riga")
        rt._fire_now()
        _schedules._cron_after.cache_clear()  # (as the other schedules' lookups evict it)
        looked_up: list[object] = []
        real = _schedules._cron

        def counted(*args: Any, **kwargs: Any) -> Any:
            looked_up.append(args)
            return real(*args, **kwargs)

        monkeypatch.setattr(_schedules, "_cron", counted)
        rt._fire_now()
        rt._fire_now()
        assert looked_up == []
        assert rt._next_slots() == {s.name: s.next_at for s in rt.schedules()}


@pytest.mark.timeout(60)
def test_a_schedule_deleted_and_made_again_at_the_same_time_gets_its_new_slots(
    tmp_path: Path,
) -> None:
    # Kept by name and cursor alone, a schedule made again at the same instant with
    # another cron (the same cursor: now) would keep the slot of the one it replaced.
    clock = FakeClock(start=T0)
    with open_runtime(tmp_path, clock) as rt:
        rt.schedule("report", "job", cron="0 * * * *")
        rt._fire_now()
        rt.delete_schedule("report")
        status = rt.schedule("report", "job", cron="30 * * * *")
        assert status.next_at == T0 - 0.5 + 30 * 60
        assert rt._next_slots() == {"report": status.next_at}
        advance(rt, clock, 30 * 60)
        assert [s.id for s in rt.list()] == ["report@2027-01-15T08:30:00Z"]


@pytest.mark.timeout(60)
def test_advance_does_not_decode_every_schedule_at_each_stop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # advance() listed rt.schedules() twice at each stop, decoding every record and
    # looking up its next slot: 5,000 schedules cost 0.4 s a stop. It asks the firer,
    # which decodes only the records that changed since its last pass.
    clock = FakeClock(start=T0)
    with open_runtime(tmp_path, clock) as rt:
        for i in range(40):
            rt.schedule(f"hourly{i}", "job", every=3600)
        rt.schedule("tick", "job", every=1)
        advance(rt, clock, 1)
        decoded: list[bytes] = []
        real = _schedule_status._record

        def counted(key: bytes, raw: bytes) -> Any:
            decoded.append(key)
            return real(key, raw)

        monkeypatch.setattr(_schedule_status, "_record", counted)
        advance(rt, clock, 5)  # (a stop at each of tick's slots)
        assert len([s for s in rt.list() if s.id.startswith("tick@")]) == 6
        monkeypatch.undo()
        assert len(decoded) < 40, f"{len(decoded)} records decoded in 5 stops"
        assert all(key == decoded[0] for key in decoded)  # (tick's, which moved)
