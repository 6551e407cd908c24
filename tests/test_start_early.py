"""A start with a fresh id is admitted while its creation is on its way to disk, so the
workflow's first DISPATCHED can share that commit (runtime/_starts.py, Landing.admit_early).
If the creation then fails, nothing the Scheduler built on it may be written: the writer
halts the engine's batches behind it (fail-stop) and the Scheduler forgets the workflow."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from herder.actors._recovery import SWEEP_EARLY, Recovery
from herder.actors.engine._machine import Machine
from herder.runtime import (
    Agent,
    Runtime,
    State,
    StepContext,
    StoreIOError,
    Workflow,
    WorkflowFailed,
)
from herder.runtime._starts import Landing
from herder.runtime.testing import check_store, crash_scheduler
from herder.store import Put, Transition, encode

pytestmark = pytest.mark.timeout(60)
WAIT = 30.0


class Counting(Agent):
    calls: list[str] = []
    lock = threading.Lock()

    def run(self, ctx: StepContext) -> object:
        with self.lock:
            Counting.calls.append(ctx.workflow_id)
        return ctx.input


def _runtime(path: Path) -> Runtime:
    rt = Runtime(path)
    rt.add_agent("counting", Counting)
    rt.add_workflow(
        Workflow("two")
        .step("a", agent="counting", action="run")
        .step("b", agent="counting", action="run", after=["a"])
    )
    return rt


def _hold_writer(rt: Runtime, monkeypatch: pytest.MonkeyPatch, *, fail: bool) -> None:
    """Hold the writer inside the next write transaction (a start's creation) until the
    Scheduler has queued a batch behind it; then let it commit, or fail it (``fail``)."""
    writer = rt._store.writer
    queued = threading.Event()
    submit_batch = writer.submit_batch

    def watched(*args: Any, **kwargs: Any) -> None:
        submit_batch(*args, **kwargs)
        queued.set()

    def hold() -> None:
        writer.fault = None
        assert queued.wait(WAIT)  # the Scheduler built on the creation: its batch waits
        if fail:
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(writer, "submit_batch", watched)
    writer.fault = hold


def _steps(rt: Runtime, workflow_id: str) -> dict[str, tuple[Any, ...]]:
    return {s.name: (s.state, s.attempt, s.token) for s in rt._store.steps_of(workflow_id)}


def _behind_a_held_transaction(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch, then: Callable[[], None] | None = None
) -> tuple[threading.Event, threading.Event, Any]:
    """Hold the writer in a transaction of its own until ``release`` is set, so that a
    start's creation and the Scheduler's batches queue behind it (``queued``: a batch
    was); ``then`` runs inside the next transaction. Also returns the held one's future."""
    writer = rt._store.writer
    queued, release = threading.Event(), threading.Event()
    submit_batch = writer.submit_batch

    def watched(*args: Any, **kwargs: Any) -> None:
        submit_batch(*args, **kwargs)
        queued.set()

    def first() -> None:
        writer.fault = then
        assert release.wait(WAIT)

    monkeypatch.setattr(writer, "submit_batch", watched)
    writer.fault = first
    return queued, release, writer.submit(Transition((Put("meta", b"test:hold", encode(1)),)))


def test_a_start_whose_id_was_taken_after_its_check_writes_nothing_over_the_workflow(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    Counting.calls = []
    with _runtime(tmp_path / "s") as rt:
        assert rt.start("two", {"v": 1}, workflow_id="dup").result(timeout=WAIT)
        before = _steps(rt, "dup")
        assert Counting.calls == ["dup", "dup"]
        # The race: the start's check read the id as free, and then it was taken (here it
        # was taken all along and the check is told it is not, once).
        real = rt._store.get_workflow
        seen = []

        def raced(workflow_id: str) -> Any:
            if workflow_id == "dup" and not seen:
                seen.append(workflow_id)
                return None
            return real(workflow_id)

        monkeypatch.setattr(rt._store, "get_workflow", raced)
        _hold_writer(rt, monkeypatch, fail=False)
        again = rt.start("two", {"v": 1}, workflow_id="dup")  # the same input: its handle
        assert seen == ["dup"]
        assert again.result(timeout=WAIT) == {"a": {"v": 1}, "b": {"v": 1}}
        rt._store.writer.flush(WAIT)  # what was queued behind the creation is decided
        # The Scheduler writes and dispatches again after the halt (it resynced).
        assert rt.start("two", {"v": 2}, workflow_id="after").result(timeout=WAIT)
        assert _steps(rt, "dup") == before  # no DISPATCHED of the early start landed
        assert Counting.calls == ["dup", "dup", "after", "after"]
        assert check_store(rt._store).problems == []


def test_a_start_whose_creation_commit_fails_leaves_nothing_of_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    Counting.calls = []
    with _runtime(tmp_path / "s") as rt:
        _hold_writer(rt, monkeypatch, fail=True)
        with pytest.raises(StoreIOError):
            rt.start("two", {"v": 1}, workflow_id="lost")
        assert rt._store.writer.fault is None
        rt._store.writer.flush(WAIT)  # what was queued behind the creation is decided
        assert rt._store.get_workflow("lost") is None
        assert rt._store.steps_of("lost") == []
        assert rt.start("two", {"v": 3}, workflow_id="next").result(timeout=WAIT)
        assert "lost" not in Counting.calls
        # The same id again: a fresh start, run once.
        assert rt.start("two", {"v": 1}, workflow_id="lost").result(timeout=WAIT)
        assert Counting.calls.count("lost") == 2
        assert check_store(rt._store).problems == []


def test_a_start_whose_first_batch_was_refused_before_its_creation_landed_still_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The writer is halted by another failure when the start's creation and the
    # Scheduler's first batch for it are drained together: the batch is refused (and
    # reported) before the creation commits, so the Scheduler forgets the workflow and
    # reads the store while the creation is not there yet. Once the creation lands, the
    # workflow must still be run (the threaded simulation found it stuck RUNNING).
    Counting.calls = []
    with _runtime(tmp_path / "s") as rt:
        writer = rt._store.writer
        resynced = threading.Event()
        resync = writer.resync

        def resyncing() -> None:
            resync()
            resynced.set()

        def in_creation() -> None:  # the creation's transaction, after the refusal
            writer.fault = None
            assert resynced.wait(WAIT)  # the Scheduler forgot it, read the store, resynced

        monkeypatch.setattr(writer, "resync", resyncing)
        queued, release, held = _behind_a_held_transaction(rt, monkeypatch, in_creation)
        writer._halted = StoreIOError("an earlier engine batch failed")  # (as another's would)
        handles: list[Any] = []
        starter = threading.Thread(target=lambda: handles.append(rt.start("two", {"v": 5})))
        starter.start()
        assert queued.wait(WAIT)  # its first batch waits behind the creation
        release.set()
        held.result(timeout=WAIT)
        starter.join(WAIT)
        assert handles[0].result(timeout=WAIT) == {"a": {"v": 5}, "b": {"v": 5}}
        assert check_store(rt._store).problems == []


def test_a_start_cancelled_before_its_creation_landed_is_not_run_again_once_it_lands(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Taken up early, the workflow is cancelled (by another thread that knew its id)
    # while its creation is still on its way: it ends CANCELLED in memory. The start's
    # Admit once durable must not take it up again as new.
    Counting.calls = []
    with _runtime(tmp_path / "s") as rt:
        ended = threading.Event()
        finish = Machine.finish

        def finishing(machine: Machine, run: Any, *args: Any, **kwargs: Any) -> None:
            finish(machine, run, *args, **kwargs)
            if run.record.id == "x":
                ended.set()

        monkeypatch.setattr(Machine, "finish", finishing)
        queued, release, held = _behind_a_held_transaction(rt, monkeypatch)
        handles: list[Any] = []
        starter = threading.Thread(
            target=lambda: handles.append(rt.start("two", {"v": 7}, workflow_id="x"))
        )
        starter.start()
        assert queued.wait(WAIT)  # x's first DISPATCHED waits behind it
        canceller = threading.Thread(target=lambda: rt.cancel("x"))
        canceller.start()
        assert ended.wait(WAIT)  # cancelled in memory: its writes wait for the first ones
        release.set()
        held.result(timeout=WAIT)
        starter.join(WAIT)
        canceller.join(WAIT)
        with pytest.raises(WorkflowFailed):
            handles[0].result(timeout=WAIT)
        assert rt.status("x").state is State.CANCELLED
        # The start's Admit once durable is handled by now (it came before the batches'
        # news): a later workflow runs, and x's steps never did.
        assert rt.start("two", {"v": 8}, workflow_id="y").result(timeout=WAIT)
        assert "x" not in Counting.calls
        assert rt.status("x").state is State.CANCELLED
        assert check_store(rt._store).problems == []


def _admits(
    monkeypatch: pytest.MonkeyPatch, *, held: bool = False, before: threading.Event | None = None
) -> tuple[list[Any], threading.Event]:
    """Every Admit the Scheduler handled, as (its recovery, the message's ids, early), and
    an event set once an early one was. ``held``: operator commands are held (for a
    workflow not in memory), so the Scheduler takes up no start early; ``before``: it
    waits for that event before it handles an early Admit."""
    seen: list[Any] = []
    handled = threading.Event()
    admit_new = Recovery.admit_new

    def watched(recovery: Recovery, starts: Any, *, early: Any = None) -> None:
        if early is not None and before is not None:
            assert before.wait(WAIT)
        if held:
            recovery.held.setdefault("absent", {})  # (applied once it is read: never)
        admit_new(recovery, starts, early=early)
        seen.append((recovery, [record.id for record, _ in starts], early is not None))
        if early is not None:
            handled.set()

    monkeypatch.setattr(Recovery, "admit_new", watched)
    return seen, handled


def test_a_start_taken_up_early_is_admitted_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Once durable, a start the Scheduler took up early is not admitted again (a message
    # it would only ignore), and the Scheduler's marks of such starts go (_sweep).
    Counting.calls = []
    with _runtime(tmp_path / "s") as rt:
        seen, _ = _admits(monkeypatch)
        count = 2 * SWEEP_EARLY
        for n in range(count):
            assert rt.start("two", {"v": n}, workflow_id=f"w{n}").result(timeout=WAIT)
        assert [(ids, early) for _, ids, early in seen] == [([f"w{n}"], True) for n in range(count)]
        assert len(seen[-1][0]._early) <= SWEEP_EARLY
        assert Counting.calls == [f"w{n}" for n in range(count) for _ in "ab"]


def test_a_start_on_its_way_reaches_the_scheduler_with_the_outcomes_not_as_a_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An early Admit joins the hosts' outcomes (actors/_answers.py): a caller tells a
    # drain only when none is on its way, never a message of its own.
    Counting.calls = []
    with _runtime(tmp_path / "s") as rt:
        told: list[str] = []
        tell = rt._ctx.tell_scheduler

        def telling(message: Any) -> None:
            told.append(type(message).__name__)
            tell(message)

        monkeypatch.setattr(rt._ctx, "tell_scheduler", telling)
        monkeypatch.setattr(rt._ctx.answers, "_tell", telling)
        seen, _ = _admits(monkeypatch)
        for n in range(5):
            assert rt.start("two", {"v": n}).result(timeout=WAIT)
        assert "Admit" not in told
        assert "Drain" in told
        assert [early for _, _, early in seen] == [True] * 5


def test_a_start_let_go_before_its_creation_landed_is_admitted_once_it_has(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The Scheduler does not take the start up while its creation is held (Recovery._let_go):
    # once durable, the start sees the Scheduler let a start go, and admits it again.
    Counting.calls = []
    with _runtime(tmp_path / "s") as rt:
        seen, handled = _admits(monkeypatch, held=True)
        _, release, held = _behind_a_held_transaction(rt, monkeypatch)
        handles: list[Any] = []
        starter = threading.Thread(target=lambda: handles.append(rt.start("two", {"v": 3})))
        starter.start()
        assert handled.wait(WAIT)  # let go; its creation is still held
        assert rt._store.get_workflow(seen[0][1][0]) is None
        release.set()
        held.result(timeout=WAIT)
        starter.join(WAIT)
        assert handles[0].result(timeout=WAIT) == {"a": {"v": 3}, "b": {"v": 3}}
        assert [early for _, _, early in seen] == [True, False]
        assert len(Counting.calls) == 2
        assert check_store(rt._store).problems == []


def test_a_start_that_landed_before_the_scheduler_let_it_go_is_read_from_the_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Its creation is durable, and no Admit follows (no start was let go yet), before the
    # Scheduler handles the early Admit and does not take the start up.
    Counting.calls = []
    with _runtime(tmp_path / "s") as rt:
        landed = threading.Event()
        seen, _ = _admits(monkeypatch, held=True, before=landed)
        handle = rt.start("two", {"v": 4}, workflow_id="x")  # durable when it returns
        landed.set()
        assert handle.result(timeout=WAIT) == {"a": {"v": 4}, "b": {"v": 4}}
        assert [(ids, early) for _, ids, early in seen] == [(["x"], True)]
        assert Counting.calls == ["x", "x"]
        assert check_store(rt._store).problems == []


def test_a_start_whose_creation_landed_before_it_was_admitted_early_is_admitted_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The writer called back before the caller came to admit it early: the call admitted
    # it (durable), and the caller admits nothing more.
    Counting.calls = []
    with _runtime(tmp_path / "s") as rt:
        seen, _ = _admits(monkeypatch)
        called = threading.Event()
        land, admit_early = Landing.__call__, Landing.admit_early

        def landing(self: Landing, results: list[BaseException | None]) -> None:
            land(self, results)
            called.set()

        def late(self: Landing) -> None:
            assert called.wait(WAIT)
            admit_early(self)

        monkeypatch.setattr(Landing, "__call__", landing)
        monkeypatch.setattr(Landing, "admit_early", late)
        assert rt.start("two", {"v": 6}, workflow_id="z").result(timeout=WAIT)
        rt._settle()
        assert [(ids, early) for _, ids, early in seen] == [(["z"], False)]
        assert Counting.calls == ["z", "z"]


def test_a_new_scheduler_does_not_run_a_start_its_predecessor_was_told_to_forget(
    tmp_path: Path,
) -> None:
    # The Scheduler died with a start's early Admit among the outcomes waiting for it
    # (their DRAIN in its inbox) and the Unadmit of the start's failed creation in that
    # inbox too. The next Scheduler takes what waits (Answers.restart): it must not take
    # up that start, a workflow that was never created.
    Counting.calls = []
    with _runtime(tmp_path / "s") as rt:
        ctx, writer = rt._ctx, rt._store.writer
        dead: list[Any] = []
        ctx.answers.told = True  # a DRAIN is on its way, in the inbox that dies
        ctx.tell_scheduler = dead.append  # type: ignore[method-assign]

        def fail() -> None:
            writer.fault = None
            raise OSError(28, "No space left on device")

        writer.fault = fail
        with pytest.raises(StoreIOError):
            rt.start("two", {"v": 1}, workflow_id="lost")
        assert [type(m).__name__ for m in dead] == ["Unadmit"]
        del ctx.tell_scheduler  # (the EngineContext's own again)
        crash_scheduler(rt, WAIT)
        assert rt.start("two", {"v": 2}, workflow_id="next").result(timeout=WAIT)
        assert rt._store.get_workflow("lost") is None
        assert rt._store.steps_of("lost") == []
        assert "lost" not in Counting.calls
        assert check_store(rt._store).problems == []
