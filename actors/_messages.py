"""Messages between the engine's actors. Plain slotted dataclasses; tells unless noted."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from herder.actors._supervision_specs import ChildEventKind
from herder.actors.engine import Effect, OutcomeKind
from herder.store import InvalidInput, Plan, StepRecord, WorkflowRecord, check_text, validate_id


@dataclass(slots=True)
class Admit:
    """Workflows were durably created (one, or a ``start_many`` batch: one message);
    the Scheduler should start running them. Each with its new records: a step record
    per step of its plan, in plan order (``runtime/_timing.py``'s ``new_workflow``).
    ``early``: one start, not durable yet, on its way (``runtime/_starts.py``); the
    same records come again once durable only if the Scheduler may have let go of it
    meanwhile (:class:`EarlyStart`)."""

    starts: list[tuple[WorkflowRecord, list[StepRecord]]]
    early: EarlyStart | None = None


class EarlyStart(Protocol):
    """A start admitted while its creation is on its way to disk (``runtime/_starts.py``'s
    ``Landing``), as the Scheduler sees it.

    Once durable it is admitted again only if ``EngineContext.early_epoch`` changed since
    it was admitted early: the Scheduler bumps it before it lets go of a start it took up
    early (a new Scheduler, one it forgot or did not take up), and then reads the store.
    ``settled``: it landed with no Admit to follow (the Scheduler may drop its mark).
    ``error``: why its creation failed, once the writer said so (else None)."""

    settled: bool

    @property
    def error(self) -> BaseException | None: ...


@dataclass(slots=True)
class Unadmit:
    """A workflow admitted while its creation was on its way to disk was not created
    (its id was taken meanwhile, or the commit failed): ``record`` is the object it was
    admitted with. The Scheduler forgets it and runs what the store holds under its id."""

    record: WorkflowRecord


@dataclass(slots=True)
class Define:
    """A workflow definition was registered; workflows waiting for it may resume."""

    plan: Plan


@dataclass(slots=True)
class Run:
    """Scheduler -> agent instance: run one attempt of an action."""

    agent: str
    instance: str
    action: str
    token: int
    context: Any  # a StepContext; typed loosely to keep this module free of the agent layer


@dataclass(slots=True, kw_only=True)
class Answer:
    """How an attempt ended: its result, or its error (the fields after the ids of
    :class:`Outcome` and :class:`Complete`, which both carry one; keyword-only)."""

    ok: bool
    result: Any = None
    error: str | None = None
    error_types: tuple[str, ...] = ()
    permanent: bool = False
    traceback: str | None = None  # bounded, innermost frames (store/_tracebacks.py)


UNSTARTED = OutcomeKind.UNSTARTED.value
"""``Outcome.kind`` of an attempt answered without starting: fenced while it waited for a
worker (the pool host's line; stale by then), or held back because this runtime may no
longer hold the lease (``_action.leased``; current: its step runs again, not charged).
No news of its resource either way."""


@dataclass(slots=True)
class Outcome(Answer):
    """Agent instance -> Scheduler: how one attempt ended."""

    agent: str
    instance: str
    token: int
    # "" for a plain answer; "later" (the action returned ctx.complete_later()) or a probe's
    # verdict ("done", "not_done", "running"); UNSTARTED: it never started.
    kind: str = ""
    # The ready attempt the instance went on with (actors/_ahead.py), 0 if none.
    next_token: int = 0


@dataclass(slots=True)
class Complete(Answer):
    """Runtime -> Scheduler (ask): complete or fail a step handed off with complete_later."""

    workflow_id: str
    step: str
    token: int


@dataclass(slots=True)
class Operate:
    """An operator action on one workflow (retry, skip, compensate, abandon, cancel).

    ``command`` is the ``commands`` record it came from, if it came through the channel;
    its outcome is then recorded with the change.
    """

    action: str
    workflow_id: str
    step: str | None = None
    result: Any = None
    who: str | None = None
    why: str | None = None
    command: dict[str, Any] | None = None

    def check(self) -> None:
        """Refuse (:class:`InvalidInput`) an id, step, ``who`` or ``why`` no action takes,
        whichever way the action came: the API checks in its caller's thread, the CLI
        before it queues, the Scheduler again (a command in the store may come from any
        process)."""
        validate_id(self.workflow_id)
        if self.step is not None and not isinstance(self.step, str):
            raise InvalidInput(
                f"step must be a step name (a str) or None, got {type(self.step).__name__}"
            )
        check_text("who", self.who, WHO_CHARS)
        check_text("why", self.why)

    def refused(self, error: BaseException | str, now: float) -> dict[str, Any]:
        """The history event of this action, come as a queued command, refused."""
        event = {"kind": "operator", "t": now, "action": self.action, "who": self.who}
        return {**event, "why": self.why, "step": self.step, "refused": str(error)}


WHO_CHARS = 200
"""The longest ``who`` an operator action takes (``why`` takes a note's limit)."""


@dataclass(slots=True)
class Commands:
    """Supervisor -> Scheduler: pending commands found in the ``commands`` database."""

    commands: list[dict[str, Any]]


@dataclass(slots=True)
class Heartbeat:
    """A running attempt reported liveness."""

    token: int
    details: Any = None


@dataclass(slots=True)
class Due:
    """Supervisor -> Scheduler: timer index entries whose time has come."""

    timers: list[tuple[int, str, str, Any]]


@dataclass(slots=True)
class Tick:
    """Supervisor -> Scheduler: periodic housekeeping (passivate idle agent instances)."""


@dataclass(slots=True)
class Wake:
    """Clock timer -> Scheduler: an agent's gate (breaker cool-down, rate limit) may open."""

    agent: str


@dataclass(slots=True)
class InstanceEvent:
    """Supervision tree -> Scheduler: an agent instance or agent supervisor changed."""

    agent: str
    instance: str | None
    kind: ChildEventKind
    ref: Any = None
    reason: str | None = None
    unbuilt: bool = False  # crashed as its factory failed: its attempt never ran


@dataclass(slots=True)
class Committed:
    """Store writer -> Scheduler: a batch of the Scheduler's transitions is durable."""

    effects: list[tuple[str, list[Effect]]]  # (workflow id, what to do once it is durable)
    errors: list[BaseException | None]


@dataclass(slots=True)
class Crash:
    """A test seam -> Scheduler: fail as a bug escaping a handler would, so the supervision
    tree restarts it (sent by ``herder.runtime.testing.crash_scheduler``)."""


@dataclass(slots=True)
class Recover:
    """Scheduler -> itself: load every unfinished workflow from the store."""
