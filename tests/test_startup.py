"""Start-up order: ``Runtime(path, setup=fn)`` registers before recovery begins, and a
restart without it logs one line per missing definition, not one per workflow."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import pytest

from herder.runtime import Agent, InvalidInput, NotActive, Runtime, StepContext, Workflow

WAIT = 30.0
JOB = Workflow("job").step("work", agent="worker", action="work")


class Worker(Agent):
    hold = threading.Event()  # set by each test once its first runtime is gone
    entered = threading.Semaphore(0)

    def work(self, ctx: StepContext) -> str:
        if not Worker.hold.is_set():
            Worker.entered.release()
            Worker.hold.wait(WAIT)
            raise RuntimeError("the process went away")
        return "done"


def register(rt: Runtime) -> None:
    rt.add_agent("worker", Worker, concurrency=4)
    rt.add_workflow(JOB)


def leave_unfinished(path: Path, ids: list[str]) -> None:
    """Workflows whose step was running when the runtime stopped (as after a crash)."""
    Worker.hold.clear()
    with Runtime(path, setup=register) as rt:
        for wid in ids:
            rt.start("job", workflow_id=wid)
        for _ in ids:
            assert Worker.entered.acquire(timeout=WAIT)
        rt._store.writer.flush()
    Worker.hold.set()  # the abandoned attempts fail; their answers are fenced out


def test_setup_registers_before_recovery_so_recovered_work_resumes_at_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "s"
    leave_unfinished(path, ["a", "b"])
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="herder"), Runtime(path, setup=register) as rt:
        assert rt.stats()["awaiting_definition"] == {}
        assert rt.handle("a").result(timeout=WAIT) == {"work": "done"}
        assert rt.handle("b").result(timeout=WAIT) == {"work": "done"}
    assert not [r for r in caplog.records if "await" in r.getMessage()]


def test_registering_late_logs_one_summary_line_per_missing_definition(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "s"
    leave_unfinished(path, ["a", "b", "c"])
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="herder"), Runtime(path) as rt:
        assert rt.stats()["awaiting_definition"] == {"job@1": 3}
        register(rt)
        assert rt.handle("c").result(timeout=WAIT) == {"work": "done"}
    lines = [r.getMessage() for r in caplog.records if "await" in r.getMessage()]
    assert len(lines) == 1
    assert lines[0].startswith("3 unfinished workflows")
    assert "job version 1" in lines[0]


def test_starting_work_inside_setup_is_refused_and_the_store_is_released(
    tmp_path: Path,
) -> None:
    def starts(rt: Runtime) -> None:
        register(rt)
        rt.start("job", workflow_id="too-early")

    with pytest.raises(NotActive, match="once Runtime\\(\\) has returned"):
        Runtime(tmp_path / "s", setup=starts)
    with Runtime(tmp_path / "s", setup=register) as rt:  # the store was closed
        assert rt.list() == []


def test_an_async_def_setup_is_refused_rather_than_left_unrun(tmp_path: Path) -> None:
    # Called and never awaited, it registered nothing: the runtime (and `herder run`,
    # whose app factory is its setup) served without an agent, Python's "coroutine was
    # never awaited" warning the only sign, and stored workflows waited for ever.
    async def registers(rt: Runtime) -> None:
        register(rt)

    with pytest.raises(InvalidInput, match="returned a coroutine") as refused:
        Runtime(tmp_path / "s", setup=registers)
    assert "plain def" in str(refused.value)
    with Runtime(tmp_path / "s", setup=register) as rt:  # the store was closed
        assert rt.list() == []


def test_waiting_to_be_active_inside_setup_is_refused_and_from_its_thread_answered(
    tmp_path: Path,
) -> None:
    # The runtime becomes active once setup has returned: wait_active() in setup waited
    # for itself, for ever (`herder run` hung before READY=1), or its timeout, for False.
    waiters: list[threading.Thread] = []
    answered: list[bool] = []

    def waits(rt: Runtime, *, itself: bool) -> None:
        register(rt)
        waiter = threading.Thread(target=lambda: answered.append(rt.wait_active(WAIT)))
        waiters.append(waiter)
        waiter.start()  # (a thread setup starts may wait: it is answered once active)
        if itself:
            rt.wait_active(5.0)

    with pytest.raises(NotActive, match="wait_active\\(\\) in setup would wait for ever"):
        Runtime(tmp_path / "s", setup=lambda rt: waits(rt, itself=True))
    waiters[0].join(WAIT)
    with Runtime(tmp_path / "s", setup=lambda rt: waits(rt, itself=False)):
        waiters[1].join(WAIT)
    assert answered == [False, True]  # (the first runtime stopped: it never became active)
