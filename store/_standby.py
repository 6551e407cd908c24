"""Whether a standby runtime waits on a store: a shared ``flock`` on ``herder.standby``.

A standby runtime holds a shared lock on the file while it waits for the lease and lets
it go when it becomes active or stops; the kernel drops it when the process dies, so a
dead standby never counts. :func:`standby_waiting` asks by trying an exclusive lock
without blocking: it fails exactly while some standby holds its shared one.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pathlib
import threading

from herder.store._locktable import close_flock_file, flock_file

STANDBY_FILE = "herder.standby"


class StandbyMark:
    """Held by a waiting standby runtime: ``release()`` when it takes over or stops."""

    def __init__(self, store_dir: str | os.PathLike[str]) -> None:
        path = pathlib.Path(store_dir) / STANDBY_FILE
        self._guard = threading.Lock()  # the watcher's takeover and stop() may race
        self._fd: int | None = flock_file(path, os.O_RDWR | os.O_CREAT)
        fcntl.flock(self._fd, fcntl.LOCK_SH)

    def release(self) -> None:
        """Stop counting as a waiting standby (idempotent)."""
        with self._guard:  # (two threads could both read the fd, and one close a reused one)
            fd, self._fd = self._fd, None
        if fd is not None:
            close_flock_file(fd)


def standby_waiting(store_dir: str | os.PathLike[str]) -> bool:
    """True while at least one standby runtime (any process) waits on the store."""
    try:
        fd = os.open(pathlib.Path(store_dir) / STANDBY_FILE, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    else:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)
