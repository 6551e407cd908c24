"""``herder run --app``: an app whose own code fails (on import, or in its factory) is
reported on one line, with where it failed and what to do, not as a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


def _run(tmp_path: Path, source: str, app: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "broken_app.py").write_text(source)
    store = str(tmp_path / "s")
    return subprocess.run(
        [sys.executable, "-m", "herder.runtime", "run", "--store", store, "--app", app],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("source", "app", "said", "where"),
    [
        (
            "from herder.actors import Agent\nclass Mailer(Agent):\n    pass\n",
            "broken_app:Mailer",  # a class, not a factory: Mailer(rt) raises TypeError
            "the app factory 'broken_app:Mailer' failed: TypeError: ",
            None,  # (raised by Python itself: no line of the app to point at)
        ),
        (
            "def build(rt):\n    raise KeyError('mailer')\n",
            "broken_app:build",
            "the app factory 'broken_app:build' failed: KeyError: 'mailer' (",
            "broken_app.py:2)",
        ),
        (
            "1 / 0\n",
            "broken_app:build",
            "app module 'broken_app' failed on import: ZeroDivisionError: division by zero (",
            "broken_app.py:1)",
        ),
        (
            "async def build(rt):\n    pass\n",  # called, never awaited: registered nothing
            "broken_app:build",
            "setup (herder run: the app factory) returned a coroutine",
            None,  # (nor Python's "never awaited" warning, pointing at herder's line)
        ),
    ],
    ids=["a-class", "a-raising-factory", "a-failing-import", "an-async-factory"],
)
def test_an_app_that_fails_is_reported_on_one_line(
    tmp_path: Path, source: str, app: str, said: str, where: str | None
) -> None:
    done = _run(tmp_path, source, app)
    assert done.returncode == 1, done.stderr[-600:]
    assert "Traceback" not in done.stderr, done.stderr[-600:]
    assert said in done.stderr
    assert where in done.stderr if where else ".py:" not in done.stderr


def test_an_app_run_from_a_working_directory_since_deleted_is_reported_on_one_line(
    tmp_path: Path,
) -> None:
    # A deploy replaced the release directory the shell was in: looking up the working
    # directory, to import the app from it, raised FileNotFoundError, a traceback.
    gone = tmp_path / "release-1"
    gone.mkdir()
    herder = (
        f"{sys.executable} -m herder.runtime run --store {tmp_path / 's'} --app release_app:build"
    )
    done = subprocess.run(
        ["sh", "-c", f"cd {gone} && rmdir {gone} && exec {herder}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1, done.stderr[-600:]
    assert "Traceback" not in done.stderr, done.stderr[-600:]
    assert "cannot import app module 'release_app'" in done.stderr
    assert "the working directory no longer exists" in done.stderr
