"""The watch over fenced attempts still running (actors/_loose.py): at its deadline, an
instance still running such an attempt is replaced; one that is not, is left alone."""

from __future__ import annotations

from typing import Any

import pytest

from herder.actors import _loose
from herder.actors._loose import Loose


class Host:
    def __init__(self, busy: dict[str, list[int]]) -> None:
        self.busy = busy
        self.replaced: list[tuple[str, int]] = []

    def busy_tokens(self, agent: str) -> list[int]:
        return self.busy.get(agent, [])

    def replace_token(self, agent: str, token: int) -> None:
        self.replaced.append((agent, token))


@pytest.mark.timeout(10)
def test_only_an_instance_still_running_the_attempt_past_its_deadline_is_replaced() -> None:
    loose, host = Loose(), Host({"a": [1, 2], "b": []})
    loose.watch("a", 1, 10.0)  # hangs past its deadline
    loose.watch("a", 2, 30.0)  # not yet due
    loose.watch("b", 3, 10.0)  # its instance crashed meanwhile: nothing runs it
    assert loose.reap(host, 9.0) == set()
    assert loose.reap(host, 10.0) == {"a"}
    assert host.replaced == [("a", 1)]
    assert set(loose.watched) == {2}  # those past their deadline are watched no more
    loose.watched.pop(2)  # its answer came (Dispatcher.answered)
    assert loose.reap(host, 40.0) == set()


@pytest.mark.timeout(10)
def test_the_watch_is_bounded(monkeypatch: Any) -> None:
    monkeypatch.setattr(_loose, "CAP", 3)
    loose = Loose()
    for token in range(5):
        loose.watch("a", token, 1.0)
    assert list(loose.watched) == [2, 3, 4]  # the longest watched went first
