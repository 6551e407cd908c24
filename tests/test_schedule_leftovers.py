"""Schedules, found by review: a damaged record logged at every firing pass, a stop
during a commit of firings warned of, a later workflow version whose deadline is
shorter than a stored schedule's jitter."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import pytest
from test_schedules_edges import open_runtime

from herder.actors import Agent, StepContext
from herder.runtime import Runtime, Workflow, _firing, _firing_batch
from herder.runtime._check import check_store
from herder.runtime.testing import FakeClock
from herder.store import Put, ScheduleRecord, Transition, encode, schedule_key

WAIT = 10.0


def _damage(rt: Runtime, name: str, every: object) -> None:
    raw = encode({"name": name, "workflow": "job", "every": every})
    put = Put("schedules", schedule_key(name), raw)
    rt._store.writer.submit(Transition(ops=(put,))).result(timeout=WAIT)


def _named(caplog: pytest.LogCaptureFixture, name: str) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.name == "herder.schedules" and repr(schedule_key(name)) in r.getMessage()
    ]


@pytest.mark.timeout(60)
def test_a_damaged_schedule_is_logged_once_per_damage_not_at_every_pass(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Each firing pass (at least one a minute) logged it at ERROR again, forever."""
    caplog.set_level(logging.INFO, logger="herder.schedules")
    with open_runtime(tmp_path, FakeClock(start=1.8e9)) as rt:
        rt.schedule("tick", "job", every=60)
        _damage(rt, "gone", "sixty")
        for _ in range(3):
            rt._fire_now()
        [logged] = _named(caplog, "gone")
        assert logged.levelno == logging.ERROR
        _damage(rt, "gone", [1, 2])  # damaged another way: said again, once
        for _ in range(3):
            rt._fire_now()
        assert len(_named(caplog, "gone")) == 2
        caplog.clear()
        assert [s.name for s in rt.schedules()] == ["tick"]  # still named, when asked
        assert len(_named(caplog, "gone")) == 1
        assert not check_store(rt._store).ok


