"""Poison work: an action that kills the whole process each time it runs is parked.

Each crash is a real one: a child process (``poison_child.py``) SIGKILLed while an attempt
runs; then, in process, the counter, the deferral of suspects from the second crash on,
parking and retry. A ``stop()`` (drained or not) that cuts an attempt is no crash and
counts nothing. In a subprocess too: an action that SIGKILLs the daemon, a restart loop,
and every other workflow finishing anyway.
"""

from __future__ import annotations

import pathlib
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest
from _child_kit import Child
from engine_child import POISON_N, permanent_failure

from herder.actors.engine import POISON_ERROR
from herder.runtime import Agent, Permanent, Runtime, State, StepContext, StepState, Workflow
from herder.runtime._demo_services import audit
from herder.runtime.testing import FakeClock, advance, check_store, crash_scheduler, wait_until
from herder.store import Store
from herder.store._records import WorkflowState

CHILD = pathlib.Path(__file__).with_name("engine_child.py")
POISON_CHILD = pathlib.Path(__file__).with_name("poison_child.py")
WAIT = 10.0


@pytest.fixture
def release() -> Iterator[threading.Event]:
    event = threading.Event()
    yield event
    event.set()  # let the threads of abandoned attempts end


def _open(
    path: pathlib.Path, clock: FakeClock, release: threading.Event, max_recoveries: int = 2
) -> Runtime:
    class Svc(Agent):
        def work(self, ctx: StepContext) -> str:
            if ctx.workflow_id == "poison":
                release.wait(WAIT)  # "kills the process": it never answers before the stop
            return ctx.workflow_id

    rt = Runtime(path, clock=clock, max_recoveries=max_recoveries, instance_shutdown=0.01)
    rt.add_agent("svc", Svc, concurrency=2)
    rt.add_workflow(Workflow("x").step("s", agent="svc", action="work"))
    return rt


def _step(rt: Runtime, wid: str) -> tuple[StepState, int, int]:
    with_record = rt._store.get_workflow(wid)
    st = rt.status(wid).steps["s"]
    assert with_record is not None
    return st.state, st.attempt, with_record.recoveries


def _crash(path: pathlib.Path, flow: str, max_recoveries: int, *commands: str) -> list[str]:
    """Run ``poison_child.py``'s ``commands`` on the store, then SIGKILL it: a death of the
    process, its lease unreleased (a ``stop()`` is none). Returns what it printed."""
    argv = [str(POISON_CHILD), str(path), flow, str(max_recoveries), *commands]
    child = Child(argv, label=" ".join(commands))
    try:
        child.wait_for("ready", 60)
    finally:
        child.kill(WAIT)
    assert child.proc.returncode == -signal.SIGKILL, child.stderr()
    return [line for line in child.seen if line.startswith(("show ", "result "))]


def _crash_while_dispatched(path: pathlib.Path) -> None:
    """Start the poison workflow and kill the process while its attempt is DISPATCHED."""
    _crash(path, "x", 2, "start:poison", "wait:poison:s:DISPATCHED")


def test_a_workflow_running_at_each_of_several_crashes_is_parked_and_can_be_retried(
    tmp_path: pathlib.Path, release: threading.Event
) -> None:
    clock, path = FakeClock(), tmp_path / "s"
    _crash_while_dispatched(path)  # crash 1: DISPATCHED, no outcome
    # recovery: counted, re-run at once; crash 2 while it runs
    _crash(path, "x", 2, "wait:poison:s:DISPATCHED:2:1")
    # counted again; deferred instead of run at once; the others run: crash 3 while the
    # suspect waits (it was not running: not counted)
    said = _crash(path, "x", 2, "settle", "show:poison:s", "run:innocent", "show:poison:s")
    assert said == ["show DISPATCHED 2 2", "result {'s': 'innocent'}", "show DISPATCHED 2 2"]
    # its turn comes: it runs again; crash 4, the third in a row it was running at
    said = _crash(
        path, "x", 2, "settle", "show:poison:s", "advance:1.0", "wait:poison:s:DISPATCHED:3"
    )
    assert said == ["show DISPATCHED 2 2"]

    rt = _open(path, clock, release)
    try:
        handle = rt.handle("poison")
        wait_until(rt, lambda: rt.status("poison").state is State.NEEDS_ATTENTION)
        status = rt.status("poison")
        assert "running each of the last 3 times the process died" in (status.error or "")
        assert status.steps["s"].state is StepState.FAILED
        assert rt._store.get_step("poison", "s").error_type == POISON_ERROR  # type: ignore[union-attr]
        assert check_store(rt._store).problems == []
        release.set()  # the action is fixed
        rt.retry("poison")
        assert handle.result(timeout=WAIT) == {"s": "poison"}
        assert _step(rt, "poison")[2] == 0
    finally:
        rt.stop(timeout=1)


