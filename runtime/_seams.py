"""Seams the testing kit opens into a live runtime, so tests need no private reaches.

- :func:`crash_scheduler` — the Scheduler actor fails as a bug escaping one of its
  handlers would; the supervision tree starts a new one, which recovers from the store.
- :func:`given` — the kit's check that its first argument is a :class:`Runtime`.

Imports: herder.actors (the ``Crash`` message) and the Runtime facade.
"""

from __future__ import annotations

import contextlib
import threading
import time

import pykka

from herder.actors import Crash, NotActive
from herder.runtime._runtime import Runtime
from herder.runtime._waits import wait_limit
from herder.store import InvalidInput, TimedOut


def given(runtime: object, what: str) -> None:
    """:class:`InvalidInput` for a first argument that is no :class:`Runtime` (the kit's
    helpers take the runtime first)."""
    if not isinstance(runtime, Runtime):
        raise InvalidInput(
            f"{what} takes the Runtime as its first argument (rt), got "
            f"{type(runtime).__name__} {runtime!r:.60}"
        )


def crash_scheduler(rt: Runtime, timeout: float | None = 10.0) -> None:
    """Crash ``rt``'s Scheduler and return once the supervision tree has started a new one.

    What the old Scheduler held only in memory is lost, as after a real bug; the new one
    recovers every unfinished workflow from the store. Raises :class:`TimedOut` if the
    Scheduler does not stop, or no replacement runs, within ``timeout`` seconds;
    :class:`RuntimeClosed` if the runtime is stopped, or once this crash made its tree give
    up restarting (past the root's restart intensity); :class:`NotActive` on a standby;
    :class:`InvalidInput` (before anything crashed) for a first argument that is no
    Runtime or a ``timeout`` that is no number of seconds >= 0 (None: no limit).
    """
    given(rt, "crash_scheduler()")
    limit = wait_limit(timeout)
    rt._check_active()
    old = rt._ctx.scheduler
    if old is None:  # (between a crash and its restart)
        raise NotActive("the runtime's Scheduler is restarting; call again once it runs")
    with contextlib.suppress(pykka.ActorDeadError):  # (it died already: it is replaced)
        old.tell(Crash())
    if not old.actor_stopped.wait(limit):
        raise TimedOut(
            f"the Scheduler did not crash within {timeout}s: it is busy or stuck (a blocking "
            "call in its thread?); give a longer timeout"
        )
    deadline = time.monotonic() + limit
    polled = threading.Event()  # never set: a short, interruptible wait between looks
    while True:
        new = rt._ctx.scheduler
        if new is not None and new is not old and new.is_alive():
            return
        rt._check_open()  # (the tree gave up: no Scheduler will run again)
        if time.monotonic() > deadline:
            raise TimedOut(
                f"no new Scheduler started within {timeout}s of the crash (its agents are "
                "stopped first, each within instance_shutdown); give a longer timeout"
            )
        polled.wait(0.001)
