"""A runtime that lost its store's lease stops firing schedules: its firings would all
be refused (the lease check of every write), and retried with a warning every few
seconds, per schedule, for as long as the deposed process lives. One becoming active
changes a schedule only once its firer is made."""

from __future__ import annotations

import datetime
import logging
import threading
from pathlib import Path
from typing import Any

import pytest
from test_lease import _foreign

from herder.runtime import (
    Agent,
    Runtime,
    StepContext,
    UnknownName,
    Workflow,
    _firing,
    _lifecycle,
)
from herder.runtime._firing import Firer
from herder.runtime.testing import FakeClock

WAIT = 10.0
T0 = datetime.datetime(2027, 1, 15, 8, 0, 0, 500000, tzinfo=datetime.UTC).timestamp()


class Job(Agent):
    def run(self, ctx: StepContext) -> str:
        return ctx.workflow_id


def test_a_runtime_deposed_by_another_lease_holder_stops_firing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock(start=T0)
    rt = Runtime(tmp_path, clock=clock, sweep_interval=0.05)
    try:
        rt.add_agent("job", Job)
        rt.add_workflow(Workflow("job").step("run", agent="job", action="run"))
        for name in ("tick", "tock"):
            rt.schedule(name, "job", every=60)
        firer, lease = rt._firer, rt._store.lease
        assert firer is not None
        assert firer._thread is not None
        assert lease is not None
        rt._store.writer.submit(_foreign(lease)).result(timeout=WAIT)  # a standby took it
        caplog.set_level(logging.WARNING, logger="herder.schedules")
        clock.advance(60)  # 08:01: the firing's commit is refused, and so deposes it
        assert rt._wake.wait(WAIT)
        assert not rt.is_active
        firer._thread.join(WAIT)
        assert not firer._thread.is_alive()  # (it retried every RETRY seconds, for ever)
        refused = len([r for r in caplog.records if "could not fire" in r.getMessage()])
        assert 1 <= refused <= 2  # at most the pass that found the lease gone
        clock.advance(10 * _firing.RETRY)
        assert [s.fired for s in rt.schedules()] == [0, 0]  # nothing was written
        assert rt.list() == []
    finally:
        rt.stop()


@pytest.mark.timeout(60)
def test_a_runtime_that_failed_before_its_firer_was_made_does_not_start_firing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """_failed halts ``rt._firer`` only if there is one: a failure (the supervision tree
    giving up, the lease lost) that lands while _become_active is still recovering, before
    ``rt._firer = Firer(...)``, leaves the firer that is made next running: started after
    the runtime failed, it retries its refused firings every RETRY s for ever, the loop
    the halt ends for a runtime failed later. (Simulated by failing the runtime just before
    its Firer is made, as a fatal from the supervision thread would during ``sync``.)"""
    made: list[Firer] = []

    def failing_first(rt: Any, ask_timeout: float) -> Firer:
        rt._failed(RuntimeError("the lease was lost during recovery"))  # another thread's
        firer = Firer(rt, ask_timeout)
        made.append(firer)
        return firer

    monkeypatch.setattr(_lifecycle, "Firer", failing_first)
    clock = FakeClock(start=T0)
    rt = Runtime(tmp_path, clock=clock)
    try:
        assert rt._fatal is not None  # the runtime failed: every start is refused
        thread = made[0]._thread if made else None  # (a fix may make none, or not start it)
        if thread is not None:
            thread.join(WAIT)  # (halted, the thread ends at once)
            assert not thread.is_alive(), "a failed runtime's firing thread runs on"
    finally:
        rt.stop()


class _Noting:
    """A runtime's ``_promotion`` lock that notes when thread ``admin`` asks for it."""

    def __init__(self, asked: threading.Event) -> None:
        self._lock = threading.RLock()
        self._asked = asked

    def __enter__(self) -> bool:
        if threading.current_thread().name == "admin":
            self._asked.set()
        return self._lock.__enter__()

    def __exit__(self, *exc: object) -> None:
        self._lock.__exit__(*exc)


@pytest.mark.timeout(60)
def test_changing_a_schedule_while_the_runtime_becomes_active_waits_for_its_firer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Becoming active starts the actors (``rt._root``), recovers, then makes the firer,
    all under ``rt._promotion``. A pause/resume/delete_schedule from another thread in
    between (a standby's admin endpoint while it takes over) passed the activity check
    and met no firer: an AssertionError, where it must wait for the firer (as
    rt.schedule() does) and answer as on an active runtime."""
    asked = threading.Event()  # the admin thread's call is under way: it waits, or ended
    outcome: list[BaseException | None] = []
    admins: list[threading.Thread] = []

    def setup(runtime: Runtime) -> None:
        runtime.add_agent("job", Job)
        runtime.add_workflow(Workflow("job").step("run", agent="job", action="run"))
        runtime._promotion = _Noting(asked)  # type: ignore[assignment]

    def making(rt: Any, ask_timeout: float) -> Firer:  # (the actors run, the firer is next)
        def pause() -> None:
            try:
                rt.pause_schedule("tick")
                outcome.append(None)
            except BaseException as exc:
                outcome.append(exc)
            finally:
                asked.set()

        admin = threading.Thread(target=pause, name="admin")
        admins.append(admin)
        admin.start()
        assert asked.wait(WAIT)
        return Firer(rt, ask_timeout)

    monkeypatch.setattr(_lifecycle, "Firer", making)
    rt = Runtime(tmp_path, clock=FakeClock(start=T0), setup=setup)
    try:
        admins[0].join(WAIT)
        [exc] = outcome
        assert isinstance(exc, UnknownName), repr(exc)  # the firer's answer: no such schedule
    finally:
        rt.stop()
