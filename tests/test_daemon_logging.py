"""`herder run` logs as the app's module set logging up when imported, else at INFO."""

from __future__ import annotations

import pathlib
import signal
import subprocess
import sys

import pytest

pytestmark = pytest.mark.timeout(60)

APP = """
import logging, sys
logging.basicConfig(level=logging.WARNING, format="app-format %(name)s %(message)s")
def build(rt):
    logging.getLogger("app").warning("registered")
"""


def test_herder_run_keeps_the_logging_its_app_set_up_on_import(tmp_path: pathlib.Path) -> None:
    # herder run set up its own (INFO, its format) before it imported the app, so the
    # app's logging.basicConfig() did nothing: its level and format were ignored.
    (tmp_path / "logging_app.py").write_text(APP)
    argv = [sys.executable, "-m", "herder.runtime", "run", "--store", str(tmp_path / "s")]
    proc = subprocess.Popen(
        [*argv, "--app", "logging_app:build"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    try:
        first = proc.stdout.readline()  # ("active ...", or nothing if it failed)
        assert first.startswith("active "), proc.communicate(timeout=20)
        proc.send_signal(signal.SIGTERM)
        _, said = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == 0, said[-600:]
    assert said.splitlines() == ["app-format app registered"], said[-600:]
