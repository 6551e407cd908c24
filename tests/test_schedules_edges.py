"""Schedules at their edges (found by review): the newest slot after a long downtime
across a DST change, a timezone this machine does not have, a workflow name that is not
a str."""

from __future__ import annotations

import contextlib
import datetime
import logging
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from herder.runtime import Agent, HerderError, InvalidInput, Runtime, StepContext, Workflow
from herder.runtime._check import check_store
from herder.runtime._schedules import slot_id
from herder.runtime.testing import FakeClock, settle, wait_until
from herder.store import Put, ScheduleRecord, Transition, encode, schedule_key

WAIT = 10.0


class Job(Agent):
    def run(self, ctx: StepContext) -> str:
        return ctx.workflow_id


def open_runtime(path: Path, clock: FakeClock) -> Runtime:
    runtime = Runtime(path, clock=clock, sweep_interval=0.05)
    runtime.add_agent("job", Job, concurrency=4)
    runtime.add_workflow(Workflow("job").step("run", agent="job", action="run"))
    return runtime


def fired(runtime: Runtime) -> list[str]:
    return sorted(s.id for s in runtime.list())


LORD_HOWE = ZoneInfo("Australia/Lord_Howe")  # a 30-minute DST shift


@pytest.mark.timeout(60)
def test_latest_after_a_long_downtime_fires_only_the_newest_cron_slot_at_a_dst_change(
    tmp_path: Path,
) -> None:
    """docs/scheduling.md: catch_up="latest" (the default) fires only the newest slot
    that fell due. After a downtime longer than 1000 slots ``newest_due`` looks back from
    now with a reverse cronsim scan (runtime/_schedules.py), which, just after a DST
    change, lands on an older slot than the forward scan does: the firer fires that stale
    slot, and its next pass (forward from it) fires the real newest one too. Here:
    "* 1 * * *" in Lord Howe, down two months until 02:40 on the spring-forward night
    (01:59 +10:30 was the newest slot; the reverse scan says 01:29)."""
    created = datetime.datetime(2027, 8, 1, 0, 0, tzinfo=LORD_HOWE).timestamp()
    back_up = datetime.datetime(2027, 10, 3, 2, 40, 7, tzinfo=LORD_HOWE).timestamp()
    newest = datetime.datetime(2027, 10, 3, 1, 59, tzinfo=LORD_HOWE)
    assert newest.utcoffset() == datetime.timedelta(hours=10, minutes=30)
    clock = FakeClock(start=created)
    with open_runtime(tmp_path, clock) as rt:
        rt.schedule(
            "often", "job", cron="* 1 * * *", timezone="Australia/Lord_Howe", overlap="allow"
        )
    clock.advance(back_up - created)  # ~3800 slots fell due: more than the forward scan
    with open_runtime(tmp_path, clock) as rt:
        rt._fire_now()
        rt._fire_now()  # (the firer's own next pass would come at once)
        settle(rt)
        assert fired(rt) == [slot_id("often", int(newest.timestamp() * 1000))]
        [status] = rt.schedules()
        assert status.fired == 1


def _store_bad_zone(rt: Runtime, name: str) -> None:
    """Make schedule ``name`` name a timezone this host's tz database lacks, as a store
    made where the zone existed reads after a tzdata update that dropped it (as 2020b
    dropped US/Pacific-New) or in a container without that tzdata."""
    record = ScheduleRecord.from_dict(rt._store.get("schedules", schedule_key(name)))
    bad = record.evolve(timezone="Mars/Olympus")
    put = Put("schedules", schedule_key(name), encode(bad.to_dict()))
    rt._store.writer.submit(Transition(ops=(put,))).result(timeout=WAIT)


@pytest.mark.timeout(60)
def test_one_schedule_with_an_unknown_timezone_does_not_stop_the_others_firing(
    tmp_path: Path,
) -> None:
    """_firing.fire_due catches only HerderError/TimeoutError per schedule; the
    ZoneInfoNotFoundError a cron schedule's zone raises (``_zone`` in runtime/_schedules.py)
    aborts the whole pass, every pass: no schedule after it (by name) fires again.
    read_schedules' promise is that one bad record is logged and left out."""
    clock = FakeClock(
        start=datetime.datetime(2027, 1, 15, 8, 0, 0, 500000, datetime.UTC).timestamp()
    )
    with open_runtime(tmp_path, clock) as rt:
        rt.schedule("a-nightly", "job", cron="0 2 * * *", timezone="Europe/Riga")
        rt.schedule("z-tick", "job", every=60)
        _store_bad_zone(rt, "a-nightly")
        clock.advance(60)
        with contextlib.suppress(HerderError):  # (it may report the bad one, and go on)
            rt._fire_now()
        settle(rt)
        assert fired(rt) == ["z-tick@2027-01-15T08:01:00Z"]


