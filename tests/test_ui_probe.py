"""The console's lock probe (``is_held``, every 2 s) takes the store's flock for an
instant: a runtime opening the store, or another probe, at that instant must not take
it for a running runtime."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from herder.store import Store, StoreLocked, _locktable, is_held

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def store(tmp_path: Path) -> Path:
    path = tmp_path / "s"
    Store(path).close()
    return path


class Probe:
    """Another process's probe: holds the flock of ``herder.lock`` until it ends."""

    def __init__(self, store: Path) -> None:
        self.fd = os.open(store / _locktable.LOCK_FILE, os.O_RDONLY)
        fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self.pauses: list[float] = []

    def end(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


@pytest.fixture
def probe(store: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Probe]:
    """A probe holding the flock that ends during the first pause of whoever meets it."""
    held = Probe(store)

    def pause(seconds: float) -> None:
        held.pauses.append(seconds)
        held.end()

    monkeypatch.setattr(_locktable, "_pause", pause, raising=False)
    try:
        yield held
    finally:
        held.end()


def test_a_runtime_opening_the_store_during_a_probe_opens_it(store: Path, probe: Probe) -> None:
    with Store(store) as opened:  # StoreLocked before: 193 of 300 opens under probing
        assert opened.writer is not None
    assert len(probe.pauses) == 1


def test_a_probe_meeting_another_probe_does_not_see_a_runtime(store: Path, probe: Probe) -> None:
    assert is_held(store) is False
    assert len(probe.pauses) == 1


def test_a_store_a_runtime_holds_is_refused_after_a_few_milliseconds(
    store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    holder = Probe(store)  # never ends during the test: as a runtime's flock
    monkeypatch.setattr(_locktable, "_pause", holder.pauses.append, raising=False)
    try:
        assert is_held(store) is True
        with pytest.raises(StoreLocked, match="held by another process"):
            Store(store)
    finally:
        holder.end()
    assert holder.pauses == [*_locktable.PROBE_PAUSES] * 2  # is_held, then Store
    assert sum(holder.pauses) / 2 < 0.02  # a refusal costs a few milliseconds
