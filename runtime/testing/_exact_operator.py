"""The exact simulation's operator: what ``simulate_exact`` does besides faults.

As the threaded simulation's ``SimOperator`` does through a Runtime, each seed may cancel
or abandon a workflow at some round, queue a cancel or abandon through the CLI's commands
channel while the process is down (the next process applies it), and step the wall clock
an hour either way; here also a cancel or abandon sent through that channel while the
process runs, at a seeded delivery, which a sweep hands over right then (:meth:`deliver`).
A request is an :class:`Ask` in the Scheduler's inbox, answered as pykka answers an ask;
:class:`ExactOperator` keeps each until it knows whether it took effect and says what
state each workflow acted on must end in.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from herder.actors import FakeClock, Operate
from herder.actors.engine import OPERATOR_ACTIONS
from herder.runtime.testing._faults import FaultSchedule
from herder.runtime.testing._world import SimReport
from herder.store import (
    Store,
    StoreError,
    WorkflowState,
    append_command,
    command_outcome,
    new_command,
)


@dataclass
class Ask:
    """An operator's request to the Scheduler, answered as pykka answers an ask:
    ``future`` (durable once it resolves) or ``error`` (refused, nothing written)."""

    op: Operate
    round: int
    answered: bool = False
    future: Future[None] | None = None
    error: BaseException | None = None

    def answer(self, future: Future[None] | None, error: BaseException | None) -> None:
        self.answered, self.future, self.error = True, future, error

    @property
    def pending(self) -> bool:
        """Not answered yet, or answered and not yet durable."""
        return not self.answered or (self.future is not None and not self.future.done())


@dataclass
class ExactOperator:
    """The seed's operator actions, and what they make of the workflows they act on."""

    schedule: FaultSchedule
    ids: list[str]
    clock: FakeClock
    report: SimReport
    directory: Path
    asked: list[Ask] = field(default_factory=list)  # not yet known applied or not
    queued: tuple[int, int] | None = None  # (command id, round) of one not yet answered
    wants: dict[str, WorkflowState] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._command = self.schedule.command_at()  # the one sent while the process runs

    @property
    def busy(self) -> bool:
        """A request whose outcome is not known yet."""
        return self.queued is not None or bool(self.asked)

    def act(self, rnd: int, tell: Callable[[Any], None]) -> None:
        """The seed's cancel, abandon and wall-clock step of round ``rnd``."""
        schedule = self.schedule
        for action, at in (("cancel", schedule.cancel_at()), ("abandon", schedule.abandon_at())):
            if at is not None and at[0] == rnd:
                op = Operate(action, self.ids[at[1]], who="simulation", why=f"round {rnd}")
                ask = Ask(op, rnd)
                self.asked.append(ask)
                tell(ask)
        step = schedule.wall_step_at()
        if step is not None and step[0] == rnd:
            self.clock.step_wall(step[1])
            self.report.operator.append(f"{rnd} step_wall {step[1]:+.0f}")

    def process_died(self, rnd: int) -> None:
        """The process died: its callers with it (the store will say what took effect);
        while it is down, the seed's command may be queued through the CLI's channel."""
        for ask in self.asked:
            if ask.pending:
                ask.answer(None, None)
        queued = self.schedule.queued_at_restart()
        if queued is not None:
            self.send(*queued, rnd, why="queued")

    def deliver(self, step: int, rnd: int, sweep: Callable[[], object]) -> None:
        """At the seed's delivery ``step``: its live command is sent, and a sweep of the
        watchdog (``sweep``) falls right then and hands it to the Scheduler."""
        command = self._command
        if command is not None and command[0] == step and self.send(*command[1:], rnd):
            self.report.trace.append("W sweep")
            sweep()

    def send(self, action: str, which: int, rnd: int, why: str = "live") -> bool:
        """The CLI appends a command (while the process runs, through its writer, as
        ``append_command`` does in the process that has the store open); False if one is
        not answered yet, or if the commit failed (the CLI is told so, nothing queued)."""
        if self.queued is not None:
            return False
        command = new_command(
            action, self.ids[which], who="simulation", why=why, now=self.clock.time()
        )
        try:
            self.queued = (append_command(self.directory, command), rnd)
        except StoreError as exc:
            self.report.trace.append(f"command not sent: {exc!r:.80}")
            return False
        return True

    def answers(self, store: Store) -> None:
        """Record the requests answered so far (a refused one changed nothing)."""
        waiting = []
        for ask in self.asked:
            op = ask.op
            if ask.pending:
                waiting.append(ask)
                continue
            error = ask.error if ask.future is None else ask.future.exception()
            if ask.future is None and error is None:  # its caller died: read the store
                record = store.get_workflow(op.workflow_id)
                assert record is not None
                if op.action == "cancel":
                    took = record.cancelled
                else:
                    took = record.state is WorkflowState.ABANDONED
                if not took:
                    continue
            elif error is not None:  # refused (already final) or its commit failed
                self.report.trace.append(f"refused {op.action} {op.workflow_id}: {error!r:.80}")
                continue
            self._applied(op.action, op.workflow_id, ask.round)
        self.asked = waiting
        if self.queued is not None:
            outcome = command_outcome(store, self.queued[0])
            if outcome is None:
                return
            wid = str(outcome["workflow_id"])
            if outcome["state"] == "DONE":
                self._applied(str(outcome["action"]), wid, self.queued[1])
            elif _state(store, wid) in OPERATOR_ACTIONS[str(outcome["action"])]:  # it applies
                self.report.problems.append(f"queued command refused: {outcome['error']}")
            self.queued = None

    def _applied(self, action: str, workflow_id: str, rnd: int) -> None:
        self.report.operator.append(f"{rnd} {action} {workflow_id}")
        if action == "abandon":
            self.wants[workflow_id] = WorkflowState.ABANDONED
        elif workflow_id not in self.wants:
            self.wants[workflow_id] = WorkflowState.CANCELLED


def _state(store: Store, workflow_id: str) -> WorkflowState:
    record = store.get_workflow(workflow_id)
    assert record is not None, f"{workflow_id} was started, so it is stored"
    return record.state