def test_the_trees_restart_of_a_crashed_scheduler_is_no_crash_of_the_process(
    tmp_path: pathlib.Path, release: threading.Event
) -> None:
    # The new Scheduler recovered the workflows as after a death of the process: an attempt
    # running at more such restarts than max_recoveries (a long step, a Scheduler bug
    # elsewhere) parked its workflow as poison ("running each of the last 1 times the
    # process died"), its step FAILED, though the process never died. The attempt still
    # running is carried over: the step runs again once it ends, not beside it.
    clock = FakeClock()
    rt = Runtime(tmp_path / "s", clock=clock, max_recoveries=0, instance_shutdown=0.01)
    started = {1: threading.Event(), 2: threading.Event()}
    let_go = {1: threading.Event(), 2: release}
    try:

        class Long(Agent):
            def work(self, ctx: StepContext) -> int:
                started[ctx.attempt].set()
                let_go[ctx.attempt].wait(WAIT)
                return ctx.attempt

        rt.add_agent("svc", Long, concurrency=2)
        rt.add_workflow(Workflow("x").step("s", agent="svc", action="work"))
        handle = rt.start("x", workflow_id="long")
        assert started[1].wait(WAIT)
        crash_scheduler(rt, timeout=WAIT)
        assert rt.status("long").state is State.RUNNING
        assert _step(rt, "long") == (StepState.DISPATCHED, 1, 0)  # no crash counted
        let_go[1].set()  # the carried attempt ends: its answer is stale, the step runs again
        assert started[2].wait(WAIT), f"not run again: {rt.status('long').error}"
        assert rt.status("long").state is State.RUNNING
        assert _step(rt, "long") == (StepState.DISPATCHED, 2, 0)
        release.set()
        assert handle.result(timeout=WAIT) == {"s": 2}
    finally:
        let_go[1].set()
        release.set()
        rt.stop(timeout=1)


def test_a_step_handed_off_beside_the_poison_ends_and_the_inbox_names_the_poison(
    tmp_path: pathlib.Path, release: threading.Event
) -> None:
    # A step waiting on complete_later() beside the one running at each crash was left
    # WAITING in the parked workflow: herder check called the store damaged ("WAITING in
    # a NEEDS_ATTENTION workflow"), and the inbox (and a skip naming no step) took that
    # healthy step, first in plan order, instead of the poison.
    class Svc(Agent):
        def work(self, ctx: StepContext) -> object:
            if ctx.step == "hand":
                return ctx.complete_later()  # waits for a partner's webhook
            release.wait(WAIT)  # "kills the process": it never answers before the stop
            return ctx.step

    def opened() -> Runtime:
        rt = Runtime(path, clock=clock, max_recoveries=0, instance_shutdown=0.01)
        rt.add_agent("svc", Svc, concurrency=2)
        flow = Workflow("p").step("hand", agent="svc", action="work", timeout=3600)
        rt.add_workflow(flow.step("crash", agent="svc", action="work"))
        return rt

    clock, path = FakeClock(), tmp_path / "s"
    # a crash while 'crash' runs, 'hand' waiting
    _crash(path, "hand", 0, "start:w", "wait:w:hand:WAITING", "wait:w:crash:DISPATCHED")
    rt = opened()
    try:
        wait_until(rt, lambda: rt.status("w").state is State.NEEDS_ATTENTION)
        assert check_store(rt._store).problems == []
        [item] = rt.inbox()
        assert (item.step, item.step_state) == ("crash", StepState.FAILED)
        assert rt.status("w").steps["hand"].state is StepState.FAILED
        release.set()  # the action is fixed
        rt.retry("w")  # both run again: the hand-off waits anew
        again = {"hand": StepState.WAITING, "crash": StepState.SUCCEEDED}
        wait_until(rt, lambda: {n: s.state for n, s in rt.status("w").steps.items()} == again)
    finally:
        rt.stop(timeout=1)


def test_an_outcome_after_a_crash_resets_the_count(
    tmp_path: pathlib.Path, release: threading.Event
) -> None:
    clock, path = FakeClock(), tmp_path / "s"
    _crash_while_dispatched(path)
    rt = _open(path, clock, release)
    try:
        wait_until(rt, lambda: _step(rt, "poison") == (StepState.DISPATCHED, 2, 1))
        release.set()
        wait_until(rt, lambda: rt.status("poison").state is State.SUCCEEDED)
        assert _step(rt, "poison") == (StepState.SUCCEEDED, 2, 0)
    finally:
        rt.stop(timeout=1)


