"""Stopping at awkward moments: after a stop, with a bad timeout, when becoming active
fails half way, right after `herder run` said it is active, and while a standby takes
the lease."""

from __future__ import annotations

import asyncio
import io
import pathlib
import signal
import threading
import time
from typing import Any

import pykka
import pytest
from _child_kit import Child

from herder.runtime import (
    Agent,
    InvalidInput,
    Runtime,
    RuntimeClosed,
    StepContext,
    Workflow,
    _daemon,
)
from herder.store import Lease, Store, StoreError
from herder.store._codec import encode
from herder.store._lease import LEASE_KEY

pytestmark = pytest.mark.timeout(60)
TESTS = pathlib.Path(__file__).parent


def test_handoff_on_a_stopped_runtime_is_refused(tmp_path: pathlib.Path) -> None:
    # It answered True and logged that the lease "was already lost": nothing was handed.
    rt = Runtime(tmp_path / "s", sweep_interval=0.05)
    rt.stop()
    with pytest.raises(RuntimeClosed):
        rt.handoff(deadline=1.0)


def test_a_negative_stop_or_drain_timeout_is_refused_and_stops_nothing(
    tmp_path: pathlib.Path,
) -> None:
    # stop(-1) stopped no actor, left the store open and blamed "a stalled disk".
    rt = Runtime(tmp_path / "s", sweep_interval=0.05)
    try:
        with pytest.raises(InvalidInput, match="timeout"):
            rt.stop(timeout=-1)
        with pytest.raises(InvalidInput, match="drain_timeout"):
            rt.run_forever(drain_timeout=float("nan"))
        assert rt.is_active
    finally:
        rt.stop()


def test_herder_run_refuses_a_negative_drain_timeout_as_a_usage_error(
    tmp_path: pathlib.Path,
) -> None:
    # It started, and on SIGTERM died with a traceback, its lease held.
    args = ["-m", "herder.runtime", "run", "--store", str(tmp_path / "s")]
    child = Child([*args, "--app", "ha_app:build", "--drain-timeout", "-1"], cwd=TESTS)
    try:
        code = child.proc.wait(timeout=30)
        err = child.stderr()
        assert "Traceback" not in err, err[-600:]
        assert code == 2, (code, err[-300:])
        assert "--drain-timeout" in err
    finally:
        child.kill(10)


