"""The signal handlers of run_forever and `herder run` take no lock: Python runs them in
the main thread between two bytecodes, maybe while it holds the very lock (the wake
event's, inside ``wait()``) that ``Event.set()`` takes: a self-deadlock, now and then, at
a SIGTERM. Shown without threads: the handler runs while the main thread holds it."""

from __future__ import annotations

import io
import pathlib
import signal

import pytest

from herder.runtime import Runtime, _daemon
from herder.runtime._waits import NotifyingEvent

pytestmark = pytest.mark.timeout(60)


class _Held(NotifyingEvent):
    """A wake event that notes a set() made while its own lock is held (the deadlock,
    which this event defers instead of hanging the test)."""

    def __init__(self) -> None:
        super().__init__()
        self.holding = False
        self.under_lock: list[str] = []

    def set(self) -> None:
        if self.holding:
            self.under_lock.append("set() while the waiting thread held the event's lock")
            return  # (set once it is let go: below)
        super().set()

    def signal_while_held(self, signum: int, handler: object = None) -> None:
        """Deliver ``signum`` (its handler runs now, in this thread) holding the lock."""
        with self._cond:
            self.holding = True
            try:
                if handler is None:
                    signal.raise_signal(signum)  # (runs the Python handler before returning)
                else:
                    handler(signum, None)  # type: ignore[operator]
            finally:
                self.holding = False
        if self.under_lock:
            super().set()  # (deferred: a real Event would have deadlocked in the handler)


class _Waker(_Held):
    """The first wait() gets a SIGTERM while it holds the event's lock."""

    def wait(self, timeout: float | None = None) -> bool:
        if not self.under_lock and not getattr(self, "signals", []) and not self.is_set():
            self.signal_while_held(signal.SIGTERM)
        return super().wait(timeout)


def test_a_sigterm_that_comes_while_run_forever_holds_its_lock_stops_it(
    tmp_path: pathlib.Path,
) -> None:
    rt = Runtime(tmp_path / "s", sweep_interval=0.05)
    wake = rt._wake = _Waker()
    before = signal.getsignal(signal.SIGTERM)
    try:
        rt.run_forever(drain_timeout=1.0)
    finally:
        rt.stop()
    assert wake.under_lock == []
    assert rt._closed
    assert wake.is_set()  # (set after the handler, for `herder run`'s STOPPING=1)
    assert signal.getsignal(signal.SIGTERM) is before


def build(rt: Runtime) -> None:
    """The app of the test below: registers nothing."""


def test_herder_runs_early_handler_takes_no_lock_and_the_sigterm_still_stops_it(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Until run_forever has its own, `herder run`'s handler did rt._wake.set().
    seen: list[tuple[list[str], list[int]]] = []
    real = Runtime.run_forever

    def serve(self: Runtime, *, drain_timeout: float = 30.0) -> None:
        held = _Held()
        self._wake = held
        held.signal_while_held(signal.SIGTERM, signal.getsignal(signal.SIGTERM))
        seen.append((held.under_lock, list(getattr(held, "signals", []))))
        real(self, drain_timeout=drain_timeout)  # returns: the SIGTERM is not lost

    monkeypatch.setattr(Runtime, "run_forever", serve)
    code = _daemon.run_app(
        str(tmp_path / "s"),
        f"{__name__}:build",
        standby=False,
        lease=5.0,
        drain_timeout=1.0,
        out=io.StringIO(),
    )
    assert (code, seen) == (0, [([], [signal.SIGTERM])])