@pytest.mark.timeout(60)
def test_schedules_lists_the_others_when_one_names_an_unknown_timezone(tmp_path: Path) -> None:
    """rt.schedules() (and ``herder schedules``) raise a bare ZoneInfoNotFoundError, not
    a HerderError, for the whole listing when one cron schedule's zone is unknown here
    (ScheduleStatus.of catches only MissingExtra, runtime/_schedule_status.py)."""
    clock = FakeClock(
        start=datetime.datetime(2027, 1, 15, 8, 0, 0, tzinfo=datetime.UTC).timestamp()
    )
    with open_runtime(tmp_path, clock) as rt:
        rt.schedule("a-nightly", "job", cron="0 2 * * *", timezone="Europe/Riga")
        rt.schedule("z-tick", "job", every=60)
        _store_bad_zone(rt, "a-nightly")
        names = [s.name for s in rt.schedules()]
        assert "z-tick" in names


@pytest.mark.timeout(60)
def test_a_schedule_for_an_unhashable_workflow_name_is_refused_as_herder_error(
    tmp_path: Path,
) -> None:
    """rt.start(["x"]) raises UnknownName; rt.schedule("s", ["x"]) leaks a TypeError
    (unhashable type: 'list') from rt._latest.get(workflow) (_schedule_api.py:68)."""
    with (
        open_runtime(tmp_path, FakeClock(start=1.8e9)) as rt,
        pytest.raises(HerderError, match="no workflow named"),
    ):
        rt.schedule("s", ["x"], every=60)  # type: ignore[arg-type]


@pytest.mark.timeout(60)
def test_a_cron_that_never_matches_is_refused_with_what_to_check(tmp_path: Path) -> None:
    """Debian cron ANDs day-of-month and day-of-week when either starts with '*': days 1
    and 21 that are also a month's last Monday (day 22 at the earliest) never come.
    cronsim parses it and gives up after 50 years of search; the schedule was stored,
    never fired and listed no next firing, with no word of why."""
    with open_runtime(tmp_path, FakeClock(start=1.8e9)) as rt:
        with pytest.raises(InvalidInput, match=r"matches no time .* day-of-month and day-of"):
            rt.schedule("never", "job", cron="0 0 */20 * 1L")
        assert rt.schedules() == []
        assert rt.schedule("leap", "job", cron="0 0 * 2 1#5").next_at is not None  # 2044


@pytest.mark.timeout(60)
def test_a_schedule_given_the_registered_workflow_object_says_to_give_its_name(
    tmp_path: Path,
) -> None:
    """start() takes a registered Workflow; schedule() fires by name, and told the user
    who passed the very Workflow they registered that no workflow of that name was
    registered, and to add_workflow it."""
    with open_runtime(tmp_path, FakeClock(start=1.8e9)) as rt:
        job = Workflow("job").step("run", agent="job", action="run")
        with pytest.raises(InvalidInput, match="give the workflow by its name, 'job'"):
            rt.schedule("tick", job, every=60)  # type: ignore[arg-type]


def _damage(rt: Runtime, name: str) -> None:
    """Store a schedule record that reads back as no schedule (``herder check`` names it)."""
    raw = encode({"name": name, "workflow": "job", "every": "sixty"})
    put = Put("schedules", schedule_key(name), raw)
    rt._store.writer.submit(Transition(ops=(put,))).result(timeout=WAIT)