def test_a_runtime_that_fails_to_become_active_stops_its_actors(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Only the store was closed: the tree ran on, restarting on StoreClosed.
    from herder.runtime import _firing

    def full_disk(self: object) -> None:
        raise StoreError("injected: no space left on device")

    monkeypatch.setattr(_firing.Firer, "start", full_disk)
    before = set(pykka.ActorRegistry.get_all())
    with pytest.raises(StoreError, match="injected"):
        Runtime(tmp_path / "s", sweep_interval=0.05)
    leaked = [a for a in pykka.ActorRegistry.get_all() if a not in before]
    for ref in leaked:
        ref.stop(block=False)
    assert leaked == []


def build(rt: Runtime) -> None:
    """The app of the test below: registers nothing."""


class _Out(io.StringIO):
    """`herder run`'s output; notes how SIGTERM is handled when it says it is active."""

    def __init__(self) -> None:
        super().__init__()
        self.on_active: Any = None

    def write(self, text: str) -> int:
        if text.startswith("active"):
            self.on_active = signal.getsignal(signal.SIGTERM)
        return super().write(text)


def test_herder_run_drains_on_a_sigterm_from_the_moment_it_says_active(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # READY=1 and "active" came before run_forever installed its handlers: a SIGTERM
    # right then killed the process (no drain, lease held, exit -15).
    served: list[bool] = []

    def serve(self: Runtime, *, drain_timeout: float = 30.0) -> None:
        served.append(self._wake.is_set())
        self.stop()

    monkeypatch.setattr(Runtime, "run_forever", serve)
    out, before = _Out(), signal.getsignal(signal.SIGTERM)
    store = str(tmp_path / "s")
    code = _daemon.run_app(
        store, f"{__name__}:build", standby=False, lease=5.0, drain_timeout=1.0, out=out
    )
    assert code == 0
    assert out.on_active not in (signal.SIG_DFL, signal.SIG_IGN, None)
    out.on_active(signal.SIGTERM, None)  # a SIGTERM then wakes run_forever to stop
    assert signal.getsignal(signal.SIGTERM) is before  # restored on the way out


def test_stop_while_a_standby_takes_the_lease_leaves_it_released(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A stop between the take's commit and its writer closed the store with the lease
    # held (it had no writer to release it with), and the watcher thread died.
    path = tmp_path / "s"
    Store(path).close()  # a released lease: the standby takes it at its first poll
    committed, go_on, closing = threading.Event(), threading.Event(), threading.Event()
    start_writer, close = Store._start_writer, Store.close

    def slow_start(self: Store, lease: Any) -> None:
        committed.set()
        go_on.wait(30)
        start_writer(self, lease)

    def noted_close(self: Store, timeout: float = 10.0) -> None:
        closing.set()
        close(self, timeout)

    monkeypatch.setattr(Store, "_start_writer", slow_start)
    monkeypatch.setattr(Store, "close", noted_close)
    errors: list[BaseException | None] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: errors.append(args.exc_value))
    rt = Runtime(path, standby=True, standby_poll=0.01)
    assert committed.wait(30)
    stopper = threading.Thread(target=rt.stop)
    stopper.start()
    assert closing.wait(30)  # the stop closes the store while the take is half done
    go_on.set()
    stopper.join(30)
    rt._watcher._thread.join(30)  # type: ignore[union-attr]
    assert not stopper.is_alive()
    with Store(path, readonly=True) as st:
        lease = st.read_lease()
    assert lease is not None
    assert (lease.released, errors) == (True, []), lease.describe()


def test_a_second_stop_returns_only_once_the_first_has_stopped_the_runtime(
    tmp_path: pathlib.Path,
) -> None:
    # A stop() while another thread's stop() was stopping the actors (run_forever after
    # a handoff's, say) returned at once, and closed the store under the live actors.
    rt = Runtime(tmp_path / "s", sweep_interval=0.05)
    root = rt._root
    assert root is not None
    inside, go_on = threading.Event(), threading.Event()

    class SlowRoot:
        def is_alive(self) -> bool:
            return root.is_alive()

        def stop(self, timeout: float | None = None) -> None:
            inside.set()
            rt.stop()  # as a signal handler would, inside the stop: returns at once
            go_on.wait(30)
            root.stop(timeout=timeout)

    rt._root = SlowRoot()  # type: ignore[assignment]
    first = threading.Thread(target=rt.stop)
    first.start()
    assert inside.wait(30)
    opener = threading.Timer(0.2, go_on.set)  # the first stop goes on meanwhile
    opener.start()
    try:
        rt.stop()
        assert not root.is_alive()  # the actors had stopped when it returned
        assert rt._store._closed
    finally:
        go_on.set()
        opener.cancel()
        first.join(30)


def test_waiting_for_a_standby_to_become_active_ends_when_it_stops_first(
    tmp_path: pathlib.Path,
) -> None:
    # wait_active() blocked for ever on a standby stopped before it took over: a thread
    # waiting to start work kept the process from exiting after SIGTERM.
    path = tmp_path / "s"
    Store(path).close()
    with Store(path, standby=True) as store:  # a live lease of another host: it waits
        foreign = Lease("other", 9, time.time() + 600, 1, "elsewhere", False, time.time())
        assert store._env is not None
        with store._env.begin(write=True) as txn:
            txn.put(LEASE_KEY, encode(foreign.to_dict()), db=store._handles["meta"])
    standby = Runtime(path, standby=True, lease=600.0, standby_poll=0.01)
    answers: list[bool] = []
    waiter = threading.Thread(target=lambda: answers.append(standby.wait_active()), daemon=True)
    waiter.start()
    standby.stop()
    waiter.join(30)
    assert answers == [False]
    assert not standby.wait_active()
    assert not asyncio.run(standby.wait_active_async())


def _one_step_runtime(path: pathlib.Path) -> Runtime:
    """A runtime with workflow "w": one quick step."""
    from herder.runtime import Agent, Workflow

    class Quick(Agent):
        def go(self, ctx: Any) -> int:
            return 1

    rt = Runtime(path)
    rt.add_agent("a", Quick)
    rt.add_workflow(Workflow("w").step("s", agent="a", action="go"))
    return rt


@pytest.mark.parametrize("many", [False, True])
@pytest.mark.parametrize("moment", ["released", "closed"])
def test_a_start_checked_before_a_stop_that_lands_after_it_is_runtime_closed(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, moment: str, many: bool
) -> None:
    # A start that passed its checks just before stop() and reached the store after the
    # stop released the lease failed with LeaseLost ("restart it with standby=True"), and
    # after it closed the store with StoreClosed; stop() promises RuntimeClosed.
    rt = _one_step_runtime(tmp_path / "s")
    released, resume = threading.Event(), threading.Event()
    release = rt._store.release_lease

    def release_and_hold(timeout: float = 10.0) -> bool:
        done = release(timeout)
        released.set()  # the stop is held here, between the release and the close
        assert resume.wait(30)
        return done

    monkeypatch.setattr(rt._store, "release_lease", release_and_hold)
    stopper = threading.Thread(target=rt.stop)
    submit_name = "_submit_many" if many else "_submit_start"
    submit = getattr(rt, submit_name)

    def stop_then_submit(*args: Any, **kwargs: Any) -> Any:
        stopper.start()  # the start has passed its checks
        assert released.wait(30)
        if moment == "closed":
            resume.set()
            stopper.join(30)
        return submit(*args, **kwargs)

    monkeypatch.setattr(rt, submit_name, stop_then_submit)
    try:
        start = (lambda: rt.start_many([{"workflow": "w"}])) if many else (lambda: rt.start("w"))
        with pytest.raises(RuntimeClosed, match="stopping"):
            start()
    finally:
        resume.set()
        if stopper.ident is None:  # (the start failed before it got there)
            rt.stop()
        else:
            stopper.join(30)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("many", [False, True])
def test_a_start_whose_id_is_read_after_a_stop_shut_the_store_is_runtime_closed(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, many: bool
) -> None:
    # A start with its own id reads the store for it before it takes a slot; a stop that
    # shut the store between the start's checks and that read let StoreClosed ("open it
    # again") out, where stop() promises RuntimeClosed.
    rt = _one_step_runtime(tmp_path / "s")
    store = rt._store

    def stop_first(workflow_id: str) -> bool:
        stopper = threading.Thread(target=rt.stop)
        stopper.start()
        stopper.join(30)
        assert not stopper.is_alive()
        return False  # (so the start reads the store, now shut)

    monkeypatch.setattr(store, "surely_new", stop_first)
    start = (
        (lambda: rt.start_many([{"workflow": "w", "workflow_id": "x1"}]))
        if many
        else (lambda: rt.start("w", workflow_id="x1"))
    )
    with pytest.raises(RuntimeClosed, match="stopping"):
        start()


def test_stop_waits_instance_shutdown_for_an_action_that_ignores_it(
    tmp_path: pathlib.Path,
) -> None:
    # With instance_shutdown=9, stop(timeout=20) returned after 5.0 s with the action still
    # running: the root gave its agents' supervisor ChildSpec's default 5 s, not the
    # instance_shutdown its instances were promised.
    running, ended = threading.Event(), threading.Event()
    never = threading.Event()

    class Stubborn(Agent):
        def work(self, ctx: StepContext) -> None:
            running.set()
            never.wait(5.6)  # ignores its stop, for longer than 5 s but < instance_shutdown
            ended.set()

    rt = Runtime(tmp_path / "s", instance_shutdown=9)
    rt.add_agent("svc", Stubborn)
    rt.add_workflow(Workflow("x").step("s", agent="svc", action="work"))
    rt.start("x", workflow_id="w")
    assert running.wait(10)
    rt.stop(timeout=20)
    assert ended.is_set(), "stop() returned with the action still running"
