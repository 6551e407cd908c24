"""`herder run` in a subprocess, as the daemon tests drive it: started, waited for until
it serves, stopped with SIGTERM, and its output taken."""

from __future__ import annotations

import pathlib
import signal
import subprocess
import sys
from collections.abc import Mapping
from typing import Any

HERDER = [sys.executable, "-m", "herder.runtime"]


def herder_run(
    store: str, app: str, cwd: pathlib.Path, env: Mapping[str, str] | None = None, **kw: Any
) -> subprocess.Popen[str]:
    """``herder run --store STORE --app APP`` from ``cwd`` (stderr piped; stdout too unless
    ``kw`` says otherwise)."""
    return subprocess.Popen(
        [*HERDER, "run", f"--store={store}", "--app", app],
        cwd=cwd,
        env=None if env is None else dict(env),
        stdout=kw.pop("stdout", subprocess.PIPE),
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


def until_serving(proc: subprocess.Popen[str]) -> list[str]:
    """The log lines up to "serving until SIGTERM" (stderr); fails with them if it exits."""
    assert proc.stderr is not None
    said = []
    for line in proc.stderr:  # (the log goes to stderr; ends if the process does)
        said.append(line)
        if "serving until SIGTERM" in line:
            return said
    raise AssertionError(f"it never served; exit {proc.wait(10)}: {''.join(said)}")


def active_then_stopped(proc: subprocess.Popen[str]) -> tuple[int, str]:
    """Wait for the "active" line, SIGTERM, wait for the exit: its code and its stderr."""
    assert proc.stdout is not None
    try:
        first = proc.stdout.readline()  # ("active ...", or nothing if it failed)
        assert first.startswith("active "), proc.communicate(timeout=20)
        proc.send_signal(signal.SIGTERM)
        _, said = proc.communicate(timeout=30)
    finally:
        ended(proc)
    return proc.returncode, said


def ended(proc: subprocess.Popen[str]) -> None:
    """Kill ``proc`` if a failed test left it running."""
    if proc.poll() is None:
        proc.kill()
        proc.wait(10)
