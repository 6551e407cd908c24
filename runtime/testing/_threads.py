"""Which threads are the runtime's, and whether they all wait: how :func:`settle` tells
attempts the test holds (every thread of the runtime's waits) from attempts that move
on (one runs, or is ready to)."""

from __future__ import annotations

import threading


def all_wait() -> bool:
    """Whether every thread of the runtime's (:func:`runtime_threads`) but the caller
    waits (for an event, a lock, a sleep, a socket): none runs, is ready to run (a loaded
    machine leaves it unscheduled) or is in the middle of disk I/O. The test's own
    threads do not count: one that computes (a background job, a busy event loop) says
    nothing of the attempts. Read from Linux's ``/proc``; True where that cannot be read
    (settle then goes by :data:`~herder.runtime.testing._kit.HELD` alone)."""
    me = threading.get_native_id()
    for tid in runtime_threads() - {me}:
        try:
            with open(f"/proc/self/task/{tid}/stat", "rb") as stat:
                raw = stat.read()
        except OSError:
            continue  # (it ended meanwhile, or there is no /proc)
        end = raw.rfind(b")")  # (the state follows the name, which may hold one)
        if raw[end + 2 : end + 3] in (b"R", b"D"):
            return False
    return True


def runtime_threads() -> set[int]:
    """The native ids of the threads herder started: its actors' (the workers and agent
    instances that run attempts among them), its writer's, its event loop's, its
    timers'. Told by what each thread runs (its target), which is herder's code."""
    ids = set()
    for thread in threading.enumerate():
        target = getattr(thread, "_target", None)  # (threading's; None once it ended)
        module = getattr(target, "__module__", None) or type(thread).__module__
        if module.startswith("herder.") and thread.native_id is not None:
            ids.add(thread.native_id)
    return ids
