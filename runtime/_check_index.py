"""``herder check``'s checks of the ``recent`` index (``store/_recent.py``), which the
writer keeps in the transaction of every workflow write: recovery reads the unfinished
workflows off it, ``herder ls`` and retention read it too.

- Each ``recent_at`` value (8 bytes of time) names an entry of ``recent``, and each entry
  of ``recent`` is the one its workflow's ``recent_at`` names.
- Once the index is built (a store from before it is read by scanning instead), every
  readable workflow record has its entry, under the record's last update and holding its
  state: one left out, or listed as final while it is not, is never resumed.
- The counts by state kept beside it (``rt.stats()`` reads them) are those of its entries.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from herder.store import (
    RECENT_AT_DB,
    RECENT_BUILT,
    RECENT_COUNTS,
    RECENT_DB,
    Snapshot,
    StoreCorrupt,
    decode,
    index_entry,
    read_recent_counts,
)

UNSEEN = (
    "recovery reads the unfinished workflows off the recent index, so it never resumes "
    "this one, and herder ls and retention miss it; restore a backup"
)
WRONG = (
    "recovery resumes the workflows this index lists as unfinished, herder ls shows its "
    "state and retention goes by its time; restore a backup"
)

COUNTS = (
    "rt.stats() reports them (an older herder that held the store since left them "
    "behind: the next runtime to take it counts them again)"
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
                self._problem(RECENT_AT_DB, key, f"names no entry of the recent index: {UNSEEN}")
        held: Counter[bytes] = Counter()
        for key, value in snap.items(RECENT_DB):
            held[value] += 1
            if at.get(key[8:]) != key[:8]:
                self._problem(
                    RECENT_DB, key, f"stale entry: not the one its recent_at names: {WRONG}"
                )
        self._counts(held)

    def _counts(self, held: Counter[bytes]) -> None:
        """The kept counts (none on a store no runtime held since they exist) are ``held``."""
        raw = self._snap.raw("meta", RECENT_COUNTS)
        if raw is None:
            return
        found = read_recent_counts(raw)
        if found is None:
            self._problem("meta", RECENT_COUNTS, f"not counts by state: {COUNTS}")
            return
        kept = found[1]
        for value in sorted(set(kept) | set(held)):
            if kept[value] != held[value]:
                self._problem(
                    "meta",
                    RECENT_COUNTS,
                    f"counts {kept[value]} workflows {_state(value)}, the recent index "
                    f"lists {held[value]}: {COUNTS}",
                )


def _state(value: bytes) -> str:
    try:
        return repr(decode(value, db=RECENT_DB, key=b""))
    except StoreCorrupt:
        return f"in the unreadable state {value!r}"


def _ms(when: bytes) -> int:
    return int.from_bytes(when, "big")
