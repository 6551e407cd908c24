"""Periodic schedules on a FakeClock: slots, overlap, catch-up, DST, pause, check, CLI."""

from __future__ import annotations

import datetime
import io
import json
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from herder.runtime import (
    Agent,
    InvalidInput,
    MissingExtra,
    Runtime,
    StepContext,
    UnknownName,
    Workflow,
    _console,
    _schedules,
)
from herder.runtime._check import check_store
from herder.runtime._cli import main
from herder.runtime._schedules import slot_id, slot_of
from herder.runtime.testing import FakeClock, advance, settle, wait_until
from herder.store import Put, ScheduleRecord, Transition, encode, schedule_key

WAIT = 10.0
T0 = datetime.datetime(2027, 1, 15, 8, 0, 0, 500000, tzinfo=datetime.UTC).timestamp()
GATES: dict[str, threading.Event] = {}  # workflow id -> what its step waits for


class Job(Agent):
    """Returns its workflow id; a workflow whose id has a gate waits for it."""

    def run(self, ctx: StepContext) -> str:
        gate = GATES.get(ctx.workflow_id)
        if gate is not None:
            gate.wait(WAIT)
        return ctx.workflow_id


JOB = Workflow("job").step("run", agent="job", action="run")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(start=T0)


@pytest.fixture
def rt(tmp_path: Path, clock: FakeClock) -> Iterator[Runtime]:
    with open_runtime(tmp_path, clock) as runtime:
        yield runtime
    GATES.clear()


def open_runtime(path: Path, clock: FakeClock) -> Runtime:
    runtime = Runtime(path, clock=clock, sweep_interval=0.05)
    runtime.add_agent("job", Job, concurrency=4)
    runtime.add_workflow(JOB)
    return runtime


def fired(runtime: Runtime) -> list[str]:
    return sorted(s.id for s in runtime.list())


def finish_all(runtime: Runtime) -> None:
    for gate in GATES.values():
        gate.set()
    wait_until(runtime, lambda: all(s.state.is_final for s in runtime.list()))
    settle(runtime)


def ids(name: str, *times: str) -> list[str]:
    return [f"{name}@2027-01-15T{t}Z" for t in times]


def test_every_slot_starts_one_workflow_named_after_the_slot(rt: Runtime, clock: FakeClock) -> None:
    status = rt.schedule("tick", "job", every=60, input={"n": 1})
    assert status.next_at == T0 - 0.5 + 60  # slots are multiples of every since the epoch
    for _ in range(3):
        advance(rt, clock, 60)
        finish_all(rt)
    assert fired(rt) == ids("tick", "08:01:00", "08:02:00", "08:03:00")
    assert rt.status("tick@2027-01-15T08:01:00Z").input == {"n": 1}
    [listed] = rt.schedules()
    assert (listed.fired, listed.skipped, listed.last_id) == (3, 0, ids("tick", "08:03:00")[0])
    assert listed.next_at == T0 - 0.5 + 240
    assert check_store(rt._store).ok


def test_schedule_again_with_the_same_settings_changes_nothing(
    rt: Runtime, clock: FakeClock
) -> None:
    rt.schedule("tick", "job", every=60)
    advance(rt, clock, 60)
    finish_all(rt)
    again = rt.schedule("tick", "job", every=60)
    assert (again.fired, again.last_id) == (1, ids("tick", "08:01:00")[0])
    changed = rt.schedule("tick", "job", every=120, input="new")
    assert (changed.fired, changed.every, changed.input) == (1, 120.0, "new")
    advance(rt, clock, 60)
    assert fired(rt) == ids("tick", "08:01:00", "08:02:00")


