"""Bringing workflows back into memory: after a restart, once their definition comes,
and after a failed commit (reload, with a backoff). What a workflow resumes (and the
crash counted against it) is the engine's (``Resumed``).

The store is the truth; these read it and hand each unfinished workflow to the
Scheduler's state machine, so they take the Scheduler as first argument.
"""

from __future__ import annotations

import itertools
import logging
from typing import TYPE_CHECKING

from herder.actors._commit_backoff import Reload
from herder.actors._messages import Define
from herder.actors.engine import Refuse, Resolve, WorkflowRun
from herder.store import (
    Plan,
    StoreCorrupt,
    StoreIOError,
    WorkflowRecord,
    pending_commands,
)

if TYPE_CHECKING:
    from herder.actors._scheduler import Scheduler

_log = logging.getLogger("herder.scheduler")

RESUME_CHUNK = 200  # workflows resumed per message when a definition arrives


def on_define(s: Scheduler, plan: Plan) -> None:
    """A definition arrived: resume the workflows that awaited it, a chunk at a time."""
    # In chunks, each followed by the usual dispatch and flush, so that the first of
    # 100k recovered workflows runs at once instead of after all have been read.
    key = (plan.name, plan.version)
    waiting = s._awaiting.get(key, {})
    chunk = list(itertools.islice(waiting, RESUME_CHUNK))
    for workflow_id in chunk:
        del waiting[workflow_id]
    if not waiting:
        s._awaiting.pop(key, None)
    for workflow_id in chunk:
        _readmit(s, workflow_id, crashed=True)
    if key in s._awaiting:
        # Dispatch and commit this chunk's first steps now: the inbox will not drain
        # (which is when a commit normally goes out) until every chunk is in.
        s._after_message(flush=True)
        s.actor_ref.tell(Define(plan))  # the next chunk, after what arrived meanwhile


def recover_all(s: Scheduler) -> None:
    """Take over every unfinished workflow in the store (a Scheduler's first message)."""
    # A previous Scheduler's last batch may still be in the writer: let it land so
    # recovery reads the newest durable state, never a state about to be overwritten.
    s._writer.flush()
    hold_pending_commands(s)
    recovered = unfinished = 0
    corrupt: list[StoreCorrupt] = []
    for record in s._store.unfinished(corrupt=corrupt):  # finished ones are never decoded
        unfinished += 1
        if record.id in s._engine.runs:
            continue
        s._recovered.add(record.id)
        if (record.name, record.version) in s._ctx.plans:
            recovered += _readmit(s, record.id, record, crashed=True)
        else:  # its steps are read when the definition comes (on_define)
            await_definition(s, record, warn=False)
            recovered += 1
    for exc in corrupt:
        _note_corrupt(s, exc)
    # Nothing recovered here has finished yet: finals are announced once their commit
    # is durable, and this message's transitions are submitted after it returns.
    report, s._ctx.on_recovered = s._ctx.on_recovered, None
    if report is not None:
        report(unfinished)
    if recovered:
        _log.info("recovered %d unfinished workflows", recovered)
    for (name, version), ids in s._awaiting.items():  # one line per definition, not workflow
        _log.warning(
            "%d unfinished workflows (e.g. %s): each awaits definition %s version %d; register "
            "it (and its agents) to resume them, best in Runtime(path, setup=...)",
            len(ids),
            next(iter(ids)),
            name,
            version,
        )


def reload_later(s: Scheduler, failed: list[str], errors: list[BaseException | None]) -> None:
    """Workflows whose commit failed: read them back, at once or after a backoff."""
    delay = s._backoff.failed()
    error = next(e for e in errors if e is not None)
    _log.error(
        "transitions of %d workflows failed: %s; reloading them in %.2fs",
        len(failed),
        error,
        delay,
    )
    if delay <= 0:
        for workflow_id in failed:
            _reload(s, workflow_id)
        return
    for workflow_id in failed:
        _forget(s, workflow_id)
        s._parked.add(workflow_id)
    ids = tuple(failed)
    s._clock.call_later(delay, lambda: s._ctx.tell_scheduler(Reload(ids)))


def on_reload(s: Scheduler, msg: Reload) -> None:
    """A backoff after a failed commit ended: read the parked workflows back."""
    for workflow_id in msg.workflow_ids:
        if workflow_id in s._parked:
            s._parked.discard(workflow_id)
            _readmit(s, workflow_id)


def _reload(s: Scheduler, workflow_id: str) -> None:
    """Forget what memory believes about a workflow and read it back from the store."""
    _forget(s, workflow_id)
    _readmit(s, workflow_id)


