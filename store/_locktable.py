"""The locks of a store directory: herder's flock, LMDB's lock table, and whether the
process holding them lives.

The runtime that writes a store holds the flock of ``herder.lock``; the kernel drops it
when that process dies (not when it is stopped). :func:`try_flock` takes it without
blocking, :func:`is_held` probes it (taking it for an instant, so whoever meets it held
tries again for a few milliseconds before taking it for held), and
:func:`holder_gone` / :func:`holder_stopped` judge the holder a lease record names (see
``_lease.py``).

Which LMDB lock table the store's writer uses, so a second writer can tell it shares it:

LMDB keeps its writer mutex and reader table in ``lock.mdb``. Processes that open the
environment while ``lock.mdb`` is the same file share them; a process that opens it after
``lock.mdb`` was deleted (a "stale lock" clean-up) or replaced under a running runtime
creates a fresh one, and then LMDB keeps nothing apart: both processes write at once
(each commit overwrites the other's, free pages are handed out twice, pages a reader of
the other side still uses are reused). Measured: a second writer committed while the
first held its write transaction, and its write was gone after the first committed.

The runtime holding the store's flock (``herder.lock``) writes the identity (device and
inode) of the ``lock.mdb`` it opened into ``herder.lock``; a process that writes without
that flock (the CLI appending an operator command) compares it with the ``lock.mdb`` it
opened itself and refuses to write on a mismatch.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import pathlib
import shutil
import socket
import time
from typing import TYPE_CHECKING

from herder.store._errors import StoreError, StoreIOError, StoreLocked

if TYPE_CHECKING:
    from herder.store._lease import Lease

HOST = socket.gethostname()

LOCK_FILE = "herder.lock"
"""herder's own lock: the runtime that writes the store holds its flock."""
LMDB_LOCK = "lock.mdb"
LOCK_TABLE_BYTES = 8192
"""The size LMDB gives ``lock.mdb`` for a store's 126 reader slots (``MAX_READERS``): a
192-byte header that holds one 64-byte slot, and 125 slots more."""
COMPACTING = "herder.compacting"
"""Written by ``herder compact`` (its pid) while it holds the flock, so that whoever meets
the flock held can say a compact holds it, not a runtime."""
COMPACT_COPY = "compact.tmp"
"""The directory ``herder compact`` writes its copy into, beside the store."""


def compacting(path: str | os.PathLike[str]) -> int | None:
    """The pid of the ``herder compact`` running on the store at ``path``, if one is: its
    mark names a live process and the store's flock is held (a compact holds it while it
    runs). A mark left by a compact that was killed names a dead process, or one that
    took its pid since (after a reboot, say): that one holds no flock, and a runtime that
    takes the flock deletes the mark (:func:`open_lock`)."""
    try:
        pid = int((pathlib.Path(path) / COMPACTING).read_text().strip())
        os.kill(pid, 0)
    except PermissionError:  # alive, another user's
        pass
    except (OSError, ValueError, OverflowError):
        return None
    return pid if pid > 0 and is_held(path) else None


def _identity(path: pathlib.Path) -> str:
    st = os.stat(path / LMDB_LOCK)
    return f"{st.st_dev}:{st.st_ino}"


def note_lock_table(lock_fd: int, path: str | os.PathLike[str]) -> None:
    """Record, in the flocked ``herder.lock`` (``lock_fd``), the ``lock.mdb`` this
    process's environment uses (call right after opening it)."""
    data = (_identity(pathlib.Path(path)) + "\n").encode()
    os.ftruncate(lock_fd, 0)
    os.pwrite(lock_fd, data, 0)


def check_lock_table(path: str | os.PathLike[str]) -> None:
    """Raise :class:`StoreError` if the runtime holding the store at ``path`` uses another
    ``lock.mdb`` than the one there now (the one a process opening it now shares).

    Call it only while a runtime holds the store: what a stopped one recorded says
    nothing. Nothing is checked when no identity was recorded (an older herder).
    """
    root = pathlib.Path(path)
    try:
        recorded = (root / LOCK_FILE).read_text().strip()
        current = _identity(root)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise StoreError(f"cannot read the locks of store {path}: {exc}") from exc
    if recorded and recorded != current:
        raise StoreError(
            f"store {path}: {LMDB_LOCK} is not the one the running runtime uses (it was "
            "deleted or replaced while that runtime ran), so LMDB cannot keep this "
            "process's writes apart from the runtime's and writing now could corrupt the "
            f"store. Nothing was written. Restart the runtime (it then uses the new "
            f"{LMDB_LOCK}), run `herder check --store {path}`, then retry (send the command, "
            "start the standby)"
        )


def reserve_lock_table(path: pathlib.Path) -> None:
    """Create the ``lock.mdb`` of the store at ``path``, its blocks allocated, if it has
    none. LMDB makes it a sparse file and writes it through a shared mapping: on a full
    disk the first write that needed a block killed the process with SIGBUS
    (``Store(new_path)``, a reader of a copy without its ``lock.mdb``). Allocated here,
    a full disk is a :class:`StoreIOError`; where the system or file system cannot
    allocate ahead (or the directory is not ours to write), LMDB goes on as before."""
    allocate = getattr(os, "posix_fallocate", None)  # (not on macOS)
    if allocate is None:
        return
    lock = path / LMDB_LOCK
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except OSError:  # (there is one; or LMDB's own open says what is wrong)
        return
    try:
        allocate(fd, 0, LOCK_TABLE_BYTES)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO):
            raise StoreIOError(
                f"cannot create the lock table of store {path} ({LMDB_LOCK}): "
                f"{exc.strerror}; check free disk space, then retry"
            ) from exc
    finally:
        os.close(fd)


