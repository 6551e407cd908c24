"""The store the console reads, shared by its request threads.

The store is opened read-only once and shared by the request threads. An operator
command must be appended through a writable LMDB environment, and a process may hold
only one environment per store, so :class:`StoreGate` closes the read-only store for the
instant of the append and reopens it afterwards.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from herder.store import Store


class StoreGate:
    """The shared read-only store: many readers at once, or one writer alone."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._store: Store | None = None
        self._readers = 0
        self._writing = False
        self._cond = threading.Condition()

    @contextmanager
    def read(self) -> Iterator[Store]:
        """The store, open read-only (opened on first use; HerderError if it cannot be)."""
        with self._cond:
            self._cond.wait_for(lambda: not self._writing)
            if self._store is None:
                self._store = Store(self.path, readonly=True)
            self._readers += 1
            store = self._store
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
            self._writing = True
            if self._store is not None:
                self._store.close()
                self._store = None
        try:
            yield
        finally:
            with self._cond:
                self._writing = False
                self._cond.notify_all()

    def close(self) -> None:
        """Close the store (the next read opens it again)."""
        with self.exclusive():
            pass
