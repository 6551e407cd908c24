"""Saying a recurring trouble once: :class:`SaidOnce`.

A loop that meets the same trouble at every pass (the schedule firer, a standby's lease
poll: up to 20 times a second) logs it once per distinct cause, again when the cause
changes, and again after it cleared and came back.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable


class SaidOnce:
    """The last cause said per topic (``key``), so that each is logged once until it
    changes or clears. Not thread-safe: each user calls it from one thread, or under its
    own lock."""

    def __init__(self, log: logging.Logger, level: int = logging.WARNING) -> None:
        self._log = log
        self._level = level
        self._said: dict[Hashable, Hashable] = {}

    def say(self, key: Hashable, text: str, *, cause: Hashable = None) -> None:
        """Log ``text`` unless its ``cause`` (default: ``text`` itself) is what was last
        said for ``key``."""
        cause = text if cause is None else cause
        if key in self._said and self._said[key] == cause:
            return
        self._said[key] = cause
        self._log.log(self._level, "%s", text)

    def clear(self, key: Hashable) -> None:
        """``key``'s trouble is over: a later one is said again, even the same."""
        self._said.pop(key, None)
