"""A commit whose news waits: the store writer's commits land on disk, but what each one
tells the Scheduler (its sink: send the attempt it dispatched, wake its waiters) waits
while the test acts in the window between the two (an agent removed or moved while an
attempt's DISPATCHED is durable and the Scheduler does not know yet)."""

from __future__ import annotations

import threading
from typing import Any, NamedTuple

import pytest

WAIT = 30.0  # (a bound on a stuck test only: the test releases the news)


class HeldNews(NamedTuple):
    armed: threading.Event  # set by the test: from then on every commit's news waits
    held: threading.Event  # set once a commit's news waits
    release: threading.Event  # set by the test: the news goes on


def hold_commit_news(monkeypatch: pytest.MonkeyPatch) -> HeldNews:
    """Patch the writer so that, once ``armed``, each commit's news waits for ``release``."""
    from herder.store import _writer

    news = HeldNews(threading.Event(), threading.Event(), threading.Event())
    submit = _writer.Writer.submit_batch

    def slow_batch(self: Any, *args: Any) -> Any:  # (ops, effects, count, sink, watch)
        if news.armed.is_set():  # every commit's news waits, from here until the release
            inner = args[3]

            def sink(*told: Any) -> None:  # the commit is durable; its news waits
                news.held.set()
                news.release.wait(WAIT)
                inner(*told)

            args = (*args[:3], sink, *args[4:])
        return submit(self, *args)

    monkeypatch.setattr(_writer.Writer, "submit_batch", slow_batch)
    return news