@pytest.mark.timeout(60)
def test_a_damaged_schedule_record_is_replaced_by_its_declaration_or_deleted(
    tmp_path: Path,
) -> None:
    """A damaged schedule record failed Runtime() for a daemon whose setup declares that
    schedule, at every start, and neither rt.schedule() nor delete_schedule() could
    replace or remove it (StoreCorrupt: restore the store from a backup), where a damaged
    record should stop only itself."""
    clock = FakeClock(
        start=datetime.datetime(2027, 1, 15, 8, 0, 0, 500000, datetime.UTC).timestamp()
    )

    def setup(runtime: Runtime) -> None:
        runtime.add_agent("job", Job)
        runtime.add_workflow(Workflow("job").step("run", agent="job", action="run"))
        runtime.schedule("tick", "job", every=60)

    with Runtime(tmp_path, clock=clock, sweep_interval=0.05, setup=setup) as rt:
        _damage(rt, "tick")
        _damage(rt, "gone")
    with Runtime(tmp_path, clock=clock, sweep_interval=0.05, setup=setup) as rt:
        assert [s.name for s in rt.schedules()] == ["tick"]  # ("gone" is left out)
        with pytest.raises(HerderError, match=r"rt\.delete_schedule\(\) deletes it"):
            rt.pause_schedule("gone")
        rt.delete_schedule("gone")
        assert check_store(rt._store).ok
        clock.advance(60)
        rt._fire_now()
        settle(rt)
        assert fired(rt) == ["tick@2027-01-15T08:01:00Z"]


def test_a_schedule_whose_workflow_is_no_longer_registered_is_warned_of(tmp_path: Path) -> None:
    # A release that renamed (or dropped) the workflow a stored schedule fires: the
    # schedule waited for it in silence, firing nothing, however many slots passed.
    clock = FakeClock()
    with open_runtime(tmp_path, clock) as rt:
        rt.schedule("poll", "job", every=60)
    warned = threading.Event()
    lines: list[str] = []

    class Seen(logging.Handler):
        # (the lines are kept here, before the event is set: caplog's handler on the
        # root logger would get the record only after this one woke the test)
        def emit(self, record: logging.LogRecord) -> None:
            if "schedule 'poll'" in record.getMessage():
                lines.append(record.getMessage())
                warned.set()

    seen = Seen()
    logging.getLogger("herder.schedules").addHandler(seen)
    try:
        with Runtime(tmp_path, clock=clock, sweep_interval=0.05) as rt:
            rt.add_agent("job", Job)
            rt.add_workflow(Workflow("renamed").step("run", agent="job", action="run"))
            rt.wait_active(WAIT)
            clock.advance(600)
            assert warned.wait(WAIT)
            [line] = lines
            assert "'job'" in line
            assert "not registered" in line
            assert "delete_schedule" in line
            assert fired(rt) == []
            rt.schedule("poll", "renamed", every=60)  # as the warning says
            clock.advance(60)
            wait_until(rt, lambda: len(fired(rt)) == 1, WAIT)
            [firing] = fired(rt)
            assert firing.startswith("poll@")
            assert rt.status(firing).name == "renamed"
    finally:
        logging.getLogger("herder.schedules").removeHandler(seen)


