"""Guarded commits: an operator's action on a workflow the Scheduler read from the store.

The Scheduler is the one writer of the workflows it holds, and its writes go to the
writer unconditionally, merged per flush (``Writer.submit_batch``: the hot path). A
workflow it does not hold (parked: NEEDS_ATTENTION, or awaiting its definition) can be
deleted by a purge (retention, ``herder purge``) between the moment an operator's action
reads it and the moment the action's writes land: they would bring it back, record and
steps, without the history the purge took. So such an action's writes are set aside
(``CommitPipeline.guard``) and sent here as one transition of their own that holds only
if the workflow is still in the state it was read in; if it is not, nothing of it is
written and the action is refused with :class:`UnknownWorkflow` (the workflow is read
back: gone). Only operators' actions on stored workflows, which are rare, pay for this.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from herder.actors._errors import UnknownWorkflow
from herder.actors.engine import Effect
from herder.store import (
    BatchSink,
    ConditionFailed,
    Delete,
    Expect,
    Put,
    Transition,
    Writer,
    batch_put,
)

if TYPE_CHECKING:
    from herder.actors._commits import Txn

Conditional = tuple[Transition, list[tuple[str, list[Effect]]]]
"""A guarded transaction on its way: the transition, and its workflow's effects."""


def as_transition(txn: Txn, expect: tuple[Expect, ...]) -> Transition:
    """A workflow's transaction as a transition under ``expect``, with the batch entry
    the writer would have written for the attempts it records (``submit_batch``'s
    ``watch``)."""
    ops = txn.ops
    if txn.armed:
        entry, value = batch_put(txn.due, txn.armed, txn.encode)
        ops[entry] = value
    writes = tuple(Delete(db, k) if v is None else Put(db, k, v) for (db, k), v in ops.items())
    return Transition(ops=writes, expect=expect)


def send_conditional(conditional: list[Conditional], writer: Writer, sink: BatchSink) -> None:
    """Submit the guarded transactions, each as a transition of its own whose outcome
    reaches ``sink`` as a batch's would: a failed condition as :func:`purged`. A failed
    transition halts nothing (fail-stop): its workflow's next writes wait for it."""
    for transition, effects in conditional:

        def landed(outcomes: list[BaseException | None], effects: Any = effects) -> None:
            error = outcomes[0]
            if isinstance(error, ConditionFailed):
                error = purged(effects[0][0], error)
            sink(effects, error)

        writer.submit_many([transition], landed)
    conditional.clear()


def purged(workflow_id: str, failed: BaseException) -> UnknownWorkflow:
    """The error of an operator's action whose workflow a purge deleted meanwhile."""
    error = UnknownWorkflow(
        f"workflow {workflow_id!r} was purged (retention or `herder purge` deleted it) while "
        "an operator's action on it was being written; nothing of the action was recorded"
    )
    error.__cause__ = failed
    return error
