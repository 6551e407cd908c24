"""Firing periodic schedules: one thread on the active runtime, driven by the clock.

The thread sleeps until the next slot of any schedule (a ``clock.call_later``, so a
FakeClock drives it in tests), then for each schedule fires the slots :func:`to_fire`
picks. Firing slot S of schedule N starts workflow ``N@S`` through the runtime's own
``start_many`` (the due slots of all schedules in batches, one commit each:
``_firing_batch``), and the schedule record whose cursor moves to S is written **in the
same transaction** that creates the workflow. So after any crash the store says either
"S not fired, no workflow" or "S fired, its workflow exists": a restart, a standby that
took over or a handoff fires S at most once, and fires every slot ``catch_up`` keeps.
A workflow ``N@S`` that exists while the cursor is before S (an operator started that
id by hand) counts as the firing.

``overlap`` is applied with the store as the truth: the workflow of the previous firing
(``last_id``; one fired in the same pass has not even started) is read, and while it
is unfinished the slot is passed over (``skip``),
waits (``queue``: the runtime wakes this thread when that workflow ends) or fires anyway
(``allow``). A schedule whose workflow is not registered yet waits until it is.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from herder.actors import RuntimeClosed, TimerHandle, UnknownName
from herder.runtime._firing_batch import Fire, Firings, schedule_put
from herder.runtime._once import SaidOnce
from herder.runtime._schedule_status import KeptSlots, read_schedules
from herder.runtime._schedules import (
    count_slots,
    jitter_past_deadline,
    newest_due,
    slot_id,
    to_fire,
)
from herder.runtime._starts import stopped
from herder.store import (
    CatchUp,
    Delete,
    HerderError,
    LeaseLost,
    Overlap,
    ScheduleRecord,
    StoreClosed,
    StoreCorrupt,
    Transition,
    clock_ms,
    get_logger,
    schedule_key,
)

if TYPE_CHECKING:
    from herder.runtime._runtime import Runtime

_log = get_logger("herder.schedules")

RETRY = 5.0
"""Seconds before a schedule whose firing failed (capacity, a missing agent) tries again."""

MAX_SLEEP = 60.0
"""Longest the thread sleeps: slots are wall-clock times, and its timer runs on the
monotonic clock, so a step of the wall clock is noticed within this."""


class Firer:
    """Fires the schedules stored in a runtime's store (see the module docstring)."""

    def __init__(self, runtime: Runtime, ask_timeout: float) -> None:
        self._rt = runtime
        self._store = runtime._store
        self._clock = runtime.clock
        self._timeout = ask_timeout
        self._lock = threading.RLock()  # one pass or one change of a schedule at a time
        self._wake = threading.Event()
        self._stopping = False
        self._timer: TimerHandle | None = None
        self._armed_at: float | None = None  # the clock time the next pass is due (None: now)
        self._blocked: set[str] = set()  # workflow ids queued slots wait for
        self._thread: threading.Thread | None = None
        self._said = SaidOnce(_log)  # by (topic, schedule): each pass meets them again
        self._damaged: dict[bytes, str] = {}  # damaged records logged, by key: the problem
        self._known: dict[bytes, tuple[bytes, ScheduleRecord]] = {}  # read last pass, by key
        self._slots = KeptSlots()  # each schedule's next slot (and catch-up count), kept
        # Until then no workflow is said to be unregistered: a runtime opened without setup=
        # meets its first passes before the add_workflow() calls that follow the opening.
        self._registering = self._clock.time() + RETRY

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        """Start the thread; its first pass fires whatever fell due while nobody ran."""
        thread = threading.Thread(target=self._run, name="herder-schedules", daemon=True)
        thread.start()  # (then known to stop(), which a signal's thread may call meanwhile)
        self._thread = thread
        self.wake()

    def stop(self) -> None:
        """Stop the thread (a pass under way finishes its current firing first)."""
        self.halt()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(self._timeout)

    def halt(self) -> None:
        """Fire nothing more, without waiting for the thread (any thread may call it: the
        runtime failed, or lost the lease, and every firing would be refused)."""
        self._stopping = True
        if self._timer is not None:
            self._timer.cancel()
        self._wake.set()

    def wake(self) -> None:
        """Make the thread look at every schedule now."""
        self._wake.set()

    def on_final(self, workflow_id: str) -> None:
        """A workflow ended: wake the thread if a queued slot waits for it."""
        if workflow_id in self._blocked:
            self._wake.set()

    def _run(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            if self._stopping:
                return
            try:
                self.fire_due()
            except Exception as exc:
                if self._stopped(exc):
                    return
                _log.exception("firing schedules failed; trying again in %ss", RETRY)
                self._arm(RETRY)

    # -- changes -----------------------------------------------------------------------

    def define(self, record: ScheduleRecord) -> ScheduleRecord:
        """Store a new schedule, or change one: a new schedule's first slot is the first
        one after now (it may have been declared long before: in ``setup``, on a standby
        that waited for the lease); a changed definition keeps its cursor (slots already
        handled stay handled), moved up to now if the slots themselves change (``every``,
        ``cron``, ``timezone``: the new ones begin after this call, as a new schedule's
        do); the same definition changes nothing."""
        with self._lock:
            stored = self._readable(record.name)
            if stored is None:  # (created when stored: its first slot is the next one after)
                now = self._clock.time()
                record = record.evolve(created=now, updated=now).from_now(now)
            elif stored.same_definition(record):
                return stored
            else:
                record = stored.redefined(record)
                if not stored.same_slots(record):
                    record = record.from_now(self._clock.time())
            self._write(record)
            self._wake_for(record)
        return record

    def pause(self, name: str, paused: bool) -> None:
        """Pause or resume a schedule; slots that fell due while paused are passed over."""
        with self._lock:
            stored = self._existing(name)
            if stored.paused == paused:
                return
            now = self._clock.time()
            changed = stored.evolve(paused=paused, updated=now)
            if not paused:
                changed = changed.from_now(now)
            self._write(changed)
            self._wake_for(changed)

    def delete(self, name: str) -> None:
        """Delete a schedule (a damaged record too); the workflows it started are left
        alone."""
        key = schedule_key(name)
        with self._lock:
            if self._store.view(lambda snap: snap.raw("schedules", key)) is None:
                self._existing(name)  # (raises UnknownName)
            self._commit(Transition(ops=(Delete("schedules", key),)))

    def get(self, name: str) -> ScheduleRecord | None:
        """The stored schedule ``name``, or None; a corrupt one raises StoreCorrupt."""
        key = schedule_key(name)
        data = self._store.get("schedules", key)
        if data is None:
            return None
        try:
            return ScheduleRecord.from_dict(data)
        except (TypeError, ValueError, AttributeError) as exc:
            raise StoreCorrupt(
                "schedules",
                key,
                f"bad schedule record: {exc}; rt.schedule() with its definition replaces "
                "it, rt.delete_schedule() deletes it",
            ) from None

    def _readable(self, name: str) -> ScheduleRecord | None:
        """The stored schedule ``name``, or None if there is none or it is damaged: a
        definition declared for it (at every start of a daemon) replaces a damaged one
        as it would a new one, from now (which slots it handled is unknown; each slot's
        workflow id still makes one that fired before count as fired)."""
        try:
            return self.get(name)
        except StoreCorrupt as exc:
            _log.warning("schedule %r is replaced by the one declared: %s", name, exc)
            return None

    def all(self) -> list[ScheduleRecord]:
        """Every readable stored schedule (decoding those changed since the last pass); a
        damaged one is left out, logged once (again if its damage changes)."""
        bad: list[StoreCorrupt] = []
        records = read_schedules(self._store, bad, self._known)
        damaged = {exc.key: str(exc) for exc in bad}
        for key, problem in damaged.items():
            if self._damaged.get(key) != problem:
                _log.error("skipping a schedule: %s", problem)
        self._damaged = damaged  # (one repaired, then damaged again, is said again)
        self._slots.keep_only(records)
        return records

    def next_slots(self) -> dict[str, float]:
        """Each schedule's ``next_at`` (``rt.schedules()``'), from what the passes keep."""
        with self._lock:
            return self._slots.next_at(self.all())

    def _existing(self, name: str) -> ScheduleRecord:
        stored = self.get(name)
        if stored is None:
            raise UnknownName(f"no schedule named {name!r}; create it with rt.schedule()")
        return stored

    # -- firing ------------------------------------------------------------------------

    def fire_due(self) -> None:
        """Fire every slot that is due now, then arm the clock for the next one."""
        with self._lock:
            self._blocked.clear()  # refilled by this pass (a missed wake-up waits RETRY)
            wake_at: float | None = None
            batch = Firings(self._rt, self._commit, self.get)
            for record in self.all():
                if self._stopping:
                    return
                try:
                    at = self._fire_schedule(record, batch)
                except (HerderError, TimeoutError) as exc:  # TimeoutError: no capacity
                    if self._stopped(exc):
                        return
                    warning = f"schedule {record.name!r} could not fire: {exc}"
                    self._said.say(("fail", record.name), warning)
                    at = self._clock.time() + RETRY
                else:  # (a later failure is said again)
                    self._said.clear(("fail", record.name))
                wake_at = _earliest(wake_at, at)
                if batch.full() and (failed := self._flush(batch)) is not None:
                    wake_at = failed  # (the rest would wait for room as long: next pass)
                    break
            else:
                wake_at = _earliest(wake_at, self._flush(batch))
            if not self._stopping:  # at least every MAX_SLEEP: the wall clock may step
                delay = MAX_SLEEP if wake_at is None else wake_at - self._clock.time()
                self._arm(min(MAX_SLEEP, max(0.0, delay)))

    def _flush(self, batch: Firings) -> float | None:
        """Write what ``batch`` gathered; the time to try again if it failed."""
        error = batch.flush()
        if error is None:
            self._said.clear("flush")  # (a later failure is said again)
            return None
        if not isinstance(error, HerderError | TimeoutError):
            raise error  # (the thread logs it and tries again after RETRY)
        if not self._stopped(error):  # (said once per type: its text changes, counts)
            warning = f"schedules could not fire: {error} (retried every {RETRY:g}s; said once)"
            self._said.say("flush", warning, cause=type(error).__name__)
            if isinstance(error, LeaseLost):  # deposed: stop, as the Scheduler does
                self._rt._ctx.lease_lost(error)
        return self._clock.time() + RETRY

    def _stopped(self, error: BaseException) -> bool:
        """True if ``error`` is the runtime stopping, or the lease its handoff released (a
        firing refused by them is no failure to warn of: its slot fires at the next open)."""
        return self._stopping or isinstance(stopped(self._rt, error), RuntimeClosed | StoreClosed)

    def _fire_schedule(self, record: ScheduleRecord, batch: Firings) -> float | None:
        """Gather in ``batch`` what is due of one schedule; the clock time to look at it
        again, if any."""
        if record.paused:
            return None  # resume() wakes the thread
        now, first = self._clock.time(), self._slots.of(record)  # (kept: most are not due)
        due = first is not None and first <= clock_ms(now)
        if record.workflow not in self._rt._latest:  # add_workflow() wakes the thread
            if not due or not to_fire(record, clock_ms(now))[0]:
                return None
            if now < self._registering:  # (looked at again then: not said before)
                return self._registering
            name, workflow = record.name, record.workflow
            self._said.say(
                ("unfired", name),
                f"schedule {name!r} has slots due but its workflow {workflow!r} is not "
                "registered, so it fires nothing: register that workflow (a renamed one: "
                f"rt.schedule it with the new name) or rt.delete_schedule({name!r})",
            )
            return None
        self._said.clear(("unfired", record.name))
        if late := jitter_past_deadline(record, self._rt._latest[record.workflow]):
            self._said.say(  # (schedule() refuses it)
                ("late", record.name),
                f"{late}; rt.schedule() it again with a jitter up to it, or give it a later one",
            )
        else:
            self._said.clear(("late", record.name))
        if not due:
            return None if first is None else first / 1000
        slots, pass_to = to_fire(record, clock_ms(now))
        if pass_to is not None:  # catch-up: the due slots that will not fire are skipped
            passed = self._slots.count(record, pass_to) - len(slots)
            if passed > 0:  # (written with the cursor's next move, below)
                record = record.evolve(skipped=record.skipped + passed)
        fires: list[Fire] = []
        moved, again = False, None
        for slot in slots:
            wid = slot_id(record.name, slot)
            if self._store.get_workflow(wid) is not None:  # started by hand: it counts
                record = record.evolve(cursor_ms=slot, last_id=wid, updated=now)
                if fires:  # (the cursor moves past it once the firings before it landed)
                    fires.append(Fire(slot, wid, record, exists=True))
                moved = True
                continue
            if record.overlap is not Overlap.ALLOW and (
                (fires and not fires[-1].exists) or self._unfinished(record.last_id)
            ):  # (a firing in this batch has not even started)
                if record.overlap is Overlap.SKIP:
                    record, moved = self._skipped(record, slot, now), True
                    break  # (the rest of the due slots with it)
                if fires and not fires[-1].exists:  # (else _unfinished blocked on it)
                    self._blocked.add(fires[-1].workflow_id)
                again = now + RETRY  # queued: on_final wakes us; RETRY is a safety net
                break
            record = record.evolve(cursor_ms=slot, last_id=wid, fired=record.fired + 1, updated=now)
            fires.append(Fire(slot, wid, record))
        if again is None and pass_to is not None and pass_to > record.cursor_ms:
            record, moved = record.evolve(cursor_ms=pass_to, updated=now), True  # all late
        if fires:  # each checked here, so that what refuses one stops this schedule only
            checked = batch.prepare(fires)
            if len(checked) < len(fires):  # (the slots before it fire, the rest next time)
                fires, again = checked, now + RETRY
            else:
                fires[-1].record = record  # (its record ends with the schedule's last state)
        batch.add(fires, record if moved else None)
        if again is not None:
            return again
        following = self._slots.of(record)  # (kept for the next pass: its cursor moved)
        return None if following is None else following / 1000

    def _skipped(self, record: ScheduleRecord, slot: int, now: float) -> ScheduleRecord:
        """``record`` with ``slot`` passed over, and under ``catch_up="all"`` every slot
        due after it too: in one write, not one per slot (a week down, every minute, is
        10,080 of them), as each would be passed over for the same unfinished firing."""
        upto, n = slot, 1
        if record.catch_up is CatchUp.ALL:
            upto = newest_due(record, int(now * 1000)) or slot
            n = count_slots(record, record.cursor_ms, upto)
        return record.evolve(cursor_ms=upto, skipped=record.skipped + n, updated=now)

    def _unfinished(self, workflow_id: str | None) -> bool:
        if workflow_id is None:
            return False
        self._blocked.add(workflow_id)  # before the read: an end after it still wakes us
        previous = self._store.get_workflow(workflow_id)
        if previous is None or previous.state.is_final:
            self._blocked.discard(workflow_id)
            return False
        return True

    def _write(self, record: ScheduleRecord) -> None:
        self._commit(Transition(ops=(schedule_put(record),)))

    def _commit(self, transition: Transition) -> None:
        self._store.writer.submit(transition).result(timeout=self._timeout)

    def _wake_for(self, record: ScheduleRecord) -> None:
        """Wake the thread if ``record`` (just written, under the lock) falls due before
        the pass it is armed for: a pass reads every schedule, so waking it for each one
        defined made defining n schedules cost n passes over them (O(n^2): 24 s for
        2,000). A later slot is found by the armed pass, which arms for the earliest."""
        following = None if record.paused else self._slots.of(record)
        if following is None:
            return
        if self._armed_at is None or following / 1000 < self._armed_at:
            self.wake()

    def _arm(self, delay: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._armed_at = self._clock.time() + delay
        self._timer = self._clock.call_later(delay, self._wake.set)


def _earliest(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else min(a, b)
