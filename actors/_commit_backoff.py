"""Backing off while the store refuses commits (disk full, I/O errors).

When a batch fails with :class:`~herder.store.StoreIOError`, the Scheduler forgets what
memory believed about the affected workflows and reads them back from the store, which
stays the truth. Reading them back at once is right for a one-off error, but while the
disk stays full it becomes a busy loop: re-read, re-dispatch, fail again, hundreds of
times a second. :class:`CommitBackoff` spaces those re-reads out, so the runtime waits
quietly for space and resumes on its own, within ``ceiling`` seconds, once it is back.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Reload:
    """Scheduler -> itself (through the clock): read these workflows back now."""

    workflow_ids: tuple[str, ...]


class CommitBackoff:
    """The wait before re-reading workflows whose commit failed.

    The first failure after a successful commit waits nothing; each further failure in a
    row doubles the wait, from ``first`` up to ``ceiling`` seconds. Any successful commit
    starts over.
    """

    def __init__(self, first: float = 0.05, ceiling: float = 5.0) -> None:
        self.first = first
        self.ceiling = ceiling
        self.failures = 0  # failed batches since the last successful one

    def failed(self) -> float:
        """Count a failed batch; return how long to wait before re-reading its workflows."""
        self.failures += 1
        if self.failures == 1:
            return 0.0
        # (the exponent held where the wait is at its ceiling long since: 2.0 ** 1024
        # overflows, and a full disk under load fails that many batches in seconds)
        return min(self.ceiling, self.first * 2.0 ** min(self.failures - 2, 64))

    def succeeded(self) -> None:
        """A batch committed: the disk takes writes again."""
        self.failures = 0