@pytest.mark.parametrize("mode", ["poison", "poison+prefetch0"])
def test_an_action_that_sigkills_the_daemon_is_parked_and_the_rest_finish(
    tmp_path: pathlib.Path, mode: str
) -> None:
    """With the default prefetch the attempts reserved ahead when it dies are suspects
    as well, and must not be parked for it; with ``prefetch=0`` only running ones are."""
    store, effects = tmp_path / "store", tmp_path / "effects"
    n_workflows = 20
    kills = 0
    for _ in range(8):
        args = [str(store), str(effects), "0", str(n_workflows), "1", mode]
        done = subprocess.run(
            [sys.executable, str(CHILD), *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if done.returncode == 0:
            break
        assert done.returncode == -9, done.stderr
        kills += 1
    assert done.returncode == 0, "still crash-looping after 8 runs"
    assert "stuck" not in done.stdout
    # max_recoveries=2: the run that dies a third time with it running parks it.
    assert kills == 3

    def expected(wid: str) -> WorkflowState:
        n = int(wid.removeprefix("w-"))
        if n == POISON_N:
            return WorkflowState.NEEDS_ATTENTION
        return WorkflowState.COMPENSATED if permanent_failure(n) else WorkflowState.SUCCEEDED

    found = audit(store, effects, expected)
    # audit knows the travel outcomes; the parked one is checked below
    assert [p for p in found.problems if not p.startswith(f"w-{POISON_N}:")] == []
    assert found.duplicated == 0
    assert len(found.workflows) == n_workflows
    with Store(store, readonly=True) as s:
        assert check_store(s).problems == []
        car = s.get_step(f"w-{POISON_N}", "car")
        assert car is not None
        assert (car.state, car.error_type, car.attempt) == (StepState.FAILED, POISON_ERROR, 3)
    assert f"done w-{POISON_N} NEEDS_ATTENTION" in done.stdout


@pytest.mark.parametrize("action", ["compensate", "retry"])
def test_the_step_running_at_each_crash_may_have_taken_effect_so_it_is_undone(
    tmp_path: pathlib.Path, release: threading.Event, action: str
) -> None:
    # Parked as poison, the step was FAILED but not marked done, so nothing undid it:
    # neither a compensate nor a retry whose new attempt failed with Permanent (which
    # speaks only for itself), although the attempt that ran at the crash may have
    # charged the card before the process died (docs/workflows.md: "a crash ... included").
    calls: list[tuple[str, str]] = []

    class Svc(Agent):
        def work(self, ctx: StepContext) -> str:
            calls.append(("work", ctx.step))
            if ctx.step == "charge":
                if release.is_set():  # (fixed, the action now refuses the card)
                    raise Permanent("card refused")
                release.wait(WAIT)  # "kills the process": it never answers before the stop
            return ctx.step

        def undo(self, ctx: StepContext) -> None:
            calls.append(("undo", ctx.step))

    def opened() -> Runtime:
        rt = Runtime(path, clock=clock, max_recoveries=0, instance_shutdown=0.01)
        rt.add_agent("svc", Svc, concurrency=2)
        flow = Workflow("p").step("hold", agent="svc", action="work", compensate="undo")
        rt.add_workflow(
            flow.step("charge", agent="svc", action="work", compensate="undo", after=["hold"])
        )
        return rt

    clock, path = FakeClock(), tmp_path / "s"
    _crash(path, "charge", 0, "start:w", "wait:w:charge:DISPATCHED")  # while 'charge' runs
    rt = opened()
    try:
        wait_until(rt, lambda: rt.status("w").state is State.NEEDS_ATTENTION)
        assert check_store(rt._store).problems == []
        release.set()
        getattr(rt, action)("w", who="ada", why="after the crash loop")
        wait_until(rt, lambda: rt.status("w").state is State.COMPENSATED)
        assert [c for c in calls if c[0] == "undo"] == [("undo", "charge"), ("undo", "hold")]
        assert check_store(rt._store).problems == []
    finally:
        rt.stop(timeout=1)


def test_a_recovery_that_defers_suspects_says_why_and_for_how_long(
    tmp_path: pathlib.Path, release: threading.Event, caplog: pytest.LogCaptureFixture
) -> None:
    """Suspects re-run half a second apart can make a recovery take minutes (hundreds
    caught in two quick crashes): the operator is told why, once, with the time."""
    clock, path = FakeClock(), tmp_path / "s"
    _crash_while_dispatched(path)
    _crash(path, "x", 2, "wait:poison:s:DISPATCHED:2:1")  # the first crash defers nothing

    with caplog.at_level("WARNING", logger="herder"):
        rt = _open(path, clock, release)
        rt._settle()
        rt.stop(timeout=1)
    said = [r.getMessage() for r in caplog.records if "possible poison work" in r.getMessage()]
    assert said == [
        "1 workflows had attempts running at two or more crashes in a row (possible poison "
        "work): they are re-run one at a time, 0.5 s apart, after the rest, the last about "
        "0 s from now (docs/recovery.md)"
    ]


def test_suspects_deferred_when_the_process_ended_are_still_re_run_one_at_a_time(
    tmp_path: pathlib.Path, release: threading.Event
) -> None:
    """Two suspects deferred half a second apart; the process ends (a stop here, a crash
    alike) while they wait and opens again after both their times passed: they are
    deferred again, one at a time, not both run at once (a poison one among them would
    then take the others down with it, counted against each)."""
    path = tmp_path / "s"
    _crash(path, "x", 3, "start:poison", "start:poison2", "wait:poison:s:DISPATCHED",
           "wait:poison2:s:DISPATCHED")  # fmt: skip
    _crash(path, "x", 3, "wait:poison:s:DISPATCHED:2:1", "wait:poison2:s:DISPATCHED:2:1")
    rt = _open(path, FakeClock(), release, max_recoveries=3)
    try:
        rt._settle()  # both deferred: DISPATCHED, attempt 2 still, crashes counted 2
        assert [_step(rt, wid) for wid in ("poison", "poison2")] == [
            (StepState.DISPATCHED, 2, 2)
        ] * 2
    finally:
        rt.stop(timeout=1)
    clock = FakeClock(1_000_000.0 + 60)  # a minute later: both their times passed
    rt = _open(path, clock, release, max_recoveries=3)
    try:
        rt._settle()
        running = [wid for wid in ("poison", "poison2") if _step(rt, wid)[1] == 3]
        assert running == []  # deferred again
        advance(rt, clock, 0.5)
        running = [wid for wid in ("poison", "poison2") if _step(rt, wid)[1] == 3]
        assert len(running) == 1  # the first; the other half a second later
        advance(rt, clock, 0.5)
        assert [_step(rt, wid)[1] for wid in ("poison", "poison2")] == [3, 3]
    finally:
        rt.stop(timeout=1)


@pytest.mark.parametrize("drain", [False, True])
def test_a_stop_that_cuts_a_long_step_is_no_crash(
    tmp_path: pathlib.Path, release: threading.Event, drain: bool
) -> None:
    # A stop() (a deploy), drained or not, left the long step's attempt DISPATCHED with its
    # lease released, and the next open counted it as one the process died under: with
    # max_recoveries=0 the first restart parked it as poison ("running each of the last 1
    # times the process died"), its step FAILED, though no process ever died.
    clock, path = FakeClock(), tmp_path / "s"
    rt = _open(path, clock, release, max_recoveries=0)
    try:
        handle = rt.start("x", workflow_id="poison")
        for attempt in (1, 2, 3):
            running = (StepState.DISPATCHED, attempt)
            wait_until(rt, lambda rt=rt, running=running: _step(rt, "poison")[:2] == running)
            rt.stop(timeout=0.5, drain=drain)  # cuts the attempt: it runs again at the open
            rt = _open(path, clock, release, max_recoveries=0)
            handle = rt.handle("poison")
        wait_until(rt, lambda: _step(rt, "poison")[1] == 4)
        assert _step(rt, "poison") == (StepState.DISPATCHED, 4, 0), rt.status("poison").error
        release.set()
        assert handle.result(timeout=WAIT) == {"s": "poison"}
    finally:
        rt.stop(timeout=1)


def test_an_attempt_a_stop_cut_is_not_counted_at_the_crash_of_a_process_that_never_ran_it(
    tmp_path: pathlib.Path, release: threading.Event
) -> None:
    # A deploy: the stop cut the long step, and the new version crashed at each start
    # before it ran anything. Each crash counted the cut attempt (its record DISPATCHED
    # with the stopped process's token) as one running at the crash: with max_recoveries=0
    # the first good start parked the workflow as poison, though its action never ran
    # in a process that died.
    clock, path = FakeClock(), tmp_path / "s"
    rt = _open(path, clock, release, max_recoveries=0)
    try:
        rt.start("x", workflow_id="poison")
        wait_until(rt, lambda: _step(rt, "poison")[:2] == (StepState.DISPATCHED, 1))
    finally:
        rt.stop(timeout=0.5)  # cuts the attempt: no crash
    for _ in range(2):  # a process that runs nothing (its app registers nothing), killed
        _crash(path, "none", 0)
    rt = _open(path, clock, release, max_recoveries=0)
    try:
        handle = rt.handle("poison")
        wait_until(rt, lambda: _step(rt, "poison")[1] == 2)
        assert _step(rt, "poison") == (StepState.DISPATCHED, 2, 0), rt.status("poison").error
        release.set()
        assert handle.result(timeout=WAIT) == {"s": "poison"}
    finally:
        rt.stop(timeout=1)
