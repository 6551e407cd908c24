"""A purge racing an operator's action on a parked workflow: the Scheduler read the
workflow from the store, the purge's deletion committed, then the action's writes landed
and rewrote the purged workflow (record, steps, part of a history), ``herder check``
none the wiser. The purge is made to land exactly in that gap: right after the Scheduler
validated the action (``Operator._note_operator`` begins its writes), on its thread."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import herder.runtime._retention as runtime_retention
import herder.store._retention as store_retention
from herder.actors._operator import Operator
from herder.actors._reload import Reloads
from herder.runtime import (
    Agent,
    Permanent,
    RetryPolicy,
    Runtime,
    State,
    StepContext,
    UnknownWorkflow,
    Workflow,
)
from herder.runtime._check import check_store
from herder.runtime._retention import Retention
from herder.runtime.testing import FakeClock, advance
from herder.store import (
    BATCH_TIMER,
    Store,
    Transition,
    append_command,
    batch_items,
    deletions,
    new_command,
    purge,
    wait_outcome,
)

WAIT = 30.0
DAY = 86400.0
T0 = 1_700_000_000.0
PARKED = frozenset({"NEEDS_ATTENTION"})  # (``herder purge --state NEEDS_ATTENTION``)


class Shop(Agent):
    def buy(self, ctx: StepContext) -> str:
        if ctx.step == "ship":
            raise Permanent("sold out")
        return "ok"

    def refund(self, ctx: StepContext) -> None:
        raise Permanent("refunds are down")


def register(rt: Runtime) -> None:
    rt.add_agent("shop", Shop)
    rt.add_workflow(
        Workflow("order")
        .step("pay", agent="shop", action="buy", compensate="refund")
        .step("ship", agent="shop", action="buy", after=["pay"])
    )


def keys_of(store: Store, wid: str) -> dict[str, int]:
    """How many keys of each per-workflow database still name ``wid``."""
    prefix = wid.encode()
    found = {"workflows": sum(1 for k, _ in store.raw_scan("workflows") if k == prefix)}
    for db in ("steps", "history"):
        found[db] = sum(1 for k, _ in store.raw_scan(db) if k.split(b"\x00")[0] == prefix)
    return found


def purged_in_the_gap(monkeypatch: pytest.MonkeyPatch, store: Store) -> list[int]:
    """Make the purge of parked workflows land right after the Scheduler read and
    validated an operator's action; the counts of what each purge deleted."""
    deleted: list[int] = []
    note = Operator._note_operator

    def purge_first(self: Operator, *args: object, **kwargs: object) -> None:
        if not deleted:
            deleted.append(purge(store, T0 + DAY, PARKED))
        note(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Operator, "_note_operator", purge_first)
    return deleted


@pytest.mark.parametrize(
    "action",
    ["retry", "skip", "compensate", "abandon"],
)
def test_an_action_on_a_parked_workflow_purged_meanwhile_is_refused_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, action: str
) -> None:
    clock = FakeClock(start=T0)
    retry = RetryPolicy(max_attempts=1)
    with Runtime(
        tmp_path / "s", clock=clock, setup=register, retention=None, default_retry=retry
    ) as rt:
        # ship fails, pay's refund fails: parked, NEEDS_ATTENTION
        rt._wait_final(rt.start("order", {}, workflow_id="stuck").id, WAIT)
        store = rt._store
        deleted = purged_in_the_gap(monkeypatch, store)
        with pytest.raises(UnknownWorkflow, match="'stuck' was purged") as refused:
            getattr(rt, action)("stuck", who="ops", why="try again")
        assert deleted == [1]
        assert "nothing of the action was recorded" in str(refused.value)
        store.writer.flush(WAIT)
        assert keys_of(store, "stuck") == {"workflows": 0, "steps": 0, "history": 0}
        assert rt.list() == []
        report = check_store(store)
        assert report.ok, report.problems


class Undo(Agent):
    """Pays; ship fails; the first refund fails (the workflow parks), later ones hang
    until ``release`` is set."""

    def __init__(self, release: threading.Event) -> None:
        self.release = release
        self.refunds = 0

    def buy(self, ctx: StepContext) -> str:
        if ctx.step == "ship":
            raise Permanent("sold out")
        return "ok"

    def refund(self, ctx: StepContext) -> None:
        self.refunds += 1
        if self.refunds == 1:
            raise Permanent("refunds are down")
        self.release.wait(WAIT)


