"""`herder run` whose stdout or stderr reader has gone: it still serves, stops in order
(drain, lease released) and exits with an honest code."""

from __future__ import annotations

import io
import os
import pathlib
import signal
import sys
from typing import TextIO

import pytest
from _daemon_kit import ended, herder_run, until_serving

from herder.runtime import Runtime, _daemon
from herder.store import Store

pytestmark = pytest.mark.timeout(60)
TESTS = pathlib.Path(__file__).parent


def build(rt: Runtime) -> None:
    """The app of the tests below: registers nothing."""


def test_herder_run_whose_stdout_reader_left_still_serves_and_releases_its_lease(
    tmp_path: pathlib.Path,
) -> None:
    # `herder run ... | true`: the "active" line raised BrokenPipeError, which the CLI
    # took for `herder ls | head` and exited 0 at once: nothing drained, the lease held.
    store = tmp_path / "s"
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the first status line
    proc = herder_run(str(store), f"{__name__}:build", TESTS, stdout=write)
    os.close(write)
    assert proc.stderr is not None
    try:
        until_serving(proc)
        proc.send_signal(signal.SIGTERM)
        rest = proc.stderr.read()
        assert proc.wait(30) == 0, rest[-600:]
        assert "Traceback" not in rest, rest[-600:]
    finally:
        ended(proc)
    with Store(store, mode="client") as st:
        lease = st.read_lease()
    assert lease is not None
    assert lease.released, lease.describe()


class _Gone(io.StringIO):
    """A stream whose reader left."""

    def write(self, text: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")


def _run_app(tmp_path: pathlib.Path, out: TextIO | None) -> int:
    """``herder run`` of this module's app (Runtime.run_forever patched by the test)."""
    return _daemon.run_app(
        str(tmp_path / "s"),
        f"{__name__}:build",
        standby=False,
        lease=5.0,
        drain_timeout=1.0,
        out=out,
    )


def test_herder_run_that_failed_exits_1_though_its_stderr_is_gone(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Saying why it stopped raised BrokenPipeError, which the CLI turned into exit 0:
    # systemd's Restart=on-failure then left a runtime that lost its lease down.
    served: list[bool] = []

    def serve(self: Runtime, *, drain_timeout: float = 30.0) -> None:
        served.append(True)
        self._fatal = RuntimeError("injected: the lease was lost")
        self.stop()

    monkeypatch.setattr(Runtime, "run_forever", serve)
    monkeypatch.setattr(sys, "stderr", _Gone())
    code = _run_app(tmp_path, out=_Gone())
    assert (served, code) == ([True], 1)


def test_herder_run_started_with_stdout_closed_serves_and_stops(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `herder run ... >&-`: Python has no sys.stdout (None), and the "active" line raised
    # AttributeError, a traceback, the lease held.
    served: list[bool] = []

    def serve(self: Runtime, *, drain_timeout: float = 30.0) -> None:
        served.append(True)
        self.stop()

    monkeypatch.setattr(Runtime, "run_forever", serve)
    code = _run_app(tmp_path, out=None)
    assert (served, code) == ([True], 0)
