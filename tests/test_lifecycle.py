"""The drain of ``stop(drain=True)`` and ``handoff`` waits on commits, not on a poll; a
runtime whose actors failed for good says so, and so does an open whose Scheduler crashes
in its first recovery, unless the tree's restart of it recovers."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from herder.runtime import Agent, Runtime, RuntimeClosed, StepContext, Workflow, _lifecycle
from herder.runtime.testing import FakeClock, crash_scheduler

WAIT = 20.0


class Blocking(Agent):
    def __init__(self, entered: threading.Event, release: threading.Event) -> None:
        self.entered, self.release = entered, release

    def hold(self, ctx: StepContext) -> str:
        self.entered.set()
        self.release.wait(WAIT)
        return "held"


def holding(tmp_path: Path, release: threading.Event) -> Runtime:
    """A runtime whose workflow "w" runs an attempt that holds until ``release``."""
    entered = threading.Event()
    rt = Runtime(tmp_path / "s")
    try:
        rt.add_agent("gate", lambda: Blocking(entered, release))
        rt.add_workflow(Workflow("held").step("hold", agent="gate", action="hold"))
        rt.start("held", workflow_id="w")
        assert entered.wait(WAIT)
    except BaseException:
        rt.stop()
        raise
    return rt


def test_the_drain_asks_again_when_an_outcome_commits_not_on_a_timer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_lifecycle, "_BACKSTOP", 600.0)  # only a commit can wake it in time
    asked: list[int] = []
    first_answer = threading.Event()
    real_call = _lifecycle.call

    def counting(ref: Any, method: str, *args: Any, **kwargs: Any) -> Any:
        answer = real_call(ref, method, *args, **kwargs)
        if method == "in_flight":
            asked.append(answer)
            first_answer.set()
        return answer

    monkeypatch.setattr(_lifecycle, "call", counting)
    release = threading.Event()
    rt = holding(tmp_path, release)
    try:
        stopper = threading.Thread(target=rt.stop, kwargs={"timeout": WAIT, "drain": True})
        stopper.start()
        assert first_answer.wait(WAIT)
        rt._settle()  # the engine and the writer go idle while the attempt runs
        threading.Event().wait(0.3)  # a window to see nothing happen (a poll would ask ~30x)
        assert asked == [1]  # no commit, so the drain has not asked again
        release.set()  # its outcome commits, which wakes the drain at once
        stopper.join(WAIT)
        assert not stopper.is_alive(), "the drain did not wake on the outcome's commit"
        assert asked == [1, 0]  # asked once more, not once per 10 ms
    finally:
        release.set()
        rt.stop()


def test_a_runtime_whose_actors_failed_for_good_says_so_from_stats_and_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every outcome crashes the Scheduler: the tree restarts it until it gives up. stats()
    # then raised pykka's ActorDeadError (the workflow definition review, #6).
    from herder.actors._scheduler import Scheduler

    def broken(self: Scheduler, message: object) -> None:
        raise RuntimeError("a Scheduler bug")

    monkeypatch.setattr(Scheduler, "_on_outcome", broken)

    class Quick(Agent):
        def act(self, ctx: StepContext) -> int:
            return 1

    rt = Runtime(tmp_path / "s")
    try:
        rt.add_agent("a", Quick)
        rt.add_workflow(Workflow("w").step("s", agent="a", action="act"))
        handle = rt.start("w")
        waiter = rt._watch(handle.id)  # what result() waits on, registered before
        deadline = time.monotonic() + 30
        while rt._fatal is None and time.monotonic() < deadline:
            rt._wake.wait(0.05)  # set when the tree gives up (Lifecycle._failed)
        for call in (rt.stats, lambda: rt.start("w"), lambda: handle.result(timeout=WAIT)):
            with pytest.raises(RuntimeClosed, match="the runtime failed and stopped its actors"):
                call()
        # A waiter from before was left blocked until the app called stop() itself.
        with pytest.raises(RuntimeClosed, match="the runtime failed before the workflow ended"):
            waiter.wait(WAIT)
    finally:
        rt.stop()


def test_crash_scheduler_says_so_once_the_tree_gives_up_restarting(tmp_path: Path) -> None:
    # The crash past the root's restart intensity waited out its whole timeout for a new
    # Scheduler that would never come, then blamed the wait (TimeoutError).
    with Runtime(tmp_path / "s", clock=FakeClock()) as rt:  # (all within the root's 5 s)
        for _ in range(3):  # the root restarts it 3 times...
            crash_scheduler(rt, timeout=WAIT)
        with pytest.raises(RuntimeClosed, match="gave up"):
            crash_scheduler(rt, timeout=WAIT)  # ...and gives up at the 4th


def test_a_waiter_of_a_stopped_runtime_is_told_where_the_workflow_goes_on(
    tmp_path: Path,
) -> None:
    release = threading.Event()
    rt = holding(tmp_path, release)
    try:
        waiter = rt._watch("w")  # what result() waits on, registered before the stop
        rt.stop(timeout=1.0)
        with pytest.raises(RuntimeClosed, match="goes on under the next runtime on the store"):
            waiter.wait(WAIT)
    finally:
        release.set()
        rt.stop()


def crashing_recoveries(monkeypatch: pytest.MonkeyPatch, crashes: int | None) -> list[int]:
    """The first ``crashes`` recoveries (every one: None) crash their Scheduler, as a bug
    that a stored workflow trips would; returns the list each recovery appends to."""
    from herder.actors._recovery import Recovery

    seen: list[int] = []
    real = Recovery.recover_all

    def recover_all(self: Recovery) -> None:
        seen.append(len(seen) + 1)
        if crashes is None or len(seen) <= crashes:
            raise RuntimeError("a Scheduler bug in recovery")
        real(self)

    monkeypatch.setattr(Recovery, "recover_all", recover_all)
    return seen


def test_a_scheduler_that_crashes_in_its_first_recovery_is_replaced_and_the_runtime_opens(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Runtime() raised pykka's ActorDeadError ("Scheduler (urn:...) not found"): it asked
    # the crashed Scheduler whether recovery had run, not the one the tree put in its place.
    recoveries = crashing_recoveries(monkeypatch, 1)

    class Quick(Agent):
        def act(self, ctx: StepContext) -> int:
            return 1

    with Runtime(tmp_path / "s") as rt:
        assert len(recoveries) >= 2  # the replacement's recovery ran before the open ended
        assert rt.is_active
        assert rt.stats()["restarts"]["scheduler"] == 1
        rt.add_agent("a", Quick)
        rt.add_workflow(Workflow("w").step("s", agent="a", action="act"))
        assert rt.start("w").result(timeout=WAIT) == {"s": 1}


def test_a_first_recovery_that_crashes_past_the_intensity_fails_the_open_saying_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    crashing_recoveries(monkeypatch, None)
    with pytest.raises(RuntimeClosed, match=r"gave up: 4 restarts within 5\.0 s") as failed:
        Runtime(tmp_path / "s")
    assert "the runtime failed and stopped its actors" in str(failed.value)
    monkeypatch.undo()  # the store was closed: it opens again
    with Runtime(tmp_path / "s") as rt:
        assert rt.is_active


def test_the_trees_give_up_is_logged_once_and_names_nothing_a_user_cannot_set(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # It said to "fix the crashing child or raise max_restarts/period" (to the waiters, to
    # `herder run`'s last line), a setting no Runtime has; and pykka logged the give-up a
    # second time, as an "Unhandled exception in supervisor 'herder'".
    with Runtime(tmp_path / "s", clock=FakeClock()) as rt:  # (all within the root's 5 s)
        for _ in range(3):
            crash_scheduler(rt, timeout=WAIT)
        with pytest.raises(RuntimeClosed, match="gave up") as closed:
            crash_scheduler(rt, timeout=WAIT)
    assert "max_restarts" not in str(closed.value)
    assert "its workflows are durable" in str(closed.value)
    said = [r.name for r in caplog.records if "supervisor 'herder'" in r.getMessage()]
    assert said == ["herder.supervision", "herder.runtime"]  # (its ERROR, the CRITICAL)


def test_a_crash_of_the_trees_root_itself_fails_the_runtime_as_a_give_up_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The root stopped its children and ended, telling nobody: start() stored workflows
    # no actor would run, stats() said to call again in a moment for ever, result() and
    # run_forever() waited for ever.
    from herder.actors._supervision import _Supervisor

    real = _Supervisor._on_child_exit

    def broken(self: _Supervisor, message: Any) -> None:
        if self._name == "herder":
            raise RuntimeError("a bug in the root supervisor")
        real(self, message)

    monkeypatch.setattr(_Supervisor, "_on_child_exit", broken)
    release = threading.Event()
    rt = holding(tmp_path, release)
    try:
        waiter = rt._watch("w")
        with pytest.raises(RuntimeClosed, match="a bug in the root supervisor"):
            crash_scheduler(rt, timeout=WAIT)
        with pytest.raises(RuntimeClosed, match="the runtime failed and stopped its actors"):
            rt.start("held")
        with pytest.raises(RuntimeClosed, match="the runtime failed before the workflow ended"):
            waiter.wait(WAIT)
    finally:
        release.set()
        rt.stop()
