"""The console's live counters: the numbers of ``herder stats``, recounted in the background.

Counting reads every workflow (``store_stats``), which takes a while on a big store. So a
request never counts: it answers at once with the latest count (before the first one, it
waits :data:`FIRST_WAIT` for it, or :data:`FIRST_GLANCE` where the workflows by state are
kept, below, then answers ``{"counting": true}``), and a new count
starts in a background thread when the last one is older than :data:`EVERY` seconds and,
at the earliest, ten times its own duration after it ended: the console spends at most
about a tenth of a core on counting, however large the store. Nor does an operator's
action or the console's stop wait for a count: they close the store under it
(``_gate``), and it is given up and started again.

The workflows by state are not taken from the count where the store's writer keeps them
(``Store.kept_workflow_counts``, as ``rt.stats()`` reads them): they are read at each
request (one value), current on a store whose count is minutes old, and there before the
first count ends.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any

from herder.runtime._inspect import store_stats
from herder.store import HerderError, StoreClosed, WorkflowState, get_logger, is_held

if TYPE_CHECKING:
    from herder.runtime.ui._gate import StoreGate

_log = get_logger("herder.ui")

EVERY = 2.0
"""Seconds between two counts, at least."""
FIRST_WAIT = 2.0
"""Seconds a request waits for the first count (a small store's is done by then) before
it answers that it is still counting: the page asks every 2 s whether or not the last
answer came, and a browser has six connections to the console; requests waiting the
minute a million workflows take held them all, and its pages stopped loading."""
FIRST_GLANCE = 0.25
"""Seconds it waits for the first count where the store's writer keeps the workflows by
state: those are shown meanwhile (a page opened on a big store showed nothing for the
whole :data:`FIRST_WAIT`), and a small store's count is done by then."""


class Counters:
    """The latest count of one store, and the thread that refreshes it."""

    def __init__(self, gate: StoreGate) -> None:
        self._gate = gate
        self._lock = threading.Lock()
        self._latest: dict[str, Any] | None = None
        self._error: HerderError | None = None
        self._next = 0.0  # monotonic time from which a new count may start
        self._counting = False
        self._counted = threading.Event()  # set after each count (or failed count)

    def get(self) -> dict[str, Any]:
        """The latest count (starting a new one if due) with whether a runtime holds the
        store now and, where the writer keeps them, the workflows by state as they are
        now; ``"counting": True`` while the first count runs (with only those, if kept);
        raises what the first count raised."""
        with self._lock:
            if not self._counting and time.monotonic() >= self._next:
                self._counting = True
                self._counted.clear()
                threading.Thread(target=self._count, name="herder-ui-count", daemon=True).start()
            latest = self._latest
        if latest is None:  # (the kept workflows by state are read again after the wait)
            self._counted.wait(FIRST_WAIT if self._kept() is None else FIRST_GLANCE)
            with self._lock:
                latest, error = self._latest, self._error
            if error is not None:
                raise error
        kept = self._kept()
        if latest is None and kept is None:
            return {"counting": True}
        # (probed on each poll, a few ms: after a big store's count comes none for minutes)
        now = {"running": is_held(self._gate.path), **(kept or {})}
        return {**(latest or {"counting": True}), **now}

    def _kept(self) -> dict[str, Any] | None:
        """The workflows by state as the store's writer keeps them (one read, at each
        poll: a big store's count is minutes old), None where it does not keep them (an
        older herder held the store since, or none has yet: the count has them)."""
        with self._gate.read() as store:
            kept = store.kept_workflow_counts()
        if kept is None:
            return None
        return {
            "workflows": {s: kept.get(s, 0) for s in map(str, WorkflowState)},
            "workflows_at": time.time(),  # (not "at": the count's, of its retries and timers)
        }

    def _count(self) -> None:
        started = time.monotonic()
        stats: dict[str, Any] | None = None
        error: HerderError | None = None
        try:  # (in the background: an action or the shutdown may close the store under it)
            with self._gate.read(background=True) as store:
                stats = store_stats(store, corrupt=[])  # (counted; not on stderr each time)
            stats["at"] = time.time()
        except HerderError as exc:  # a missing store: the page says so; count again soon
            error = exc
        except Exception as exc:  # a bug: said, and counted again (the thread died, before)
            _log.exception("herder ui: counting the store failed")
            error = HerderError(f"counting the store failed ({type(exc).__name__}: {exc})")
        ended = time.monotonic()
        with self._lock:
            if stats is not None:
                self._latest, self._error = stats, None
            elif not isinstance(error, StoreClosed):  # (closed under it: keep the last count)
                self._latest, self._error = None, error
            took = ended - started
            pause = 0.0 if isinstance(error, StoreClosed) else max(EVERY - took, 10 * took)
            self._next = ended + pause
            self._counting = False
        self._counted.set()
