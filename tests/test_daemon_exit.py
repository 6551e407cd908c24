"""`herder run` exits once its runtime stopped, though a thread the app started runs on."""

from __future__ import annotations

import concurrent.futures
import pathlib
import signal
import subprocess
import sys
import threading

import pytest
from _daemon_kit import ended, herder_run, until_serving

from herder.runtime import Runtime

pytestmark = pytest.mark.timeout(60)
TESTS = pathlib.Path(__file__).parent


def build(rt: Runtime) -> None:
    """The app of the test below: starts a thread (not a daemon thread) that never ends."""
    threading.Thread(target=threading.Event().wait, name="app-forever").start()


POOL = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="app-pool")


def build_with_a_pool(rt: Runtime) -> None:
    """The app of the test below: a job of its executor's that never ends."""
    POOL.submit(threading.Event().wait)


@pytest.mark.parametrize(
    ("app", "left"),
    [("build", "app-forever"), ("build_with_a_pool", "app-pool_0")],
    ids=["thread", "executor"],
)
def test_herder_run_exits_after_its_stop_though_an_app_thread_runs_on(
    tmp_path: pathlib.Path, app: str, left: str
) -> None:
    # It said "stopped" and then hung in Python's wait for the app's thread: systemd
    # killed it at TimeoutStopSec (a failed stop), and a runtime that lost its lease
    # never exited to come back under Restart=on-failure as the standby. An executor's
    # workers are waited for at the exit's start (concurrent.futures joins them while the
    # main thread still counts as alive), which the first fix took for a caller that
    # carried on: it hung as before.
    proc = herder_run(str(tmp_path / "s"), f"{__name__}:{app}", TESTS)
    try:
        until_serving(proc)
        proc.send_signal(signal.SIGTERM)
        out, rest = proc.communicate(timeout=20)
    finally:
        ended(proc)
    assert proc.returncode == 0, rest[-600:]
    assert out.splitlines()[-1] == "stopped", out
    assert f"which still run: {left}; start them with daemon=True" in rest, rest[-600:]


FAILING_APP = """
import threading
threading.Thread(target=threading.Event().wait, name="import-thread").start()
def build(rt):
    raise KeyError("no config")
"""


def test_herder_run_that_failed_to_start_exits_1_though_an_app_thread_runs_on(
    tmp_path: pathlib.Path,
) -> None:
    # It said why it failed, then hung in Python's wait for the thread the app's module
    # started: no exit 1 for systemd's Restart=on-failure to act on.
    (tmp_path / "failing_app.py").write_text(FAILING_APP)
    argv = [sys.executable, "-m", "herder.runtime", "run", "--store", str(tmp_path / "s")]
    done = subprocess.run(
        [*argv, "--app", "failing_app:build"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 1, done.stderr[-600:]
    assert "the app factory 'failing_app:build' failed: KeyError" in done.stderr
    assert "which still run: import-thread;" in done.stderr, done.stderr[-600:]


HANGING_APP = """
import sys, threading
threading.Thread(target=threading.Event().wait, name="import-thread").start()
def build(rt):
    print("in setup", file=sys.stderr, flush=True)
    threading.Event().wait()
"""


def test_herder_run_interrupted_in_setup_exits_130_though_an_app_thread_runs_on(
    tmp_path: pathlib.Path,
) -> None:
    # It said "herder run: interrupted" (exit 130, as without the thread), then the exit
    # that gives up on the app's threads exited 1, the code it took for an error.
    (tmp_path / "hanging_app.py").write_text(HANGING_APP)
    argv = [sys.executable, "-m", "herder.runtime", "run", "--store", str(tmp_path / "s")]
    # (a handled SIGINT is the default again in the child: a suite run in the
    # background ignores it, and a child would inherit that)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        proc = subprocess.Popen(
            [*argv, "--app", "hanging_app:build"],
            cwd=tmp_path,
            stderr=subprocess.PIPE,
            text=True,
        )
    finally:
        signal.signal(signal.SIGINT, previous)
    try:
        assert proc.stderr is not None
        for line in proc.stderr:  # (ends if the process does)
            if "in setup" in line:
                break
        proc.send_signal(signal.SIGINT)
        _, rest = proc.communicate(timeout=20)
    finally:
        ended(proc)
    assert proc.returncode == 130, rest[-600:]
    assert "herder run: interrupted" in rest
    assert "which still run: import-thread;" in rest, rest[-600:]
