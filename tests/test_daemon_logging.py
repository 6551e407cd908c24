"""`herder run` logs as the app's module set logging up when imported, else at INFO."""

from __future__ import annotations

import pathlib

import pytest
from _daemon_kit import active_then_stopped, herder_run

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
    code, said = active_then_stopped(herder_run(str(tmp_path / "s"), "logging_app:build", tmp_path))
    assert code == 0, said[-600:]
    assert said.splitlines() == ["app-format app registered"], said[-600:]
