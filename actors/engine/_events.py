"""What the engine hears: every input as a dataclass (frozen, but for those made per step).

The actor shell turns each message into one of these and hands it to
:meth:`~herder.actors.engine._engine.Engine.handle` with the time and a random source;
the engine answers with a :class:`~herder.actors.engine._decision.Decision`.

- :class:`Answered` — an attempt ended (result, error, probe verdict, hand-off);
- :class:`Completed` — ``complete_step``/``fail_step`` for a handed-off step (checked by
  the shell against the task token first);
- :class:`Beat` — a running attempt's heartbeat;
- :class:`TimerDue` — a timer entry's time came (a retry, a delay or a deadline);
- :class:`AttemptLost` — the instance running an attempt crashed or went away, or was
  given up on with its agent's other instances;
- :class:`StartFailed` — no instance could be started for a queued job;
- :class:`Resumed` — a workflow just put into memory runs (reloaded, or left
  unfinished by a crash);
- :class:`Started` — workflows just created and put into memory run (a batch);
- :class:`Reserved` — an instance was reserved for a queued job: record the attempt.

Imports: herder.store records and this package; plain data only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from herder.actors.engine._runs import Job


@dataclass(slots=True, unsafe_hash=True)  # made per step: not frozen, 4x cheaper to build
class Answered:
    """Attempt ``token`` ended: ``ok`` with ``result``, else with ``error``; ``kind``
    marks a probe's verdict or a hand-off (see ``OutcomeKind``)."""

    token: int
    ok: bool
    result: Any = None
    error: str | None = None
    types: tuple[str, ...] = ()
    permanent: bool = False
    traceback: str | None = None
    kind: str = ""


@dataclass(frozen=True, slots=True)
class Completed:
    """The handed-off step ``step`` of ``workflow_id`` was completed (or failed) through
    its task token; ``result`` is already normalised."""

    workflow_id: str
    step: str
    ok: bool
    result: Any = None
    error: str | None = None
    types: tuple[str, ...] = ()
    permanent: bool = False
    traceback: str | None = None


@dataclass(frozen=True, slots=True)
class Beat:
    """Attempt ``token`` is alive (``details``: what it reported)."""

    token: int
    details: Any = None


@dataclass(frozen=True, slots=True)
class TimerDue:
    """The timer at ``due_ms`` of ``workflow_id``/``step`` (holding ``token``) is due;
    ``due_ms`` None: a batch entry holding attempt ``token`` is (it watches the deadline
    of a step with no timer of its own); ``busy``: an instance still runs attempt
    ``token`` (it hangs in it)."""

    workflow_id: str
    step: str
    due_ms: int | None
    token: int | None
    busy: bool = False


@dataclass(frozen=True, slots=True)
class AttemptLost:
    """Attempt ``token`` will never answer (``error`` says why): retry it at once.
    ``given_up``: lost only because the runtime gave up on its agent's instances (their
    restart intensity was exceeded), not charged to its step (``GIVEN_UP_ERROR``).
    ``unbuilt``: lost because its instance could not be built: it never ran
    (``UNBUILT_ERROR``)."""

    token: int
    error: str
    given_up: bool = False
    unbuilt: bool = False


@dataclass(frozen=True, slots=True)
class StartFailed:
    """No instance of ``agent`` could be started for ``job``: that counts as a failed
    attempt (on that agent: a group step's member, which its retry passes over), one
    that never ran (``UNBUILT_ERROR``)."""

    job: Job
    error: str
    agent: str


@dataclass(frozen=True, slots=True)
class Resumed:
    """Workflow ``workflow_id``, just put into memory, runs: ``recovered`` (read back
    after a failed commit) or ``crashed`` (left unfinished by a previous Scheduler or
    process, whose crash is counted)."""

    workflow_id: str
    recovered: bool = False
    crashed: bool = False


@dataclass(frozen=True, slots=True)
class Started:
    """Workflows just created (``start()``, ``start_many``) and put into memory run: one
    event for all of an ``Admit``, so admitting a batch of 2,000 is one engine pass and
    one decision, not one of each per workflow."""

    workflow_ids: list[str]


@dataclass(slots=True, unsafe_hash=True)  # made per step: not frozen, 4x cheaper to build
class Reserved:
    """An ``instance`` of ``agent`` was reserved for ``job`` under fencing ``token``."""

    job: Job
    agent: str
    instance: str
    token: int


Event = (
    Answered
    | Completed
    | Beat
    | TimerDue
    | AttemptLost
    | StartFailed
    | Resumed
    | Started
    | Reserved
)
"""Anything the engine handles."""
