"""One flush's writes per workflow, and keeping the promises a durable batch makes."""

from __future__ import annotations

import logging
from typing import Any

from herder.actors._engine import EngineContext
from herder.store import Delete, Put
from herder.store._codec import encode
from herder.store._records import StepRecord, WorkflowRecord, step_key, timer_key, workflow_key

_log = logging.getLogger("herder.scheduler")


class Txn:
    """The writes and after-commit effects of one workflow within one flush."""

    __slots__ = ("effects", "ops")

    def __init__(self) -> None:
        self.ops: dict[tuple[str, bytes], Put | Delete] = {}
        self.effects: list[Any] = []

    def put_step(self, old: StepRecord | None, new: StepRecord) -> None:
        """Write a step record, moving its timer along with it."""
        key = step_key(new.workflow_id, new.name)
        if old is not None and old.timer_ms is not None and old.timer_ms != new.timer_ms:
            tkey = timer_key(old.timer_ms, old.workflow_id, old.name)
            self.ops[("timers", tkey)] = Delete("timers", tkey)
        if new.timer_ms is not None:
            tkey = timer_key(new.timer_ms, new.workflow_id, new.name)
            self.ops[("timers", tkey)] = Put("timers", tkey, encode({"token": new.token}))
        self.ops[("steps", key)] = Put("steps", key, encode(new.to_dict()))

    def put_workflow(self, record: WorkflowRecord) -> None:
        """Write a workflow record."""
        key = workflow_key(record.id)
        self.ops[("workflows", key)] = Put("workflows", key, encode(record.to_dict()))

    def delete_timer(self, key: bytes) -> None:
        """Delete a timer no step wants any more."""
        self.ops[("timers", key)] = Delete("timers", key)

    def put(self, *ops: Put | Delete) -> None:
        """Add raw writes (history, commands); a later write of the same key wins."""
        for op in ops:
            self.ops[(op.db, op.key)] = op


def log_resource_errors(errors: list[BaseException | None]) -> None:
    """The writer's callback for resource records: nobody waits on them, so log failures."""
    for error in errors:
        if error is not None:
            _log.error("resource records (breaker state, crash counters) not written: %s", error)


def settle_future(effect: tuple[Any, ...]) -> None:
    """Resolve a caller's future once its batch is durable: done, or the refusal it carries."""
    if len(effect) > 2:
        effect[1].set_exception(effect[2])
    else:
        effect[1].set_result(None)


def announce_final(ctx: EngineContext, record: WorkflowRecord) -> None:
    """Tell the runtime a workflow's final state is durable; a failing callback is logged."""
    try:
        ctx.on_final(record)
    except Exception:
        _log.exception("on_final callback failed for %s", record.id)


def orphaned_commit(
    ctx: EngineContext, effects: list[tuple[str, list[Any]]], errors: list[BaseException | None]
) -> None:
    """A batch committed after its Scheduler died: keep the promises that need no actor.

    Waiters must still hear that a workflow finished, and callers of cancel/retry that
    their request is durable; dispatches are left to the next Scheduler's recovery.
    """
    for (_, items), error in zip(effects, errors, strict=True):
        for effect in items:
            if effect[0] == "future" and not effect[1].done():
                if error is None:
                    settle_future(effect)
                else:
                    effect[1].set_exception(error)
            elif effect[0] == "final" and error is None:
                announce_final(ctx, effect[1])
