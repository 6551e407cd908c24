"""``rt.handoff()`` on a standby whose promotion is under way (it took the lease, its
actors are starting): the request it wrote was its own to hear, so as soon as it was
active it handed over to nobody and stopped."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from herder.runtime import Runtime, _lifecycle

WAIT = 30.0
pytestmark = pytest.mark.timeout(90)


def test_handoff_during_the_promotion_does_not_hand_the_new_leader_over(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    promoting, promote = threading.Event(), threading.Event()
    real_start_tree = _lifecycle.start_tree

    def held_start_tree(*args: Any, **kwargs: Any) -> Any:
        promoting.set()  # the lease is ours; the actors are not started yet
        promote.wait(WAIT)
        return real_start_tree(*args, **kwargs)

    monkeypatch.setattr(_lifecycle, "start_tree", held_start_tree)
    rt = Runtime(tmp_path / "s", standby=True, lease=1.0, standby_poll=0.02, sweep_interval=0.05)
    try:
        assert promoting.wait(WAIT)  # (nobody held the store: it took the lease at once)
        waiting = threading.Event()
        assert rt._watcher is not None
        real_ask = rt._watcher.ask_handoff

        def ask_handoff(deadline: float) -> int | None:
            try:
                return real_ask(deadline)
            finally:
                waiting.set()  # handoff() asked (or not) and now waits to be active

        monkeypatch.setattr(rt._watcher, "ask_handoff", ask_handoff)
        took: list[bool] = []
        asker = threading.Thread(target=lambda: took.append(rt.handoff(1.0, timeout=WAIT)))
        asker.start()
        assert waiting.wait(WAIT)
        promote.set()
        asker.join(WAIT)
        assert took == [True]
        assert rt._store.handoff_request() is None  # (its own request, heard at a sweep)
        swept = threading.Semaphore(0)
        rt._health_listeners.append(swept.release)  # (each sweep of the active runtime)
        for _ in range(3):
            assert swept.acquire(timeout=WAIT)
        assert rt.is_active
        assert not rt._draining
    finally:
        promote.set()
        rt.stop()