@pytest.mark.parametrize("catch_up", ["all", "latest"])
def test_new_slots_begin_after_the_schedule_is_changed(
    rt: Runtime, clock: FakeClock, catch_up: str
) -> None:
    """An hourly schedule changed to every minute (an app upgrade) 59 minutes after its
    last slot: the minute slots of that hour never existed and must not fire."""
    rt.schedule("rep", "job", every=3600, catch_up=catch_up, overlap="allow")
    advance(rt, clock, 3600)
    assert fired(rt) == ids("rep", "09:00:00")
    advance(rt, clock, 59 * 60)
    rt.schedule("rep", "job", every=60, catch_up=catch_up, overlap="allow")
    advance(rt, clock, 0.25)
    assert fired(rt) == ids("rep", "09:00:00")
    advance(rt, clock, 60)
    assert fired(rt) == ids("rep", "09:00:00", "10:00:00")


@pytest.mark.parametrize(
    ("overlap", "expected", "skipped"),
    [
        ("skip", ("08:01:00", "08:03:00"), 1),
        ("queue", ("08:01:00", "08:02:00"), 0),
        ("allow", ("08:01:00", "08:02:00"), 0),
    ],
)
def test_overlap_decides_what_a_slot_does_while_the_last_firing_runs(
    rt: Runtime, clock: FakeClock, overlap: str, expected: tuple[str, ...], skipped: int
) -> None:
    first = ids("tick", "08:01:00")[0]
    GATES[first] = threading.Event()
    rt.schedule("tick", "job", every=60, overlap=overlap)
    advance(rt, clock, 60)  # 08:01 fires and its step waits on the gate
    advance(rt, clock, 60)  # 08:02 is due while 08:01 runs
    at_0802 = fired(rt)
    finish_all(rt)  # 08:01 ends: a queued 08:02 fires now
    advance(rt, clock, 0)
    finish_all(rt)
    if overlap == "queue":
        assert at_0802 == [first]
        assert fired(rt) == ids("tick", *expected)
    elif overlap == "allow":
        assert at_0802 == ids("tick", *expected)
    else:
        assert at_0802 == [first]
        advance(rt, clock, 60)  # 08:03: the previous firing has ended
        finish_all(rt)
        assert fired(rt) == ids("tick", *expected)
    assert rt.schedules()[0].skipped == skipped


@pytest.mark.parametrize(
    ("catch_up", "down", "expected"),
    [
        # Every 5 min, down from 08:00:00.5 to 08:25:30.5: 08:05 .. 08:25 fell due and
        # the newest is 30.5 s old.
        ("all", 1530, ("08:05:00", "08:10:00", "08:15:00", "08:20:00", "08:25:00")),
        ("latest", 1530, ("08:25:00",)),
        ("none", 1530, ("08:25:00",)),  # on time: within a minute of its slot
        ("latest", 1590, ("08:25:00",)),  # the newest due slot, however late
        ("none", 1590, ()),  # 08:25 is 90.5 s late: passed over
    ],
)
def test_catch_up_decides_which_slots_missed_while_down_fire(
    tmp_path: Path, clock: FakeClock, catch_up: str, down: float, expected: tuple[str, ...]
) -> None:
    with open_runtime(tmp_path, clock) as rt:
        rt.schedule("tick", "job", every=300, catch_up=catch_up, overlap="allow")
    clock.advance(down)
    with open_runtime(tmp_path, clock) as rt:
        rt._fire_now()
        finish_all(rt)
        assert fired(rt) == ids("tick", *expected)
        [status] = rt.schedules()
        assert status.fired == len(expected)
        assert status.skipped == 5 - len(expected)  # every slot that fell due and did not fire
        assert status.next_at == T0 - 0.5 + 1800  # 08:30, after the slots handled
        assert check_store(rt._store).ok


def test_a_paused_schedule_fires_nothing_and_resumes_from_its_next_slot(
    rt: Runtime, clock: FakeClock
) -> None:
    rt.schedule("tick", "job", every=60, catch_up="all")
    rt.pause_schedule("tick")
    assert rt.schedules()[0].next_at is None
    advance(rt, clock, 180)
    assert fired(rt) == []
    rt.resume_schedule("tick")
    advance(rt, clock, 60)
    finish_all(rt)
    assert fired(rt) == ids("tick", "08:04:00")  # 08:01-08:03 passed while paused
    rt.delete_schedule("tick")
    advance(rt, clock, 120)
    assert fired(rt) == ids("tick", "08:04:00")
    assert rt.schedules() == []
    with pytest.raises(UnknownName, match="no schedule named 'tick'"):
        rt.pause_schedule("tick")


