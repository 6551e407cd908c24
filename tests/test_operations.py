"""Running herder as a daemon: graceful drain, signals, one writer per store, live CLI."""

from __future__ import annotations

import io
import json
import logging
import os
import pathlib
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from herder.runtime import (
    Agent,
    RetryPolicy,
    Runtime,
    RuntimeClosed,
    StepContext,
    StepState,
    StoreLocked,
    Workflow,
)
from herder.runtime._cli import main as cli
from herder.store import Store

CHILD = pathlib.Path(__file__).with_name("runtime_child.py")
WAIT = 20.0


class _Seen(logging.Handler):
    """Sets an event when a log message containing ``text`` is emitted."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text
        self.event = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.text in record.getMessage():
            self.event.set()


class Blocking(Agent):
    def __init__(self, entered: threading.Event, release: threading.Event) -> None:
        self.entered = entered
        self.release = release

    def hold(self, ctx: StepContext) -> str:
        self.entered.set()
        self.release.wait(WAIT)
        return "held"

    def after(self, ctx: StepContext) -> str:
        return "after"


HELD = (
    Workflow("held", version=1)
    .step("hold", agent="gate", action="hold")
    .step("after", agent="gate", action="after", after=["hold"])
)


def test_drain_lets_the_running_attempt_finish_and_refuses_new_starts(tmp_path: Path) -> None:
    entered, release = threading.Event(), threading.Event()
    draining = _Seen("dispatching nothing new")
    logger = logging.getLogger("herder.runtime")
    logger.addHandler(draining)
    logger.setLevel(logging.INFO)
    try:
        rt = Runtime(tmp_path / "store")
        rt.add_agent("gate", lambda: Blocking(entered, release))
        rt.add_workflow(HELD)
        rt.start("held", workflow_id="w-1")
        assert entered.wait(WAIT)
        stopper = threading.Thread(target=rt.stop, kwargs={"timeout": WAIT, "drain": True})
        stopper.start()
        assert draining.event.wait(WAIT)
        with pytest.raises(RuntimeClosed, match="stopping"):
            rt.start("held", workflow_id="w-2")
        assert stopper.is_alive(), "stop returned while an attempt was still running"
        release.set()
        stopper.join(WAIT)
        assert not stopper.is_alive()
    finally:
        logger.removeHandler(draining)
        release.set()
        rt.stop()
    rt.stop()  # idempotent
    with Store(tmp_path / "store", readonly=True) as store:
        steps = {s.name: s for s in store.steps_of("w-1")}
        assert store.get_workflow("w-2") is None
    assert steps["hold"].state is StepState.SUCCEEDED  # its outcome was recorded
    assert steps["hold"].result == "held"
    assert "after" not in steps  # never left PENDING: nothing new dispatched while draining


def test_run_forever_outside_the_main_thread_is_refused(tmp_path: Path) -> None:
    errors: list[BaseException] = []
    with Runtime(tmp_path / "store") as rt:

        def serve() -> None:
            try:
                rt.run_forever()
            except RuntimeError as exc:
                errors.append(exc)

        t = threading.Thread(target=serve)
        t.start()
        t.join(WAIT)
    assert len(errors) == 1
    assert "main thread" in str(errors[0])


class _Daemon:
    """tests/runtime_child.py in a subprocess, its stdout and stderr lines in queues."""

    def __init__(self, store: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(CHILD), str(store)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.out: queue.Queue[str | None] = queue.Queue()
        self.err: queue.Queue[str | None] = queue.Queue()
        self.stderr: list[str] = []
        for stream, q in ((self.proc.stdout, self.out), (self.proc.stderr, self.err)):
            threading.Thread(target=self._pump, args=(stream, q), daemon=True).start()

    def _pump(self, stream: Any, q: queue.Queue[str | None]) -> None:
        for line in stream:
            q.put(line.rstrip("\n"))
        q.put(None)

    def expect(self, q: queue.Queue[str | None], text: str) -> str:
        while True:
            line = q.get(timeout=WAIT)
            if line is None:
                raise AssertionError(f"the daemon ended before {text!r}:\n" + self.drain_err())
            if q is self.err:
                self.stderr.append(line)
            if text in line:
                return line

    def drain_err(self) -> str:
        return "\n".join(self.stderr)


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[_Daemon]:
    d = _Daemon(tmp_path / "store")
    yield d
    if d.proc.poll() is None:
        d.proc.kill()
    d.proc.wait(WAIT)


def run_cli(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    return cli(list(argv), out), out.getvalue()


def test_a_live_daemon_is_inspectable_refuses_a_second_writer_and_drains_on_sigterm(
    tmp_path: Path, daemon: _Daemon, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "store"
    daemon.expect(daemon.out, "holding w-1")

    # Inspection works while the daemon writes the store.
    code, out = run_cli("ls", "--store", str(store), "--json")
    assert code == 0
    assert [(w["id"], w["state"]) for w in json.loads(out)] == [("w-1", "RUNNING")]
    code, out = run_cli("show", "w-1", "--store", str(store), "--json")
    assert [(s["name"], s["state"]) for s in json.loads(out)["steps"]] == [
        ("hold", "DISPATCHED"),
        ("after", "PENDING"),
    ]
    # An operator command reaches the daemon through the store's commands channel.
    code, out = run_cli("cancel", "w-1", "--store", str(store), "--why", "test", "--who", "ops")
    assert code == 0, capsys.readouterr().err
    assert "cancel w-1: done" in out

    # A second runtime on the same store is refused, pointing at read-only access, a
    # standby and a handoff (docs/operations.md).
    with pytest.raises(StoreLocked, match="read-only") as locked:
        Runtime(store)
    assert "Runtime(path, standby=True)" in str(locked.value)
    assert "herder handoff --store" in str(locked.value)

    # SIGTERM: the daemon drains (the held attempt finishes) and exits 0.
    daemon.proc.send_signal(signal.SIGTERM)
    daemon.expect(daemon.err, "SIGTERM received")
    daemon.expect(daemon.err, "dispatching nothing new")
    assert daemon.proc.poll() is None
    assert daemon.proc.stdin is not None
    daemon.proc.stdin.write("release\n")
    daemon.proc.stdin.flush()
    daemon.expect(daemon.out, "stopped")
    assert daemon.proc.wait(WAIT) == 0, daemon.drain_err()

    # The store reopens cleanly for writing; the drained attempt's outcome is there.
    with Store(store) as reopened:
        steps = {s.name: s for s in reopened.steps_of("w-1")}
        record = reopened.get_workflow("w-1")
    assert steps["hold"].state is StepState.SUCCEEDED
    assert steps["hold"].result == {"released": "w-1"}
    assert "after" not in steps  # cancelled: never left PENDING, never dispatched
    assert record is not None
    assert record.state == "CANCELLED"


@pytest.mark.timeout(30)
def test_run_forever_gives_back_the_apps_signal_handlers(tmp_path: Path) -> None:
    """Once it returns, the handlers the app had set with ``signal.signal`` are back."""
    called = threading.Event()

    def app_handler(signum: int, frame: object) -> None:
        called.set()

    previous = signal.signal(signal.SIGTERM, app_handler)
    try:
        rt = Runtime(tmp_path / "s")
        threading.Thread(target=rt.stop).start()  # run_forever returns once it stopped
        rt.run_forever(drain_timeout=1.0)
        assert signal.getsignal(signal.SIGTERM) is app_handler, (
            f"SIGTERM's handler is {signal.getsignal(signal.SIGTERM)!r}, not the app's"
        )
        os.kill(os.getpid(), signal.SIGTERM)
        assert called.wait(10.0)
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_log_lines_carry_the_extra_fields_the_docs_name(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """docs/operations.md, Logs: `workflow_id` on every workflow line, `workflow` on start
    and end lines, `state` on end lines, `step` and `attempt` on step lines. (The page
    said the start line carried `state` too; it never did.)"""

    class Flaky(Agent):
        def go(self, ctx: StepContext) -> int:
            if ctx.attempt == 1:
                raise RuntimeError("flaky")
            return 1

    caplog.set_level(logging.INFO, logger="herder")
    with Runtime(tmp_path / "store", default_retry=RetryPolicy(initial_interval=0.01)) as rt:
        rt.add_agent("flaky", Flaky)
        rt.add_workflow(Workflow("w").step("s", agent="flaky", action="go"))
        rt.start("w", {}, workflow_id="x").result(timeout=WAIT)
    lines = {r.getMessage().split("\n")[0]: r for r in caplog.records if hasattr(r, "workflow_id")}
    start, end = lines["workflow x started (w@1)"], lines["workflow x ended SUCCEEDED"]
    assert (start.workflow_id, start.workflow) == ("x", "w")  # type: ignore[attr-defined]
    assert (end.workflow, end.state) == ("w", "SUCCEEDED")  # type: ignore[attr-defined]
    failed = lines["x/s attempt 1 failed: RuntimeError: flaky"]
    assert (failed.step, failed.attempt) == ("s", 1)  # type: ignore[attr-defined]