@pytest.mark.timeout(60)
def test_a_workflow_registered_just_after_opening_is_not_warned_of_as_unregistered(
    tmp_path: Path,
) -> None:
    """docs/runtime: workflows may be registered after ``Runtime(path)`` as well as in
    ``setup=``. A restart with slots due then warned "schedule ... has slots due but its
    workflow ... is not registered" once (the firer's first pass ran before the
    add_workflow() that followed the opening), and the slot fired the next moment."""
    clock = FakeClock()
    with open_runtime(tmp_path, clock) as rt:
        rt.schedule("poll", "job", every=60)
    clock.advance(600)
    lines: list[str] = []

    class Seen(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    seen = Seen()
    logging.getLogger("herder.schedules").addHandler(seen)
    try:
        with Runtime(tmp_path, clock=clock, sweep_interval=0.05) as rt:
            rt._fire_now()  # (a pass before the registration, as the firer's first may be)
            rt.add_agent("job", Job)
            rt.add_workflow(Workflow("job").step("run", agent="job", action="run"))
            wait_until(rt, lambda: len(fired(rt)) == 1, WAIT)
            rt._fire_now()
        assert [line for line in lines if "not registered" in line] == []
    finally:
        logging.getLogger("herder.schedules").removeHandler(seen)


@pytest.mark.timeout(60)
def test_a_new_input_equal_to_the_old_by_eq_replaces_it(tmp_path: Path) -> None:
    """rt.schedule() with new settings replaces the definition: an input of True where
    it was 1 (``==`` in Python, two inputs to the store) was taken for the same, and
    the schedule went on starting its workflows with 1."""
    clock = FakeClock(
        start=datetime.datetime(2027, 1, 15, 8, 0, 0, 500000, datetime.UTC).timestamp()
    )
    with open_runtime(tmp_path, clock) as rt:
        rt.schedule("tick", "job", every=60, input={"flag": 1, "n": 1.0})
        changed = rt.schedule("tick", "job", every=60, input={"flag": True, "n": 1})
        assert _same_types(changed.input, {"flag": True, "n": 1})
        [stored] = rt.schedules()
        assert _same_types(stored.input, {"flag": True, "n": 1})
        clock.advance(60)
        rt._fire_now()
        [firing] = rt.list()
        assert _same_types(firing.input, {"flag": True, "n": 1})
        # An input holding NaN (not == itself) is the same definition when declared again.
        rt.schedule("nan", "job", every=60, input={"x": float("nan")})
        writes = rt._store.writer.stats()["transitions"]
        rt.schedule("nan", "job", every=60, input={"x": float("nan")})
        assert rt._store.writer.stats()["transitions"] == writes


def _same_types(a: dict[str, object], b: dict[str, object]) -> bool:
    return a == b and [type(v) for v in a.values()] == [type(v) for v in b.values()]


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "damage",
    [
        {"cron": "0 2 * * *", "cursor_ms": 2**62},  # (past any date: the cron iterator raised)
        {"every": 60.0, "cursor_ms": -(2**62)},
        {"every": -5.0},  # (a slot every ms)
        {"every": 60.0, "jitter": float("nan")},
    ],
)
def test_a_schedule_record_with_values_no_schedule_has_stops_only_itself(
    tmp_path: Path, damage: dict[str, object]
) -> None:
    """A record that reads as a schedule but holds a value none was given raised
    ValueError out of rt.schedules() and out of every firing pass: the other schedules
    stopped firing. It is a damaged record: left out, named by herder check, and
    replaced by its declaration."""
    clock = FakeClock(
        start=datetime.datetime(2027, 1, 15, 8, 0, 0, 500000, datetime.UTC).timestamp()
    )
    with open_runtime(tmp_path, clock) as rt:
        rt.schedule("a", "job", every=60)
        bad = ScheduleRecord(name="bad", workflow="job", **damage)  # type: ignore[arg-type]
        put = Put("schedules", schedule_key("bad"), encode(bad.to_dict()))
        rt._store.writer.submit(Transition(ops=(put,))).result(timeout=WAIT)
        assert [s.name for s in rt.schedules()] == ["a"]
        report = check_store(rt._store)
        assert [p for p in report.problems if "bad" in str(p)], report.problems
        clock.advance(60)
        rt._fire_now()
        assert fired(rt) == ["a@2027-01-15T08:01:00Z"]
        rt.schedule("bad", "job", every=60)  # (its declaration replaces it)
        assert [s.name for s in rt.schedules()] == ["a", "bad"]


@pytest.mark.timeout(60)
def test_a_jitter_past_the_workflows_deadline_is_refused(tmp_path: Path) -> None:
    """A firing is a delayed start whose deadline (the workflow's default) counts from
    the slot: with jitter=3000 and a 10 s deadline, every firing delayed past 10 s ended
    COMPENSATED, "deadline passed", and its step never ran; rt.schedule() took it."""
    with open_runtime(tmp_path, FakeClock(start=1.8e9)) as rt:
        rt.add_workflow(Workflow("quick", deadline=10).step("run", agent="job", action="run"))
        with pytest.raises(InvalidInput, match=r"jitter 3000 s passes the deadline of workflow"):
            rt.schedule("s", "quick", every=3600, jitter=3000)
        assert rt.schedules() == []
        assert rt.schedule("s", "quick", every=3600, jitter=10).jitter == 10  # (up to it)


