"""Named crash points: make the process die at an exact place, for crash-recovery tests.

``crash_point("writer.before_commit")`` does nothing unless the environment variable
``HERDER_CRASH_AT`` was set to ``NAME:N`` when this module was imported; then the N-th
call with that name ends the process at once with ``os._exit(CRASH_EXIT_CODE)``: no
``finally`` blocks, no atexit, no flushing, as close to a power cut as a test can get
without a kernel. The variable is read once, at import, so an unarmed process pays only
a call to a function that returns.

The points (each one line in the code it names):

- ``writer.before_commit``: a batch is written into the LMDB transaction, not committed.
- ``writer.after_commit``: the batch is durable, nobody has been told yet.
- ``scheduler.flush``: the Scheduler took a flush's writes from memory and is about to
  hand them to the writer (in memory only: recovery re-runs what they would have begun).
- ``scheduler.outcome``: an action's answer reached the Scheduler, nothing recorded.
- ``scheduler.compensated``: a compensation's answer is being recorded, not yet durable.
- ``agents.restart``: a crashed or hung agent instance was replaced, before it takes work.
- ``supervisor.sweep``: the watchdog found due timers, before it reported them.
- ``scheduler.rearm``: a due batch deadline entry is about to be replaced by one holding
  the attempts it still watches (in memory only: the old entry stays until committed).

Reached only when a commit failed (so an ordinary run never meets them):

- ``writer.halted``: fail-stop refuses the engine's batches queued behind a failed one
  (``Writer.resync``), before their senders hear of it.

``tests/test_crash_points.py`` loops over every point of :data:`POINTS` and N, and arms
each of :data:`FAULT_POINTS` under an injected commit failure.
"""

from __future__ import annotations

import os

from herder.store._errors import InvalidInput

CRASH_EXIT_CODE = 86
"""The exit status of a process ended by a crash point (tests tell it from a failure)."""

POINTS = (
    "writer.before_commit",
    "writer.after_commit",
    "scheduler.flush",
    "scheduler.outcome",
    "scheduler.compensated",
    "agents.restart",
    "supervisor.sweep",
    "scheduler.rearm",
)
"""Every crash point an ordinary run reaches."""

FAULT_POINTS = ("writer.halted",)
"""Crash points reached only after a failed commit."""


def _parse(spec: str | None) -> tuple[str, int] | None:
    if not spec:
        return None
    name, sep, n = spec.rpartition(":")
    if not sep or name not in POINTS + FAULT_POINTS or not n.isdigit() or int(n) < 1:
        raise InvalidInput(
            f"HERDER_CRASH_AT={spec!r} is not POINT:N with N >= 1 and POINT one of "
            f"{', '.join(POINTS + FAULT_POINTS)}"
        )
    return name, int(n)


_ARMED = _parse(os.environ.get("HERDER_CRASH_AT"))
_hits = 0


def crash_point(name: str) -> None:
    """End the process here if ``HERDER_CRASH_AT`` names this point and hit count."""
    global _hits  # noqa: PLW0603 - one counter per process, by design
    if _ARMED is None or name != _ARMED[0]:
        return
    _hits += 1
    if _hits == _ARMED[1]:
        os.write(2, f"herder: crash point {name} hit {_hits}: exiting\n".encode())
        os._exit(CRASH_EXIT_CODE)
