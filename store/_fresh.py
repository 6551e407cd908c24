"""Which workflow ids no workflow has, known without reading the store: the key a start
checks before it takes a slot (``Runtime._repeated``) is looked up here first.

Every ``py-lmdb`` read gives the GIL up, and with the 32 threads calling ``start()`` of
the benchmark each such read was a GIL hand-off with futex wake-ups on both sides: ~8 us
of the callers' CPU per step (of ~45) at 256 in flight. Ids come mostly in order (UUID
version 7 when herder makes them, a counter or a time prefix when a user does), so the
writer's own knowledge answers most checks: it reads the highest workflow key once, in
its first write transaction that writes workflows (the lease is ours then: no other
process writes the store until it is lost, and then this writer writes nothing again),
and notes every workflow key above it that a transaction writes, before the commit. A
key above that floor that was not noted is on no record; any other key is read as
before. The noted keys are bounded: past :data:`NOTED` the floor moves up to the highest
of them.

It only spares the caller a read. The check that decides, an ``Expect`` inside the
write transaction, still reads the store, so a wrong answer here (a test's raw write
into a live store) costs what a start racing another start of its id costs: its
creation fails.
"""

from __future__ import annotations

from typing import Any, cast

import lmdb

NOTED = 16_384
"""Most keys above the floor kept before the floor moves up to the highest of them."""


class FreshKeys:
    """The floor and the keys written above it (see the module docstring). Written by
    the writer thread only (:meth:`note`, in its write transaction); read by any."""

    __slots__ = ("_handle", "_known")

    def __init__(self, handle: Any) -> None:
        self._handle = handle
        # (floor, keys noted above it), replaced as one: a reader never pairs a new
        # floor with the keys noted above the old one. None: nothing is known yet.
        self._known: tuple[bytes, set[bytes]] | None = None

    def surely_new(self, key: bytes) -> bool:
        """True if no workflow record has ``key`` (as of the last transaction the writer
        wrote); False if that takes a read."""
        known = self._known
        return known is not None and key > known[0] and key not in known[1]

    def note(self, txn: lmdb.Transaction, written: list[tuple[bytes, bytes | None]]) -> None:
        """The writer's hook for the ``workflows`` keys a write transaction writes (each
        with its value, None: deleted), called in that transaction before its commit."""
        known = self._known
        if known is None:
            with txn.cursor(db=self._handle) as cursor:
                # (this transaction's own keys are in already: they count as written)
                floor = cast("bytes", cursor.key()) if cursor.last() else b""
            known = self._known = (floor, set())
        floor, above = known
        for key, _ in written:
            if key > floor:
                above.add(key)
        if len(above) > NOTED:
            self._known = (max(above), set())