def test_a_stop_while_the_firer_starts_does_not_fail(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A daemon's SIGTERM while a standby became active: stop() found the runtime's new
    # firer before its thread had started, and joining it raised RuntimeError ("cannot
    # join thread before it is started"): the daemon exited 1 instead of stopping.
    from herder.runtime import _firing

    clock = FakeClock()
    with open_runtime(tmp_path, clock) as rt:
        firer = _firing.Firer(rt, WAIT)
        started: list[threading.Thread] = []

        class Racing(threading.Thread):
            def start(self) -> None:
                firer.stop()  # (the signal's thread, as start() runs)
                super().start()
                started.append(self)

        # (only the firer's module sees the racing Thread)
        monkeypatch.setattr(_firing, "threading", SimpleNamespace(**vars(threading)))
        monkeypatch.setattr(_firing.threading, "Thread", Racing)
        firer.start()
        monkeypatch.undo()
        [thread] = started
        thread.join(WAIT)  # it saw the stop and ended
        assert not thread.is_alive()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("change", ["schedule", "pause", "resume", "delete"])
def test_a_schedule_change_that_a_stop_overtakes_is_runtime_closed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, change: str
) -> None:
    # rt.schedule() and pause/resume/delete_schedule() check that the runtime is open,
    # then read and write the schedule: a stop (a signal's thread, a handoff) between
    # the two let the store's StoreClosed ("open it again") out, or LeaseLost (as if
    # another runtime had taken the lease), where stop() promises RuntimeClosed.
    from herder.runtime import RuntimeClosed, _firing

    rt = open_runtime(tmp_path, FakeClock(start=1.8e9))
    rt.schedule("s", "job", every=60)
    if change == "resume":
        rt.pause_schedule("s")
    assert rt._firer is not None
    rt._firer.stop()  # (its thread, woken by these, would wait for the lock the change holds)
    key = _firing.schedule_key

    def stop_first(name: str) -> bytes:  # (the schedule's first read: after the checks)
        monkeypatch.setattr(_firing, "schedule_key", key)
        stopper = threading.Thread(target=rt.stop)
        stopper.start()
        stopper.join(WAIT)
        assert not stopper.is_alive()
        return key(name)

    monkeypatch.setattr(_firing, "schedule_key", stop_first)
    calls = {
        "schedule": lambda: rt.schedule("s", "job", every=30),
        "pause": lambda: rt.pause_schedule("s"),
        "resume": lambda: rt.resume_schedule("s"),
        "delete": lambda: rt.delete_schedule("s"),
    }
    with pytest.raises(RuntimeClosed, match=r"stopping.*the schedule was not changed"):
        calls[change]()
    assert _firing.schedule_key is key  # (the stop came in between)


