"""Processes of a Ray cluster a killed daemon started, killed at the daemon's next start.

When herder starts a local cluster (``RayHost(address=None)``) and the daemon is then
SIGKILLed, Ray's workers, raylet and GCS exit by themselves, but a few of its helper
processes (the dashboard and runtime-env agents) may live on. So the daemon records the
cluster's processes (those it started from Ray's install, and theirs; no other process
of the program) beside its store (``ray-processes``: pid and start time, never a reused
pid) and the next daemon on that store kills those still running before it starts its
own cluster. Linux only (``/proc``); elsewhere it does nothing.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import signal

FILE = "ray-processes"


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (None: no such process)."""
    try:
        stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22; fields after ")" start at 3


def _started_by(root: int, marker: str) -> list[int]:
    """The processes ``root`` started whose command line holds ``marker``, and theirs."""
    children: dict[int, list[int]] = {}
    for entry in pathlib.Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    found = []
    todo = [pid for pid in children.get(root, []) if marker.encode() in _command(pid)]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def _command(pid: int) -> bytes:
    try:
        return pathlib.Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def remember(directory: pathlib.Path, marker: str) -> None:
    """Record this process and the cluster's processes in ``directory``: those it started
    whose command line holds ``marker`` (where Ray is installed), and theirs; not the
    other processes the program started, which are none of herder's to kill."""
    if not pathlib.Path("/proc/self/stat").exists():
        return
    lines = [
        f"{pid} {start}"
        for pid in [os.getpid(), *_started_by(os.getpid(), marker)]
        if (start := _start_time(pid)) is not None
    ]
    tmp = directory / f".{FILE}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write("\n".join(lines) + "\n")
    tmp.replace(directory / FILE)


def forget(directory: pathlib.Path) -> None:
    """The cluster stopped cleanly: nothing to kill next time."""
    with contextlib.suppress(OSError):
        (directory / FILE).unlink()


def kill_leftovers(directory: pathlib.Path) -> int:
    """Kill the recorded processes of a daemon that died; return how many were killed.

    Nothing is killed while the recording daemon itself still runs, nor a process whose
    pid now names another process (its start time differs)."""
    try:
        lines = (directory / FILE).read_text().split("\n")
    except OSError:
        return 0
    recorded = [line.split() for line in lines if len(line.split()) == 2]
    if not recorded or _start_time(int(recorded[0][0])) == recorded[0][1]:
        return 0  # nothing recorded, or its daemon is alive
    killed = 0
    for pid, start in recorded[1:]:
        if _start_time(int(pid)) == start:
            with contextlib.suppress(OSError):
                os.kill(int(pid), signal.SIGKILL)
                killed += 1
    forget(directory)
    return killed
