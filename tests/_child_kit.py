"""A Python subprocess whose output lines a test reads as they are printed.

Shared by the tests that SIGKILL a real process (and by ``benchmarks/handoff.py``): both
pipes are drained by threads, so a chatty child never blocks on a full pipe, and the
parent can wait for a line with a timeout.
"""

from __future__ import annotations

import os
import pathlib
import queue
import subprocess
import sys
import threading
import time
from typing import IO


class Child:
    """``python ARGV...`` with its stdout lines queued (and kept in ``seen``) and its
    stderr lines kept in ``errors``. ``None`` in ``lines`` means stdout closed."""

    def __init__(
        self,
        argv: list[str],
        *,
        cwd: pathlib.Path | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, *argv],
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=None if env is None else {**os.environ, **env},
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        self.errors: list[str] = []
        assert self.proc.stdout is not None
        assert self.proc.stderr is not None
        threading.Thread(target=self._pump, args=(self.proc.stdout,), daemon=True).start()
        self._err = threading.Thread(target=self._pump_err, args=(self.proc.stderr,))
        self._err.daemon = True
        self._err.start()

    def _pump(self, stream: IO[str]) -> None:
        for line in stream:
            self.seen.append(line.strip())
            self.lines.put(line.strip())
        self.lines.put(None)

    def _pump_err(self, stream: IO[str]) -> None:
        for line in stream:
            self.errors.append(line.rstrip())

    def next_line(self, deadline: float) -> str | None:
        """The next stdout line (``None``: stdout closed); ``queue.Empty`` once the
        ``time.monotonic()`` deadline has passed."""
        return self.lines.get(timeout=max(0.0, deadline - time.monotonic()))

    def wait_for(self, prefix: str, timeout: float) -> str:
        """The next line starting with ``prefix``; AssertionError, with the child's
        stderr, if it ends or stays silent that long first."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.next_line(deadline)
            except queue.Empty:
                line = None
            if line is None:
                raise AssertionError(
                    f"no line {prefix!r} from pid {self.proc.pid}; stderr:\n"
                    + "\n".join(self.errors[-30:])
                )
            if line.startswith(prefix):
                return line

    def kill(self, timeout: float) -> int:
        """SIGKILL it (if still running), reap it, and return its exit code."""
        if self.proc.poll() is None:
            self.proc.kill()
        return self.proc.wait(timeout=timeout)

    def stderr(self, timeout: float = 10.0) -> str:
        """Everything it wrote to stderr (once it has exited and the pipe is drained)."""
        self._err.join(timeout)
        return "\n".join(self.errors)