def test_slot_ids_read_back_to_their_slot() -> None:
    for ms in (0, 1_800_000_000_000, 1_800_000_000_250):
        assert slot_of("a@b", slot_id("a@b", ms)) == ms
    assert slot_of("tick", "tick@nonsense") is None
    assert slot_of("tick", "tock@2027-01-15T08:01:00Z") is None


def test_jitter_delays_the_first_steps_by_the_same_share_every_time(
    rt: Runtime, clock: FakeClock
) -> None:
    rt.schedule("tick", "job", every=600, jitter=300)
    advance(rt, clock, 600)
    [wid] = fired(rt)
    waits = rt.status(wid).steps["run"].waits_until
    assert waits is not None
    assert T0 - 0.5 + 600 < waits < T0 - 0.5 + 900
    advance(rt, clock, 300)
    assert rt.handle(wid).result(timeout=WAIT) == {"run": wid}


def test_bad_schedules_are_refused_with_what_to_fix(rt: Runtime) -> None:
    with pytest.raises(InvalidInput, match="exactly one of cron"):
        rt.schedule("s", "job")
    with pytest.raises(InvalidInput, match="exactly one of cron"):
        rt.schedule("s", "job", cron="* * * * *", every=60)
    with pytest.raises(InvalidInput, match="every must be"):
        rt.schedule("s", "job", every=0.5)
    with pytest.raises(InvalidInput, match="overlap must be one of"):
        rt.schedule("s", "job", every=60, overlap="sometimes")
    for zone in ("Mars/Olympus", "America", "A" * 300):  # (a folder; a name too long)
        with pytest.raises(InvalidInput, match=f"unknown timezone '{zone}'"):
            rt.schedule("s", "job", every=60, timezone=zone)
    with pytest.raises(InvalidInput, match="not a cron expression"):
        rt.schedule("s", "job", cron="61 * * * *")
    for cron in (5, ["0", "2"]):
        with pytest.raises(InvalidInput, match="cron must be a cron expression such as"):
            rt.schedule("s", "job", cron=cron)  # type: ignore[arg-type]
    for jitter in (float("inf"), 1e12, 60):  # 60: not under the minute between its slots
        with pytest.raises(InvalidInput, match=r"jitter .* must be less than the 60 s between"):
            rt.schedule("s", "job", cron="* * * * *", jitter=jitter)
    # The closest slots decide, whenever it is asked (at 08:00:00.5 the next two slots,
    # 09:00 and 08:00 tomorrow, are 23 h apart; an hour later they are 1 h apart):
    with pytest.raises(InvalidInput, match=r"less than the 3600 s between its closest slots"):
        rt.schedule("s", "job", cron="0 8,9 * * *", jitter=7200)
    assert rt.schedule("s", "job", cron="* * * * *", jitter=59).jitter == 59.0
    rt.delete_schedule("s")
    with pytest.raises(UnknownName, match="no workflow named 'nope'"):
        rt.schedule("s", "nope", every=60)
    assert rt.schedules() == []


def test_every_works_without_the_cron_extra(
    rt: Runtime, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "cronsim", None)  # import cronsim now fails
    with pytest.raises(MissingExtra, match=r"herder\[cron\]"):
        rt.schedule("nightly", "job", cron="0 2 * * *")
    rt.schedule("tick", "job", every=60)
    advance(rt, clock, 60)
    assert fired(rt) == ids("tick", "08:01:00")