@pytest.mark.timeout(60)
def test_a_pass_over_cron_schedules_not_due_looks_up_no_cron_slot_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every pass of the firer (at any schedule's slot, at least once a minute, every 5 s
    # while one waits or cannot fire) looked up the next slot of every cron schedule with
    # a new cronsim iterator, twice (~0.1 ms each): 6,000 nightly crons beside one
    # schedule firing every second kept the firer busy half of a core. A cursor that has
    # not moved has the same next slot: the pass, and a listing, find it kept.
    import cronsim

    with open_runtime(tmp_path, FakeClock(start=1.8e9)) as rt:
        for i in range(50):
            rt.schedule(f"nightly{i}", "job", cron=f"{i} 2 * * *")
        rt._fire_now()
        built: list[object] = []

        class Counted(cronsim.CronSim):
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                built.append(args)
                super().__init__(*args, **kwargs)

        monkeypatch.setattr(cronsim, "CronSim", Counted)
        rt._fire_now()
        assert len(rt.schedules()) == 50
        assert built == []


@pytest.mark.timeout(60)
def test_a_host_without_time_zone_data_takes_utc_schedules_and_says_what_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # every= never reads a zone, and cron= in UTC needs no zone file, but both looked
    # 'UTC' up in the tz database: on a host without one (Alpine without its tzdata
    # package, a slim image; PyPI's tzdata is no dependency of herder) rt.schedule(every=60)
    # raised "unknown timezone 'UTC'; use an IANA name such as 'UTC'". Another zone
    # needs the data: the error says so.
    import sys
    import zoneinfo

    for module in [m for m in sys.modules if m.partition(".")[0] == "tzdata"] + ["tzdata"]:
        monkeypatch.setitem(sys.modules, module, None)  # (nor PyPI's package, loaded or not)
    zoneinfo.reset_tzpath(to=[])
    zoneinfo.ZoneInfo.clear_cache()
    try:
        clock = FakeClock(start=1.8e9)
        with open_runtime(tmp_path, clock) as rt:
            assert rt.schedule("poll", "job", every=60).timezone == "UTC"
            nightly = rt.schedule("nightly", "job", cron="0 2 * * *", jitter=60)
            assert nightly.next_at is not None
            assert nightly.next_at % 86400 == 7200  # (02:00 UTC)
            with pytest.raises(InvalidInput, match=r"no time zone data.*pip install tzdata"):
                rt.schedule("riga", "job", cron="0 2 * * *", timezone="Europe/Riga")
            clock.advance(60)
            rt._fire_now()
            assert fired(rt) == [slot_id("poll", 1_800_000_060_000)]
    finally:
        zoneinfo.reset_tzpath()
        zoneinfo.ZoneInfo.clear_cache()


@pytest.mark.timeout(60)
def test_a_new_schedule_is_created_when_stored_so_no_slot_after_created_is_passed_over(
    tmp_path: Path,
) -> None:
    """A new schedule's first slot is the first one after it is stored, which comes after
    its declaration (in setup, or on a standby waiting for the lease; or only the store's
    read apart): its record kept the declaration's time as ``created``, so the slots
    between the two, after ``created``, never fired and nothing said why
    (test_schedules_crash saw one for a declaration 0.3 ms before a whole second)."""
    clock = FakeClock(start=1.8e9 + 0.7)

    def setup(rt: Runtime) -> None:
        rt.add_agent("job", Job, concurrency=4)
        rt.add_workflow(Workflow("job").step("run", agent="job", action="run"))
        rt.schedule("tick", "job", every=1, catch_up="all", overlap="allow")
        clock.advance(0.6)  # stored once the runtime is active, at 1.8e9 + 1.3

    with Runtime(tmp_path, clock=clock, sweep_interval=0.05, setup=setup) as rt:
        clock.advance(2.0)
        rt._fire_now()
        record = ScheduleRecord.from_dict(rt._store.get("schedules", schedule_key("tick")))
        first = (int(record.created * 1000) // 1000 + 1) * 1000  # the first after created
        assert fired(rt)[0] == slot_id("tick", first)


@pytest.mark.timeout(60)
def test_a_lease_lost_by_a_schedule_change_of_a_running_runtime_is_not_its_own_cause(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A schedule change (or a start) that meets a LeaseLost or StoreClosed while the
    runtime is not stopping raises that error as it came: it was raised "from" itself, its
    own ``__cause__``, and code walking an error's causes looped for ever."""
    from herder.store import LeaseLost

    with open_runtime(tmp_path, FakeClock(start=1.8e9)) as rt:
        rt.schedule("s", "job", every=60)
        assert rt._firer is not None

        def deposed(name: str, paused: bool) -> None:
            raise LeaseLost("another runtime took the lease")

        monkeypatch.setattr(rt._firer, "pause", deposed)
        with pytest.raises(LeaseLost) as raised:
            rt.pause_schedule("s")
        assert raised.value.__cause__ is not raised.value


@pytest.mark.timeout(60)
@pytest.mark.parametrize("start", [1e12, -5e6])
def test_a_clock_outside_1970_to_9000_is_refused_not_stored_as_a_corrupt_schedule(
    tmp_path: Path, start: float, caplog: pytest.LogCaptureFixture
) -> None:
    """A schedule's slots are dates: on FakeClock(start=1e12) (the year 33658) an every=
    schedule was stored with a cursor its record refuses (logged as corrupt at every
    pass, never fired) and a cron one raised ValueError out of rt.schedule()."""
    with open_runtime(tmp_path, FakeClock(start=start)) as rt:
        for cadence in ({"every": 60}, {"cron": "0 2 * * *"}):
            with pytest.raises(InvalidInput, match=r"clock reads .* not a time from 1970 to 9000"):
                rt.schedule("far", "job", **cadence)  # type: ignore[arg-type]
        assert rt.schedules() == []
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.timeout(60)
def test_a_clock_moved_past_9000_fires_nothing_and_warns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A clock stepped past the dates a slot can be (a custom Clock) raised ValueError out
    of every firing pass (year out of range): each schedule now says it cannot fire, and
    its stored record stays readable."""
    clock = FakeClock(start=datetime.datetime(2027, 1, 15, 8, tzinfo=datetime.UTC).timestamp())
    with open_runtime(tmp_path, clock) as rt:
        rt.schedule("a", "job", every=60)
        rt.schedule("b", "job", cron="0 2 * * *")
        clock.advance(1e12)
        rt._fire_now()
        clock.advance(60)
        rt._fire_now()  # (said once: not again at each pass, though the time moved on)
        assert [s.name for s in rt.schedules()] == ["a", "b"]
        assert fired(rt) == []
        warned = [r.getMessage() for r in caplog.records if "could not fire" in r.getMessage()]
        assert len(warned) == 2, warned
        assert all("1970 to 9000" in w for w in warned), warned
