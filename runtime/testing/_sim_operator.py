"""The simulation's operator and wall clock: what :func:`simulate` does besides faults.

Each seed (see :class:`~herder.runtime.testing._faults.FaultSchedule`) may cancel or abandon
a workflow at some round, queue a cancel or abandon through the CLI's channel while the
runtime is down for its restart (the next runtime applies it at start-up, before anything
of the workflow runs again), send one through that channel while the runtime runs (a
sweep hands it over at once, amid the round's work), and step the wall clock an hour
either way (nothing may stall or fire early). :class:`SimOperator` does these and says
what state each workflow acted on must end in.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from herder.actors import FakeClock, InvalidState
from herder.actors.engine import OPERATOR_ACTIONS
from herder.store import (
    StoreIOError,
    WorkflowState,
    append_command,
    command_outcome,
    new_command,
    wait_outcome,
)

if TYPE_CHECKING:
    from herder.runtime._runtime import Runtime
    from herder.runtime.testing._faults import FaultSchedule

QUIET_WAIT = 10.0


class _Faults(Protocol):
    armed: bool


class SimOperator:
    """Operator actions and clock steps at the rounds the seed picks."""

    def __init__(
        self, schedule: FaultSchedule, ids: list[str], faults: _Faults, directory: Path
    ) -> None:
        self._schedule = schedule
        self._ids = ids
        self._faults = faults
        self._directory = directory  # the store's, for the CLI's channel
        self.wants: dict[str, WorkflowState] = {}  # what an applied action ends it in
        self.live: tuple[int, int] | None = None  # (id, round) of the command sent while up
        self.done: list[str] = []  # "round action id", for the report

    def act(self, rt: Runtime, clock: FakeClock, rnd: int) -> None:
        """The cancel, abandon, command and wall-clock step of round ``rnd``, if any."""
        schedule = self._schedule
        for action, at in (("cancel", schedule.cancel_at()), ("abandon", schedule.abandon_at())):
            if at is not None and at[0] == rnd:
                self._apply(rt, action, self._ids[at[1]], rnd)
        self._send_live(rt, rnd)
        step = schedule.wall_step_at()
        if step is not None and step[0] == rnd:
            clock.step_wall(step[1])
            self.done.append(f"{rnd} step_wall {step[1]:+.0f}")

    def _send_live(self, rt: Runtime, rnd: int) -> None:
        """The seed's command sent through the CLI's channel while the runtime runs (at
        round ``command_at``'s delivery mod 3), and a sweep that hands it over at once,
        while the round's workflows are in flight. Its outcome is read at the end
        (:meth:`answered`)."""
        command = self._schedule.command_at()
        if command is None or command[0] % 3 != rnd:
            return
        self.live = (self._append(*command[1:], why="live"), rnd)
        rt._sweep_now()

    def unanswered(self, rt: Runtime) -> bool:
        """The command sent while up has no outcome yet."""
        return self.live is not None and command_outcome(rt._store, self.live[0]) is None

    def live_answered(self, rt: Runtime) -> list[str]:
        """At the end, faults off: the command sent while up, answered (and recorded)."""
        problem = None if self.live is None else self.answered(rt, *self.live)
        return [] if problem is None else [problem]

    def _apply(self, rt: Runtime, action: str, workflow_id: str, rnd: int) -> None:
        self._faults.armed = False  # the request itself must not meet a store fault
        try:
            getattr(rt, action)(workflow_id, who="simulation", why=f"round {rnd}")
        except InvalidState:
            return  # it had already finished
        except StoreIOError:
            # An earlier (faulted) batch of the engine failed: its writes are refused
            # until it has resynced, this one included. Not applied, and nothing kept.
            return
        finally:
            self._faults.armed = True
        self._applied(action, workflow_id, rnd)

    def _applied(self, action: str, workflow_id: str, rnd: int) -> None:
        self.done.append(f"{rnd} {action} {workflow_id}")
        if action == "abandon":
            self.wants[workflow_id] = WorkflowState.ABANDONED
        elif workflow_id not in self.wants:
            self.wants[workflow_id] = WorkflowState.CANCELLED

    def queue_while_down(self) -> int | None:
        """Queue the seed's command while no runtime runs (as the CLI does); its id."""
        queued = self._schedule.queued_at_restart()
        return None if queued is None else self._append(*queued, why="queued")

    def _append(self, action: str, which: int, *, why: str) -> int:
        """Append a command as the CLI does (its own append meets no store fault); its id."""
        armed, self._faults.armed = self._faults.armed, False
        try:
            command = new_command(action, self._ids[which], who="simulation", why=why)
            return append_command(self._directory, command)
        finally:
            self._faults.armed = armed

    def answered(self, rt: Runtime, command_id: int, rnd: int) -> str | None:
        """After the restart: the queued command's outcome, recorded; a problem, or None."""
        rt._sweep_now()  # one for a workflow already final is answered by the sweep
        rt._settle()
        outcome = wait_outcome(self._directory, command_id, QUIET_WAIT)
        if outcome is None:
            return f"command #{command_id} was never answered"
        workflow_id = str(outcome["workflow_id"])
        if outcome["state"] == "DONE":
            self._applied(str(outcome["action"]), workflow_id, rnd)
        elif rt.status(workflow_id).state in OPERATOR_ACTIONS[str(outcome["action"])]:
            return f"command #{command_id} refused for a wrong reason: {outcome['error']}"
        return None