@pytest.mark.parametrize(
    ("cron", "start", "hours", "expected_local"),
    [
        # Spring forward in New York, 2027-03-14 02:00 -> 03:00: 02:30 does not exist and
        # fires when the clock jumps (Debian cron), once.
        ("30 2 * * *", "2027-03-13T12:00", 48, ["2027-03-14T03:00", "2027-03-15T02:30"]),
        # Fall back, 2027-11-07 02:00 -> 01:00: 01:30 happens twice and fires once.
        ("30 1 * * *", "2027-11-06T12:00", 48, ["2027-11-07T01:30-04:00", "2027-11-08T01:30"]),
        # Hourly through the fall back: both 01:00s fire, as distinct instants.
        (
            "0 * * * *",
            "2027-11-07T00:30",
            3,
            ["2027-11-07T01:00-04:00", "2027-11-07T01:00-05:00", "2027-11-07T02:00"],
        ),
    ],
)
def test_cron_slots_follow_dst_changes_in_their_timezone(
    tmp_path: Path, cron: str, start: str, hours: int, expected_local: list[str]
) -> None:
    zone = "America/New_York"
    begin = datetime.datetime.fromisoformat(start).replace(tzinfo=ZoneInfo(zone))
    clock = FakeClock(start=begin.timestamp())
    with open_runtime(tmp_path, clock) as rt:
        rt.schedule("dst", "job", cron=cron, timezone=zone, catch_up="all", overlap="allow")
        for _ in range(hours * 4):
            advance(rt, clock, 900)
        finish_all(rt)
        got = fired(rt)
        assert check_store(rt._store).ok
    expected = []
    for local in expected_local:
        when = datetime.datetime.fromisoformat(local)
        if when.tzinfo is None:
            when = when.replace(tzinfo=ZoneInfo(zone))
        expected.append(f"dst@{when.astimezone(datetime.UTC):%Y-%m-%dT%H:%M:%S}Z")
    assert got == sorted(expected)


NY = ZoneInfo("America/New_York")
# 2027-11-07 01:10 EST: the second pass of New York's repeated hour, 40 minutes after
# 01:30 EDT, the one instant "30 1 * * *" has that night (cronsim yields it from here).
REPEATED = datetime.datetime(2027, 11, 7, 1, 10, tzinfo=NY, fold=1)
NEXT_NIGHT = datetime.datetime(2027, 11, 8, 1, 30, tzinfo=NY).timestamp()


def test_a_cron_schedule_made_in_the_repeated_hour_fires_no_slot_from_before_it(
    tmp_path: Path,
) -> None:
    clock = FakeClock(start=REPEATED.timestamp())
    with open_runtime(tmp_path, clock) as rt:
        status = rt.schedule("nightly", "job", cron="30 1 * * *", timezone="America/New_York")
        assert status.next_at == NEXT_NIGHT  # not 01:30 EDT, 40 minutes ago
        advance(rt, clock, 60)
        settle(rt)
        assert fired(rt) == []
        [listed] = rt.schedules()
        assert listed.next_at == NEXT_NIGHT


@pytest.mark.parametrize("how", ["resumed", "cadence changed"])
def test_a_cron_cursor_moved_to_now_in_the_repeated_hour_fires_no_slot_before_it(
    tmp_path: Path, how: str
) -> None:
    """resume_schedule() and a changed cadence move the cursor to now; from the second
    pass of the repeated hour the next slot is still one after it."""
    before = datetime.datetime(2027, 11, 7, 0, 0, tzinfo=NY)
    clock = FakeClock(start=before.timestamp())
    with open_runtime(tmp_path, clock) as rt:
        zone = "America/New_York"
        if how == "resumed":
            rt.schedule("nightly", "job", cron="30 1 * * *", timezone=zone)
            rt.pause_schedule("nightly")
        else:
            rt.schedule("nightly", "job", cron="0 3 * * *", timezone=zone)
        clock.advance(REPEATED.timestamp() - before.timestamp())  # (01:30 EDT passed)
        settle(rt)
        if how == "resumed":
            rt.resume_schedule("nightly")
        else:
            rt.schedule("nightly", "job", cron="30 1 * * *", timezone=zone)
        advance(rt, clock, 60)
        settle(rt)
        assert fired(rt) == []
        [listed] = rt.schedules()
        assert listed.next_at == NEXT_NIGHT