def _forget(s: Scheduler, workflow_id: str) -> None:
    """Drop a workflow from memory (after a failed commit); the store keeps the truth."""
    engine = s._engine
    run = engine.runs.get(workflow_id)
    attempts = [] if run is None else [engine.inflight.get(t) for t in run.attempts]
    engine.forget(workflow_id)
    held = s._commits.drop(workflow_id)
    for effect in () if held is None else held.effects:
        if isinstance(effect, Resolve | Refuse) and not effect.future.done():
            effect.future.set_exception(
                StoreIOError(f"workflow {workflow_id!r} was reloaded after a failed commit")
            )
    for attempt in attempts:
        # An attempt already sent keeps its instance busy until its (now stale) answer
        # arrives; one never sent frees its reservation now.
        if attempt is None or attempt.sent:
            continue
        if s._hosted.release(attempt.agent, attempt.instance, attempt.token, s._clock.time()):
            s._dirty_agents.add(attempt.agent)


def _readmit(
    s: Scheduler, workflow_id: str, record: WorkflowRecord | None = None, *, crashed: bool = False
) -> bool:
    """Read an unfinished workflow back from the store and run it; True if it runs.

    ``crashed``: a previous Scheduler or process left it unfinished (see ``_admit``).

    A corrupt record leaves that one workflow where it is (logged, counted in stats);
    every other workflow keeps running.
    """
    try:
        if record is None:
            record = s._store.get_workflow(workflow_id)
        if record is None or record.state.is_final:
            return False
        steps = s._store.steps_of(workflow_id)
    except StoreCorrupt as exc:
        _note_corrupt(s, exc)
        return False
    s._admit(record, steps, recovered=not crashed, crashed=crashed)
    return True


def _note_corrupt(s: Scheduler, exc: StoreCorrupt) -> None:
    _log.error("%s; the workflow it belongs to stays where it is", exc)
    s._corrupt[f"{exc.db}:{exc.key!r}"] = exc.reason


def await_definition(s: Scheduler, record: WorkflowRecord, *, warn: bool = True) -> None:
    """Park a workflow until its definition is registered; warn once per definition
    (a restart may park 100k workflows, and stats() shows the count). Recovery passes
    ``warn=False`` and logs one summary line per definition when it is done."""
    waiting = s._awaiting.setdefault((record.name, record.version), {})
    if not waiting and warn:
        _log.warning(
            "workflow %s (and any others of it) awaits definition %s version %d; "
            "register it to resume",
            record.id,
            record.name,
            record.version,
        )
    waiting[record.id] = None


def hold_pending_commands(s: Scheduler) -> None:
    """Hold the operator commands queued while no runtime ran, by workflow: each is
    applied when its workflow is taken back, before anything of it runs again (a command
    for a workflow that is never taken back is answered when the sweep hands it over)."""
    try:
        pending = pending_commands(s._store)
    except StoreCorrupt as exc:
        _log.error("cannot read the commands database: %s", exc)
        return
    for command in pending:
        s._held.setdefault(str(command.get("workflow_id")), {})[command["id"]] = command


def take_back(s: Scheduler, workflow_id: str) -> tuple[WorkflowRun, bool, bool] | None:
    """Load an unfinished workflow that is not in memory, so that an operator's action
    applies to it now and before anything of it runs again: one recovery has not taken
    back yet (its chunk is still to come), one reloading after a failed commit, or one
    whose start is durable but not yet admitted.

    Returns ``(run, recovered, crashed)`` for ``Scheduler._resume`` once the action is
    applied, or None if there is nothing to take back: the workflow is in memory,
    unknown, final, awaits its definition, or its last transition is being written.
    """
    if workflow_id in s._engine.runs or s._commits.pending(workflow_id):
        return None
    record = s._store.get_workflow(workflow_id)
    if record is None or record.state.is_final:
        return None
    if (record.name, record.version) not in s._ctx.plans:
        return None
    steps = s._store.steps_of(workflow_id)
    was = release(s, record)
    run = s._load(record, steps)
    if run is None:
        return None
    return run, was == "parked", was == "awaiting"


def release(s: Scheduler, record: WorkflowRecord) -> str:
    """Take a workflow off the lists of those to be read back later, and keep a late
    ``Admit`` of it from running stale records; returns which list it was on
    ("awaiting" its definition, "parked" after a failed commit, or "")."""
    s._recovered.add(record.id)
    if record.id in s._parked:
        s._parked.discard(record.id)
        return "parked"
    key = (record.name, record.version)
    waiting = s._awaiting.get(key)
    if waiting is None or record.id not in waiting:
        return ""
    del waiting[record.id]
    if not waiting:
        del s._awaiting[key]
    return "awaiting"


def is_awaiting(s: Scheduler, workflow_id: str) -> bool:
    """True if the workflow is parked until its definition is registered."""
    return any(workflow_id in ids for ids in s._awaiting.values())
