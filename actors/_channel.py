"""The commands channel: operator actions another process (the CLI) queued in the store.

The Watchdog's sweep hands pending commands over (:class:`Commands`); :class:`Channel`
applies each once, as the operator action of its name, and records its outcome with the
change it made (or its refusal). A command never depends on start-up order: one for a
workflow recovery has not taken back yet is held (``Recovery.held``) and applied when
the workflow is taken back, before anything of it runs again.
"""

from __future__ import annotations

from collections.abc import Mapping
from concurrent.futures import Future
from typing import Any

from herder.actors._commits import CommitPipeline
from herder.actors._engine import EngineContext
from herder.actors._messages import Commands, Operate
from herder.actors._operator import Operator
from herder.actors._recovery import Recovery
from herder.actors.engine import Resolve, operator_refusal
from herder.store import (
    Expect,
    HerderError,
    Plan,
    Transition,
    finished_ops,
    get_logger,
    history_put,
    workflow_key,
)

_log = get_logger("herder.scheduler")


class Channel:
    """Applies the commands of the commands channel; see the module docstring."""

    def __init__(
        self,
        ctx: EngineContext,
        commits: CommitPipeline,
        recovery: Recovery,
        operator: Operator,
        plans: Mapping[tuple[str, int], Plan],
    ) -> None:
        self._ctx = ctx
        self._plans = plans  # the Scheduler's (changed only by its Define messages)
        self._store = ctx.store
        self._clock = ctx.clock
        self._commits = commits
        self._recovery = recovery
        self._operator = operator
        self._seen: set[int] = set()  # ids of the commands applied (or refused)
        recovery.apply_held = self.apply_held

    def apply_commands(self, msg: Commands) -> None:
        """Apply commands from other processes, each as the Runtime method of its name.

        A command never depends on start-up order: one for a workflow recovered without its
        definition is held and applied when the workflow is taken back, before anything of
        it runs again (``Scheduler._admit``).
        """
        for command in msg.commands:
            if command["id"] in self._seen:
                continue
            workflow_id = str(command.get("workflow_id"))
            try:
                record = self._store.get_workflow(workflow_id)
            except HerderError:
                record = None  # operate() below refuses it, and the refusal is recorded
            action = command.get("action")
            if (
                record is not None
                and (record.name, record.version) not in self._plans
                and action != "abandon"  # (it needs no definition: it runs nothing)
            ):
                if not record.state.is_final:
                    self._recovery.held.setdefault(workflow_id, {})[command["id"]] = command
                    continue
                if operator_refusal(workflow_id, record.state, str(action)) is None:
                    continue  # parked, and it applies: wait until the definition is registered
            if self._operator.changing(workflow_id, record):
                continue  # (a later sweep applies it, once the store shows it as it is)
            self._apply_command(command)  # (one for a workflow that ended is refused)

    def apply_held(self, commands: list[dict[str, Any]]) -> None:
        """Apply the commands held for a workflow being taken back (it is in memory now)."""
        for command in commands:
            if command["id"] not in self._seen:
                self._apply_command(command)

    def _apply_command(self, command: dict[str, Any]) -> None:
        """Apply one command as the Runtime method of its name; record a refusal on it."""
        command_id = command["id"]
        workflow_id = command.get("workflow_id")
        held = self._recovery.held.get(str(workflow_id))
        if held is not None:
            held.pop(command_id, None)
            if not held:
                del self._recovery.held[str(workflow_id)]
        args = command.get("args")
        args = args if isinstance(args, dict) else {}
        self._seen.add(command_id)
        op = Operate(
            action=str(command.get("action")),
            workflow_id=str(workflow_id),
            step=args.get("step"),
            result=args.get("result"),
            who=command.get("who"),
            why=command.get("why"),
            command=command,
        )
        try:
            self._operator.operate(op)
        except HerderError as exc:
            error = str(exc)
        except Exception as exc:  # a bug must not leave the CLI waiting forever
            _log.exception("command %s failed", command_id)
            error = f"{type(exc).__name__}: {exc}"
        else:
            self._seen_until_lost(op.workflow_id, command_id)  # recorded with its change
            return
        now = self._clock.time()
        recorded = [Transition(ops=finished_ops(command, error, now))]
        # Said where an operator looks: the log, and the workflow's history (herder show).
        _log.warning(
            "command #%s (%s of %s) refused: %s", command_id, op.action, workflow_id, error
        )
        if self._exists(op.workflow_id):
            # Only if it is still there when this commits: a purge (retention) may delete
            # it meanwhile, and no history may outlive its workflow (herder check).
            present = Expect("workflows", workflow_key(op.workflow_id))
            put = history_put(op.workflow_id, self._ctx.next_token(), op.refused(error, now))
            recorded.append(Transition(ops=(put,), expect=(present,)))

        def landed(outcomes: list[BaseException | None]) -> None:
            if outcomes[0] is not None:  # (a full disk): pending still, handed over again
                self._seen.discard(command_id)

        self._store.writer.submit_many(recorded, landed)  # (one commit, each on its own)

    def _exists(self, workflow_id: str) -> bool:
        try:
            return self._store.get_workflow(workflow_id) is not None
        except HerderError:
            return False  # (a damaged record or an id no workflow can have: no history)

    def _seen_until_lost(self, key: str, command_id: int) -> None:
        """If the commit ``key`` that records the command fails (a full disk), forget that it
        was seen: the store still has it pending, so the next sweep hands it over again."""

        def landed(recorded: Future[None]) -> None:
            if recorded.exception() is not None:
                self._seen.discard(command_id)

        recorded: Future[None] = Future()
        recorded.add_done_callback(landed)
        self._commits.txn(key).effects.append(Resolve(recorded))
