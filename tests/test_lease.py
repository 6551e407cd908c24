"""The leader lease inside one process: taking, checking every write batch, releasing.

Cross-process behaviour (standby takeover, SIGSTOP, races, handoff) is in test_ha.py.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import threading
import time
from typing import Any

import pytest

from herder.runtime import (
    Agent,
    LeaseLost,
    NotActive,
    Runtime,
    RuntimeClosed,
    StepContext,
    Workflow,
)
from herder.store import (
    ConditionFailed,
    Lease,
    Put,
    Store,
    StoreCorrupt,
    StoreError,
    Transition,
    encode,
)
from herder.store._lease import LEASE_KEY, guard, renewal, why_takeable


def _foreign(lease: Lease) -> Transition:
    """A transition that hands our lease to a made-up owner (what a standby's take does)."""
    other = Lease("someone-else", lease.incarnation + 1, time.time() + 60, 1, "elsewhere", False, 0)
    return Transition(ops=(Put("meta", LEASE_KEY, encode(other.to_dict())),))


def test_a_writer_open_takes_the_lease_and_bumps_the_incarnation(tmp_path: pathlib.Path) -> None:
    with Store(tmp_path / "s") as store:
        first = store.lease
        assert first is not None
        assert first.pid == os.getpid()
        assert first.flock
        assert first.incarnation == store.incarnation
        assert store.read_lease() == first
    with Store(tmp_path / "s") as store:
        assert store.lease is not None
        assert store.lease.incarnation == first.incarnation + 1
        assert store.lease.owner != first.owner


def test_closing_releases_the_lease(tmp_path: pathlib.Path) -> None:
    with Store(tmp_path / "s"):
        pass
    with Store(tmp_path / "s", readonly=True) as reader:
        lease = reader.read_lease()
    assert lease is not None
    assert lease.released
    assert why_takeable(lease, time.time(), have_flock=False) == "released"


def test_a_renewal_pushes_the_expiry_forward(tmp_path: pathlib.Path) -> None:
    with Store(tmp_path / "s", lease=2.0) as store:
        before = store.read_lease()
        assert before is not None
        store.renew_lease().result(timeout=10)
        after = store.read_lease()
        assert after is not None
        assert after.owner == before.owner
        assert after.expires > before.expires


def test_a_renewal_never_revives_a_released_lease(tmp_path: pathlib.Path) -> None:
    with Store(tmp_path / "s") as store:
        lease = store.lease
        assert lease is not None
        holding, go = threading.Event(), threading.Event()

        def hold() -> None:  # keep the writer in one batch while the next one queues
            store.writer.fault = None
            holding.set()
            go.wait(10)

        store.writer.fault = hold
        first = store.writer.submit(Transition(ops=(Put("meta", b"x", encode(1)),)))
        assert holding.wait(10)
        # The release and a renewal built before it land in the same batch, so the lease
        # check at the batch's start passes for both; the renewal must still not apply.
        release = Transition(
            ops=(Put("meta", LEASE_KEY, encode(dataclasses.replace(lease, expires=0.0).to_dict())),)
        )
        released = store.writer.submit(release)
        late = store.writer.submit(
            renewal(lease, dataclasses.replace(lease, expires=time.time() + 60))
        )
        go.set()
        first.result(timeout=10)
        released.result(timeout=10)
        with pytest.raises(ConditionFailed):
            late.result(timeout=10)
        after = store.read_lease()
        assert after is not None
        assert after.released
        store._lease = after
        store.releasing = True
        with pytest.raises(StoreError, match="no lease to renew"):
            store.renew_lease()


def test_every_batch_after_the_lease_changed_hands_fails_with_lease_lost(
    tmp_path: pathlib.Path,
) -> None:
    with Store(tmp_path / "s") as store:
        assert store.lease is not None
        store.writer.submit(_foreign(store.lease)).result(timeout=10)
        late = store.writer.submit(Transition(ops=(Put("meta", b"late", encode(1)),)))
        with pytest.raises(LeaseLost, match="no longer holds"):
            late.result(timeout=10)
        assert store.get("meta", b"late") is None
        assert store.writer.stats()["refused"] == 1
        assert not store.release_lease()  # not ours to release any more
        lease = store.read_lease()
        assert lease is not None
        assert lease.owner == "someone-else"


def test_a_live_lease_of_a_live_holder_keeps_a_plain_open_out(tmp_path: pathlib.Path) -> None:
    now = time.time()
    alive = Lease("x", 3, now + 60, os.getpid() + 0, "elsewhere", False, now)
    assert why_takeable(alive, now, have_flock=True) is None  # another host: cannot tell
    dead_flock_holder = Lease("x", 3, now + 60, 1, "elsewhere", True, now)
    assert why_takeable(dead_flock_holder, now, have_flock=True) == "holder gone"
    assert why_takeable(dead_flock_holder, now, have_flock=False) is None
    assert why_takeable(alive, now + 61, have_flock=False) == "expired"
    assert why_takeable(None, now, have_flock=False) == "free"


class Slow(Agent):
    def __init__(self, gate: threading.Event, started: threading.Event | None = None) -> None:
        self.gate = gate
        self.started = started

    def work(self, ctx: StepContext) -> int:
        if self.started is not None:
            self.started.set()
        self.gate.wait(30)
        return ctx.attempt


FLOW = Workflow("flow", version=1).step("a", agent="slow", action="work", timeout=60.0)


def test_a_deposed_runtime_stops_dispatching_and_refuses_new_work(tmp_path: pathlib.Path) -> None:
    gate, started = threading.Event(), threading.Event()
    rt = Runtime(tmp_path / "s", sweep_interval=0.05)
    try:
        rt.add_agent("slow", lambda: Slow(gate, started))
        rt.add_workflow(FLOW)
        handle = rt.start("flow", {"n": 1}, workflow_id="w-1")
        assert started.wait(10)  # DISPATCHED is durable before the agent runs
        lease = rt._store.lease
        assert lease is not None
        rt._store.writer.submit(_foreign(lease)).result(timeout=10)
        gate.set()  # the running attempt answers; recording it must fail
        deadline = time.monotonic() + 10
        while rt.is_active and time.monotonic() < deadline:
            rt._wake.wait(0.05)
        assert not rt.is_active
        with pytest.raises(RuntimeClosed, match="no longer holds"):
            rt.start("flow", {"n": 2}, workflow_id="w-2")
        step = rt.status("w-1").steps["a"]
        assert step.state == "DISPATCHED"  # the answer after deposition was not recorded
        assert handle.status().state == "RUNNING"
    finally:
        rt.stop()


def test_handoff_on_the_active_runtime_releases_the_lease_and_stops(
    tmp_path: pathlib.Path,
) -> None:
    gate = threading.Event()
    gate.set()
    rt = Runtime(tmp_path / "s", sweep_interval=0.05)
    rt.add_agent("slow", lambda: Slow(gate))
    rt.add_workflow(FLOW)
    rt.start("flow", {"n": 1}, workflow_id="w-1").result(timeout=10)
    assert rt.handoff(deadline=5.0)
    with pytest.raises(RuntimeClosed):
        rt.start("flow", {"n": 2}, workflow_id="w-2")
    with Store(tmp_path / "s", readonly=True) as reader:
        lease = reader.read_lease()
    assert lease is not None
    assert lease.released
    with Runtime(tmp_path / "s") as again:  # no StoreLocked: the lease was given back
        assert again.status("w-1").state == "SUCCEEDED"


def test_a_standby_serves_reads_and_refuses_writes_until_it_is_active(
    tmp_path: pathlib.Path,
) -> None:
    path = tmp_path / "s"
    with Runtime(path) as rt:
        rt.add_agent("slow", lambda: Slow(threading.Event()))
        rt.add_workflow(FLOW)
    # Nobody holds the lease now, so a standby takes it at its first poll.
    with Runtime(path, standby=True) as standby:
        gate = threading.Event()
        gate.set()
        standby.add_agent("slow", lambda: Slow(gate))
        standby.add_workflow(FLOW)
        assert standby.wait_active(10)
        assert standby.start("flow", {"n": 1}, workflow_id="w-1").result(timeout=10) == {"a": 1}


def test_a_standby_that_cannot_get_the_lease_refuses_to_start_work(
    tmp_path: pathlib.Path,
) -> None:
    path = tmp_path / "s"
    Store(path).close()
    # A live foreign lease (another host: its liveness cannot be probed) keeps it waiting.
    with Store(path, standby=True) as store:
        foreign = Lease("other", 9, time.time() + 60, 1, "elsewhere", False, time.time())
        assert store._env is not None
        with store._env.begin(write=True) as txn:
            txn.put(LEASE_KEY, encode(foreign.to_dict()), db=store._handles["meta"])
    with Runtime(path, standby=True, standby_poll=0.01) as standby:
        standby.add_workflow(FLOW)
        assert not standby.wait_active(0.2)
        with pytest.raises(NotActive, match="standby"):
            standby.start("flow", {"n": 1})
        assert standby.list() == []


def test_the_write_guard_decodes_the_lease_only_when_its_bytes_change(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Store(tmp_path / "s") as store:
        lease = store.lease
        assert lease is not None
        env, meta = store._env, store._handles["meta"]
        assert env is not None
        check = guard(meta, lease.owner)
        decoded: list[dict[str, object]] = []
        parse = Lease.from_dict
        monkeypatch.setattr(Lease, "from_dict", lambda data: decoded.append(data) or parse(data))

        def verdict(value: Lease | bytes | None = None) -> BaseException | None:
            with env.begin(write=True) as txn:
                if isinstance(value, Lease):
                    txn.put(LEASE_KEY, encode(value.to_dict()), db=meta)
                elif value is not None:
                    txn.put(LEASE_KEY, value, db=meta)
                return check(txn)

        assert verdict() is None
        assert verdict() is None
        assert verdict() is None
        assert len(decoded) == 1  # the same bytes: the same verdict, not read again
        renewed = dataclasses.replace(lease, expires=lease.expires + 5)
        assert verdict(renewed) is None
        assert len(decoded) == 2
        other = dataclasses.replace(renewed, owner="someone-else")
        assert isinstance(verdict(other), LeaseLost)
        assert isinstance(verdict(dataclasses.replace(renewed, expires=0.0)), LeaseLost)
        assert isinstance(verdict(b"\x00garbage"), StoreCorrupt)
        assert verdict(renewed) is None  # the bytes last found ours: not read again
        assert len(decoded) == 4


def test_a_standby_waits_out_the_holders_lease_when_it_is_longer_than_its_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A standby started with a shorter --lease took the lease of a healthy holder
    between two of its renewals (every third of the holder's own lease)."""
    from types import SimpleNamespace

    from herder.store import Unrenewed, _fence

    now = [100.0]
    monkeypatch.setattr(_fence, "time", SimpleNamespace(monotonic=lambda: now[0]))
    watcher = SimpleNamespace(_lapsed=Unrenewed(5.0).lapsed)  # (the standby's rule)
    held = Lease("a", 1, 1e12, 1, "h", True, 0.0, duration=20.0)
    assert not watcher._lapsed(held)  # first seen now
    now[0] = 110.0  # unrenewed for 10 s: past the standby's 5 s, within the holder's 20 s
    assert not watcher._lapsed(held)
    now[0] = 120.0
    assert watcher._lapsed(held)
    older = dataclasses.replace(held, owner="b", duration=None)  # written before durations
    assert not watcher._lapsed(older)
    now[0] = 125.0  # the standby's own 5 s
    assert watcher._lapsed(older)
    assert Lease.from_dict(held.to_dict()) == held
    stored = older.to_dict()
    del stored["duration"]
    assert Lease.from_dict(stored) == older


def test_a_taken_lease_records_its_duration(tmp_path: pathlib.Path) -> None:
    with Store(tmp_path / "s", lease=7.5) as store:
        lease = store.read_lease()
        assert lease is not None
        assert lease.duration == 7.5


def test_a_handoff_request_is_heard_whatever_the_wall_clock_did(tmp_path: pathlib.Path) -> None:
    """A request stamped before the lease was taken (the wall clock stepped back between)
    was dropped as stale: `herder handoff` went unheard. Taking the lease deletes any
    request to an earlier holder, so one that is there is for this holder."""
    with Store(tmp_path / "s", lease=5.0) as store:
        lease = store.read_lease()
        assert lease is not None
        assert store.handoff_request() is None
        store.request_handoff(3.0, by="ops", now=lease.taken - 60.0)
        request = store.handoff_request()
        assert request is not None
        assert (request.deadline, request.by) == (3.0, "ops")


def test_the_lease_stays_renewed_while_a_slow_setup_registers(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Nothing renewed the lease between the open that took it and the first sweep: an
    # app factory slower than the lease let a waiting standby (which takes a record left
    # unchanged for a lease) depose the healthy runtime before it started.
    lease = 0.6
    seen: list[Lease] = []
    renewed_past_a_lease = threading.Event()
    renew = Store.renew_lease

    def watched(store: Store, **kwargs: Any) -> Any:
        done = renew(store, **kwargs)
        done.result(timeout=10)  # (durable: the record read next holds it)
        now = store.read_lease()
        if seen and now is not None and now.expires > seen[0].expires + lease:
            renewed_past_a_lease.set()
        return done

    monkeypatch.setattr(Store, "renew_lease", watched)

    def slow_setup(rt: Runtime) -> None:  # an app factory connecting to its services
        first = rt._store.read_lease()
        assert first is not None
        seen.append(first)
        # Set once a renewal outlasts the lease taken at open; unrenewed, the setup
        # runs past its lease (three of them), as a slow one would.
        renewed_past_a_lease.wait(timeout=3 * lease)
        last = rt._store.read_lease()
        assert last is not None
        seen.append(last)

    with Runtime(tmp_path / "s", lease=lease, sweep_interval=0.05, setup=slow_setup) as rt:
        first, last = seen
        assert first is not None
        assert last is not None
        assert last.owner == first.owner
        assert last.expires > first.expires + lease  # renewed, more than once
        assert rt.is_active


def test_an_unreadable_handoff_request_is_said_once_and_ignored(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Every sweep logged a traceback that said the store's metadata was damaged and to
    # restore it from a backup; a new request overwrites the damaged one.
    from herder.store._lease import HANDOFF_KEY

    with Runtime(tmp_path / "s") as rt:
        damaged = Put("meta", HANDOFF_KEY, encode(["not", "a", "request"]))
        rt._store.writer.submit(Transition(ops=(damaged,))).result(timeout=10)
        with caplog.at_level("ERROR", logger="herder"):
            for _ in range(3):
                rt._sweep_now()
        said = [r for r in caplog.records if r.levelname == "ERROR"]
        assert len(said) == 1, [r.getMessage() for r in said]
        assert said[0].exc_info is None
        assert "handoff request" in said[0].getMessage()
        assert "herder handoff" in said[0].getMessage()
        assert rt.is_active


@pytest.mark.timeout(30)
def test_a_standby_says_once_that_it_cannot_read_a_damaged_lease(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each poll (20 a second by default) logged the same error: a flood in the journal.
    with Store(tmp_path / "s") as st:
        damage = lambda txn: txn.put(LEASE_KEY, b"\xc1 not msgpack", db=st._handles["meta"])  # noqa: E731
        st._write_direct(damage, "cannot damage")
    with (
        caplog.at_level("ERROR", logger="herder"),
        Runtime(tmp_path / "s", standby=True, standby_poll=0.01) as rt,
    ):
        polls, read = [0], rt._store.read_lease
        twenty = threading.Event()

        def counted() -> Lease | None:
            polls[0] += 1
            if polls[0] >= 20:
                twenty.set()
            return read()

        monkeypatch.setattr(rt._store, "read_lease", counted)
        assert twenty.wait(20)
        assert not rt.is_active
    said = [r.getMessage() for r in caplog.records if "could not check the lease" in r.getMessage()]
    assert len(said) == 1, said
    assert "restore the store from a backup" in said[0]


@pytest.mark.timeout(60)
def test_the_lease_is_renewed_while_a_sweep_is_held_up_and_not_two_leases_past_it(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Renewed from the sweep, the lease waited for each sweep's turn: under load (100,000
    # workflows recovered, or a start_many of as many) sweeps stretched past a 1 s lease
    # and a standby deposed the healthy holder. Renewals go on, every third of the lease,
    # while a sweep is held up; a Supervisor that has not swept for two leases (the
    # runtime's health check) renews no more, and renews again once it sweeps.
    lease = 2.0
    asked: list[float] = []  # time.monotonic() of each renewal asked for
    committed: list[float] = []  # and of each one written
    renewed = threading.Condition()
    renew = Store.renew_lease

    def watched(store: Store, **kwargs: Any) -> Any:
        with renewed:
            asked.append(time.monotonic())
        done = renew(store, **kwargs)

        def note(written: Any) -> None:
            if written.exception() is None:
                with renewed:
                    committed.append(time.monotonic())
                    renewed.notify_all()

        done.add_done_callback(note)
        return done

    monkeypatch.setattr(Store, "renew_lease", watched)
    armed, held, go_on = threading.Event(), threading.Event(), threading.Event()
    held_at: list[float] = []

    def held_up() -> None:  # (after the keeper's: that sweep counts as the last one)
        if armed.is_set() and not held_at:
            held_at.append(time.monotonic())
            held.set()
            go_on.wait(30)

    others = set(threading.enumerate())  # (another test's runtime may still be stopping)
    with Runtime(tmp_path / "s", lease=lease, sweep_interval=0.05) as rt:
        rt._listener.sweepers.append(held_up)
        keepers = [t for t in set(threading.enumerate()) - others if t.name == "herder-lease"]
        armed.set()
        assert held.wait(10)
        since = held_at[0]
        with renewed:  # renewals go on while that one sweep is held up (it renewed none)
            assert renewed.wait_for(lambda: sum(t > since for t in committed) >= 3, 2 * lease)
            # None asked for once the last sweep is two leases old (waits that moment out).
            late = since + 2 * lease + 0.5
            assert not renewed.wait_for(lambda: asked[-1] > late, late - time.monotonic())
            assert max(asked) < since + 2 * lease
        go_on.set()  # the Supervisor sweeps again: so do the renewals
        with renewed:
            assert renewed.wait_for(lambda: committed[-1] > late, lease)
        assert rt.is_active
    for keeper in keepers:
        keeper.join(10)  # stop() ends it
        assert not keeper.is_alive()


@pytest.mark.timeout(60)
def test_a_deposed_runtime_renews_its_lease_no_more(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The renewals run on a thread of their own: the first one refused because another
    # runtime holds the lease deposes this one, and ends that thread.
    asked: list[float] = []
    renew = Store.renew_lease

    def watched(store: Store, **kwargs: Any) -> Any:
        asked.append(time.monotonic())
        return renew(store, **kwargs)

    monkeypatch.setattr(Store, "renew_lease", watched)
    others = set(threading.enumerate())  # (another test's runtime may still be stopping)
    rt = Runtime(tmp_path / "s", lease=0.6, sweep_interval=0.05)
    try:
        [keeper] = [t for t in set(threading.enumerate()) - others if t.name == "herder-lease"]
        lease = rt._store.lease
        assert lease is not None
        rt._store.writer.submit(_foreign(lease)).result(timeout=10)
        keeper.join(10)  # its next renewal was refused: deposed
        assert not keeper.is_alive()
        assert not rt.is_active
        assert rt._ctx.lost is not None
        assert asked  # (the one refused)
    finally:
        rt.stop()