@pytest.mark.parametrize("catch_up", ["latest", "all", "none"])
def test_no_cron_slot_at_or_before_the_cursor_is_due(catch_up: str) -> None:
    record = _schedules.new_schedule(
        "nightly",
        "job",
        REPEATED.timestamp(),
        input=None,
        cron="30 1 * * *",
        every=None,
        overlap="skip",
        catch_up=catch_up,
        jitter=0.0,
        timezone="America/New_York",
    )
    now_ms = int(REPEATED.timestamp() * 1000) + 600_000
    assert _schedules.next_slot(record, record.cursor_ms) == NEXT_NIGHT * 1000
    assert _schedules.to_fire(record, now_ms) == ([], None)
    assert _schedules.count_slots(record, record.cursor_ms, now_ms) == 0


def test_herder_schedules_lists_next_firing_and_check_knows_the_records(
    tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_console, "_rich_console", lambda out: None)  # plain table
    with open_runtime(tmp_path, clock) as rt:
        rt.schedule("nightly", "job", cron="0 2 * * *", timezone="Europe/Riga")
        rt.schedule("tick", "job", every=60, overlap="queue", catch_up="all")
        advance(rt, clock, 60)
        finish_all(rt)
    out = io.StringIO()
    assert main(["schedules", "--store", str(tmp_path), "--json"], out=out) == 0
    listed = {s["name"]: s for s in json.loads(out.getvalue())}
    nightly = datetime.datetime(2027, 1, 16, 2, 0, tzinfo=ZoneInfo("Europe/Riga"))
    assert listed["nightly"]["next_at"] == nightly.timestamp()
    assert listed["tick"]["last_id"] == ids("tick", "08:01:00")[0]
    assert listed["tick"]["overlap"] == "queue"
    table = io.StringIO()
    assert main(["schedules", "--store", str(tmp_path)], out=table) == 0
    assert "cron '0 2 * * *' (Europe/Riga)" in table.getvalue()
    assert main(["check", "--store", str(tmp_path)], out=io.StringIO()) == 0


def test_check_reports_a_schedule_record_that_disagrees_with_the_store(
    rt: Runtime, clock: FakeClock
) -> None:
    rt.schedule("tick", "job", every=60)
    advance(rt, clock, 60)
    finish_all(rt)
    assert check_store(rt._store).ok
    record = ScheduleRecord.from_dict(rt._store.get("schedules", schedule_key("tick")))
    bad = record.evolve(cursor_ms=record.cursor_ms - 60_000, workflow="gone")
    ops = (
        Put("schedules", schedule_key("moved"), encode(record.to_dict())),
        Put("schedules", schedule_key("tick"), encode(bad.to_dict())),
        Put("schedules", schedule_key("junk"), encode({"name": "junk", "cron": 5})),
    )
    rt._store.writer.submit(Transition(ops=ops)).result(timeout=WAIT)
    problems = sorted((p.key, p.message) for p in check_store(rt._store).problems)
    assert problems[0][0] == b"junk"
    assert problems[0][1].startswith("bad record: TypeError")
    assert problems[1:] == [
        (b"moved", "holds schedule 'tick'"),
        (b"tick", "workflow 'gone' is not stored"),
        (b"tick@2027-01-15T08:01:00Z", "fired after the cursor of 'tick'"),
    ]


def test_a_wall_clock_step_neither_repeats_nor_loses_slots_beyond_catch_up(
    rt: Runtime, clock: FakeClock
) -> None:
    rt.schedule("tick", "job", every=60, catch_up="all", overlap="allow")
    advance(rt, clock, 60)
    finish_all(rt)
    clock.step_wall(-120)  # back to 07:59: 08:01 must not fire again
    advance(rt, clock, 120)
    finish_all(rt)
    assert fired(rt) == ids("tick", "08:01:00")
    clock.step_wall(180)  # forward to 08:04:00.5: 08:02-08:04 fall due at once
    advance(rt, clock, 0)
    finish_all(rt)
    assert fired(rt) == ids("tick", "08:01:00", "08:02:00", "08:03:00", "08:04:00")


