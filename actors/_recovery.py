"""Bringing workflows into memory: new ones, every unfinished one after a restart, those
awaiting their definition once it comes, and those reloaded after a failed commit.

:class:`Recovery` keeps the workflows that are unfinished but not in memory (awaiting
their definition; parked after a failed commit, until a backoff ends) and the operator
commands held for them, reads workflows from the store (the truth) and puts them into
the engine. What a workflow then resumes, and the crash counted against it, is the
engine's (``Resumed``). It runs on the Scheduler's thread and reaches the Scheduler
only through the :class:`Shell` it was given.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol

from herder.actors._clock import Clock
from herder.actors._commit_backoff import CommitBackoff, Reload
from herder.actors._commits import CommitPipeline
from herder.actors._dispatch import Dispatcher
from herder.actors._engine import EngineContext
from herder.actors._messages import Define, Recover
from herder.actors.engine import (
    Decision,
    Engine,
    Event,
    Refuse,
    Resolve,
    Resumed,
    Started,
    WorkflowRun,
)
from herder.store import (
    Plan,
    StepRecord,
    StoreCorrupt,
    StoreIOError,
    WorkflowRecord,
    pending_commands,
)

_log = logging.getLogger("herder.scheduler")

RESUME_CHUNK = 200  # workflows resumed per message when a definition arrives


class Shell(Protocol):
    """What recovery and operator actions need of the Scheduler they run in."""

    def handle(self, event: Event) -> None:
        """Hand ``event`` to the engine; commit and perform what it decided."""

    def perform(self, decision: Decision) -> None:
        """Commit and perform what the engine decided (outside of an event)."""

    def settle(self, *, flush: bool = False) -> None:
        """Dispatch what became runnable; flush the open writes when due (or now)."""


Commands = list[dict[str, Any]]


class Recovery:
    """The workflows not in memory, and bringing them back; see the module docstring."""

    def __init__(
        self,
        ctx: EngineContext,
        engine: Engine,
        commits: CommitPipeline,
        dispatch: Dispatcher,
        shell: Shell,
        *,
        plans: Mapping[tuple[str, int], Plan],
    ) -> None:
        self._ctx = ctx
        self._plans = plans  # the Scheduler's (changed only by its Define messages)
        self._store = ctx.store
        self._clock: Clock = ctx.clock
        self._engine = engine
        self._commits = commits
        self._dispatch = dispatch
        self._shell = shell
        self._backoff = CommitBackoff()
        # Recovered workflows awaiting their definition, by definition (ordered sets).
        self._awaiting: dict[tuple[str, int], dict[str, None]] = {}
        self._parked: set[str] = set()  # forgotten after a failed commit, reloaded later
        self._recovered: set[str] = set()  # unfinished ids that recovery took over
        # Starts taken up before they were durable (Admit.early), by the record each came
        # with, until the same record comes again once durable (or is Unadmitted).
        self._early: dict[str, WorkflowRecord] = {}
        self._corrupt: dict[str, str] = {}  # "db:key" -> why, for records recovery skipped
        # Recovery after a restart, a chunk per Recover message (recover_all).
        self._chunks: Iterator[list[tuple[WorkflowRecord, list[StepRecord]]]] | None = None
        # Until its last chunk, any workflow not in memory may be one recovery has not
        # reached yet: its timers are wanted (a WAITING step has no other wake-up).
        self._recovering = True
        self._recovery_corrupt: list[StoreCorrupt] = []
        self._recovered_count = 0
        # Operator commands held until their workflow is taken back: id -> command by id.
        self.held: dict[str, dict[int, dict[str, Any]]] = {}
        # Applies the commands held for a workflow just loaded (the operator's).
        self.apply_held: Callable[[Commands], None] = lambda _commands: None

    # -- bringing workflows in ---------------------------------------------------------

    def admit(
        self,
        record: WorkflowRecord,
        steps: list[StepRecord],
        *,
        recovered: bool = False,
        crashed: bool = False,
    ) -> None:
        """Run a workflow: a new one, one reloaded from the store (``recovered``), or one
        a previous Scheduler or process left unfinished (``crashed``: its crash is
        counted). Operator commands held for it are applied first, before anything of it
        runs again.

        Each of 100k recovered workflows comes through here, so it is written flat
        (``resume`` inline): the engine's ``load`` says None both for a workflow in
        memory already and for one whose definition is missing."""
        engine = self._engine
        run = engine.load(record, steps)
        if run is None:
            if record.id not in engine.runs:
                self.await_definition(record)
            return
        if self.held:
            held = self.held.pop(record.id, None)
            if held:
                self.apply_held(list(held.values()))
        if engine.runs.get(record.id) is run:  # unless an operator's action ended it
            self._shell.handle(Resumed(record.id, recovered=recovered, crashed=crashed))

    def admit_new(
        self, starts: list[tuple[WorkflowRecord, list[StepRecord]]], *, early: bool = False
    ) -> None:
        """``start()`` (or ``start_many``) made workflows durable: run each, unless this
        Scheduler's recovery already read it from the store (a restart raced the start;
        recovery owns it and the message's records may be stale: running them could
        repeat finished steps). All run in one engine pass (``Started``: one decision for
        the batch); one with operator commands held goes through :meth:`admit`."""
        runs, recovered, load = self._engine.runs, self._recovered, self._engine.load
        fresh = []
        for record, steps in starts:
            if not early and self._early.get(record.id) is record:
                del self._early[record.id]  # taken up early and not forgotten since:
                continue  # running, or ended already (a cancel)
            if record.id in runs or record.id in recovered:
                continue
            if early and (self.held or record.id in self._parked):
                continue  # (left to the Admit once durable)
            if self.held and record.id in self.held:
                self.admit(record, steps)
            elif load(record, steps, new=True) is not None:
                fresh.append(record.id)
                if early:
                    self._early[record.id] = record
            elif not early:  # (its definition is missing)
                self.await_definition(record)
        if fresh:
            self._shell.handle(Started(fresh))

    def resume(self, run: WorkflowRun, *, recovered: bool, crashed: bool) -> None:
        """Run a workflow just put into memory, unless an operator's action ended it."""
        if self._engine.runs.get(run.record.id) is run:
            self._shell.handle(Resumed(run.record.id, recovered=recovered, crashed=crashed))

    def recover_all(self) -> None:
        """Take over the unfinished workflows in the store, a chunk at a time (a
        Scheduler's first message starts it; each chunk's dispatches are committed, then
        the next chunk comes as the next ``Recover``), so that the first of 100k resumes
        at once and the store is read and decoded as recovery goes, never all at once."""
        if self._chunks is None:
            # A previous Scheduler's last batch may still be in the writer: let it land so
            # recovery reads the newest durable state, never a state about to be overwritten.
            self._store.writer.flush()
            self._hold_pending_commands()
            ids = self._store.unfinished_ids()
            if ids is not None:
                self._recovered.update(ids)  # recovery owns them: a late Admit is stale
            self._chunks = self._store.unfinished_chunks(
                RESUME_CHUNK, corrupt=self._recovery_corrupt, ids=ids
            )
        chunk = next(self._chunks, None)
        recovered = unfinished = 0
        for record, steps in chunk or ():
            unfinished += 1
            if record.id in self._engine.runs:
                continue
            self._recovered.add(record.id)
            if (record.name, record.version) in self._plans:
                self.admit(record, steps, crashed=True)
            else:  # its steps are read again when the definition comes (on_define)
                self.await_definition(record, warn=False)
            recovered += 1
        for exc in self._recovery_corrupt:
            self._note_corrupt(exc)
        self._recovery_corrupt.clear()
        # Nothing recovered here has finished yet: finals are announced once their commit
        # is durable, and this message's transitions are submitted after it returns.
        self._ctx.listener.on_recovered(unfinished, done=chunk is None)
        self._recovered_count += recovered
        if chunk is not None:
            self._shell.settle(flush=True)  # this chunk's dispatches go out now
            self._ctx.tell_scheduler(Recover())  # the next chunk, after what arrived
            return
        self._recovering = False
        if self._recovered_count:
            _log.info("recovered %d unfinished workflows", self._recovered_count)
        for (name, version), waiting in self._awaiting.items():  # one line per definition
            _log.warning(
                "%d unfinished workflows (e.g. %s): each awaits definition %s version %d; "
                "register it (and its agents) to resume them, best in Runtime(path, setup=...)",
                len(waiting),
                next(iter(waiting)),
                name,
                version,
            )

    def on_define(self, plan: Plan) -> None:
        """A definition arrived: resume the workflows that awaited it, a chunk at a time."""
        # In chunks, each followed by the usual dispatch and flush, so that the first of
        # 100k recovered workflows runs at once instead of after all have been read.
        key = (plan.name, plan.version)
        waiting = self._awaiting.get(key, {})
        chunk = list(itertools.islice(waiting, RESUME_CHUNK))
        for workflow_id in chunk:
            del waiting[workflow_id]
        if not waiting:
            self._awaiting.pop(key, None)
        corrupt: list[StoreCorrupt] = []
        # One read transaction for the chunk's records and steps, not one per workflow.
        for records in self._store.unfinished_chunks(
            max(len(chunk), 1), corrupt=corrupt, ids=chunk
        ):
            for record, steps in records:
                self.admit(record, steps, crashed=True)
        for exc in corrupt:
            self._note_corrupt(exc)
        if key in self._awaiting:
            # Dispatch and commit this chunk's first steps now: the inbox will not drain
            # (which is when a commit normally goes out) until every chunk is in.
            self._shell.settle(flush=True)
            self._ctx.tell_scheduler(Define(plan))  # the next chunk, after what arrived

    # -- after a failed commit ---------------------------------------------------------

    def committed(self) -> None:
        """A commit landed: the next failure starts its backoff afresh."""
        self._backoff.succeeded()

    def reload_later(self, failed: list[str], errors: list[BaseException | None]) -> None:
        """Workflows whose commit failed: read them back, at once or after a backoff."""
        delay = self._backoff.failed()
        error = next(e for e in errors if e is not None)
        _log.error(
            "transitions of %d workflows failed: %s; reloading them in %.2fs",
            len(failed),
            error,
            delay,
        )
        if delay <= 0:
            for workflow_id in failed:
                self.reread(workflow_id)
            return
        for workflow_id in failed:
            self._forget(workflow_id)
            self._parked.add(workflow_id)
        ids = tuple(failed)
        ctx = self._ctx
        self._clock.call_later(delay, lambda: ctx.tell_scheduler(Reload(ids)))

    def on_reload(self, msg: Reload) -> None:
        """A backoff after a failed commit ended: read the parked workflows back."""
        for workflow_id in msg.workflow_ids:
            if workflow_id in self._parked:
                self._parked.discard(workflow_id)
                self._readmit(workflow_id)

    def unadmit(self, record: WorkflowRecord) -> None:
        """A start taken up early (``record``) was not created: forget it, unless what
        runs under its id came from elsewhere (another start, the store)."""
        if self._early.get(record.id) is record:
            del self._early[record.id]
        run = self._engine.runs.get(record.id)
        if run is not None and run.origin is record:
            self.reread(record.id)

    def reread(self, workflow_id: str) -> None:
        """Drop a workflow from memory and run what the store holds of it, if anything."""
        self._forget(workflow_id)
        self._readmit(workflow_id)

    def _forget(self, workflow_id: str) -> None:
        """Drop a workflow from memory (after a failed commit); the store keeps the truth."""
        self._early.pop(workflow_id, None)  # taken up early: its Admit once durable runs it
        engine = self._engine
        run = engine.runs.get(workflow_id)
        attempts = [] if run is None else [engine.inflight.get(t) for t in run.attempts]
        engine.forget(workflow_id)
        held = self._commits.drop(workflow_id)
        for effect in () if held is None else held.effects:
            if isinstance(effect, Resolve | Refuse) and not effect.future.done():
                effect.future.set_exception(
                    StoreIOError(f"workflow {workflow_id!r} was reloaded after a failed commit")
                )
        self._dispatch.release(attempts)

    def _readmit(
        self, workflow_id: str, record: WorkflowRecord | None = None, *, crashed: bool = False
    ) -> bool:
        """Read an unfinished workflow back from the store and run it; True if it runs.

        ``crashed``: a previous Scheduler or process left it unfinished (see ``admit``).
        A corrupt record leaves that one workflow where it is (logged, counted in stats);
        every other workflow keeps running.
        """
        try:
            if record is None:
                record = self._store.get_workflow(workflow_id)
            if record is None or record.state.is_final:
                return False
            steps = self._store.steps_of(workflow_id)
        except StoreCorrupt as exc:
            self._note_corrupt(exc)
            return False
        self.admit(record, steps, recovered=not crashed, crashed=crashed)
        return True

    def _note_corrupt(self, exc: StoreCorrupt) -> None:
        _log.error("%s; the workflow it belongs to stays where it is", exc)
        self._corrupt[f"{exc.db}:{exc.key!r}"] = exc.reason

    # -- workflows out of memory -------------------------------------------------------

    def await_definition(self, record: WorkflowRecord, *, warn: bool = True) -> None:
        """Park a workflow until its definition is registered; warn once per definition
        (a restart may park 100k workflows, and stats() shows the count). Recovery passes
        ``warn=False`` and logs one summary line per definition when it is done."""
        waiting = self._awaiting.setdefault((record.name, record.version), {})
        if not waiting and warn:
            _log.warning(
                "workflow %s (and any others of it) awaits definition %s version %d; "
                "register it to resume",
                record.id,
                record.name,
                record.version,
            )
        waiting[record.id] = None

    def _hold_pending_commands(self) -> None:
        """Hold the operator commands queued while no runtime ran, by workflow: each is
        applied when its workflow is taken back, before anything of it runs again (one for
        a workflow that is never taken back is answered when the sweep hands it over)."""
        try:
            pending = pending_commands(self._store)
        except StoreCorrupt as exc:
            _log.error("cannot read the commands database: %s", exc)
            return
        for command in pending:
            self.held.setdefault(str(command.get("workflow_id")), {})[command["id"]] = command

    def take_back(self, workflow_id: str) -> tuple[WorkflowRun, bool, bool] | None:
        """Load an unfinished workflow that is not in memory, so that an operator's action
        applies to it now and before anything of it runs again: one recovery has not taken
        back yet (its chunk is still to come), one reloading after a failed commit, or one
        whose start is durable but not yet admitted.

        Returns ``(run, recovered, crashed)`` for :meth:`resume` once the action is
        applied, or None if there is nothing to take back: the workflow is in memory,
        unknown, final, awaits its definition, or its last transition is being written.
        """
        if workflow_id in self._engine.runs or self._commits.pending(workflow_id):
            return None
        record = self._store.get_workflow(workflow_id)
        if record is None or record.state.is_final:
            return None
        if (record.name, record.version) not in self._plans:
            return None
        steps = self._store.steps_of(workflow_id)
        was = self.release(record)
        run = self._engine.load(record, steps)  # (None: in memory already, see above)
        if run is None:
            return None
        return run, was == "parked", was == "awaiting"

    def release(self, record: WorkflowRecord) -> str:
        """Take a workflow off the lists of those to be read back later, and keep a late
        ``Admit`` of it from running stale records; returns which list it was on
        ("awaiting" its definition, "parked" after a failed commit, or "")."""
        self._recovered.add(record.id)
        if record.id in self._parked:
            self._parked.discard(record.id)
            return "parked"
        key = (record.name, record.version)
        waiting = self._awaiting.get(key)
        if waiting is None or record.id not in waiting:
            return ""
        del waiting[record.id]
        if not waiting:
            del self._awaiting[key]
        return "awaiting"

    def wanted(self, workflow_id: str) -> bool:
        """Whether the workflow's timers are still wanted: it is in memory, awaits its
        definition, is parked after a failed commit, or recovery may not have reached it
        yet (it is still reading the store, a chunk per message)."""
        return (
            self._recovering
            or workflow_id in self._engine.runs
            or workflow_id in self._parked
            or any(workflow_id in ids for ids in self._awaiting.values())
        )

    def stats(self) -> dict[str, Any]:
        """Workflows awaiting their definition, and records recovery skipped as corrupt."""
        return {
            "awaiting_definition": {
                f"{name}@{version}": len(ids) for (name, version), ids in self._awaiting.items()
            },
            "corrupt": dict(self._corrupt),
        }
