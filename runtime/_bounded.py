"""Calling user code that may hang, waiting for it only so long: :class:`BoundedCalls`.

Each call runs on a daemon thread of the pool while the caller waits up to its limit
(:class:`TimedOut` past it). A thread is reused once its call returned, so a call costs
a queue hand-off, not a thread start (a thread per call made ``start_many`` of 5,000
routed workflows four times slower); one left in a hung call is never handed another,
and an idle one ends after :data:`IDLE` seconds.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from herder.runtime._waits import OneShot

T = TypeVar("T")

IDLE = 60.0
"""Seconds an idle thread of a pool waits for another call before it ends."""

_Job = tuple[Callable[[], Any], OneShot[Any]]


class BoundedCalls:
    """A pool of daemon threads named ``name`` for calls waited for up to a limit."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._lock = threading.Lock()
        self._idle: list[queue.SimpleQueue[_Job]] = []  # each an idle thread's inbox

    def call(self, fn: Callable[[], T], limit: float) -> T:
        """``fn()``, or what it raised; :class:`TimedOut` once ``limit`` seconds passed
        first (the call goes on, on its thread)."""
        with self._lock:
            jobs = self._idle.pop() if self._idle else None
        if jobs is None:
            jobs = queue.SimpleQueue()
            threading.Thread(target=self._serve, args=(jobs,), name=self._name, daemon=True).start()
        done: OneShot[T] = OneShot()
        jobs.put((fn, done))
        return done.wait(limit)

    def _serve(self, jobs: queue.SimpleQueue[_Job]) -> None:
        while True:
            try:
                fn, done = jobs.get(timeout=IDLE)
            except queue.Empty:
                with self._lock:
                    if jobs in self._idle:  # (else taken meanwhile: its call is on the way)
                        self._idle.remove(jobs)
                        return
                continue
            value, error = None, None
            try:
                value = fn()
            except BaseException as exc:  # (the caller's to raise)
                error = exc
            with self._lock:  # idle again before the caller hears: its next call reuses it
                self._idle.append(jobs)
            if error is None:
                done.set(value)
            else:
                done.fail(error)