def _declare(runtime: Runtime) -> None:
    """A daemon's setup (``herder run --app``): registers, and declares its schedule."""
    runtime.add_agent("job", Job, concurrency=4)
    runtime.add_workflow(JOB)
    declared = runtime.schedule("tick", "job", every=60)
    assert (declared.name, declared.every, declared.fired) == ("tick", 60.0, 0)  # as declared


@pytest.mark.parametrize("standby", [False, True], ids=["active", "standby"])
def test_a_schedule_declared_in_setup_is_stored_once_the_runtime_is_active(
    tmp_path: Path, clock: FakeClock, standby: bool
) -> None:
    with Runtime(
        tmp_path,
        clock=clock,
        sweep_interval=0.05,
        standby=standby,
        standby_poll=0.02,
        setup=_declare,
    ) as runtime:
        assert runtime.wait_active(WAIT)
        assert [s.name for s in runtime.schedules()] == ["tick"]
        advance(runtime, clock, 60)
        finish_all(runtime)
        assert fired(runtime) == ids("tick", "08:01:00")
    with Runtime(tmp_path, clock=clock, setup=_declare) as again:  # the next start: the same
        [listed] = again.schedules()
        assert (listed.fired, listed.last_id) == (1, ids("tick", "08:01:00")[0])


@pytest.mark.parametrize("catch_up", ["all", "latest"])
def test_a_schedule_declared_before_activation_starts_when_it_is_stored(
    tmp_path: Path, clock: FakeClock, catch_up: str
) -> None:
    """A standby keeps the schedules its setup declared until it takes over, maybe hours
    later: stood in for here by a setup during which an hour passes. The schedule did
    not exist in that hour, so none of its slots fire at takeover."""

    def setup(runtime: Runtime) -> None:
        runtime.add_agent("job", Job, concurrency=4)
        runtime.add_workflow(JOB)
        runtime.schedule("tick", "job", every=60, catch_up=catch_up, overlap="allow")
        clock.advance(3600)  # waiting for the lease

    with Runtime(tmp_path, clock=clock, sweep_interval=0.05, setup=setup) as runtime:
        assert runtime.wait_active(WAIT)
        runtime._fire_now()
        settle(runtime)
        assert fired(runtime) == []
        [listed] = runtime.schedules()
        assert listed.next_at == T0 - 0.5 + 3600 + 60
        advance(runtime, clock, 60)
        finish_all(runtime)
        assert fired(runtime) == ids("tick", "09:01:00")


def test_a_schedule_declared_twice_before_activation_is_stored_as_last_declared(
    tmp_path: Path, clock: FakeClock
) -> None:
    # Declarations made before the runtime was active (setup, a standby) were each
    # applied in turn when it became active: a default overridden in the same setup by
    # the stored settings moved the cursor to now twice (slots changed, and changed
    # back), and the downtime's slots, which the stored settings had, were not caught
    # up, at every start. The last declaration of a name is the one stored.
    def setup(runtime: Runtime, *cadences: float) -> None:
        runtime.add_agent("job", Job, concurrency=4)
        runtime.add_workflow(JOB)
        for every in cadences:
            runtime.schedule("tick", "job", every=every, catch_up="all", overlap="allow")

    with Runtime(tmp_path, clock=clock, setup=lambda rt: setup(rt, 60)):
        pass
    clock.advance(180)  # down for three slots
    with Runtime(tmp_path, clock=clock, setup=lambda rt: setup(rt, 3600, 60)) as runtime:
        runtime._fire_now()
        finish_all(runtime)
        assert fired(runtime) == ids("tick", "08:01:00", "08:02:00", "08:03:00")
        assert [s.every for s in runtime.schedules()] == [60.0]


