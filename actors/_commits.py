"""The commit pipeline: the engine's decisions as each flush's writes per workflow (keys,
timers and history events derived here), one commit in flight per workflow, and keeping
the promises a durable batch makes.

Deadline timers are per batch (hot-path.md section 4): an attempt recorded with no timer of
its own (``timer_ms`` None, ``engine.dispatch``) is listed in one batch entry per flush,
due at the earliest of the flush's attempt deadlines, and nothing deletes it when the
attempt ends; the entry, once due, is read by ``_due`` (stale items, whose step moved
on, are dropped) and replaced by one holding the attempts still watched, if any."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pykka

from herder.actors._engine import EngineContext
from herder.actors._errors import UnknownWorkflow
from herder.actors._guards import Conditional, as_transition
from herder.actors._messages import Committed
from herder.actors.engine import (
    Announce,
    Decision,
    Effect,
    HistoryWrite,
    Refuse,
    Reply,
    Resolve,
    StepWrite,
    TimerDelete,
    WorkflowWrite,
    attempt_due_ms,
)
from herder.store import (
    BATCH_TIMER,
    BatchSink,
    Delete,
    Expect,
    Ops,
    Put,
    StepRecord,
    Watch,
    WorkflowRecord,
    WorkflowState,
    batch_entry,
    batch_put,
    encode,
    encoder,
    get_logger,
    history_put,
    indexed,
    key_prefix,
    step_history,
    step_timer_key,
    timer_entry,
    timer_key,
    workflow_history,
    workflow_key,
)

_log = get_logger("herder.scheduler")


class Txn:
    """The writes and after-commit effects of one workflow within one flush.

    ``ops`` maps ``(db, key)`` to the encoded value, or None for a delete; a later write
    of the same key wins. ``armed``: the attempts whose deadline the flush's batch entry
    watches. ``encode``: its pipeline's own (``store.encoder``).
    """

    __slots__ = ("armed", "due", "effects", "encode", "ops", "prefix")

    def __init__(self, workflow_id: str, encode: Callable[[Any], bytes] = encode) -> None:
        self.prefix = key_prefix(workflow_id)  # its step and history keys start so
        self.encode = encode
        self.ops: Ops = {}
        self.effects: list[Effect] = []
        self.armed: list[list[Any]] = []  # [workflow id, step, token]: batch_entry's items
        self.due = 0  # the earliest of their deadlines (ms), once there is one

    def put_step(self, old: StepRecord | None, new: StepRecord) -> None:
        """Write a step record, moving its timer along with it: its own entry, or, for a
        new attempt with no timer of its own, a place in the flush's batch entry."""
        ops = self.ops
        key = self.prefix + new.name.encode("utf-8")  # step_key, of this txn's workflow
        timer_ms = new.timer_ms
        if old is not None and old.timer_ms is not None and old.timer_ms != timer_ms:
            ops[("timers", step_timer_key(old.timer_ms, key))] = None
        if timer_ms is not None:
            ops[("timers", step_timer_key(timer_ms, key))] = self.encode(timer_entry(new.token))
        elif new.deadline is not None and (
            old is None or old.token != new.token or old.deadline != new.deadline
        ):
            due = attempt_due_ms(new) or 0
            if not self.armed or due < self.due:
                self.due = due
            self.armed.append([new.workflow_id, new.name, new.token])
        ops[("steps", key)] = self.encode(new.to_stored())

    def put_workflow(self, record: WorkflowRecord) -> None:
        """Write a workflow record, carrying the facts the store's ``recent`` index files
        it under, so the writer need not decode it again (~2.6 us, a tenth of the
        writer's GIL time, against ~0.8 us here)."""
        raw = self.encode(record.to_stored())
        self.ops[("workflows", workflow_key(record.id))] = indexed(
            raw, record.updated, record.state
        )

    def delete_timer(self, key: bytes) -> None:
        """Delete a timer no step wants any more."""
        self.ops[("timers", key)] = None

    def put(self, *ops: Put | Delete) -> None:
        """Add raw writes (history, commands); a later write of the same key wins."""
        for op in ops:
            self.ops[(op.db, op.key)] = op.value if type(op) is Put else None


