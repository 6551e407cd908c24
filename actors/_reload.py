"""After a failed commit: forget what memory believed of a workflow and read it back.

When a batch fails, the workflows it held are dropped from memory (their attempts never
sent free their instances, the promises held for them are refused) and read back from
the store, which stays the truth: at once after a one-off error, or parked in
:class:`~herder.actors._absent.Absent` until the :class:`CommitBackoff` ends (a
:class:`Reload` message). A start taken up early that was not created is read back the
same way (``Recovery.unadmit``). :class:`Reloads` runs on the Scheduler's thread; what it
reads back runs through ``Recovery.admit``.

An attempt the agent was told of and that still runs when its workflow is read back
keeps running: the store holds its DISPATCHED (durable before it was sent), and the
workflow read back waits for its answer instead of running the step again beside it.
One that answered meanwhile was stale then (its workflow was not in memory) and runs
again, as after a crash.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from herder.actors._absent import Absent
from herder.actors._commit_backoff import CommitBackoff, Reload
from herder.actors._commits import CommitPipeline
from herder.actors._dispatch import Dispatcher
from herder.actors._engine import EngineContext
from herder.actors._errors import UnknownWorkflow
from herder.actors._messages import EarlyStart
from herder.actors.engine import Attempt, Engine, Refuse, Resolve
from herder.store import (
    Sparse,
    StepRecord,
    StepState,
    StoreCorrupt,
    StoreIOError,
    WorkflowRecord,
    get_logger,
)

_log = get_logger("herder.scheduler")


class Admit(Protocol):
    """``Recovery.admit``: run a workflow read back from the store."""

    def __call__(
        self,
        record: WorkflowRecord,
        steps: list[StepRecord],
        *,
        recovered: bool = False,
    ) -> None: ...


class Reloads:
    """Workflows whose commit failed, read back; see the module docstring."""

    def __init__(
        self,
        ctx: EngineContext,
        engine: Engine,
        commits: CommitPipeline,
        dispatch: Dispatcher,
        absent: Absent,
        *,
        admit: Admit,
        early: dict[str, tuple[WorkflowRecord, EarlyStart]],
    ) -> None:
        self._ctx = ctx
        self._store = ctx.store
        self._clock = ctx.clock
        self._engine = engine
        self._commits = commits
        self._dispatch = dispatch
        self._absent = absent
        self._admit = admit
        self._early = early  # Recovery's starts taken up early: a forgotten one loses its mark
        self._backoff = CommitBackoff()
        self._said = Sparse()  # (its line, as the writer's, once per 10 s while they fail)
        # The attempts sent, by workflow, of the workflows forgotten and not yet read back.
        self._sent: dict[str, list[Attempt]] = {}

    def committed(self) -> None:
        """A commit landed: the next failure starts its backoff afresh."""
        self._backoff.succeeded()

    def reload_later(self, failed: list[str], errors: list[BaseException | None]) -> None:
        """Workflows whose commit failed: read them back, at once or after a backoff."""
        error = next(e for e in errors if e is not None)
        if isinstance(error, UnknownWorkflow):  # purged under an operator's action (_guards)
            for workflow_id in failed:
                self.reread(workflow_id)  # (gone: forgotten, nothing of it runs)
            return
        delay = self._backoff.failed()
        more = self._said.due()
        if more is not None:
            _log.error(
                "transitions of %d workflows failed: %s; reloading them in %.2fs%s",
                len(failed),
                error,
                delay,
                more,
            )
        if delay <= 0:
            for workflow_id in failed:
                self.reread(workflow_id)
            return
        for workflow_id in failed:
            self._forget(workflow_id)
            self._absent.parked.add(workflow_id)
        ids = tuple(failed)
        ctx = self._ctx
        self._clock.call_later(delay, lambda: ctx.tell_scheduler(Reload(ids)))

    def on_reload(self, msg: Reload) -> None:
        """A backoff after a failed commit ended: read the parked workflows back."""
        parked = self._absent.parked
        for workflow_id in msg.workflow_ids:
            if workflow_id in parked:
                parked.discard(workflow_id)
                self._readmit(workflow_id)
            else:  # (read back another way meanwhile)
                self._sent.pop(workflow_id, None)

    def reread(self, workflow_id: str) -> bool:
        """Drop a workflow from memory and run what the store holds of it, if anything
        (True if it runs)."""
        self._forget(workflow_id)
        return self._readmit(workflow_id)

    def _forget(self, workflow_id: str) -> None:
        """Drop a workflow from memory (after a failed commit); the store keeps the truth."""
        if self._early.pop(workflow_id, None) is not None:  # taken up early: let go
            self._ctx.early_epoch += 1  # (before the store is read: see EarlyStart)
        engine = self._engine
        run = engine.runs.get(workflow_id)
        attempts = [] if run is None else [engine.inflight.get(t) for t in run.attempts]
        sent = [a for a in attempts if a is not None and a.sent]
        if sent:
            self._sent[workflow_id] = sent
        engine.forget(workflow_id)
        held = self._commits.drop(workflow_id)
        for effect in () if held is None else held.effects:
            if isinstance(effect, Resolve | Refuse) and not effect.future.done():
                effect.future.set_exception(
                    StoreIOError(f"workflow {workflow_id!r} was reloaded after a failed commit")
                )
        self._dispatch.release(attempts)

    def _readmit(self, workflow_id: str) -> bool:
        """Read an unfinished workflow back from the store and run it; True if it runs.

        A corrupt record leaves that one workflow where it is (logged, counted in stats);
        every other workflow keeps running.
        """
        sent = self._sent.pop(workflow_id, ())
        try:
            record = self._store.get_workflow(workflow_id)
            if record is None or record.state.is_final:
                return False
            steps = self._store.steps_of(workflow_id)
        except StoreCorrupt as exc:
            self._absent.note_corrupt(exc)
            return False
        kept = self._still_running(sent, steps)
        self._admit(record, steps, recovered=True)
        run = self._engine.runs.get(workflow_id)
        if run is not None:
            run.attempts.update(kept)
        else:  # (not run: its definition is missing, say)
            for token in kept:
                self._engine.inflight.pop(token, None)
        return True

    def _still_running(self, sent: Iterable[Attempt], steps: list[StepRecord]) -> list[int]:
        """Put back in flight the attempts in ``sent`` that still run and whose step the
        store holds DISPATCHED with their token, so the workflow read back waits for their
        answers (recovery passes over a step whose token is in flight); their tokens."""
        by_name = {st.name: st for st in steps}
        kept = []
        for attempt in sent:
            st = by_name.get(attempt.step)
            if (
                st is not None
                and st.state is StepState.DISPATCHED
                and st.token == attempt.token
                and self._dispatch.busy(attempt.agent, attempt.token)
            ):
                self._engine.inflight[attempt.token] = attempt
                kept.append(attempt.token)
        return kept
