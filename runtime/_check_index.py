"""``herder check``'s checks of the ``recent`` index (``store/_recent.py``), which the
writer keeps in the transaction of every workflow write: recovery reads the unfinished
workflows off it, ``herder ls`` and retention read it too.

- Each ``recent_at`` value (8 bytes of time) names an entry of ``recent``, and each entry
  of ``recent`` is the one its workflow's ``recent_at`` names.
- Once the index is built (a store from before it is read by scanning instead), every
  readable workflow record has its entry, under the record's last update and holding its
  state: one left out, or listed as final while it is not, is never resumed.
"""

from __future__ import annotations

from collections.abc import Callable

from herder.store import (
    RECENT_AT_DB,
    RECENT_BUILT,
    RECENT_DB,
    Snapshot,
    StoreCorrupt,
    decode,
    index_entry,
)

UNSEEN = (
    "recovery reads the unfinished workflows off the recent index, so it never resumes "
    "this one, and herder ls and retention miss it; restore a backup"
)
WRONG = (
    "recovery resumes the workflows this index lists as unfinished, herder ls shows its "
    "state and retention goes by its time; restore a backup"
)


class IndexCheck:
    """The ``recent`` index of ``snap`` against itself and the workflow records."""

    def __init__(self, snap: Snapshot, problem: Callable[[str, bytes, str], None]) -> None:
        self._snap = snap
        self._problem = problem
        self._built = snap.raw("meta", RECENT_BUILT) is not None

    def workflow(self, key: bytes, raw: bytes) -> None:
        """The workflow record ``raw`` (readable) under ``key`` has its own entry."""
        if not self._built:
            return
        snap = self._snap
        at = snap.raw(RECENT_AT_DB, key)
        if at is None:
            self._problem("workflows", key, f"not in the recent index: {UNSEEN}")
            return
        when, state = index_entry(key, raw, at)
        listed = snap.raw(RECENT_DB, at + key)
        if listed is None or (at, listed) == (when, state):
            return  # (no entry: see entries)
        try:
            shown = decode(listed, db=RECENT_DB, key=at + key)
        except StoreCorrupt:
            return  # reported where every value is decoded
        self._problem(
            RECENT_DB,
            at + key,
            f"lists it as {shown!r} updated at {_ms(at)} ms, but its record is "
            f"{decode(state, db=RECENT_DB, key=at + key)!r} updated at {_ms(when)} ms: {WRONG}",
        )

    def entries(self) -> None:
        """One entry per workflow: the one its ``recent_at`` value names; none beside it."""
        snap = self._snap
        at = dict(snap.items(RECENT_AT_DB))
        for key, when in at.items():
            if len(when) != 8 or snap.raw(RECENT_DB, when + key) is None:
                self._problem(RECENT_AT_DB, key, "names no entry of the recent index")
        for key, _ in snap.items(RECENT_DB):
            if at.get(key[8:]) != key[:8]:
                self._problem(RECENT_DB, key, "stale entry: not the one its recent_at names")


def _ms(when: bytes) -> int:
    return int.from_bytes(when, "big")