class CommitPipeline:
    """The Scheduler's writes on their way to disk: one open Txn per workflow, gathered
    while a flush's messages are handled, and at most one commit in flight per workflow.

    A workflow's next transition is held back until the previous one is known durable,
    so a failed commit can never be followed by a later one that builds on it (e.g. a
    dependent's DISPATCHED).
    """

    __slots__ = (
        "_encode",
        "_ending",
        "_next_token",
        "committing",
        "conditional",
        "guards",
        "loose",
        "open",
        "parking",
        "resync_due",
        "unacked",
    )

    def __init__(
        self, next_token: Callable[[], int], ending: Callable[[str], None] | None = None
    ) -> None:
        self._next_token = next_token
        self._ending = ending
        self._encode = encoder()  # (this pipeline's: only the Scheduler's thread uses it)
        self.open: dict[str, Txn] = {}
        # Writes of no workflow (due batch entries replaced, see rearm), sent with the
        # next flush as the effect-less entry of workflow BATCH_TIMER.
        self.loose: Ops = {}
        self.committing: set[str] = set()
        # Fail-stop (Writer.resync): workflow entries handed to the writer and not yet
        # returned, and whether a failure wants a resync once none is left (until then
        # the writer refuses every batch, and the Scheduler holds its writes).
        self.unacked = 0
        self.resync_due = False
        # An operator's action on a workflow read from the store (not held in memory): its
        # writes hold only if the workflow is still as read (``guard``), and go to the
        # writer as a transition of their own (``_guards.send_conditional``), not merged.
        self.guards: dict[str, tuple[Expect, ...]] = {}
        self.conditional: list[Conditional] = []
        # Workflows whose parking (NEEDS_ATTENTION) is decided and not yet durable: out of
        # memory, the store still shows them running (an operator's action says so).
        self.parking: set[str] = set()

    def txn(self, workflow_id: str) -> Txn:
        """The workflow's transaction in this flush, opened on first use."""
        txn = self.open.get(workflow_id)
        if txn is None:
            txn = self.open[workflow_id] = Txn(workflow_id, self._encode)
        return txn

    def guard(self, workflow_id: str, state: WorkflowState) -> None:
        """Write the workflow's next transaction only if its record is still in ``state``
        when it commits. The Scheduler read it from the store and holds no commit of it, so
        a purge (retention, ``herder purge``) may delete it meanwhile: its writes must not
        bring any of it back. They fail instead, with :class:`UnknownWorkflow`."""
        self.guards[workflow_id] = (Expect("workflows", workflow_key(workflow_id), "state", state),)

    def pending(self, workflow_id: str) -> bool:
        """True while a transition of the workflow is not yet known durable."""
        return workflow_id in self.committing or workflow_id in self.open

    def apply(self, decision: Decision) -> None:
        """Add a decision's writes (each step and workflow change with its history event,
        one per transition, in the order they were made) and its after-commit effects."""
        open_txns, pack, seq = self.open, self._encode, self._next_token
        for write in decision.writes:
            if type(write) is StepWrite:
                # (the txn is looked up and opened inline: this runs ~2 times per step)
                workflow_id, was, now = write.workflow_id, write.old, write.new
                txn = open_txns.get(workflow_id)
                if txn is None:
                    txn = open_txns[workflow_id] = Txn(workflow_id, pack)
                txn.put_step(was, now)
                if was is None:
                    continue
                entry = step_history(
                    txn.prefix, was, now, write.now, note=write.note, seq=seq, pack=pack
                )
                if entry is not None:  # None: not a transition (a heartbeat)
                    txn.ops[entry[0]] = entry[1]
            elif type(write) is WorkflowWrite:
                old, new = write.old, write.new
                txn = self.txn(new.id)
                txn.put_workflow(new)
                if new.state is not old.state:
                    entry = workflow_history(txn.prefix, self._next_token(), old.state, new, pack)
                    txn.ops[entry[0]] = entry[1]
            elif type(write) is HistoryWrite:
                history = history_put(write.workflow_id, self._next_token(), write.event)
                self.txn(write.workflow_id).put(history)
            else:
                assert type(write) is TimerDelete
                key = timer_key(write.due_ms, write.workflow_id, write.step)
                self.txn(write.workflow_id).delete_timer(key)
        for workflow_id, effect in decision.effects:
            txn = open_txns.get(workflow_id)  # (opened by the effect's writes, as a rule)
            if txn is None:
                txn = open_txns[workflow_id] = Txn(workflow_id, self._encode)
            txn.effects.append(effect)
            if type(effect) is Announce:
                if self._ending is not None:
                    self._ending(workflow_id)
                if effect.record.state is WorkflowState.NEEDS_ATTENTION:
                    self.parking.add(workflow_id)

    def take(self) -> tuple[Ops, list[tuple[str, list[Effect]]], Watch | None]:
        """The writes that may be committed now (their workflow has none in flight),
        merged into one set of ops, and their after-commit effects per workflow; those
        workflows count as in flight. Workflows' keys never overlap, so merging is safe."""
        ops: Ops = {}
        effects: list[tuple[str, list[Effect]]] = []
        armed: list[list[Any]] = []
        due = 0
        committing, ready = self.committing, self.open
        if committing.isdisjoint(ready):  # (as a rule: every open workflow may go)
            self.open = {}
        else:
            ready = {wf: ready.pop(wf) for wf in [wf for wf in ready if wf not in committing]}
        if self.guards:  # (an operator's action on a workflow read from the store)
            for wf in [wf for wf in ready if wf in self.guards]:
                self._set_aside(wf, ready.pop(wf), self.guards.pop(wf))
        for wf, txn in ready.items():
            committing.add(wf)
            ops.update(txn.ops)
            effects.append((wf, txn.effects))
            if txn.armed:
                if not armed or txn.due < due:
                    due = txn.due
                armed += txn.armed
        if self.loose:
            ops.update(self.loose)
            self.loose = {}
            effects.append((BATCH_TIMER, []))
        self.unacked += len(effects)
        # The writer writes one batch entry for every batch its transaction merges.
        return ops, effects, (due, armed) if armed else None

    def _set_aside(self, wf: str, txn: Txn, expect: tuple[Expect, ...]) -> None:
        self.committing.add(wf)
        self.unacked += 1
        self.conditional.append((as_transition(txn, expect), [(wf, txn.effects)]))

    def rearm(self, key: bytes, items: list[tuple[str, str, int, int]]) -> None:
        """Replace the due batch entry ``key`` by one holding ``items`` (workflow id,
        step, token, due ms: the attempts it still watches), or by nothing."""
        loose = self.loose
        loose[("timers", key)] = None
        if items:
            due = min(item[3] for item in items)
            entry, value = batch_put(due, batch_entry([item[:3] for item in items]), self._encode)
            loose[entry] = value

    def drop(self, workflow_id: str) -> Txn | None:
        """Discard the workflow's uncommitted transaction (it is read back from the store)."""
        self.parking.discard(workflow_id)
        return self.open.pop(workflow_id, None)

    def returned(
        self, effects: list[tuple[str, list[Effect]]], errors: list[BaseException | None]
    ) -> None:
        """A batch :meth:`take` gave came back from the writer: its workflows' commits
        are decided (durable or failed); a failure holds new writes (``resync_due``)."""
        for workflow_id, _ in effects:
            self.committing.discard(workflow_id)
        if self.parking:  # (a parking is known durable, or failed, once nothing is pending)
            self.parking.difference_update([w for w, _ in effects if w not in self.open])
        self.unacked -= len(effects)
        if errors.count(None) != len(errors):  # (no generator: this runs every commit)
            # (one purged under an operator's action halted nothing: _guards)
            self.resync_due = self.resync_due or type(errors[0]) is not UnknownWorkflow

    def resync_now(self) -> bool:
        """True, once, when a failure's resync is due and every batch sent before the
        failure came back (the caller then resyncs the writer)."""
        if self.resync_due and self.unacked == 0:
            self.resync_due = False
            return True
        return False