def undoing(release: threading.Event) -> Callable[[Runtime], None]:
    def setup(rt: Runtime) -> None:
        rt.add_agent("shop", lambda: Undo(release))
        rt.add_workflow(
            Workflow("order")
            .step("pay", agent="shop", action="buy", compensate="refund", timeout=5.0)
            .step("ship", agent="shop", action="buy", after=["pay"])
        )

    return setup


def test_an_action_on_a_parked_workflow_keeps_its_attempts_deadlines(tmp_path: Path) -> None:
    """Its writes go to the store as a transition of their own: the deadline of the
    attempt the retry records is watched (its batch entry) as the writer would, and the
    attempt times out."""
    clock = FakeClock(start=T0)
    release = threading.Event()

    with Runtime(
        tmp_path / "s",
        clock=clock,
        setup=undoing(release),
        default_retry=RetryPolicy(max_attempts=1),
    ) as rt:
        try:
            rt._wait_final(rt.start("order", {}, workflow_id="w").id, WAIT)
            rt.retry("w")  # the refund runs again, and hangs
            store = rt._store
            watched = [
                item
                for due, wf, _, value in store.due_timers(2**62)
                if wf == BATCH_TIMER
                for item in batch_items(value) or []
            ]
            refund = store.get_step("w", "pay")
            assert refund is not None
            assert ("w", "pay", refund.token) in watched
            advance(rt, clock, 6.0)
            assert rt.status("w").state is State.NEEDS_ATTENTION  # it timed out: parked again
            timed_out = store.get_step("w", "pay")
            assert timed_out is not None
            assert timed_out.attempt == refund.attempt
            assert "timed out" in (timed_out.error or "")
        finally:
            release.set()


class Ok(Agent):
    def buy(self, ctx: StepContext) -> str:
        return "ok"


def one_step(rt: Runtime) -> None:
    rt.add_agent("shop", Ok)
    rt.add_workflow(Workflow("order").step("pay", agent="shop", action="buy"))


@pytest.mark.parametrize("through", ["runtime", "offline"])
def test_an_event_written_while_its_workflow_is_purged_goes_with_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, through: str
) -> None:
    """A command refused on a finished workflow writes an event into its history. One
    that lands after a purge read the workflow's keys and before it committed was left
    behind (``herder check``: an event of a workflow that does not exist); the purge
    deletes it too (the runtime's retention at its next sweep, ``purge`` at once)."""
    path = tmp_path / "s"
    with Runtime(path, clock=FakeClock(start=T0), setup=one_step, retention=None) as rt:
        rt._wait_final(rt.start("order", {}, workflow_id="old").id, WAIT)
        store = rt._store
        read = deletions

        def refused_right_after(
            store: Store, found: Any, gone: Any = ()
        ) -> tuple[int, list[Transition]]:
            keys = read(store, found, gone)
            command = append_command(path, new_command("cancel", "old", who="t", why="x"))
            rt._sweep_now()  # (hands the command over: refused, with an event in history)
            outcome = wait_outcome(path, command, timeout=WAIT)
            assert outcome is not None
            assert outcome["state"] == "FAILED"
            return keys

        if through == "runtime":
            monkeypatch.setattr(runtime_retention, "deletions", refused_right_after)
            retention = Retention(store, rt.clock.time, None)
            retention.on_command({"id": 99, "action": "purge", "args": {"before": T0 + DAY}})
            for _ in range(2):  # the batch, then the sweep that looks for what it left
                retention.on_sweep()
                store.writer.flush(WAIT)
        else:
            monkeypatch.setattr(store_retention, "deletions", refused_right_after)
            assert purge(store, T0 + DAY) == 1
        assert keys_of(store, "old") == {"workflows": 0, "steps": 0, "history": 0}
        report = check_store(store)
        assert report.ok, report.problems


