"""Bringing workflows into memory: new ones, every unfinished one after a restart, those
awaiting their definition once it comes, and one an operator's action takes back.

:class:`Recovery` reads workflows from the store (the truth) and puts them into the
engine, applying first the operator commands held for them. What a workflow then
resumes, and the crash counted against it, is the engine's (``Resumed``). Its two parts:
``_absent`` (:class:`Absent`: the workflows out of memory, and why) and ``_reload``
(:class:`Reloads`: after a failed commit, forget a workflow and read it back). It runs
on the Scheduler's thread and reaches the Scheduler only through the :class:`Shell` it
was given.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol

from herder.actors._absent import Absent
from herder.actors._commits import CommitPipeline
from herder.actors._dispatch import Dispatcher
from herder.actors._dormancy import Dormancy
from herder.actors._engine import EngineContext
from herder.actors._messages import Define, EarlyStart, Recover
from herder.actors._reload import Reloads
from herder.actors.engine import (
    Decision,
    Engine,
    Event,
    Resumed,
    Started,
    WorkflowRun,
)
from herder.store import (
    Plan,
    StepRecord,
    StoreCorrupt,
    WorkflowRecord,
    get_logger,
    pending_commands,
)

_log = get_logger("herder.scheduler")

RESUME_CHUNK = 200  # workflows resumed per message when a definition arrives
SWEEP_EARLY = 256  # marks of early starts kept before the settled ones are dropped


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
        self._engine = engine
        self._commits = commits
        self._shell = shell
        self.absent = Absent(engine.runs)
        # Starts taken up before they were durable (Admit.early), by id: the record each
        # came with and its landing, until the same record comes again once durable, it is
        # Unadmitted or forgotten, or it landed with no Admit to follow (_sweep).
        self._early: dict[str, tuple[WorkflowRecord, EarlyStart]] = {}
        self._sweep_at = SWEEP_EARLY
        self._suspects_said = 0  # engine.suspects when last warned of (_say_suspects)
        self.reloads = Reloads(
            ctx, engine, commits, dispatch, self.absent, admit=self.admit, early=self._early
        )
        self.dormancy = Dormancy(
            engine,
            commits,
            self.absent,
            self._early,
            after=ctx.config.passivate_after,
            take_back=self.take_back,
            resume=self.taken_back,
        )
        # Recovery after a restart, a chunk per Recover message (recover_all).
        self._chunks: Iterator[list[tuple[WorkflowRecord, list[StepRecord]]]] | None = None
        self._recovery_corrupt: list[StoreCorrupt] = []
        self._recovered_count = 0
        # Ids counted chunk by chunk (no index to count them at once), in the context:
        # a predecessor that crashed mid-way counted some already (None: counted at once).
        self._counted: set[str] | None = None
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
                self.absent.await_definition(record)
            return
        if self.held:
            held = self.held.pop(record.id, None)
            if held:
                self.apply_held(list(held.values()))
        if engine.runs.get(record.id) is run:  # unless an operator's action ended it
            self._shell.handle(Resumed(record.id, recovered=recovered, crashed=crashed))

    def admit_new(
        self,
        starts: list[tuple[WorkflowRecord, list[StepRecord]]],
        *,
        early: EarlyStart | None = None,
    ) -> None:
        """``start()`` (or ``start_many``) made workflows durable, or one is on its way
        (``early``): run each, unless this Scheduler's recovery already read it from the
        store (a restart raced the start; recovery owns it and the message's records may
        be stale: running them could repeat finished steps). All run in one engine pass
        (``Started``: one decision for the batch); one with operator commands held goes
        through :meth:`admit`. An early one that is not taken up now is let go
        (:meth:`_let_go`); one taken up early that comes again once durable is ignored,
        even if it has ended meanwhile (a cancel)."""
        runs, recovered, load = self._engine.runs, self.absent.recovered, self._engine.load
        fresh = []
        for record, steps in starts:
            if early is None and self._unmark(record):  # taken up early, not forgotten:
                continue  # running, or ended already (a cancel)
            if early is not None and early.error is not None:
                # Its creation failed already: taken up, its first DISPATCHED could land
                # once a resync (for other workflows' failed writes) lets the writer go
                # on, before the Unadmit on its way: a step of no workflow.
                continue
            if record.id in runs or record.id in recovered:
                continue
            if early is not None and (self.held or record.id in self.absent.parked):
                self._let_go(record, early)
            elif self.held and record.id in self.held:
                self.admit(record, steps)
            elif load(record, steps, new=True) is not None:
                fresh.append(record.id)
                if early is not None:
                    self._early[record.id] = (record, early)
            elif early is None:  # (its definition is missing)
                self.absent.await_definition(record)
            else:
                self._let_go(record, early)
        if len(self._early) > self._sweep_at:
            self._sweep()
        if fresh:
            self._shell.handle(Started(fresh))

    def _let_go(self, record: WorkflowRecord, early: EarlyStart) -> None:
        """A start on its way that is not taken up now (operator commands are held, its id
        is parked, or its definition is missing): its Admit once durable must come. The
        epoch is bumped first, so that a start that lands after this sends it; one that
        landed before is in the store: read it back (a parked id is, when its backoff
        ends), marked so that a late Admit of it is ignored."""
        self._ctx.early_epoch += 1
        if record.id not in self.absent.parked and self.reloads.reread(record.id):
            self._early[record.id] = (record, early)

    def _unmark(self, record: WorkflowRecord) -> bool:
        """Drop the mark of the start taken up early with ``record`` (True), if that is
        the one marked under its id."""
        taken = self._early.get(record.id)
        if taken is None or taken[0] is not record:
            return False
        del self._early[record.id]
        return True

    def _sweep(self) -> None:
        """Drop the marks of early starts that landed with no Admit to follow."""
        early = self._early
        for workflow_id in [w for w, (_, start) in early.items() if start.settled]:
            del early[workflow_id]
        self._sweep_at = max(SWEEP_EARLY, 2 * len(early))

    def resume(self, run: WorkflowRun, *, recovered: bool, crashed: bool) -> None:
        """Run a workflow just put into memory, unless an operator's action ended it."""
        if self._engine.runs.get(run.record.id) is run:
            self._shell.handle(Resumed(run.record.id, recovered=recovered, crashed=crashed))

    def taken_back(self, fresh: tuple[WorkflowRun, bool, bool] | None) -> None:
        """Run what :meth:`take_back` loaded (if anything), once what it was loaded for
        (an operator's action, a completion, its timer) has been applied."""
        if fresh is not None:
            self.resume(fresh[0], recovered=fresh[1], crashed=fresh[2])

    def recover_all(self) -> None:
        """Take over the unfinished workflows in the store, a chunk at a time (a
        Scheduler's first message starts it; each chunk's dispatches are committed, then
        the next chunk comes as the next ``Recover``), so that the first of 100k resumes
        at once and the store is read and decoded as recovery goes, never all at once."""
        if self._chunks is None:
            # Starts admitted early to a previous Scheduler are let go: once durable, each
            # that did not land before the store is read below is admitted again.
            self._ctx.early_epoch += 1
            # A previous Scheduler's last batch may still be in the writer: let it land so
            # recovery reads the newest durable state, never a state about to be overwritten.
            self._store.writer.flush()
            self._hold_pending_commands()
            ids = self._store.unfinished_ids()
            if ids is None:
                self._counted = self._ctx.recovery_counted
            else:
                self.absent.recovered.update(ids)  # recovery owns them: a late Admit is stale
                # Counted at once, not a chunk at a time: the runtime opens for start()
                # after the first chunk, and must not let starts past its limit meanwhile.
                self._ctx.listener.on_recovered(len(ids), done=True)
            self._chunks = self._store.unfinished_chunks(
                RESUME_CHUNK, corrupt=self._recovery_corrupt, ids=ids
            )
        chunk = next(self._chunks, None)
        recovered = unfinished = 0
        counted = self._counted
        for record, steps in chunk or ():
            if counted is not None and record.id not in counted:
                counted.add(record.id)
                unfinished += 1
            if record.id in self._engine.runs or record.id in self.absent.dormant:
                continue  # (taken back for an operator before its chunk, and so on)
            self.absent.recovered.add(record.id)
            if (record.name, record.version) in self._plans:
                self.admit(record, steps, crashed=True)
            else:  # its steps are read again when the definition comes (on_define)
                self.absent.await_definition(record, warn=False)
            recovered += 1
        # Those with nothing to write and only far timers to wait on leave memory again.
        self.dormancy.look_at([record.id for record, _ in chunk or ()], self._ctx.clock.time())
        for exc in self._recovery_corrupt:
            self.absent.note_corrupt(exc)
        self._recovery_corrupt.clear()
        # Nothing recovered here has finished yet: finals are announced once their commit
        # is durable, and this message's transitions are submitted after it returns.
        self._ctx.listener.on_recovered(unfinished, done=chunk is None)
        self._recovered_count += recovered
        if chunk is not None:
            self._shell.settle(flush=True)  # this chunk's dispatches go out now
            self._ctx.tell_scheduler(Recover())  # the next chunk, after what arrived
            return
        self.absent.recovering = False
        self._ctx.recovery_counted = set()  # (the count is done)
        if self._recovered_count:
            _log.info("recovered %d unfinished workflows", self._recovered_count)
        self._say_suspects()
        self.absent.log_awaiting()

    def on_define(self, plan: Plan) -> None:
        """A definition arrived: resume the workflows that awaited it, a chunk at a time."""
        # In chunks, each followed by the usual dispatch and flush, so that the first of
        # 100k recovered workflows runs at once instead of after all have been read.
        key = (plan.name, plan.version)
        chunk = self.absent.defined(key, RESUME_CHUNK)
        corrupt: list[StoreCorrupt] = []
        # One read transaction for the chunk's records and steps, not one per workflow.
        for records in self._store.unfinished_chunks(
            max(len(chunk), 1), corrupt=corrupt, ids=chunk
        ):
            for record, steps in records:
                self.admit(record, steps, crashed=True)
        self.dormancy.look_at(chunk, self._ctx.clock.time())  # (as in recover_all)
        for exc in corrupt:
            self.absent.note_corrupt(exc)
        if self.absent.awaits(key):
            # Dispatch and commit this chunk's first steps now: the inbox will not drain
            # (which is when a commit normally goes out) until every chunk is in.
            self._shell.settle(flush=True)
            self._ctx.tell_scheduler(Define(plan))  # the next chunk, after what arrived
        else:
            self._say_suspects()

    def _say_suspects(self) -> None:
        """Warn of the suspects deferred since the last warning (recovery's, or a late
        definition's), once: re-run half a second apart, hundreds of them caught in two
        quick crashes make a recovery take minutes, which nothing else explains."""
        suspects, self._suspects_said = (
            self._engine.suspects - self._suspects_said,
            self._engine.suspects,
        )
        if suspects:
            stagger = self._engine.defaults.recovery_stagger
            _log.warning(
                "%d workflows had attempts running at two or more crashes in a row "
                "(possible poison work): they are re-run one at a time, %g s apart, after "
                "the rest, the last about %.0f s from now (docs/recovery.md)",
                suspects, stagger, self._engine.suspects * stagger,
            )  # fmt: skip

    def drop_failed_starts(self) -> None:
        """Forget the starts taken up early whose creation failed, before the writer is
        resynced: their Unadmit may still be on its way (told by the caller's thread),
        and a first DISPATCHED of theirs committed after the resync would be a step of
        no workflow."""
        for record, start in list(self._early.values()):
            if start.error is not None:
                self.unadmit(record)

    def unadmit(self, record: WorkflowRecord) -> None:
        """A start taken up early (``record``) was not created: forget it, unless what
        runs under its id came from elsewhere (another start, the store)."""
        self._unmark(record)
        run = self._engine.runs.get(record.id)
        if run is not None and run.origin is record:
            self.reloads.reread(record.id)

    # -- for operator commands and actions ----------------------------------------------

    def _hold_pending_commands(self) -> None:
        """Hold the operator commands queued while no runtime ran, by workflow: each is
        applied when its workflow is taken back, before anything of it runs again (one for
        a workflow that is never taken back is answered when the sweep hands it over)."""
        try:  # (a damaged one is passed over, the others still apply; the sweep logs it)
            pending = pending_commands(self._store, corrupt=[])
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
        was = self.absent.release(record)
        run = self._engine.load(record, steps)  # (None: in memory already, see above)
        if run is None:
            return None
        # One recovery has not reached yet resumes as its chunk would have (crashed: what
        # it had running is run again, the crash counted); its chunk then passes it over.
        crashed = was == "awaiting" or (was == "" and self.absent.recovering)
        return run, was == "parked", crashed