_HELD: set[int] = set()
"""This process's descriptors of ``herder.lock`` and ``herder.standby``. A flock belongs
to the open file, which fork() shares with the child: an agent's worker process
(multiprocessing's fork, a ProcessPoolExecutor) that outlived its SIGKILLed runtime kept
the store locked, and every restart was refused (StoreLocked) while it lived. A forked
child closes its copies at once (the parent's keep the lock)."""


def _close_held_in_child() -> None:
    for fd in _HELD:
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD.clear()


os.register_at_fork(after_in_child=_close_held_in_child)


def flock_file(path: pathlib.Path, flags: int) -> int:
    """``os.open(path, flags)`` for a flock: a forked child does not keep it."""
    fd = os.open(path, flags | os.O_CLOEXEC, 0o600)
    _HELD.add(fd)
    return fd


def close_flock_file(fd: int) -> None:
    """Close ``fd`` of :func:`flock_file` (its flock goes with the last copy), unless this
    is a forked child, which closed it already (the number may name another file now)."""
    if fd in _HELD:
        _HELD.discard(fd)  # (first: a child forked after must not close another file's fd)
        os.close(fd)


def open_lock(path: pathlib.Path, *, wait: bool) -> tuple[int, bool]:
    """Open ``herder.lock`` of the store at ``path`` and take its flock if it is free;
    return the descriptor and whether we hold the flock. Without ``wait`` (a standby
    goes on without it) a held flock raises :class:`StoreLocked`."""
    try:
        fd = flock_file(path / LOCK_FILE, os.O_RDWR | os.O_CREAT)
    except OSError as exc:
        raise StoreError(f"cannot lock store {path}/{LOCK_FILE}: {exc}") from exc
    have = _flock_past_probes(fd)
    if have:  # so no compact runs (it holds the flock throughout): a killed one's mark
        with contextlib.suppress(OSError):  # and copy (as large as the store) go
            (path / COMPACTING).unlink()
        shutil.rmtree(path / COMPACT_COPY, ignore_errors=True)
    if not have and not wait:
        close_flock_file(fd)
        pid = compacting(path)
        if pid is not None:
            raise StoreLocked(
                f"store {path} is being compacted (`herder compact`, pid {pid}): open it "
                "once that ends"
            )
        raise StoreLocked(
            f"store {path} is held by another process (a running herder runtime); "
            f"only one process may write it. To look inside while it runs, open it "
            f"read-only: Store(path, readonly=True) or `herder ls --store {path}`; to "
            "take over when it ends, open it as a standby: Runtime(path, standby=True) or "
            "`herder run --standby`; to "
            f"take over now, run that standby and `herder handoff --store {path}`"
        )
    return fd, have


def try_flock(fd: int) -> bool:
    """Take the flock on ``fd`` if it is free (never blocks); True if we hold it now."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


PROBE_PAUSES = (0.0005, 0.001, 0.002, 0.004, 0.008)
"""Seconds between the tries to take a flock that is held (15.5 ms in all). A probe
(:func:`is_held`, which the console calls every 2 s) holds the flock for the instant
between taking and dropping it; a runtime opening the store at that instant, or another
probe, tries again over these pauses before it takes the flock for held."""


def _pause(seconds: float) -> None:
    time.sleep(seconds)  # (the only wait here; tests replace it to end the "probe")


def _flock_past_probes(fd: int) -> bool:
    """:func:`try_flock`, tried again after each of :data:`PROBE_PAUSES` while it fails:
    False only if the flock stayed held all along (a runtime holds it, not a probe)."""
    if try_flock(fd):
        return True
    for seconds in PROBE_PAUSES:
        _pause(seconds)
        if try_flock(fd):
            return True
    return False


def is_held(path: str | os.PathLike[str]) -> bool:
    """True if a process (this one included) holds the writer lock of the store at ``path``.

    A probe for tools that must not open the store for writing while a runtime runs on
    it; the answer can change right after it is given. It takes the flock and drops it
    at once (there is no asking without taking), so a flock held through all of
    :data:`PROBE_PAUSES` counts as held: another probe's instant does not.
    """
    try:
        fd = os.open(pathlib.Path(path) / LOCK_FILE, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise StoreError(f"cannot read the lock of store {path}: {exc}") from exc
    try:
        return not _flock_past_probes(fd)
    finally:
        os.close(fd)  # closing releases a lock this probe took


def holder_gone(lease: Lease, *, have_flock: bool) -> bool:
    """True if the holder is known dead: we got the flock it held, or its pid is gone."""
    if lease.flock and have_flock:
        return True
    if lease.host != HOST or lease.pid == os.getpid():
        return False
    try:
        os.kill(lease.pid, 0)
    except ProcessLookupError:
        return True
    except OSError as exc:  # EPERM: the pid exists (another user's process)
        return exc.errno != errno.EPERM
    return False


def holder_stopped(lease: Lease) -> bool:
    """True if the holder is a process on this host that is stopped (SIGSTOP, a debugger).

    A process stopped inside a write transaction keeps LMDB's writer mutex: nobody can
    write the store, not even to take the expired lease, until it resumes or dies.
    """
    if lease.host != HOST or lease.pid == os.getpid():
        return False
    try:
        with open(f"/proc/{lease.pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return False
    # "pid (comm) S ...": the state follows the last ')' (comm may contain one).
    state = stat[stat.rfind(b")") + 2 : stat.rfind(b")") + 3]
    return state in (b"T", b"t")
