"""The group-commit writer: batching, conditions, map growth, I/O failures, closing."""

from __future__ import annotations

import pathlib
import threading
import time
from concurrent.futures import Future

import lmdb
import pytest

from herder.store import (
    ConditionFailed,
    Delete,
    Expect,
    InvalidInput,
    Put,
    Store,
    StoreClosed,
    StoreIOError,
    Transition,
    _writer,
    encode,
)


def put(key: bytes, value: object = 1, db: str = "workflows") -> Put:
    return Put(db, key, encode(value))


def t(*ops: Put | Delete, expect: tuple[Expect, ...] = ()) -> Transition:
    return Transition(ops, expect)


@pytest.fixture
def path(tmp_path: pathlib.Path) -> pathlib.Path:
    return tmp_path / "s"


@pytest.mark.timeout(30)
def test_concurrent_submissions_are_grouped_into_fewer_batches_and_survive_reopen(
    path: pathlib.Path,
) -> None:
    threads, per_thread = 16, 500
    store = Store(path)
    errors: list[BaseException] = []
    start = threading.Barrier(threads)

    def submitter(tid: int) -> None:
        start.wait()
        futures = [
            store.writer.submit(t(put(f"{tid:02d}-{i:04d}".encode(), {"i": i})))
            for i in range(per_thread)
        ]
        errors.extend(e for f in futures if (e := f.exception(timeout=20)) is not None)

    workers = [threading.Thread(target=submitter, args=(n,)) for n in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    stats = store.writer.stats()
    store.close()
    total = threads * per_thread
    assert errors == []
    assert stats["transitions"] == total
    assert stats["batches"] < total
    assert stats["max_batch"] > 1
    with Store(path, readonly=True) as ro:
        assert ro.count("workflows") == total
        assert ro.get("workflows", b"15-0499") == {"i": 499}


def test_a_failing_expect_skips_only_its_transition_and_the_rest_of_the_batch_commits(
    path: pathlib.Path,
) -> None:
    store = Store(path)
    store.writer.submit(t(put(b"a", {"state": "RUNNING"}))).result(timeout=10)
    done: Future[list[BaseException | None]] = Future()
    batch = [
        t(put(b"b", {"n": 1})),
        # sees b written by the transition before it in the same batch
        t(put(b"c"), expect=(Expect("workflows", b"b", exists=False),)),
        t(put(b"d"), expect=(Expect("workflows", b"a", "state", "RUNNING"),)),
        t(put(b"e"), expect=(Expect("workflows", b"a", "state", "DONE"),)),
        t(put(b"f"), expect=(Expect("workflows", b"zz"),)),
        t(put(b"g"), Delete("workflows", b"missing"), expect=(Expect("workflows", b"b"),)),
    ]
    store.writer.submit_many(batch, done.set_result)
    outcomes = done.result(timeout=10)
    assert [type(o).__name__ if o else None for o in outcomes] == [
        None,
        "ConditionFailed",
        None,
        "ConditionFailed",
        "ConditionFailed",
        None,
    ]
    assert "state is 'RUNNING', expected 'DONE'" in str(outcomes[3])
    assert store.writer.stats()["conflicts"] == 3
    present = {k for k, _ in store.raw_scan("workflows")}
    assert present == {b"a", b"b", b"d", b"g"}
    with pytest.raises(ConditionFailed, match="absent but was expected"):
        store.writer.submit(t(put(b"x"), expect=(Expect("workflows", b"nope"),))).result(10)
    store.close()


def test_conditions_on_several_databases_read_the_store_as_before_the_batch_and_its_own_writes(
    path: pathlib.Path,
) -> None:
    # The writer reads every condition's key of a transaction up front (one getmulti per
    # database): what a transition earlier in the batch wrote or deleted still wins.
    store = Store(path)
    store.writer.submit(t(put(b"a"), put(b"s1", db="steps"))).result(timeout=10)
    done: Future[list[BaseException | None]] = Future()
    batch = [
        t(Delete("workflows", b"a"), put(b"s2", db="steps")),
        t(put(b"x"), expect=(Expect("workflows", b"a", exists=False),)),
        t(put(b"y"), expect=(Expect("steps", b"s1"), Expect("workflows", b"a"))),
        t(put(b"z"), expect=(Expect("steps", b"s1"), Expect("steps", b"s2"))),
        t(put(b"w"), expect=(Expect("steps", b"s3"),)),
    ]
    store.writer.submit_many(batch, done.set_result)
    outcomes = done.result(timeout=10)
    assert [type(o).__name__ if o else None for o in outcomes] == [
        None,
        None,
        "ConditionFailed",
        None,
        "ConditionFailed",
    ]
    assert "workflows key b'a' is absent" in str(outcomes[2])
    assert store.writer.stats()["conflicts"] == 2
    assert {k for k, _ in store.raw_scan("workflows")} == {b"x", b"z"}
    store.close()


def test_transitions_commit_in_submission_order(path: pathlib.Path) -> None:
    store = Store(path)
    futures = [store.writer.submit(t(put(b"k", i))) for i in range(2000)]
    futures.append(store.writer.submit(t(Delete("workflows", b"gone"), put(b"last", "x"))))
    for f in futures:
        f.result(timeout=10)
    assert store.get("workflows", b"k") == 1999
    store.writer.flush(timeout=10)
    store.close()


@pytest.mark.timeout(30)
def test_map_growth_from_a_tiny_map_is_transparent(path: pathlib.Path) -> None:
    store = Store(path, map_size=64 * 1024)
    blob = b"x" * 4000
    futures = [store.writer.submit(t(put(b"%05d" % i, blob))) for i in range(1000)]
    for f in futures:
        f.result(timeout=20)
    assert store.writer.stats()["map_resizes"] >= 3
    assert store.count("workflows") == 1000
    assert store.get("workflows", b"00999") == blob
    store.close()
    with Store(path, readonly=True) as ro:
        assert ro.count("workflows") == 1000


@pytest.mark.timeout(30)
def test_a_map_smaller_than_the_databases_need_starts_big_enough_and_grows(
    path: pathlib.Path,
) -> None:
    # map_size=4096 failed at open with MDB_MAP_FULL ("check free disk space"), though
    # the map is documented to grow on demand (the store review, D7).
    with Store(path, map_size=4096) as store:
        blob = b"x" * 4000
        for f in [store.writer.submit(t(put(b"%03d" % i, blob))) for i in range(100)]:
            f.result(timeout=20)
        assert store.count("workflows") == 100


def test_an_injected_commit_failure_fails_that_batch_only(path: pathlib.Path) -> None:
    store = Store(path)
    store.writer.submit(t(put(b"before", 1))).result(timeout=10)

    def fail() -> None:
        raise lmdb.DiskError("injected: No space left on device")

    store.writer.fault = fail
    done: Future[list[BaseException | None]] = Future()
    store.writer.submit_many([t(put(b"lost1")), t(put(b"lost2"))], done.set_result)
    outcomes = done.result(timeout=10)
    assert all(isinstance(o, StoreIOError) for o in outcomes)
    assert "No space left on device" in str(outcomes[0])
    with pytest.raises(StoreIOError):
        store.writer.submit(t(put(b"lost3"))).result(timeout=10)
    store.writer.fault = None
    store.writer.submit(t(put(b"after", 2))).result(timeout=10)
    assert store.writer.stats()["io_errors"] == 2
    store.close()
    with Store(path, readonly=True) as ro:
        assert dict(ro.scan("workflows")) == {b"after": 2, b"before": 1}


def test_a_raising_callback_does_not_kill_the_writer(
    path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = Store(path)

    def boom(_: list[BaseException | None]) -> None:
        raise RuntimeError("callback bug")

    store.writer.submit_many([t(put(b"a"))], boom)
    store.writer.submit(t(put(b"b"))).result(timeout=10)
    assert "callback raised" in caplog.text
    assert store.count("workflows") == 2
    store.close()


def test_close_on_a_stalled_disk_gives_up_within_its_timeout(path: pathlib.Path) -> None:
    # close(timeout) waited the whole timeout for the lease's release and then the whole
    # timeout again for the writer to drain: twice what it was given.
    store = Store(path)
    unstall = threading.Event()
    store.writer.fault = lambda: unstall.wait(30)
    store.writer.submit(t(put(b"stalled")))
    started = time.monotonic()
    with pytest.raises(TimeoutError, match=r"within 1.0 s .*call close\(\) again"):
        store.close(timeout=1.0)
    assert time.monotonic() - started < 1.8
    unstall.set()
    store.writer.fault = None
    store.close()
    with Store(path, readonly=True) as ro:
        assert ro.get("workflows", b"stalled") == 1


def test_submissions_after_close_fail_with_store_closed(path: pathlib.Path) -> None:
    store = Store(path)
    writer = store.writer
    pending = [writer.submit(t(put(b"%d" % i))) for i in range(100)]
    store.close()
    assert all(f.done() and f.exception() is None for f in pending)  # drained on close
    with pytest.raises(StoreClosed):
        writer.submit(t(put(b"late"))).result(timeout=1)
    got: list[list[BaseException | None]] = []
    writer.submit_many([t(put(b"late"))], got.append)
    assert isinstance(got[0][0], StoreClosed)
    with pytest.raises(StoreClosed):
        _ = store.writer
    with pytest.raises(StoreClosed):
        store.get("workflows", b"1")
    store.close()  # idempotent


def test_malformed_transitions_are_refused_at_submit(path: pathlib.Path) -> None:
    with Store(path, max_value_bytes=100) as store:
        with pytest.raises(InvalidInput, match="unknown database"):
            store.writer.submit(t(put(b"k", db="nope")))
        with pytest.raises(InvalidInput, match="key"):
            store.writer.submit(t(put(b"")))
        with pytest.raises(InvalidInput, match="key"):
            store.writer.submit(t(put(b"k" * 600)))
        with pytest.raises(InvalidInput, match="limit is 100"):
            store.writer.submit(t(put(b"k", "x" * 200)))
        # A condition's key was not checked: read in the batch's write transaction, an
        # empty or long one failed every transition of that batch with StoreIOError.
        for key in (b"", b"k" * 600, "k"):
            with pytest.raises(InvalidInput, match="key"):
                store.writer.submit(t(put(b"k"), expect=(Expect("workflows", key),)))  # type: ignore[arg-type]
        assert store.writer.stats()["transitions"] == 0


class Sink:
    """An engine batch sink that records each call: (effects, error)."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[object], BaseException | None]] = []
        self.cond = threading.Condition()

    def __call__(self, effects: list[object], error: BaseException | None) -> None:
        with self.cond:
            self.calls.append((effects, error))
            self.cond.notify_all()

    def outcome(self, effect: object) -> BaseException | None:
        """The error the batch holding ``effect`` got (None: committed); waits for it."""
        with self.cond:
            assert self.cond.wait_for(lambda: any(effect in e for e, _ in self.calls), 10)
            return next(error for effects, error in self.calls if effect in effects)


def engine_batch(store: Store, sink: Sink, name: str) -> None:
    store.writer.submit_batch({("workflows", name.encode()): encode(1)}, [name], 1, sink)


@pytest.mark.timeout(30)
def test_a_failed_engine_batch_fails_every_batch_behind_it_until_the_engine_resyncs(
    path: pathlib.Path,
) -> None:
    store = Store(path)
    sink = Sink()
    inside, release = threading.Event(), threading.Event()

    def fail_once() -> None:
        store.writer.fault = None
        inside.set()  # the writer holds b1's transaction: what follows queues behind it
        assert release.wait(10)
        raise OSError(28, "No space left on device")

    store.writer.fault = fail_once
    engine_batch(store, sink, "b1")
    assert inside.wait(10)
    engine_batch(store, sink, "b2")  # built on b1, say: must not land without it
    start = store.writer.submit(t(put(b"started")))  # not the engine's: not held back
    engine_batch(store, sink, "b3")
    release.set()
    assert isinstance(sink.outcome("b1"), StoreIOError)
    start.result(timeout=10)
    for name in ("b2", "b3"):
        error = sink.outcome(name)
        assert isinstance(error, StoreIOError)
        assert "an earlier batch of the engine failed" in str(error)
    engine_batch(store, sink, "b4")  # sent before the engine heard: refused too
    assert isinstance(sink.outcome("b4"), StoreIOError)
    store.writer.resync()
    engine_batch(store, sink, "b5")
    assert sink.outcome("b5") is None
    assert store.writer.stats()["halted"] == 3
    for name, there in (("b1", 0), ("b2", 0), ("b3", 0), ("b4", 0), ("b5", 1), ("started", 1)):
        assert (store.get("workflows", name.encode()) is not None) == there, name
    store.close()


@pytest.mark.timeout(30)
def test_a_resync_sent_before_a_later_failure_does_not_end_that_failures_halt(
    path: pathlib.Path,
) -> None:
    # The engine resyncs for failure 1; before its marker is reached, a second write
    # (a start it built on, say) fails. The marker used to end that halt too, and the
    # engine's next batch, built on the second failed write, landed: a disk-full run
    # left step records of workflows whose creation had failed (the store review, D2).
    store = Store(path)
    sink = Sink()
    store.writer.fault = lambda: (_ for _ in ()).throw(OSError(28, "No space left"))
    engine_batch(store, sink, "b1")
    assert isinstance(sink.outcome("b1"), StoreIOError)  # halt 1
    inside, release = threading.Event(), threading.Event()

    def fail_held() -> None:
        store.writer.fault = None
        inside.set()  # what follows queues behind this transaction
        assert release.wait(10)
        raise OSError(28, "No space left on device")

    store.writer.fault = fail_held
    created: Future[list[BaseException | None]] = Future()
    store.writer.submit_many([t(put(b"created"))], created.set_result, halts=True)
    assert inside.wait(10)
    store.writer.resync()  # for halt 1: sent knowing nothing of the write in flight
    engine_batch(store, sink, "b2")  # built on the start that is about to fail
    release.set()
    assert isinstance(created.result(timeout=10)[0], StoreIOError)  # halt 2
    assert isinstance(sink.outcome("b2"), StoreIOError)
    store.writer.resync()  # the engine heard of halt 2: now it ends
    engine_batch(store, sink, "b3")
    assert sink.outcome("b3") is None
    for name, there in (("created", 0), ("b1", 0), ("b2", 0), ("b3", 1)):
        assert (store.get("workflows", name.encode()) is not None) == there, name
    store.close()


@pytest.mark.timeout(30)
def test_a_failed_group_the_engine_built_on_halts_its_batches_in_the_same_transaction_too(
    path: pathlib.Path,
) -> None:
    # A start admitted early (runtime/_starts.py) queues its creation with halts=True and
    # the Scheduler's first DISPATCHED behind it: if the creation fails (its id was taken
    # meanwhile), that batch must not be written, even in the same transaction.
    store = Store(path)
    store.writer.submit(t(put(b"taken"))).result(timeout=10)
    sink = Sink()
    inside, release = threading.Event(), threading.Event()

    def hold() -> None:
        store.writer.fault = None
        inside.set()
        assert release.wait(10)

    store.writer.fault = hold
    first = store.writer.submit(t(put(b"first")))  # holds the writer: the rest queues
    assert inside.wait(10)
    taken = (Expect("workflows", b"taken", exists=False),)
    plain: Future[list[BaseException | None]] = Future()
    # Not built on: its failure skips only itself.
    store.writer.submit_many([t(put(b"taken", 2), expect=taken)], plain.set_result)
    engine_batch(store, sink, "b1")
    built_on: Future[list[BaseException | None]] = Future()
    store.writer.submit_many([t(put(b"taken", 3), expect=taken)], built_on.set_result, halts=True)
    engine_batch(store, sink, "b2")  # same transaction, behind the failed creation
    release.set()
    first.result(timeout=10)
    assert isinstance(plain.result(10)[0], ConditionFailed)
    assert isinstance(built_on.result(10)[0], ConditionFailed)
    assert sink.outcome("b1") is None  # ahead of it: written
    error = sink.outcome("b2")
    assert isinstance(error, StoreIOError)
    assert "an earlier batch of the engine failed" in str(error)
    engine_batch(store, sink, "b3")  # later: refused until the engine resyncs
    assert isinstance(sink.outcome("b3"), StoreIOError)
    store.writer.resync()
    engine_batch(store, sink, "b4")
    assert sink.outcome("b4") is None
    for name, there in (("b1", 1), ("b2", 0), ("b3", 0), ("b4", 1)):
        assert (store.get("workflows", name.encode()) is not None) == there, name
    assert store.get("workflows", b"taken") == 1  # neither creation overwrote it
    store.close()


@pytest.mark.timeout(30)
def test_a_group_the_engine_built_on_that_commits_halts_nothing(path: pathlib.Path) -> None:
    store = Store(path)
    sink = Sink()
    done: Future[list[BaseException | None]] = Future()
    store.writer.submit_many([t(put(b"new"))], done.set_result, halts=True)
    engine_batch(store, sink, "b1")
    assert done.result(10) == [None]
    assert sink.outcome("b1") is None
    assert store.writer.stats()["halted"] == 0
    store.close()


def test_a_resync_while_nothing_failed_changes_nothing(path: pathlib.Path) -> None:
    with Store(path) as store:
        sink = Sink()
        store.writer.resync()
        engine_batch(store, sink, "b1")
        assert sink.outcome("b1") is None
        assert store.writer.stats()["halted"] == 0


def test_batches_behind_a_lost_lease_fail_with_lease_lost() -> None:
    from herder.store import LeaseLost
    from herder.store._entries import halt_error

    lost = LeaseLost("another runtime holds the lease")
    assert halt_error(lost) is lost
    io = halt_error(OSError("disk"))
    assert isinstance(io, StoreIOError)
    assert isinstance(io.__cause__, OSError)


@pytest.mark.timeout(30)
def test_a_commit_of_early_admitted_starts_waits_for_the_engine_batch_built_on_them(
    path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_writer, "MERGE_WAIT", 20.0)  # only the batch (or a close) ends it
    store = Store(path)
    sink = Sink()
    before = store.writer.stats()["batches"]
    done: Future[list[BaseException | None]] = Future()
    store.writer.submit_many([t(put(b"new"))], done.set_result, halts=True)
    with pytest.raises(TimeoutError):
        done.result(0.2)  # held for the Scheduler's first DISPATCHED
    engine_batch(store, sink, "b1")
    assert done.result(10) == [None]
    assert sink.outcome("b1") is None
    assert store.writer.stats()["batches"] == before + 1  # one commit for both
    plain = store.writer.submit(t(put(b"plain")))  # nothing builds on it: no wait
    plain.result(10)
    alone: Future[list[BaseException | None]] = Future()
    store.writer.submit_many([t(put(b"alone"))], alone.set_result, halts=True)
    store.close()  # ends the wait: committed, not dropped
    assert alone.result(10) == [None]
    reader = Store(path, readonly=True)
    assert reader.get("workflows", b"alone") is not None
    reader.close()
