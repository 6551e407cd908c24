"""BoundedCalls: user code that may hang, waited for up to a limit on reused threads
(routers run there: a thread per call made start_many of routed workflows four times
slower)."""

from __future__ import annotations

import threading

import pytest

from herder.runtime import TimedOut, _bounded
from herder.runtime._bounded import BoundedCalls

WAIT = 10.0
pytestmark = pytest.mark.timeout(60)


def _threads(name: str) -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name == name}


def test_calls_return_raise_and_reuse_the_thread_of_a_call_that_returned() -> None:
    calls = BoundedCalls("test-bounded-reuse")
    ran_on = [calls.call(threading.current_thread, WAIT) for _ in range(50)]
    assert len(set(ran_on)) == 1  # one thread served them all, one after the other
    assert ran_on[0] is not threading.current_thread()
    with pytest.raises(KeyError, match="nope"):
        calls.call(lambda: {}["nope"], WAIT)
    assert calls.call(threading.current_thread, WAIT) is ran_on[0]  # (a raise frees it too)


def test_a_call_that_hangs_times_out_and_its_thread_takes_no_other_call() -> None:
    calls = BoundedCalls("test-bounded-hung")
    gate = threading.Event()
    hung: list[threading.Thread] = []

    def hang() -> None:
        hung.append(threading.current_thread())
        gate.wait()

    try:
        with pytest.raises(TimedOut):
            calls.call(hang, 0.2)
        served = calls.call(threading.current_thread, WAIT)  # another thread: not stuck
        assert served is not hung[0]
    finally:
        gate.set()  # (its call returns; the thread goes idle, and ends after IDLE)


def test_an_idle_thread_ends_after_idle_seconds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_bounded, "IDLE", 0.05)
    calls = BoundedCalls("test-bounded-idle")
    served = calls.call(threading.current_thread, WAIT)
    served.join(WAIT)
    assert not served.is_alive()
    assert _threads("test-bounded-idle") == set()
    assert calls.call(lambda: 7, WAIT) == 7  # a new one serves the next call
