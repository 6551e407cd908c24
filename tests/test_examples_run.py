"""Each example runs as its docstring says to run it, in a process of its own.

``test_examples.py`` drives the examples' functions; these run the command lines a user
copies (``python examples/daemon.py STORE_DIR HOSTS_FILE``, ``herder run --app
ha_app:build`` from the examples' directory, the systemd unit's ``ExecStart``) and check
what they print, how they react to signals and how they exit.
"""

from __future__ import annotations

import os
import queue
import runpy
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).parent.parent / "examples"
WAIT = 30.0  # seconds one expected line may take on a loaded machine


class Process:
    """``python ARGV...`` with its stdout and stderr merged (the examples log to stderr),
    read line by line as it prints them. Every one started is killed when its test ends
    (see ``_reap``), passed or failed."""

    started: list[subprocess.Popen[str]] = []

    def __init__(self, argv: list[str], cwd: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, *argv],
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        Process.started.append(self.proc)
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.seen.append(line.rstrip())
            self.lines.put(line.rstrip())
        self.lines.put(None)

    def wait_for(self, text: str) -> str:
        """The next line containing ``text``; AssertionError with what it printed if it
        ends or stays silent for WAIT seconds first."""
        give_up = time.monotonic() + WAIT
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, give_up - time.monotonic()))
            except queue.Empty:
                line = None
            if line is None:
                self.proc.kill()
                raise AssertionError(f"no line with {text!r}; it printed: {self.seen}")
            if text in line:
                return line

    def stop(self, sig: signal.Signals) -> tuple[int, list[str]]:
        """Send ``sig``; its exit code once it ended, and the lines it printed since."""
        self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout=WAIT)
        finally:
            self.proc.kill()
        rest = []
        while (line := self.lines.get(timeout=WAIT)) is not None:  # (its stdout closed)
            rest.append(line)
        return code, rest


@pytest.fixture(autouse=True)
def _reap() -> Iterator[None]:
    """A test that failed midway left its daemon running, holding its store."""
    yield
    while Process.started:
        proc = Process.started.pop()
        proc.kill()
        proc.wait(timeout=WAIT)


def _run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *argv], check=False, cwd=cwd, capture_output=True, text=True, timeout=WAIT
    )


def test_travel_booking_runs_with_and_without_a_store_dir(tmp_path: Path) -> None:
    for argv in ([], [str(tmp_path / "store")]):
        done = _run([str(EXAMPLES / "travel_booking.py"), *argv], tmp_path)
        assert done.returncode == 0, done.stderr
        assert done.stdout.splitlines() == [
            "ada booked {'flight': {'ref': 'flight-for-ada'}, 'hotel': {'ref': "
            "'hotel-for-ada'}, 'car': {'ref': 'car-for-ada'}}",
            "alan undone: step 'car' failed: Permanent: nothing left in Oslo",
            "grace booked {'flight': {'ref': 'flight-for-grace'}, 'hotel': {'ref': "
            "'hotel-for-grace'}, 'car': {'ref': 'car-for-grace'}}",
            "linus undone: step 'car' failed: Permanent: nothing left in Oslo",
        ]
    assert (tmp_path / "store").is_dir()


def test_async_service_answers_its_requests(tmp_path: Path) -> None:
    done = _run([str(EXAMPLES / "async_service.py")], tmp_path)  # store: var/herder-async
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert [line.split(" {")[0] for line in lines] == ["200 OK"] * 3 + ["409 Conflict"]
    assert "sku-3 is sold out" in lines[3]
    assert (tmp_path / "var" / "herder-async").is_dir()


@pytest.mark.timeout(120)  # several interpreters start, one after another
def test_the_daemon_follows_its_hosts_file_on_sighup_and_drains_on_sigterm(
    tmp_path: Path,
) -> None:
    usage = _run([str(EXAMPLES / "daemon.py")], tmp_path)
    assert usage.returncode == 1
    assert "usage: python examples/daemon.py STORE_DIR HOSTS_FILE" in usage.stderr
    missing = _run([str(EXAMPLES / "daemon.py"), "store", "no-such-file"], tmp_path)
    assert (missing.returncode, missing.stderr) == (
        1,
        "daemon.py: cannot start: [Errno 2] No such file or directory: 'no-such-file'\n",
    )
    deploy = runpy.run_path(str(EXAMPLES / "daemon.py"), run_name="example")["deploy_workflow"]
    store, hosts = tmp_path / "store", tmp_path / "hosts"
    hosts.write_text("a\nb\n")
    daemon = Process([str(EXAMPLES / "daemon.py"), str(store), str(hosts)], tmp_path)
    assert deploy(["a", "b"]).name in daemon.wait_for("serving 2 hosts")
    first = f"{deploy(['a', 'b']).name}-1.0"
    assert daemon.wait_for("goes to 2 hosts in workflow").endswith(first)
    daemon.wait_for("serving until SIGTERM or SIGINT")  # (SIGHUP is handled from here on)
    listed = _run(["-m", "herder.runtime", "ls", "--store", str(store)], tmp_path)
    assert listed.returncode == 0, listed.stderr  # "inspect it meanwhile": it lists the deploy
    assert first in listed.stdout  # (the example started none: ls listed nothing)
    second = _run([str(EXAMPLES / "daemon.py"), str(store), str(hosts)], tmp_path)
    assert second.returncode == 1
    assert second.stderr.startswith(f"daemon.py: cannot start: store {store} is held by")
    hosts.write_text("a\nc\nd\n")
    daemon.proc.send_signal(signal.SIGHUP)
    assert deploy(["a", "c", "d"]).name in daemon.wait_for("serving 3 hosts")
    second_deploy = f"{deploy(['a', 'c', 'd']).name}-1.0"
    assert daemon.wait_for("goes to 3 hosts in workflow").endswith(second_deploy)
    code, rest = daemon.stop(signal.SIGTERM)
    assert code == 0, rest
    assert any("SIGTERM received: draining" in line for line in rest), rest
    assert rest[-1].endswith(f"runtime on {store} stopped")


@pytest.mark.timeout(120)  # several interpreters start, one after another
def test_ha_app_serves_under_herder_run_and_the_systemd_units_command(tmp_path: Path) -> None:
    unit = (EXAMPLES / "herder.service").read_text()
    (exec_start,) = (line for line in unit.splitlines() if line.startswith("ExecStart="))
    command = shlex.split(exec_start.removeprefix("ExecStart="))
    assert Path(command[0]).name == "herder"
    store = command.index("--store") + 1
    command[store] = str(tmp_path / "unit-store")
    documented = ["run", "--store", str(tmp_path / "store"), "--app", "ha_app:build"]
    for argv in (documented, command[1:]):  # run from where ha_app.py is, as the unit does
        daemon = Process(["-m", "herder.runtime", *argv], EXAMPLES)
        daemon.wait_for("active ")  # (a standby takes a free lease at once)
        if argv is documented:  # the docstring's "active daemon" started a second time
            second = _run(["-m", "herder.runtime", *argv], EXAMPLES)
            assert second.returncode == 1
            assert "held by another process" in second.stderr
            assert "`herder run --standby`" in second.stderr  # (not only Runtime(...))
        code, rest = daemon.stop(signal.SIGTERM)
        assert (code, rest[-1]) == (0, "stopped"), rest
