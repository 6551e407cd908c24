"""Calling user code that may hang, waiting for it only so long: :class:`BoundedCalls`.

Each call runs on a daemon thread of the pool while the caller waits up to its limit
(:class:`TimedOut` past it). A thread is reused once its call returned, so a call costs
a queue hand-off, not a thread start (a thread per call made ``start_many`` of 5,000
routed workflows four times slower); one left in a hung call is never handed another,
and an idle one ends after :data:`IDLE` seconds. A call given a ``key`` that outlives
its limit is noted until it returns (:meth:`BoundedCalls.late`): a caller asks first,
so that one retried (a schedule's firing, every few seconds) does not leave one more
thread stuck in the same call each time. A key is given as the function that makes it,
called only when a call outlived its limit: most calls never need theirs (a router's is
its input encoded).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

from herder.runtime._waits import OneShot
from herder.store import TimedOut

T = TypeVar("T")

IDLE = 60.0
"""Seconds an idle thread of a pool waits for another call before it ends."""


class _Job:
    """One call handed to a thread of the pool."""

    __slots__ = ("done", "fn", "key", "late", "returned")

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.fn = fn
        self.key: Hashable = None  # set once it is late
        self.done: OneShot[Any] = OneShot()
        self.late = self.returned = False  # (both changed under the pool's lock)


class BoundedCalls:
    """A pool of daemon threads named ``name`` for calls waited for up to a limit."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._lock = threading.Lock()
        self._idle: list[queue.SimpleQueue[_Job]] = []  # each an idle thread's inbox
        self._late: dict[Hashable, int] = {}  # key -> its calls still running past their limit

    def late(self, key: Callable[[], Hashable]) -> bool:
        """Whether a call given this ``key`` outlived its limit and has not returned yet
        (``key()`` is made only if some call did)."""
        return bool(self._late) and key() in self._late

    def call(
        self, fn: Callable[[], T], limit: float, key: Callable[[], Hashable] | None = None
    ) -> T:
        """``fn()``, or what it raised; :class:`TimedOut` once ``limit`` seconds passed
        first (the call goes on, on its thread, and is :meth:`late` by its ``key``, if
        given, until it returns)."""
        with self._lock:
            jobs = self._idle.pop() if self._idle else None
        if jobs is None:
            jobs = queue.SimpleQueue()
            threading.Thread(target=self._serve, args=(jobs,), name=self._name, daemon=True).start()
        job = _Job(fn)
        jobs.put(job)
        try:
            return job.done.wait(limit)
        except TimedOut:
            made = None if key is None else key()  # (made before the lock: user data)
            with self._lock:  # (a call that returned meanwhile is not noted)
                if made is not None and not job.returned:
                    job.key, job.late = made, True
                    self._late[made] = self._late.get(made, 0) + 1
            raise

    def _serve(self, jobs: queue.SimpleQueue[_Job]) -> None:
        while True:
            try:
                job = jobs.get(timeout=IDLE)
            except queue.Empty:
                with self._lock:
                    if jobs in self._idle:  # (else taken meanwhile: its call is on the way)
                        self._idle.remove(jobs)
                        return
                continue
            value, error = None, None
            try:
                value = job.fn()
            except BaseException as exc:  # (the caller's to raise)
                error = exc
            with self._lock:  # idle again before the caller hears: its next call reuses it
                self._idle.append(jobs)
                job.returned = True
                if job.late and self._late[job.key] == 1:
                    del self._late[job.key]
                elif job.late:
                    self._late[job.key] -= 1
            if error is None:
                job.done.set(value)
            else:
                job.done.fail(error)