def test_a_bad_schedule_in_setup_fails_the_runtime_at_once(
    tmp_path: Path, clock: FakeClock
) -> None:
    def setup(runtime: Runtime) -> None:
        runtime.add_agent("job", Job)
        runtime.schedule("tick", "no-such-workflow", every=60)

    with pytest.raises(UnknownName, match="no workflow named 'no-such-workflow'"):
        Runtime(tmp_path, clock=clock, setup=setup)
    with Runtime(tmp_path, clock=clock) as runtime:  # nothing declared, nothing locked
        assert runtime.schedules() == []


def test_a_cron_catch_up_counts_every_slot_it_passed_over(
    tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    with open_runtime(tmp_path, clock) as runtime:
        runtime.schedule("tick", "job", cron="*/5 * * * *", catch_up="latest", overlap="allow")
    clock.advance(1530)  # 08:05 .. 08:25 fell due
    with open_runtime(tmp_path, clock) as runtime:
        runtime._fire_now()
        finish_all(runtime)
        assert fired(runtime) == ids("tick", "08:25:00")
        [status] = runtime.schedules()
        assert (status.fired, status.skipped) == (1, 4)
    monkeypatch.setattr(_schedules, "MAX_COUNT", 2)  # the bound of a cron count
    clock.advance(1200)  # 08:30 .. 08:45
    with open_runtime(tmp_path, clock) as runtime:
        runtime._fire_now()
        finish_all(runtime)
        [status] = runtime.schedules()
        assert (status.fired, status.skipped) == (2, 4 + 2 - 1)


def test_a_catch_up_that_waits_for_its_queued_slot_counts_its_slots_once(
    rt: Runtime, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Counting a cron catch-up can take a fifth of a second; a queued slot that waits
    makes every pass look at the same catch-up again (one count, not one per pass)."""
    from herder.runtime import _schedule_status

    counts: list[int] = []
    real = _schedule_status.count_slots

    def counting(*args: object) -> int:
        counts.append(1)
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(_schedule_status, "count_slots", counting)  # (the firer's KeptSlots)
    first = ids("tick", "08:01:00")[0]
    GATES[first] = threading.Event()
    rt.schedule("tick", "job", cron="* * * * *", overlap="queue", catch_up="latest")
    advance(rt, clock, 60)  # 08:01 fires and waits on its gate
    clock.advance(240)  # (a jump, as downtime) 08:02 .. 08:05 are due: 08:05 waits for 08:01
    settle(rt)
    for _ in range(3):
        rt._fire_now()
    assert fired(rt) == [first]
    assert len(counts) == 2  # one per catch-up (08:01's, 08:05's), not one per pass
    finish_all(rt)
    advance(rt, clock, 0)
    finish_all(rt)
    assert fired(rt) == ids("tick", "08:01:00", "08:05:00")
    [status] = rt.schedules()
    assert (status.fired, status.skipped) == (2, 3)


def test_a_six_field_cron_reads_its_first_field_as_seconds() -> None:
    # cronsim takes a seconds field first when there are six; the docs say so now.
    record = _schedules.new_schedule(
        "often",
        "job",
        0.0,
        input=None,
        cron="*/20 * * * * *",
        every=None,
        overlap="skip",
        catch_up="latest",
        jitter=0.0,
        timezone="UTC",
    )
    assert _schedules.next_slot(record, 60_000) == 80_000
    assert _schedules.next_slot(record, 80_000) == 100_000


@pytest.mark.parametrize(
    ("cron", "start", "expected_local"),
    [
        # Spring forward: 02:30 does not exist that night; it runs when the clock jumps.
        ("0 30 2 * * *", "2027-03-13T12:00", ["2027-03-14T03:00:00-04:00", "2027-03-15T02:30"]),
        ("15 30 2 * * *", "2027-03-13T12:00", ["2027-03-14T03:00:15-04:00", "2027-03-15T02:30:15"]),
        # Fall back: 01:30 happens twice; a fixed time runs once, at the first.
        ("0 30 1 * * *", "2027-11-06T12:00", ["2027-11-07T01:30-04:00", "2027-11-08T01:30"]),
        (
            "0,30 0 1 * * *",
            "2027-11-06T12:00",
            ["2027-11-07T01:00-04:00", "2027-11-07T01:00:30-04:00", "2027-11-08T01:00"],
        ),
        # A wildcard minute runs on the real clock, as its five-field form does.
        (
            "30 * 1 * * *",
            "2027-11-07T01:58:10-04:00",
            ["2027-11-07T01:58:30-04:00", "2027-11-07T01:59:30-04:00", "2027-11-07T01:00:30-05:00"],
        ),
        (
            "*/20 * * * * *",
            "2027-03-14T01:59:30",
            ["2027-03-14T01:59:40", "2027-03-14T03:00:00-04:00"],
        ),
    ],
)
def test_a_six_field_cron_follows_the_dst_rules_of_its_five_fields(
    cron: str, start: str, expected_local: list[str]
) -> None:
    """docs/scheduling.md: at DST changes a cron schedule follows Debian cron. cronsim
    keeps those rules to five-field expressions: with a seconds field, "0 30 2 * * *"
    skipped the spring-forward night and "0 30 1 * * *" ran twice on the fall-back one."""
    begin = datetime.datetime.fromisoformat(start)
    if begin.tzinfo is None:
        begin = begin.replace(tzinfo=NY)
    record = ScheduleRecord(name="n", workflow="job", cron=cron, timezone="America/New_York")
    got, cursor = [], int(begin.timestamp() * 1000)
    for _ in expected_local:
        cursor = _schedules.next_slot(record, cursor)
        got.append(cursor)
    expected = []
    for local in expected_local:
        when = datetime.datetime.fromisoformat(local)
        expected.append(int((when if when.tzinfo else when.replace(tzinfo=NY)).timestamp() * 1000))
    assert got == expected


def test_a_new_schedule_may_not_name_localtime_whose_zone_is_each_machines_own(
    rt: Runtime,
) -> None:
    """zoneinfo reads ``timezone="localtime"`` as the zone file of the machine it runs on,
    and the name is what is stored: the same schedule fired at 02:00 of one host's zone,
    then, run by a standby or a daemon moved to a host in another zone, at another time.
    It is refused with what to give instead; one stored before is still read."""
    try:
        ZoneInfo("localtime")
    except Exception:  # (no such file here: refused as an unknown zone)
        said = "unknown timezone 'localtime'; use an IANA name"
    else:
        said = "timezone 'localtime' is the zone of whichever machine runs the schedule"
    with pytest.raises(InvalidInput, match=said):
        rt.schedule("s", "job", cron="0 2 * * *", timezone="localtime")
    with pytest.raises(InvalidInput, match="IANA name"):
        rt.schedule("s", "job", every=60, timezone="localtime")
    assert rt.schedules() == []
    rt.schedule("s", "job", cron="0 2 * * *")
    stored = ScheduleRecord.from_dict(rt._store.get("schedules", schedule_key("s")))
    older = stored.evolve(timezone="localtime")  # (as an older herder stored it)
    put = Put("schedules", schedule_key("s"), encode(older.to_dict()))
    rt._store.writer.submit(Transition(ops=(put,))).result(timeout=WAIT)
    [status] = rt.schedules()
    assert (status.timezone, status.next_at is not None) == ("localtime", True)


@pytest.mark.timeout(60)
def test_herder_schedules_shows_a_long_every_in_seconds_not_in_an_exponent(
    tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its cadence was formatted with :g: a fortnight read "every 1.2096e+06s"."""
    monkeypatch.setattr(_console, "_rich_console", lambda out: None)  # plain table
    with open_runtime(tmp_path, clock) as rt:
        rt.schedule("fortnightly", "job", every=14 * 86400)
        rt.schedule("often", "job", every=1.5)
    table = io.StringIO()
    assert main(["schedules", "--store", str(tmp_path)], out=table) == 0
    assert "every 1209600s" in table.getvalue()
    assert "every 1.5s" in table.getvalue()
