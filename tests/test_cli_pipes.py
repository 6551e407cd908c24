"""The ``herder`` CLI and broken pipes: only a stdout whose reader left is the quiet exit 0
(``herder ls | head``); a broken pipe of the command's own is a failure."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.timeout(60)

_CHILD = textwrap.dedent(
    """
    import socket, sys
    from herder.runtime import _cli

    def own_socket(argv, out):  # the command's own connection: its peer went
        mine, peer = socket.socketpair()
        peer.close()
        mine.sendall(b"x" * 100_000)
        return 0

    def to_stdout(argv, out):  # stdout's reader left
        sys.stdin.read()  # (until the test closed stdout's reader and stdin)
        for _ in range(1000):
            out.write("row\\n" * 100)
            out.flush()
        return 0

    _cli._PASS_THROUGH["demo"] = {"socket": own_socket, "stdout": to_stdout}[sys.argv[1]]
    sys.exit(_cli.main(["demo"]))
    """
)


def test_a_broken_pipe_of_the_commands_own_is_a_failure_not_a_quiet_exit_0() -> None:
    # It was exit 0 and nothing said: `main` took any BrokenPipeError for stdout's reader
    # leaving, so a command whose connection broke reported success.
    child = subprocess.run(
        [sys.executable, "-c", _CHILD, "socket"],
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )
    assert child.returncode == 1, child.stderr
    assert "BrokenPipeError" in child.stderr


def test_stdout_whose_reader_left_is_still_the_quiet_exit_0() -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, "stdout"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert child.stdin is not None
    assert child.stdout is not None
    assert child.stderr is not None
    child.stdout.close()  # the reader leaves before the first row
    child.stdin.close()
    err = child.stderr.read()
    assert child.wait(timeout=50) == 0, err
    assert "Traceback" not in err
