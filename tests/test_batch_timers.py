"""Per-batch deadline timers (hot-path.md section 4, stage 5): the attempts one commit records
share one batch entry in the timer index, due at the earliest of their deadlines; nothing
deletes it when an attempt ends; once due, its stale items are dropped and the attempts
still running are kept in a new entry at their own deadline. On a FakeClock."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from herder.actors import call
from herder.actors._commits import CommitPipeline
from herder.runtime import Agent, RetryPolicy, Runtime, StepContext, StepState, Workflow
from herder.runtime.testing import FakeClock, advance, check_store, settle, store_of
from herder.store import (
    BATCH_TIMER,
    Delete,
    Put,
    StepRecord,
    Store,
    Transition,
    batch_entry,
    batch_items,
    batch_timer_key,
    encode,
    ms,
    step_key,
    step_timer_key,
    timer_entry,
)

WAIT = 10.0
ONCE = RetryPolicy(max_attempts=1)


class Hang(Agent):
    """Blocks every call until ``release`` is set (then returns its step's name)."""

    def __init__(self, release: threading.Event, started: threading.Semaphore) -> None:
        self.release = release
        self.started = started

    def run(self, ctx: StepContext) -> str:
        self.started.release()
        self.release.wait(WAIT)
        return ctx.step


class Quick(Agent):
    def run(self, ctx: StepContext) -> str:
        return ctx.step


MIXED = (
    Workflow("mixed")
    .step("short", agent="hang", action="run", timeout=5.0, retry=ONCE)
    .step("long", agent="hang", action="run", timeout=50.0, retry=ONCE)
)
LINE = (
    Workflow("line")
    .step("a", agent="quick", action="run", timeout=30.0)
    .step("b", agent="quick", action="run", after=["a"], timeout=30.0)
    .step("c", agent="quick", action="run", after=["b"], timeout=30.0)
)


def batches(store: Store) -> list[tuple[int, list[tuple[str, str, int]]]]:
    """Every batch entry: (due ms, its items)."""
    out = []
    for due, wf, _, value in store.due_timers(2**62):
        if wf == BATCH_TIMER:
            items = batch_items(value)
            assert items is not None
            out.append((due, items))
    return out


def step(rt: Runtime, wid: str, name: str) -> StepRecord:
    st = store_of(rt).get_step(wid, name)
    assert st is not None
    return st


def assert_clean(rt: Runtime) -> None:
    settle(rt)
    assert check_store(store_of(rt)).problems == []


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def hung(rt: Runtime, release: threading.Event) -> None:
    """Start w1 of MIXED on ``rt`` and return once both its attempts hang (in ``release``)."""
    started = threading.Semaphore(0)
    rt.add_agent("hang", lambda: Hang(release, started), concurrency=2)
    rt.add_workflow(MIXED)
    rt.start("mixed", workflow_id="w1")
    assert started.acquire(timeout=WAIT)
    assert started.acquire(timeout=WAIT)


def test_each_attempt_is_watched_by_a_batch_entry_until_its_own_deadline(
    tmp_path: Path, clock: FakeClock
) -> None:
    release = threading.Event()
    with Runtime(tmp_path / "s", clock=clock, sweep_interval=0.05, prefetch=0) as rt:
        t0 = clock.time()
        hung(rt, release)
        assert_clean(rt)
        short, long = step(rt, "w1", "short"), step(rt, "w1", "long")
        assert (short.timer_ms, long.timer_ms) == (None, None)  # no timer of their own
        # Each attempt is in a batch entry due at the earliest deadline it holds.
        entries = batches(store_of(rt))
        by_token = {token: due for due, items in entries for _, _, token in items}
        assert by_token.keys() == {short.token, long.token}
        assert by_token[short.token] == ms(t0 + 5.0)
        assert all(
            due == min(ms(t0 + (5.0 if n == "short" else 50.0)) for _, n, _ in items)
            for due, items in entries
        )

        advance(rt, clock, 6.0)  # the short attempt lapsed; the long one runs on
        assert step(rt, "w1", "short").state is not StepState.DISPATCHED
        assert step(rt, "w1", "long").token == long.token
        assert_clean(rt)
        assert [(due, i) for due, i in batches(store_of(rt))] == [
            (ms(t0 + 50.0), [("w1", "long", long.token)])
        ]

        advance(rt, clock, 45.0)  # the long one lapses at its own deadline, not before
        assert step(rt, "w1", "long").token != long.token
        assert batches(store_of(rt)) == []
        assert_clean(rt)
        release.set()


def test_an_attempt_that_waited_for_its_instance_lapses_at_its_own_deadline_not_later(
    tmp_path: Path, clock: FakeClock
) -> None:
    # Reserved ahead, w2's attempt waited 4 s for the one instance: its deadline counts
    # from its start (restamp), but its batch entry stayed due at the recorded one and
    # came back only at the sweep's resend, 5 s later: a 5 s timeout took ~9 s (the
    # workflow review, session 14).
    started = {n: threading.Event() for n in (1, 2)}
    release = {n: threading.Event() for n in (1, 2)}

    class Gate(Agent):
        def run(self, ctx: StepContext) -> str:
            n = ctx.input["n"]
            if n in started:
                started[n].set()
                release[n].wait(WAIT)
            return ctx.step

    one = Workflow("one").step("s", agent="gate", action="run", timeout=5.0, retry=ONCE)
    with Runtime(tmp_path / "s", clock=clock, sweep_interval=0.05, prefetch=7) as rt:
        rt.add_agent("gate", Gate, concurrency=1)
        rt.add_workflow(one)
        rt.start("one", {"n": 0}, workflow_id="w0").result(timeout=WAIT)  # timed: prefetch on
        rt.start("one", {"n": 1}, workflow_id="w1")
        assert started[1].wait(WAIT)
        rt.start("one", {"n": 2}, workflow_id="w2")  # reserved ahead of the busy instance
        settle(rt)
        advance(rt, clock, 4.0)
        release[1].set()
        assert started[2].wait(WAIT)  # it starts 4 s after it was recorded
        settle(rt)
        advance(rt, clock, 1.5)  # past the recorded deadline, 1.5 s into its run
        assert step(rt, "w2", "s").state is StepState.DISPATCHED
        advance(rt, clock, 3.7)  # 5.2 s into its run
        assert step(rt, "w2", "s").state is StepState.FAILED
        release[2].set()
        assert_clean(rt)


def test_ended_attempts_leave_their_entry_until_it_is_due_then_it_goes(
    tmp_path: Path, clock: FakeClock
) -> None:
    with Runtime(tmp_path / "s", clock=clock, sweep_interval=0.05) as rt:
        rt.add_agent("quick", Quick, concurrency=2)
        rt.add_workflow(LINE)
        for i in range(3):
            assert rt.start("line", workflow_id=f"w{i}").result(timeout=WAIT) is not None
        assert_clean(rt)  # stale items of finished workflows are no problem
        entries = batches(store_of(rt))
        assert entries, "every attempt was watched by a batch entry"
        watched = {(wf, name) for _, items in entries for wf, name, _ in items}
        assert watched == {(f"w{i}", s) for i in range(3) for s in "abc"}
        advance(rt, clock, 31.0)
        assert batches(store_of(rt)) == []
        assert store_of(rt).count("timers") == 0
        assert_clean(rt)


class Handed(Agent):
    def run(self, ctx: StepContext) -> object:
        return ctx.step if ctx.step == "quick" else ctx.complete_later()


def test_a_due_entry_is_replaced_in_the_store_at_once_though_nothing_else_is_written(
    tmp_path: Path, clock: FakeClock
) -> None:
    # The replacement of a due entry is a write of no workflow: it went out only with
    # the next flush of some workflow's writes. In an idle runtime the old entry stayed
    # due, and the sweep sent it again every 5 s, waking its dormant workflow each time.
    pair = (
        Workflow("pair")
        .step("quick", agent="svc", action="run", timeout=5.0)
        .step("handed", agent="svc", action="run", timeout=3600.0)
    )
    with Runtime(tmp_path / "s", clock=clock, sweep_interval=0.05) as rt:
        rt.add_agent("svc", Handed, concurrency=2)
        rt.add_workflow(pair)
        t0 = clock.time()
        rt.start("pair", workflow_id="w")
        settle(rt)
        handed = step(rt, "w", "handed")
        assert handed.state is StepState.WAITING
        (entry,) = batches(store_of(rt))
        assert entry[0] == ms(t0 + 5.0)
        clock.advance(6.0)  # the entry falls due; nothing else happens (no settle: it syncs)
        rt._sweep_now()  # (waits for the sweep, which sends the Due)
        call(rt._scheduler, "in_flight", timeout=WAIT)  # the Due was handled (no flush)
        store_of(rt).writer.flush(timeout=WAIT)  # what it submitted is durable
        assert batches(store_of(rt)) == [(ms(t0 + 3600.0), [("w", "handed", handed.token)])]


def test_check_reports_an_attempt_in_no_batch_entry_and_a_malformed_entry(
    tmp_path: Path, clock: FakeClock
) -> None:
    release = threading.Event()
    with Runtime(tmp_path / "s", clock=clock, sweep_interval=0.05, prefetch=0) as rt:
        hung(rt, release)
        settle(rt)
        store = store_of(rt)
        assert len(batches(store)) >= 1
        key = next(k for k, _ in store.scan("timers"))
    release.set()  # the runtime is closed: their answers are never recorded
    with Store(tmp_path / "s") as store:
        writer = store.writer
        writer.submit(Transition(ops=(Put("timers", key, encode([["w1", "short"]])),))).result(WAIT)
        problems = [p.message for p in check_store(store).problems]
        assert "malformed batch deadline entry" in problems
        writer.submit(Transition(ops=(Delete("timers", key),))).result(WAIT)
        problems = [p.message for p in check_store(store).problems]
        assert any("is in no batch deadline entry" in p for p in problems), problems


def test_a_dispatched_step_of_an_older_store_loses_its_own_timer_on_its_next_write(
    tmp_path: Path, clock: FakeClock
) -> None:
    """Stores written before batch entries hold a timer per DISPATCHED step; recovery
    runs the attempt again, and that write deletes the old entry."""
    release = threading.Event()
    path = tmp_path / "s"
    with Runtime(path, clock=clock, sweep_interval=0.05, prefetch=0) as rt:
        hung(rt, release)
        settle(rt)
        short = step(rt, "w1", "short")
    release.set()  # the runtime is closed: their answers are never recorded
    assert short.state is StepState.DISPATCHED
    assert short.deadline is not None
    # Rewrite it as an older herder stored it: its own timer, in no batch entry.
    key, due = step_key("w1", "short"), ms(short.deadline)
    old_timer = step_timer_key(due, key)
    with Store(path) as store:
        assert step_of(store, "w1", "short") == short
        ops: list[Any] = [Delete("timers", k) for k, _ in store.scan("timers")]
        ops += [
            Put("steps", key, encode(short.evolve(timer_ms=due).to_stored())),
            Put("timers", old_timer, encode(timer_entry(short.token))),
        ]
        store.writer.submit(Transition(ops=tuple(ops))).result(WAIT)
        problems = [p.message for p in check_store(store).problems]
        assert any("is in no batch deadline entry" in p for p in problems)  # "long"
        assert not any("short" in p for p in problems), problems
    with Runtime(path, clock=clock, sweep_interval=0.05) as rt:
        rt.add_agent("hang", lambda: Hang(release, threading.Semaphore(0)), concurrency=2)
        rt.add_workflow(MIXED)
        rt.handle("w1").result(timeout=WAIT)
        assert step(rt, "w1", "short").attempt == 2  # recovery ran it again
        assert old_timer not in [k for k, _ in store_of(rt).scan("timers")]
        assert_clean(rt)


def step_of(store: Store, wid: str, name: str) -> StepRecord | None:
    return store.get_step(wid, name)


def test_a_due_entry_is_replaced_by_one_at_the_earliest_deadline_still_watched() -> None:
    commits = CommitPipeline(lambda: 0)
    old = batch_timer_key(5_000, 7)
    commits.rearm(old, [("w1", "long", 9, 50_000), ("w2", "x", 11, 20_000)])
    ops, effects, watch = commits.take()
    assert watch is None
    assert effects == [(BATCH_TIMER, [])]  # no workflow's: nothing to reload if it fails
    new = batch_timer_key(20_000, 9)
    assert ops == {
        ("timers", old): None,
        ("timers", new): encode(batch_entry([("w1", "long", 9), ("w2", "x", 11)])),
    }
    commits.rearm(new, [])
    assert commits.take()[0] == {("timers", new): None}


def test_the_writer_writes_one_batch_entry_for_every_batch_one_transaction_merges(
    tmp_path: Path,
) -> None:
    committed: list[BaseException | None] = []
    with Store(tmp_path / "s") as store:
        writer = store.writer
        held, release = threading.Event(), threading.Event()

        def hold() -> None:  # the first commit waits, so the next two queue up behind it
            writer.fault = None
            held.set()
            release.wait(WAIT)

        writer.fault = hold
        first = writer.submit(Transition(ops=(Put("meta", b"x", encode(1)),)))
        assert held.wait(WAIT)

        def sink(effects: list[Any], error: BaseException | None) -> None:
            committed.append(error)

        for token, due in ((30, 9_000), (20, 4_000)):
            writer.submit_batch({}, [token], 1, sink, (due, [[f"w{token}", "s", token]]))
        release.set()
        first.result(WAIT)
        writer.flush(WAIT)
        assert committed == [None]  # one transaction, one sink call
        assert batches(store) == [(4_000, [("w30", "s", 30), ("w20", "s", 20)])]