def test_an_action_that_lands_before_the_purge_keeps_the_workflow(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The other order: the retry is durable before the purge commits (after it read the
    workflow's keys); the purge's condition fails and the workflow stays, retried."""
    release = threading.Event()
    with Runtime(
        tmp_path / "s",
        clock=FakeClock(start=T0),
        setup=undoing(release),
        retention=None,
        default_retry=RetryPolicy(max_attempts=1),
    ) as rt:
        try:
            rt._wait_final(rt.start("order", {}, workflow_id="stuck").id, WAIT)
            read = deletions

            def retried_right_after(
                store: Store, found: Any, gone: Any = ()
            ) -> tuple[int, list[Transition]]:
                keys = read(store, found, gone)
                rt.retry("stuck")  # (its refund then hangs: it stays COMPENSATING)
                return keys

            monkeypatch.setattr(store_retention, "deletions", retried_right_after)
            assert purge(rt._store, T0 + DAY, PARKED) == 0
            assert rt.status("stuck").state is State.COMPENSATING
            assert "retry" in [event.get("action") for event in rt.history("stuck")]
            report = check_store(rt._store)
            assert report.ok, report.problems
        finally:
            release.set()


def test_a_command_on_a_parked_workflow_purged_meanwhile_is_refused_on_its_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``herder retry`` through the command channel, the purge landing as for the API: the
    command's outcome was to be written with the retry, so it stays pending, is handed
    over again, and is refused then: the workflow no longer exists."""
    path = tmp_path / "s"
    clock = FakeClock(start=T0)
    with Runtime(
        path,
        clock=clock,
        setup=register,
        retention=None,
        default_retry=RetryPolicy(max_attempts=1),
    ) as rt:
        rt._wait_final(rt.start("order", {}, workflow_id="stuck").id, WAIT)
        deleted = purged_in_the_gap(monkeypatch, rt._store)
        read_back = threading.Event()
        reload_later = Reloads.reload_later

        def noted(self: Reloads, failed: list[str], errors: list[Any]) -> None:
            reload_later(self, failed, errors)
            read_back.set()  # (the command's refusal reached the channel: pending again)

        monkeypatch.setattr(Reloads, "reload_later", noted)
        command = append_command(path, new_command("retry", "stuck", who="t", why="x"))
        rt._sweep_now()  # (hands it over: the retry, and the purge in its gap)
        assert read_back.wait(WAIT)
        assert deleted == [1]
        clock.advance(5.0)  # (a command still pending is handed over again after 5 s)
        rt._sweep_now()
        outcome = wait_outcome(path, command, timeout=WAIT)
        assert outcome is not None
        assert outcome["state"] == "FAILED"
        assert "no workflow with id 'stuck'" in outcome["error"]
        assert keys_of(rt._store, "stuck") == {"workflows": 0, "steps": 0, "history": 0}
        report = check_store(rt._store)
        assert report.ok, report.problems


def test_what_a_purge_batch_left_is_gone_by_a_clean_stop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As above, through the runtime's own retention, but the runtime stops right after
    the batch commits: the refused command's event, to go with the next batch, stayed
    for good (``herder check``: an event of a workflow that does not exist)."""
    path = tmp_path / "s"
    with Runtime(path, clock=FakeClock(start=T0), setup=one_step, retention=None) as rt:
        rt._wait_final(rt.start("order", {}, workflow_id="old").id, WAIT)
        retention, read = rt._retention, deletions
        # The sweeps the test asks for hand the command over; the batch is the test's own.
        sweepers = rt._listener.sweepers
        sweepers[:] = [s for s in sweepers if s != retention.on_sweep]

        def refused_right_after(
            store: Store, found: Any, gone: Any = ()
        ) -> tuple[int, list[Transition]]:
            keys = read(store, found, gone)
            command = append_command(path, new_command("cancel", "old", who="t", why="x"))
            rt._sweep_now()  # (hands the command over: refused, with an event in history)
            outcome = wait_outcome(path, command, timeout=WAIT)
            assert outcome is not None
            return keys

        monkeypatch.setattr(runtime_retention, "deletions", refused_right_after)
        retention.on_command({"id": 99, "action": "purge", "args": {"before": T0 + DAY}})
        retention.on_sweep()  # one batch: the workflow goes, its late event stays
        monkeypatch.setattr(runtime_retention, "deletions", read)
        rt._store.writer.flush(WAIT)
        assert keys_of(rt._store, "old") == {"workflows": 0, "steps": 0, "history": 1}
    with Store(path) as store:
        assert keys_of(store, "old") == {"workflows": 0, "steps": 0, "history": 0}
        report = check_store(store)
        assert report.ok, report.problems
