"""Opening a store whose lease holder is stopped (SIGSTOP, a paused VM, a debugger).

A process stopped inside an LMDB write transaction keeps LMDB's writer lock until it
resumes or dies. Opening a store for writing takes that lock (its named databases are
opened, and on a new store created, in a write transaction: py-lmdb discards a handle
opened in a read transaction when that transaction ends), so a standby started while the
holder was stopped waited in its open for ever, before its fencer ran; and a client (the
CLI sending an operator command, ``herder handoff``) hung likewise.

- :func:`begin_fenced` is the write transaction of an open for writing: while it waits
  for the lock, a thread reads the lease (reads never wait for the writer lock) and, once
  its record went unrenewed for a whole lease duration and its holder is a stopped
  process on this host, SIGKILLs the holder, as a waiting standby's fencer does
  (``herder.runtime._ha``). The kernel then frees the lock and the open goes on.
- :func:`refuse_stopped` is the client's check before it takes the lock: it refuses at
  once, naming the stopped process, instead of waiting for it.
"""

from __future__ import annotations

import os
import pathlib
import signal
import threading
import time

import lmdb

from herder.store._errors import StoreCorrupt, StoreLocked
from herder.store._lease import Lease, read_lease
from herder.store._locktable import holder_stopped
from herder.store._logs import get_logger

_log = get_logger("herder.store")

POLL = 0.05
"""Seconds between two looks at the lease while an open waits for the writer lock."""


def peek_lease(env: lmdb.Environment) -> Lease | None:
    """The lease record of ``env`` read in a read transaction (it never waits for the
    writer lock), None if there is none yet. Its ``meta`` handle ends with the read."""
    with env.begin() as txn:
        try:
            meta = env.open_db(b"meta", txn=txn, create=False)
        except lmdb.NotFoundError:
            return None  # (a new store)
        return read_lease(txn, meta)


def refuse_stopped(env: lmdb.Environment, path: pathlib.Path) -> None:
    """:class:`StoreLocked` if the lease holder of ``env`` is a stopped process."""
    try:
        lease = peek_lease(env)
    except StoreCorrupt:
        return  # (a damaged record names no holder to judge; it is no reason to refuse)
    if lease is None or lease.released or not holder_stopped(lease):
        return
    raise StoreLocked(
        f"store {path}: the runtime holding it (pid {lease.pid}) is stopped (SIGSTOP, a "
        "debugger, a paused VM or container), so it applies nothing, and if it stopped "
        "inside a commit it holds the store's write lock and any write would wait for it. "
        f"Nothing was written. Resume it (`kill -CONT {lease.pid}`) and retry, or let a "
        "standby take over (`herder run --standby`: once the lease lapses it ends the "
        "stopped runtime and takes the store over)"
    )


def begin_fenced(env: lmdb.Environment, path: pathlib.Path, duration: float) -> lmdb.Transaction:
    """``env.begin(write=True)``; while it waits, a holder stopped past its lease (of at
    least ``duration`` seconds) is SIGKILLed (see the module docstring)."""
    done = threading.Event()
    watcher = threading.Thread(
        target=_watch, args=(env, path, duration, done), name="herder-open-fence", daemon=True
    )
    watcher.start()
    try:
        return env.begin(write=True)  # (py-lmdb lets go of the GIL while it waits)
    finally:
        done.set()
        watcher.join()  # (no read of the watcher's runs beside the open's write)


def _watch(
    env: lmdb.Environment, path: pathlib.Path, duration: float, done: threading.Event
) -> None:
    unrenewed = Unrenewed(duration)
    while not done.wait(POLL):
        try:
            lease = peek_lease(env)
        except (lmdb.Error, StoreCorrupt) as exc:
            _log.debug("open of %s: cannot read the lease to judge its holder: %s", path, exc)
            continue
        if lease is None or not unrenewed.lapsed(lease) or lease.released:
            continue
        if holder_stopped(lease):
            fence(lease, path, unrenewed.seconds())
            unrenewed.forget()  # (a pid not dead yet is not killed again at once)


class Unrenewed:
    """How long the lease record last seen has gone unrenewed, as this process's
    monotonic clock measures it from when it first saw it: the rule by which a waiting
    standby (``herder.runtime._ha``) and an open for writing judge a holder gone."""

    def __init__(self, duration: float) -> None:
        self.duration = duration
        self._record: tuple[str, int, float] | None = None
        self._since = time.monotonic()

    def lapsed(self, lease: Lease, *, observe: bool = True) -> bool:
        """True once ``lease`` has gone unrenewed for a whole lease duration (only an
        ``observe``r notes a new record: a fencer judges by what the poll saw). The longer
        of ``duration`` and its holder's: a holder with a longer lease renews less often,
        and a standby started with a shorter ``--lease`` took it from a healthy holder
        between two renewals."""
        now = time.monotonic()
        record = (lease.owner, lease.incarnation, lease.expires)
        if record != self._record:
            if observe:
                self._record, self._since = record, now
            return False
        return now - self._since >= max(self.duration, lease.duration or 0.0)

    def seconds(self) -> float:
        """Seconds since the record last seen was first seen."""
        return time.monotonic() - self._since

    def forget(self) -> None:
        """Judge the next record seen as new."""
        self._record, self._since = None, time.monotonic()


def fence(lease: Lease, path: pathlib.Path, unrenewed: float) -> None:
    """SIGKILL ``lease``'s holder, stopped while it holds LMDB's writer lock of ``path``
    with its lease unrenewed for ``unrenewed`` seconds; a failure is logged."""
    _log.warning(
        "fencing pid %d: it was stopped while holding the write lock of %s, and its lease "
        "was not renewed for %.2fs; killing it so this process can take over",
        lease.pid,
        path,
        unrenewed,
    )
    try:
        os.kill(lease.pid, signal.SIGKILL)
    except OSError as exc:
        _log.error("could not fence pid %d: %s", lease.pid, exc)
