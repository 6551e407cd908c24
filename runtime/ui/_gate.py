"""The store the console reads, shared by its request threads.

The store is opened read-only once and shared by the request threads. An operator
command must be appended through a writable LMDB environment, and a process may hold
only one environment per store, so :class:`StoreGate` closes the read-only store for the
instant of the append and reopens it afterwards. Each read checks that the store's data
file is still the one it opened: a store removed or replaced under the console (a new
store, a backup restored) is read anew, not the one gone, mapped still.

The counters' count reads the whole store (minutes on a big one): it reads in the
background, which neither an append nor the console's shutdown waits for. They close the
store under it (the store waits for the page it is reading), and its next page raises
:class:`StoreClosed`: the count is given up and started again later.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from herder.store import Store, StoreClosed


class StoreGate:
    """The shared read-only store: many readers at once, or one writer alone."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._store: Store | None = None
        self._file: tuple[int, int] | None = None  # the data file the store was opened on
        self._readers = 0
        self._writing = False
        self._closed = False
        self._cond = threading.Condition()

    @contextmanager
    def read(self, *, background: bool = False) -> Iterator[Store]:
        """The store, open read-only (opened on first use; HerderError if it cannot be,
        StoreClosed once the console stopped). A ``background`` read is not waited for
        (see the module's docstring)."""
        with self._cond:
            while True:
                self._cond.wait_for(lambda: not self._writing)
                if self._closed:
                    raise StoreClosed(f"the console of store {self.path} has stopped")
                if self._store is None or _file_of(self.path) == self._file:
                    break
                if self._readers == 0:  # removed or replaced under it (a new store, a
                    self._drop()  # backup restored): read the one there now
                    break
                self._cond.wait()
            if self._store is None:
                self._store = Store(self.path, readonly=True)
                self._file = _file_of(self.path)
            self._readers += not background
            store = self._store
        if background:
            yield store
            return
        try:
            yield store
        finally:
            with self._cond:
                self._readers -= 1
                self._cond.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """No reader and the store closed: this process may open the store itself."""
        with self._cond:
            self._cond.wait_for(lambda: not self._writing and self._readers == 0)
            if self._closed:
                raise StoreClosed(f"the console of store {self.path} has stopped")
            self._writing = True
            self._drop()
        try:
            yield
        finally:
            with self._cond:
                self._writing = False
                self._cond.notify_all()

    def close(self) -> None:
        """Close the store for good, once the requests reading it are done (not a count)."""
        with self._cond:
            self._cond.wait_for(lambda: not self._writing and self._readers == 0)
            self._closed = True
            self._drop()
            self._cond.notify_all()

    def _drop(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None


def _file_of(path: str) -> tuple[int, int] | None:
    """The identity (device, inode) of the store's data file, None if there is none."""
    try:
        found = os.stat(os.path.join(path, "data.mdb"))
    except OSError:
        return None
    return found.st_dev, found.st_ino