@pytest.mark.timeout(60)
def test_a_stop_while_firings_are_committed_warns_of_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The batch refused by the stop (RuntimeClosed, or StoreClosed) was logged as
    "schedules could not fire" at WARNING: nothing failed, the slot fires at the next
    open."""
    caplog.set_level(logging.INFO, logger="herder.schedules")
    clock = FakeClock(start=1.8e9)
    entered, stopping = threading.Event(), threading.Event()
    with open_runtime(tmp_path, clock) as rt:
        rt.schedule("tick", "job", every=60)
        starting_many, firer = rt._starting_many, rt._firer
        assert firer is not None
        halt = firer.halt

        def commit(*args: Any) -> Any:  # the firer's batch, held until the stop began
            entered.set()
            assert stopping.wait(WAIT)
            return starting_many(*args)

        def halting() -> None:
            stopping.set()
            halt()

        monkeypatch.setattr(rt, "_starting_many", commit)
        monkeypatch.setattr(firer, "halt", halting)
        clock.advance(60)
        assert entered.wait(WAIT)
    assert stopping.is_set()
    warned = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [r.getMessage() for r in warned if r.name == "herder.schedules"] == []
    with open_runtime(tmp_path, clock) as rt:  # the slot fires at the next open
        rt._fire_now()
        assert [s.name for s in rt.schedules()] == ["tick"]
        assert rt.schedules()[0].fired == 1


@pytest.mark.timeout(60)
def test_a_handoff_whose_release_a_firing_pass_meets_is_no_lost_lease(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """rt.handoff() releases the lease, then stops the firer: a pass in between that
    wrote (a slot skipped behind a running firing) was refused by the released lease,
    and the firer took that for a deposition: "lease lost ... restart it with
    standby=True" at CRITICAL and "schedules could not fire" at WARNING in a clean
    handoff, and the runtime marked as having lost its lease."""
    caplog.set_level(logging.INFO)
    clock = FakeClock(start=1.8e9)
    rt = open_runtime(tmp_path, clock)
    rt.add_workflow(Workflow("slow").step("run", agent="job", action="run", delay=3600))
    rt.schedule("tick", "slow", every=60)
    clock.advance(60)
    rt._fire_now()  # its firing's step waits an hour: the next slot is skipped
    release, firer = rt._store.release_lease, rt._firer
    assert firer is not None

    def released(*args: Any, **kwargs: Any) -> Any:
        done = release(*args, **kwargs)
        clock.step_wall(60)  # the next slot is due
        firer.fire_due()  # (as the firer's thread may, until the stop halts it)
        return done

    monkeypatch.setattr(rt._store, "release_lease", released)
    assert rt.handoff(deadline=1.0)
    assert rt._ctx.lost is None
    loud = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert [m for m in loud if "lease lost" in m or "could not fire" in m] == []


class _Lines(logging.Handler):
    """The herder.schedules lines about one schedule, each setting ``seen`` (kept here:
    caplog's handler gets a record only after this one woke the test)."""

    def __init__(self, about: str) -> None:
        super().__init__()
        self.about, self.lines, self.seen = about, list[str](), threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.about in record.getMessage():
            self.lines.append(record.getMessage())
            self.seen.set()


@pytest.mark.timeout(60)
def test_a_later_version_whose_deadline_is_shorter_than_a_schedules_jitter_is_warned_of(
    tmp_path: Path,
) -> None:
    """rt.schedule() refuses a jitter past the workflow's deadline; a later version with
    a shorter deadline was not checked against the stored schedules: its firings delayed
    past it ended COMPENSATED, "deadline passed", before a step ran, in silence."""
    lines = _Lines("schedule 'tick'")
    logging.getLogger("herder.schedules").addHandler(lines)
    try:
        with open_runtime(tmp_path, FakeClock(start=1.8e9)) as rt:
            rt.schedule("tick", "job", every=3600, jitter=600)
            rt._fire_now()
            assert lines.lines == []
            later = Workflow("job", version=2, deadline=60)
            rt.add_workflow(later.step("run", agent="job", action="run"))
            assert lines.seen.wait(WAIT)  # (the firer's pass after add_workflow)
            rt._fire_now()
            [line] = lines.lines  # (once, not at every pass)
            assert "jitter 600 s passes the deadline of workflow 'job' version 2 (60 s)" in line
            assert "rt.schedule()" in line
            rt.schedule("tick", "job", every=3600, jitter=60)  # as it says: no more
            lines.seen.clear()
            rt._fire_now()
            assert lines.lines == [line]
    finally:
        logging.getLogger("herder.schedules").removeHandler(lines)


@pytest.mark.timeout(60)
def test_a_schedule_that_cannot_fire_is_warned_of_once_until_it_fires(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A schedule that fails at every try (a cron schedule where the ``cron`` extra is
    missing, a timezone this host's tz data lacks) is tried again every RETRY (5) s,
    and each try logged "could not fire" again: 17,280 lines a day, for ever."""
    caplog.set_level(logging.INFO, logger="herder.schedules")
    clock = FakeClock(start=1.8e9)
    with open_runtime(tmp_path, clock) as rt:
        rt.schedule("tick", "job", every=60)
        stored = ScheduleRecord.from_dict(rt._store.get("schedules", schedule_key("tick")))
        gone = stored.evolve(every=None, cron="0 2 * * *", timezone="US/Pacific-New")
        put = Put("schedules", schedule_key("tick"), encode(gone.to_dict()))
        rt._store.writer.submit(Transition(ops=(put,))).result(timeout=WAIT)
        for _ in range(3):
            clock.advance(_firing.RETRY)
            rt._fire_now()
        [warned] = [r for r in caplog.records if "could not fire" in r.getMessage()]
        assert "unknown timezone 'US/Pacific-New'" in warned.getMessage()
        rt.schedule("tick", "job", every=60)  # fixed: it fires again, and a new failure
        clock.advance(60)  # (after it fired once) is said again
        rt._fire_now()
        assert rt.schedules()[0].fired == 1
        put = Put("schedules", schedule_key("tick"), encode(gone.to_dict()))
        rt._store.writer.submit(Transition(ops=(put,))).result(timeout=WAIT)
        rt._fire_now()
        assert len([r for r in caplog.records if "could not fire" in r.getMessage()]) == 2


@pytest.mark.timeout(60)
def test_due_slots_waiting_for_room_are_warned_of_once_until_they_fire(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While ``max_active_workflows`` is full, every pass's batch timed out waiting for
    room and logged "schedules could not fire" with the moment's counts, so the same
    state was warned of every RETRY (5) s for as long as it lasted: a daemon at capacity
    wrote ~14,000 lines a day. Once until they fire now, and again after that."""
    monkeypatch.setattr(_firing_batch, "CAPACITY_WAIT", 0.05)  # (real seconds: no room)
    caplog.set_level(logging.INFO, logger="herder.schedules")
    clock, release, fired = FakeClock(start=1.8e9), threading.Event(), threading.Event()

    class Held(Agent):
        def run(self, ctx: StepContext) -> None:
            (release if ctx.workflow_id == "by-hand" else fired).wait(WAIT)

    with Runtime(tmp_path, clock=clock, sweep_interval=0.05, max_active_workflows=1) as rt:
        rt.add_agent("held", Held)
        rt.add_workflow(Workflow("held").step("run", agent="held", action="run"))
        held = rt.start("held", workflow_id="by-hand")
        rt.schedule("tick", "held", every=60, overlap="allow")
        for _ in range(3):
            clock.advance(60)
            rt._fire_now()
        [warned] = [r for r in caplog.records if "could not fire" in r.getMessage()]
        assert "max_active_workflows=1" in warned.getMessage()
        release.set()
        held.result(timeout=WAIT)
        rt._fire_now()  # room again: the due slot fires
        assert rt.schedules()[0].fired == 1
        clock.advance(60)  # its firing holds the room now: a new wait is said again
        rt._fire_now()
        assert len([r for r in caplog.records if "could not fire" in r.getMessage()]) == 2
        fired.set()
