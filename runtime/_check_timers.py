"""``herder check``'s timer checks: the timer index and the steps agree both ways.

Every step that waits for a retry, its start time or a heartbeat has its own entry at
its ``timer_ms`` with its current token; every attempt with no timer of its own
(``timer_ms`` None and a deadline: the engine's ``dispatch``) is listed, with its current
token, in a batch entry (``store._keys.batch_timer_key``), so whatever lapses is found
by the sweep; an unfinished workflow with a deadline has its deadline's entry. A
step's own entry that no step wants is a problem; a batch entry's stale items (the
attempt ended, even with its workflow) are not: they are dropped once it comes due.
"""

from __future__ import annotations

import datetime
import struct
from collections.abc import Callable
from typing import Any

from herder.actors.engine import DEADLINE_TIMER
from herder.store import (
    BATCH_TIMER,
    StepRecord,
    StepState,
    batch_items,
    split_step_key,
    split_timer_key,
    step_key,
    timer_key,
    timer_token,
)


def restart(at: float | None) -> str:
    """What heals a step that recovery runs again from its record, timer or not (an
    attempt it finds running, a retry or probe once its time ``at`` has come)."""
    when = "" if at is None else f" once {_iso(at)} has passed"
    return (
        f"restart the runtime{when}: recovery runs the step again from its record and "
        "watches it anew"
    )


def _iso(at: float) -> str:
    try:
        return datetime.datetime.fromtimestamp(at, datetime.UTC).isoformat(timespec="seconds")
    except (OverflowError, ValueError, OSError):
        return f"{at!r} (seconds since the epoch)"


def act(wid: str) -> str:
    """What an operator does about a workflow that nothing will move on (a restart
    neither: recovery leaves these waits to their timers)."""
    return (
        f"`herder show {wid}`, then settle it by an operator action (docs/operator.md), "
        "or restore a backup"
    )


_RERUN = (StepState.DISPATCHED, StepState.RETRY_WAIT, StepState.UNKNOWN)
"""States whose step a restart runs again from its record (once its ``retry_at``); a
COMPENSATING one is too (its compensation), a WAITING one (handed off) is not."""


class TimerIndex:
    """What the steps want of the timer index, then :meth:`check` against it."""

    def __init__(self, problem: Callable[[str, bytes, str], None]) -> None:
        self._problem = problem
        # (due ms, token) of every step that must have its own entry, by step key.
        self.wanted: dict[bytes, tuple[int, int]] = {}
        # The token of every attempt that must be in a batch entry, and whether a restart
        # runs it again (so watches it anew), by step key.
        self.in_batch: dict[bytes, tuple[int, bool]] = {}
        # When a restart runs again each step of ``wanted`` that recovery takes up from
        # its record (None: at once), by step key (``engine.resumes``).
        self.rerun: dict[bytes, float | None] = {}

    def want_step(self, skey: bytes, st: StepRecord, *, waits: bool) -> bool:
        """Note the entry the step wants (``waits``: its state waits on a timer); False
        if it waits with neither a timer nor a deadline (nothing would wake it)."""
        if st.timer_ms is not None:
            self.wanted[skey] = (st.timer_ms, st.token)
            if st.state in _RERUN:
                self.rerun[skey] = st.retry_at
        elif waits and st.deadline is not None and st.retry_at is None:
            rerun = st.state in _RERUN or st.state is StepState.COMPENSATING
            self.in_batch[skey] = (st.token, rerun)
        else:
            return not waits
        return True

    def check(
        self, entries: Any, count: Callable[[], None], load: Callable[[bytes, bytes], Any]
    ) -> None:
        """Check every ``(key, raw)`` of ``entries`` (the timers database) against what
        the steps want, then report what no entry gave them."""
        problem = self._problem
        for key, raw in entries:
            count()
            try:
                due, wf, step = split_timer_key(key)
            except (struct.error, UnicodeDecodeError) as exc:
                problem("timers", key, f"malformed timer key: {exc}")
                continue
            value = load(key, raw)
            if wf == BATCH_TIMER:
                self._batch(key, value)
                continue
            skey = step_key(wf, step)
            wanted = self.wanted.pop(skey, None)
            if wanted is None:
                problem(
                    "timers",
                    key,
                    "timer entry of no step waiting on a timer: harmless, the sweep drops it "
                    "when it falls due",
                )
            elif wanted[0] != due:
                problem("timers", key, f"the step's timer is at {wanted[0]} ms, not {due}")
                self.wanted[skey] = wanted  # still missing its own entry
            elif value is not None and timer_token(value) != wanted[1]:
                problem("timers", key, f"token {timer_token(value)}, the step's is {wanted[1]}")
        for skey, (due, _) in self.wanted.items():
            wf, step = split_step_key(skey)
            what = (
                f"the deadline of workflow {wf} is never enforced"  # (not "step wf/")
                if step == DEADLINE_TIMER
                else f"step {wf}/{step} waits on it, and nothing else wakes it"
            )
            fix = restart(self.rerun[skey]) if skey in self.rerun else act(wf)
            problem("timers", timer_key(due, wf, step), f"missing: {what}: {fix}")
        for skey, (token, rerun) in self.in_batch.items():
            wf, step = split_step_key(skey)
            problem(
                "steps",
                skey,
                f"attempt {token} of {wf}/{step} is in no batch deadline entry: its deadline "
                "is not watched, so it is never timed out: "
                + (restart(None) if rerun else act(wf)),
            )

    def _batch(self, key: bytes, value: Any) -> None:
        if value is None:
            return  # corrupt: reported by load
        items = batch_items(value)
        if items is None:
            self._problem("timers", key, "malformed batch deadline entry")
            return
        in_batch = self.in_batch
        for wf, step, token in items:
            skey = step_key(wf, step)
            wanted = in_batch.get(skey)
            if wanted is not None and wanted[0] == token:
                del in_batch[skey]
