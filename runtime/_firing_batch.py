"""One pass of the schedule firer, written in batches (:class:`Firings`).

A pass gathers what each due schedule does: the slots it fires, each with the schedule
record whose cursor moves to that slot, and the records of schedules that only move
(slots passed over, a slot whose workflow exists). Then the firings go out through
``start_many`` as one group commit per :data:`BATCH` (each creation is still its own
transaction inside it, with its slot's record: the guarantee of ``_firing``), and the
moves as one transaction of their own. One commit per slot took about 10 s for 6,000
firings, as many schedules fall due at once after a restart or one catches up.

A schedule fires at most one slot in a pass unless its ``overlap`` is ``"allow"`` (the
workflow of a slot fired in the batch has not even started: a later slot is passed
over, ``"skip"``, or waits, ``"queue"``), so moves and firings of one schedule never
need ordering across the two writes: a schedule that fires moves only in its firings'
records.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from herder.actors import WorkflowConflict
from herder.runtime._schedules import jitter_of
from herder.runtime._starts import NewStart
from herder.runtime._waits import run_blocking
from herder.store import (
    HerderError,
    Put,
    ScheduleRecord,
    Transition,
    encode,
    get_logger,
    schedule_key,
)

if TYPE_CHECKING:
    from herder.runtime._runtime import Runtime

_log = get_logger("herder.schedules")

BATCH = 1000
"""Most firings in one group commit (fewer when fewer ``max_active_workflows`` are free)."""

CAPACITY_WAIT = 1.0
"""Seconds a batch waits for its room under ``max_active_workflows``; else the pass ends
and its schedules try again after ``RETRY``."""


@dataclass(slots=True)
class Fire:
    """A slot to fire: its workflow id, and its schedule's record once it fired; or
    (``exists``) a slot after one whose workflow was started by hand, which counts as
    its firing: the cursor moves past it once the firings before it landed."""

    slot: int
    workflow_id: str
    record: ScheduleRecord
    exists: bool = False
    new: NewStart | None = None  # its start, checked already (see Firings.prepare)


@dataclass
class Firings:
    """What one pass fires and moves, not yet written (see the module docstring)."""

    rt: Runtime
    write: Callable[[Transition], None]
    get: Callable[[str], ScheduleRecord | None]
    fires: dict[str, list[Fire]] = field(default_factory=dict)  # by schedule name
    moves: dict[str, ScheduleRecord] = field(default_factory=dict)
    pending: int = 0  # firings in ``fires``

    def add(self, fires: list[Fire], moved: ScheduleRecord | None) -> None:
        """One schedule's firings (their records end with its last state), or its move."""
        if fires:
            self.fires[fires[0].record.name] = fires
            self.pending += sum(not fire.exists for fire in fires)
        elif moved is not None:
            self.moves[moved.name] = moved

    def prepare(self, fires: list[Fire]) -> list[Fire]:
        """Check each of one schedule's ``fires`` as the batch will start it, so that what
        refuses one stops its schedule only (not the batch), and keep it for the batch: the
        routers its agents name run once per firing, as once per start (they ran twice).
        The fires before the first refused one; its error if it is the first."""
        rt = self.rt
        now = rt._ctx.clock.time()  # (the engine's: a firing's start is reckoned on it)
        for i, fire in enumerate(fires):
            if fire.exists:
                continue
            record, wid = fire.record, fire.workflow_id
            delay = jitter_of(record, fire.slot) or None
            try:
                fire.new = rt._prepare(
                    record.workflow, record.input, workflow_id=wid, delay=delay, now=now
                )
            except HerderError:
                if i == 0:
                    raise
                return fires[:i]
        return fires

    def full(self) -> bool:
        """True when the firings gathered fill a batch."""
        return self.pending >= self._room()

    def flush(self) -> BaseException | None:
        """Write the moves, then fire the firings in batches; the error that stopped a
        batch (its schedules and the rest try again next pass), or None."""
        moves, self.moves = self.moves, {}
        fires, self.fires, self.pending = self.fires, {}, 0
        error = None
        if moves:
            try:
                self.write(Transition(ops=tuple(schedule_put(record) for record in moves.values())))
            except Exception as exc:
                error = exc
        every = [fire for planned in fires.values() for fire in planned if not fire.exists]
        landed: set[str] = set()
        while every and error is None:
            room = self._room()  # (read once: two reads may differ, and drop a slot)
            chunk, every = every[:room], every[room:]
            try:
                self._start(chunk)
            except Exception as exc:  # (the pass logs it; nothing may stop the thread)
                error = exc
            else:
                landed.update(fire.workflow_id for fire in chunk)
        for planned in fires.values():
            self._settle(planned, landed)
        return error

    def _room(self) -> int:
        rt = self.rt
        return max(1, min(BATCH, rt._max_active - rt._active))

    def _start(self, chunk: list[Fire]) -> None:
        items: list[Mapping[str, Any] | NewStart] = []
        also: dict[str, tuple[Put, ...]] = {}
        for fire in chunk:
            assert fire.new is not None  # (each is checked as it joins the batch: prepare)
            items.append(fire.new)
            also[fire.workflow_id] = (schedule_put(fire.record),)
        with contextlib.suppress(WorkflowConflict):  # an operator started an id by hand
            run_blocking(self.rt._starting_many(items, CAPACITY_WAIT, also))

    def _settle(self, planned: list[Fire], landed: set[str]) -> None:
        """After the batches, one schedule's firings whose record was not written though
        their workflow exists (an operator started that id by hand: it counts as the
        firing, not in ``fired``) move its cursor past them; those of a failed batch fire
        next pass."""
        name = planned[0].record.name
        stored = self.get(name)
        if stored is None:
            return
        moved = None
        for fire in planned:
            if not fire.exists and fire.workflow_id not in landed:
                break
            if fire.slot > stored.cursor_ms:  # its record was not written: not ours
                moved = fire.record.evolve(fired=stored.fired)
            elif not fire.exists and _log.isEnabledFor(logging.INFO):
                wid = fire.workflow_id
                _log.info("schedule %s fired %s", name, wid, extra={"workflow_id": wid})
        if moved is not None:
            self.write(Transition(ops=(schedule_put(moved),)))


def schedule_put(record: ScheduleRecord) -> Put:
    """The write storing ``record`` (its firings', moves' and the firer's own)."""
    return Put("schedules", schedule_key(record.name), encode(record.to_dict()))
