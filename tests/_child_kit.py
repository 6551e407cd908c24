"""A Python subprocess whose output lines a test reads as they are printed.

Shared by the tests that SIGKILL a real process (and by ``benchmarks/handoff.py``): both
pipes are drained by threads, so a chatty child never blocks on a full pipe, and the
parent can wait for a line with a timeout. A line that never comes fails with what
happened to the child: which one (``label``, the environment it was given), whether it had
exited and with what code, or that it was still running (then its threads' stacks, by
``faulthandler`` on SIGABRT, before it is killed), the seconds waited, its last lines and
its stderr. The child's end: :func:`say` prints a line whole, whatever its threads do.
"""

from __future__ import annotations

import os
import pathlib
import queue
import signal
import subprocess
import sys
import threading
import time
from typing import IO

_saying = threading.Lock()


def say(line: str) -> None:
    """In a child process: print ``line`` and flush, whole. ``print()`` writes the text and
    the newline apart, so lines printed by two threads at once can merge ("ranready") and
    the parent, which reads lines by prefix, never sees the one it waits for."""
    with _saying:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


GRACE = 10.0
"""Seconds a child whose stdout closed may take to exit, and one sent SIGABRT to die."""


class Child:
    """``python ARGV...`` with its stdout lines queued (and kept in ``seen``) and its
    stderr lines kept in ``errors``. ``None`` in ``lines`` means stdout closed.
    ``label`` (say ``"round 3"``) and ``env`` are named when an expected line never comes.
    """

    def __init__(
        self,
        argv: list[str],
        *,
        cwd: pathlib.Path | None = None,
        env: dict[str, str] | None = None,
        label: str = "",
    ) -> None:
        self.label = label
        self.env = env or {}
        self.proc = subprocess.Popen(
            [sys.executable, *argv],
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            # faulthandler: a SIGABRT (see _gone) prints every thread's stack.
            env={**os.environ, **self.env, "PYTHONFAULTHANDLER": "1"},
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
        """The next line starting with ``prefix``. If the child ends or stays silent that
        long first: AssertionError saying what happened (a silent child is ended, see
        :meth:`_gone`)."""
        start, line = time.monotonic(), ""
        while line is not None:  # None: its stdout closed
            try:
                line = self.next_line(start + timeout)
            except queue.Empty:
                break  # silent that long
            if line is not None and line.startswith(prefix):
                return line
        waited = time.monotonic() - start
        what, grace = ("its stdout closed", GRACE) if line is None else ("silent", 0.0)
        raise AssertionError(f"no line {prefix!r} in {waited:.1f} s, {what}: {self._gone(grace)}")

    def _gone(self, grace: float) -> str:
        """Who the child was, how it ended, its last stdout lines and all its stderr; one
        still running ``grace`` seconds from now is ended (SIGABRT: faulthandler prints its
        stacks; else SIGKILL)."""
        try:
            code = self.proc.wait(timeout=grace)
            how = f"it had exited with code {code}"
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGABRT)
            try:
                code = self.proc.wait(timeout=GRACE)
            except subprocess.TimeoutExpired:
                code = self.kill(timeout=GRACE)
            how = f"it was still running; sent SIGABRT (stacks below), it ended with code {code}"
        given = " ".join(f"{k}={v}" for k, v in self.env.items()) or "no extra environment"
        return (
            f"{self.label or 'child'} (pid {self.proc.pid}, {given}): {how}; its last stdout "
            f"lines: {self.seen[-5:]}; stderr:\n{self.stderr(GRACE)}"
        )

    def kill(self, timeout: float) -> int:
        """SIGKILL it (if still running), reap it, and return its exit code."""
        if self.proc.poll() is None:
            self.proc.kill()
        return self.proc.wait(timeout=timeout)

    def stderr(self, timeout: float = 10.0) -> str:
        """Everything it wrote to stderr (once it has exited and the pipe is drained)."""
        self._err.join(timeout)
        return "\n".join(self.errors)
