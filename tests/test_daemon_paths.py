"""`herder run --store=~/...` (and `$HERDER_STORE=~/...`) is a store in the home directory."""

from __future__ import annotations

import os
import pathlib
import subprocess

import pytest
from _daemon_kit import HERDER, active_then_stopped, herder_run

pytestmark = pytest.mark.timeout(60)


def test_a_store_under_the_home_directory_is_found_there_however_it_is_written(
    tmp_path: pathlib.Path,
) -> None:
    # No shell expands the ~ of --store=~/s, nor systemd that of ExecStart= or
    # Environment=: herder run made a directory named "~" in the working directory and
    # served a store there, where `herder ls --store ~/s` (expanded) found none.
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    (work / "empty_app.py").write_text("def build(rt):\n    pass\n")
    env = {**os.environ, "HOME": str(home), "HERDER_STORE": "~/s"}
    code, said = active_then_stopped(herder_run("~/s", "empty_app:build", work, env))
    assert code == 0, said[-600:]
    assert "~" not in os.listdir(work)
    listed = subprocess.run(  # (--store from $HERDER_STORE)
        [*HERDER, "stats"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert listed.returncode == 0, listed.stderr
    assert (home / "s" / "data.mdb").exists()