def log_resource_errors(errors: list[BaseException | None]) -> None:
    """The writer's callback for resource records: nobody waits on them, so log failures."""
    for error in errors:
        if error is not None:
            _log.error("resource records (breaker state, crash counters) not written: %s", error)


def settle_future(effect: Reply) -> None:
    """Resolve a caller's future once its batch is durable: done, or the refusal it carries."""
    if isinstance(effect, Refuse):
        effect.future.set_exception(effect.error)
    else:
        effect.future.set_result(None)


def announce_final(ctx: EngineContext, final: Announce) -> None:
    """Tell the runtime a workflow's final state is durable; a failing callback is logged."""
    try:
        ctx.listener.on_final(final.record, final.steps)
    except Exception:
        _log.exception("on_final callback failed for %s", final.record.id)


def orphaned_commit(
    effects: list[tuple[str, list[Effect]]], errors: list[BaseException | None]
) -> None:
    """A batch committed after its Scheduler died: keep the promises that need no actor.

    Callers of cancel/retry must still hear that their request is durable (waiters have
    heard of the workflows that finished: ``commit_sink``); dispatches are left to the
    next Scheduler's recovery.
    """
    for (_, items), error in zip(effects, errors, strict=True):
        if error is not None:
            refuse_callers(items, error)
            continue
        for effect in items:
            if isinstance(effect, Resolve | Refuse) and not effect.future.done():
                settle_future(effect)


def refuse_callers(effects: list[Effect], error: BaseException) -> None:
    """A commit failed: every caller waiting on it hears ``error`` (and nothing else of
    it happens)."""
    for effect in effects:
        if isinstance(effect, Resolve | Refuse) and not effect.future.done():
            effect.future.set_exception(error)


def drain_commits(inbox: Any) -> None:
    """A dying Scheduler's inbox: keep the promises of the commits in it (orphaned_commit);
    everything else goes back for pykka's teardown, which answers pending asks with
    ActorDeadError. Only the dying actor's thread takes from its inbox, so empty() then
    get() cannot block."""
    others = []
    while not inbox.empty():
        envelope = inbox.get()
        message = getattr(envelope, "message", None)
        if isinstance(message, Committed):
            orphaned_commit(message.effects, message.errors)
        else:
            others.append(envelope)
    for envelope in others:
        inbox.put(envelope)


def commit_sink(ref: pykka.ActorRef, ctx: EngineContext) -> BatchSink:
    """The writer's callback for the Scheduler's batches: the workflows that finished are
    announced here, on the writer's thread, as soon as they are durable (their waiters,
    and a start() waiting for a slot, need not wait for the Scheduler's turn); then one
    Committed per transaction, or, with the Scheduler gone, the promises that need no
    actor (orphaned_commit)."""

    def committed(effects: list[tuple[str, list[Effect]]], error: BaseException | None) -> None:
        if error is None:
            for _, items in effects:
                for effect in items:
                    if type(effect) is Announce:
                        announce_final(ctx, effect)
        errors = [error] * len(effects)
        try:
            ref.tell(Committed(effects, errors))
        except pykka.ActorDeadError:
            orphaned_commit(effects, errors)

    return committed
