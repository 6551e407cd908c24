"""The pattern's Supervisor: a watchdog that trusts the store, not messages.

Distinct from the supervision tree (which restarts crashed actors), this actor sweeps the
store's timer index on a timer: every entry whose time has come is an attempt whose
deadline or heartbeat lapsed, or a retry whose backoff is over. It hands them to the
Scheduler, which retries with a new fencing token (so a late answer from the old attempt
is ignored), has the tree replace a hung agent instance, or compensates when attempts are
exhausted. It also drives periodic housekeeping (passivating idle agent instances), and each sweep
that read the store calls the context's sweep listeners: the runtime's health signal,
which keeps the leader lease renewed and feeds the systemd watchdog.

Because the sweep reads committed state, it finds work left behind by anything: a lost
message, a restarted Scheduler, or a previous process.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from herder.actors._clock import TimerHandle
from herder.actors._engine import EngineContext
from herder.actors._messages import Commands, Due, Tick
from herder.actors._supervised import SupervisedActor
from herder.store import (
    StoreCorrupt,
    crash_point,
    get_logger,
    ms,
    pending_commands,
    timer_key,
    timer_token,
)

_log = get_logger("herder.supervisor")


class _Sweep:
    """Supervisor -> itself: time to look at the timer index."""


class WorkflowSupervisor(SupervisedActor):
    """Sweeps the timer index every ``interval`` seconds and reports what is due."""

    use_daemon_thread = True

    def __init__(
        self,
        ctx: EngineContext,
        interval: float,
        *,
        batch: int = 5000,
        resend_after: float = 5.0,
        tick_every: float = 5.0,
        local_commands: Mapping[str, Callable[[dict[str, Any]], None]] | None = None,
    ) -> None:
        super().__init__()
        self._ctx = ctx
        self._interval = interval
        self._batch = batch
        self._resend_after = resend_after
        self._tick_every = tick_every
        # Commands handled here rather than by the Scheduler (a purge needs no workflow).
        self._local = dict(local_commands or {})
        self._sent: dict[tuple[int, str, str, int | None], float] = {}
        self._sent_commands: dict[int, float] = {}
        self._logged: set[tuple[str, bytes]] = set()  # damaged records logged already
        # Ticks fall on a fixed grid from here: the first sweep to see a grid point sends
        # its tick, so a sweep that ran late (or, under a FakeClock, one that ran anywhere
        # inside an advance) shifts no later tick.
        self._started_at = ctx.clock.monotonic()
        self._ticks = 0
        self._timer: TimerHandle | None = None
        self.sweeps = 0

    def on_start(self) -> None:
        """Schedule the first sweep."""
        super().on_start()
        self._schedule()

    def on_stop(self) -> None:
        """Cancel the pending sweep."""
        if self._timer is not None:
            self._timer.cancel()
        super().on_stop()

    def on_receive(self, message: Any) -> Any:
        """Run one sweep, then schedule the next."""
        if isinstance(message, _Sweep):
            try:
                self.sweep()
            finally:
                self._schedule()
            return None
        return super().on_receive(message)

    def sync(self) -> None:
        """Return once every message sent before this call was handled (tests: a sweep a
        FakeClock's move told of)."""

    def sweep(self) -> int:
        """Report due timers to the Scheduler; return how many were reported.

        Pages through every due entry (entries that stay due, such as those of workflows
        awaiting their definition, must not hide later ones). An entry (its key and token)
        is reported once, then again only if it is still due ``resend_after`` seconds
        later. A corrupt entry is logged and skipped: one bad record must not stop the
        watchdog.
        """
        self.sweeps += 1
        clock = self._ctx.clock
        now = clock.monotonic()
        until_ms = ms(clock.time())
        fresh = []
        seen: dict[tuple[int, str, str, int | None], float] = {}
        after: bytes | None = None
        while True:
            corrupt: list[StoreCorrupt] = []
            page = self._ctx.store.due_timers(
                until_ms, limit=self._batch, after=after, corrupt=corrupt
            )
            for error in corrupt:
                self._damaged(error, "skipping a corrupt timer entry")
            for due_ms, workflow_id, step, value in page:
                # The token too: a step's next timer may fall due in the same millisecond
                # as the one before it (a lost probe retried at once, its lapse's entry
                # already reported); it is another timer, and must not wait for a resend.
                key = (due_ms, workflow_id, step, timer_token(value))
                sent_at = self._sent.get(key)
                if sent_at is None or now - sent_at >= self._resend_after:
                    fresh.append((due_ms, workflow_id, step, value))
                    sent_at = now
                seen[key] = sent_at
            if len(page) + len(corrupt) < self._batch or not page:
                break
            last = page[-1]
            after = timer_key(last[0], last[1], last[2])
        self._sent = seen
        ticks = int((now - self._started_at) // self._tick_every)
        if ticks > self._ticks:  # (before the timers: a workflow it passivates, they wake)
            self._ticks = ticks
            self._ctx.tell_scheduler(Tick())
            freed = self._ctx.store.reclaim_readers()
            if freed:
                _log.warning("freed %d reader slots left by killed processes", freed)
        if fresh:
            crash_point("supervisor.sweep")
            self._ctx.tell_scheduler(Due(fresh))
        self._sweep_commands(now)
        try:
            self._ctx.listener.on_sweep()
        except Exception:
            _log.exception("the sweep listener failed; the sweep carries on")
        return len(fresh)

    def _damaged(self, error: StoreCorrupt, what: str) -> None:
        """Log a damaged record the sweep passes over, once (it meets it every sweep)."""
        if (error.db, error.key) not in self._logged:
            self._logged.add((error.db, error.key))
            _log.error("%s: %s", what, error)

    def _sweep_commands(self, now: float) -> None:
        """Hand pending operator commands (from other processes) to the Scheduler.

        Like timers, a command is sent once, then again only if it is still pending
        ``resend_after`` seconds later (the Scheduler applies each id once).
        """
        corrupt: list[StoreCorrupt] = []
        try:
            pending = pending_commands(self._ctx.store, corrupt)
        except StoreCorrupt as exc:
            _log.error("cannot read the commands database: %s", exc)
            return
        for error in corrupt:  # (the others still apply)
            self._damaged(error, "passing over a damaged operator command; queue it again")
        fresh, seen = [], {}
        for command in pending:
            local = self._local.get(str(command.get("action")))
            if local is not None:
                local(command)  # idempotent per id: seen again until it is finished
                continue
            sent_at = self._sent_commands.get(command["id"])
            if sent_at is None or now - sent_at >= self._resend_after:
                fresh.append(command)
                sent_at = now
            seen[command["id"]] = sent_at
        self._sent_commands = seen
        if fresh:
            self._ctx.tell_scheduler(Commands(fresh))

    def _schedule(self) -> None:
        ref = self.actor_ref

        def wake() -> None:
            if ref.is_alive():
                ref.tell(_Sweep())

        self._timer = self._ctx.clock.call_later(self._interval, wake)
