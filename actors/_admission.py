"""Admission control per agent name: the circuit breaker, the rate limit, crash counters.

The Scheduler asks :meth:`Admission.ready` before it dispatches the next job of an agent
that has limits (:attr:`Admission.limited`), tells :meth:`Admission.admitted` when it
did, and reports how attempts ended (answered, failed, crashed, lost to a restart,
abandoned). An agent without limits costs no call per dispatch, nor per successful answer
while it counts no failures (:attr:`Admission.tracked`).

When a gate refuses, the job stays in the agent's queue (its step is not dispatched, so
it spends no attempt and runs no timeout) and a wake-up is scheduled on the injectable
clock for when the gate will open again (end of the breaker's cool-down, next rate-limit
token); the wake-up arrives as a message and the Scheduler pumps the agent again.

State that must survive a restart (:class:`ResourceRecord`: breaker state, consecutive
failures, crash and lost-attempt counters) goes to the ``resources`` database when it
changes (:meth:`writes` hands the records to the Scheduler's flush, on whose thread all runs).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

from herder.actors._adaptive import Adaptive, AdaptiveLimit
from herder.actors._clock import Clock
from herder.actors._gate import Gate
from herder.actors._health import AgentHealth
from herder.actors._limits import CircuitBreaker, RateLimit, resource_stats
from herder.store import (
    BreakerState,
    Delete,
    Put,
    ResourceRecord,
    Store,
    StoreCorrupt,
    encode,
    get_logger,
    read_resources,
    resource_key,
)

_log = get_logger("herder.admission")

_EPSILON = 1e-9  # float slack: a token refilled "exactly" on time counts as there
_KEEP_LIMIT_EVERY = 5.0  # seconds: how often at most an adaptive limit's move is stored


class Admission:
    """Per-agent gates and durable resource records, driven from the Scheduler's thread.

    ``wake(agent, delay)`` must arrange for the Scheduler to pump ``agent`` again after
    ``delay`` seconds (the Scheduler passes a clock timer that sends itself a message);
    ``busy(agent)`` returns the tokens of the attempts running for ``agent`` (the host's
    answer: an adaptive limit counts those against itself); ``health`` holds the verdicts
    of the agents' health checks (an unhealthy agent is admitted nothing; the check that
    passes wakes the Scheduler).
    """

    def __init__(
        self,
        store: Store,
        clock: Clock,
        wake: Callable[[str, float], None],
        busy: Callable[[str], list[int]] = lambda agent: [],
        health: AgentHealth | None = None,
    ) -> None:
        self._store = store
        self._clock = clock
        self._wake = wake
        self._busy = busy
        self._health = health
        self._sick_holds: dict[str, int] = {}  # dispatches held back for ill health
        self._gates: dict[str, Gate] = {}
        self._removed: dict[str, Gate] = {}  # rate-limited agents removed: their buckets
        self._kept = 64  # (half the size at which those refilled are dropped)
        # The agents with limits, a live read-only view: the dispatcher asks ready() of
        # these (and of those with health checks) before each dispatch.
        self.limited: Mapping[str, Gate] = MappingProxyType(self._gates)
        # Agents whose every answer is news (answered): those with limits or counting
        # failures (perhaps a few more). A success of any other one changes nothing.
        self.tracked: set[str] = set()
        self._records: dict[str, ResourceRecord] = {}
        # The records waiting to be written (true when some do: the Scheduler asks after
        # every message, so a plain attribute, not a property).
        self.dirty: dict[str, ResourceRecord] = {}
        self._wake_at: dict[str, float] = {}
        self.breakers_moved = False  # a breaker opened or closed (the dispatcher resets it)
        self._load()

    # -- configuration -----------------------------------------------------------------

    def configure(
        self,
        agent: str,
        breaker: CircuitBreaker | None,
        rate: RateLimit | None,
        adaptive: Adaptive | None = None,
    ) -> None:
        """Set (or clear, with all None) the limits of ``agent``."""
        stored = self._records.get(agent)
        if breaker is None and stored is not None and stored.breaker is not BreakerState.CLOSED:
            # Registered without a breaker now: a stored open one no longer holds anything.
            self._set(agent, stored.evolve(breaker=BreakerState.CLOSED, opened_at=None))
        if adaptive is None and stored is not None and stored.limit is not None:
            self._set(agent, self._record(agent).evolve(limit=None))  # no longer adaptive
        if breaker is None and rate is None and adaptive is None:
            self._gates.pop(agent, None)
            self._track(agent)
            return
        old, removed = self._gates.get(agent), self._removed.pop(agent, None)
        gate = Gate(breaker, rate)
        if adaptive is not None:
            kept = old is not None and old.adaptive is not None and old.adaptive.config == adaptive
            resumed = None if stored is None else stored.limit  # learned before a restart
            fresh = AdaptiveLimit(adaptive, resumed)
            gate.adaptive = old.adaptive if kept and old is not None else fresh
            gate.started = {} if old is None else old.started
        gate.carry(old, now := self._clock.monotonic(), removed)
        self._gates[agent] = gate
        self.tracked.add(agent)
        rec = self._record(agent)
        if old is None and breaker is not None and rec.breaker is BreakerState.HALF_OPEN:
            # Added again while its probe may run (remove() forgot it): a running one decides.
            gate.probe = next(iter(self._busy(agent)), None)
        # Failures recorded before the breaker was configured (attempts lost to a crash
        # loop, found at recovery before the daemon registered its agents) count now.
        if breaker is not None and rec.breaker is BreakerState.CLOSED and gate.trips(rec, now):
            self._open(agent, rec)
        elif breaker is not None:
            self._cooled(agent, breaker)  # (stored open: half-open once its cool-down is over)

    def remove(self, agent: str) -> None:
        """Forget the limits of ``agent`` but its rate limit's bucket (added again, it starts
        no more than its rate allows); its durable record stays, with the failures it counts."""
        gate = self._gates.pop(agent, None)
        if gate is not None and gate.rate is not None:
            self._removed[agent] = gate
            if len(self._removed) >= 2 * self._kept:  # (those refilled by now go, now and then)
                now = self._clock.monotonic()
                self._removed = {n: g for n, g in self._removed.items() if not g.refilled_by(now)}
                self._kept = max(64, len(self._removed))
        self._wake_at.pop(agent, None)  # (a wake-up on its way pumps an agent not there)
        self._sick_holds.pop(agent, None)
        self._track(agent)

    # -- dispatch ----------------------------------------------------------------------

    def ready(self, agent: str) -> bool:
        """True if one more attempt of ``agent`` may be dispatched now; when not, a wake-up
        is scheduled for when it may (none while a half-open probe is out: its answer
        decides). An unhealthy agent admits nothing and needs no wake-up: the check that
        passes sends one."""
        if self._health is not None and not self._health.healthy(agent):
            self._sick_holds[agent] = self._sick_holds.get(agent, 0) + 1
            return False
        gate = self._gates.get(agent)
        if gate is None:
            return True  # only health-checked
        wait = 0.0
        if gate.breaker is not None:
            wait = self._cooled(agent, gate.breaker)
            if gate.probe is not None and self._record(agent).breaker is BreakerState.HALF_OPEN:
                gate.throttled += 1
                return False
        if wait <= 0 and gate.rate is not None:
            gate.refill(gate.rate, self._clock.monotonic())
            if gate.tokens < 1.0 - _EPSILON:
                wait = (1.0 - gate.tokens) / gate.rate.per_second
        if wait > 0:
            gate.throttled += 1
            self._schedule(agent, wait)
            return False
        if gate.adaptive is not None and gate.running(self._busy(agent)) >= gate.adaptive.limit:
            gate.throttled += 1
            return False  # an attempt's end releases its instance and pumps again
        return True

    def tripped(self, agent: str) -> bool:
        """True while ``agent``'s breaker holds its work: open and cooling down, or
        half-open with its probe out (no side effects, unlike :meth:`ready`)."""
        gate, rec = self._gates.get(agent), self._records.get(agent)
        if gate is None or gate.breaker is None or rec is None:
            return False
        if rec.breaker is BreakerState.OPEN:
            return (rec.opened_at or 0.0) + gate.breaker.cooldown > self._clock.time()
        return rec.breaker is BreakerState.HALF_OPEN and gate.probe is not None

    def admitted(self, agent: str, token: int) -> None:
        """An attempt of ``agent`` with fencing ``token`` was dispatched past the gate."""
        gate = self._gates.get(agent)
        if gate is None:
            return  # only health-checked
        if gate.rate is not None:
            gate.tokens = max(0.0, gate.tokens - 1.0)
        if gate.breaker is not None and self._record(agent).breaker is BreakerState.HALF_OPEN:
            gate.probe = token
        if gate.adaptive is not None:
            gate.started[token] = self._clock.monotonic()

    def woke(self, agent: str) -> None:
        """A scheduled wake-up for ``agent`` arrived (a cool-down over, a limit's move to keep)."""
        self._wake_at.pop(agent, None)
        if (gate := self._gates.get(agent)) is not None and gate.breaker is not None:
            self._cooled(agent, gate.breaker)  # (no record is made for an agent without one)
        if gate is not None and gate.adaptive is not None:
            self._keep_limit(agent, gate.adaptive)  # (a limit that moved since it was kept)

    # -- outcomes ----------------------------------------------------------------------

    def answered(self, agent: str, token: int, ok: bool, *, ran: bool = True) -> None:
        """An attempt of ``agent`` ended: ``ok`` when the resource answered (a result or a
        ``Permanent`` refusal), else a transient failure or a timeout."""
        if not ran:  # (the lease was in doubt): no news, but a half-open probe's place
            self.abandoned(agent, token)  # frees (else the breaker held the work for good)
            return
        gate = self._gates.get(agent)
        if ok and gate is None:
            rec = self._records.get(agent)
            if rec is None or rec.failures == 0:
                self.tracked.discard(agent)
                return  # a healthy agent without limits records nothing
        if gate is not None and gate.probe == token:
            gate.probe = None
        if gate is not None and gate.adaptive is not None:
            started = gate.started.pop(token, None)
            if started is not None:  # (a stale answer's attempt was already counted)
                latency = self._clock.monotonic() - started
                gate.adaptive.sample(latency, ok, len(gate.started) + 1)
                self._keep_limit(agent, gate.adaptive)
        if ok:
            self._succeeded(agent, gate)
        else:
            self._failed(agent, gate)

    def crashed(self, agent: str, lost: int) -> None:
        """An instance of ``agent`` crashed (or could not start); ``lost`` attempts died
        with it (counted first: the write of its crash carries them, breaker or not)."""
        gate = self._gates.get(agent)
        for _ in range(max(1, lost)):
            self._failed(agent, gate)
            if gate is not None and gate.adaptive is not None:
                gate.adaptive.drop()
                self._keep_limit(agent, gate.adaptive)
        rec = self._record(agent)
        self._set(agent, rec.evolve(crashes=rec.crashes + 1))

    def lost(self, agent: str) -> None:
        """Recovery found an attempt of ``agent`` in flight: the process died under it."""
        self._failed(agent, self._gates.get(agent))  # (first: the write below carries it)
        rec = self._record(agent)
        self._set(agent, rec.evolve(lost=rec.lost + 1))

    def abandoned(self, agent: str, token: int) -> bool:
        """An attempt's answer will not be awaited (its workflow ended). True if it was the
        half-open probe, so another probe may go."""
        gate = self._gates.get(agent)
        if gate is not None:
            gate.started.pop(token, None)
        if gate is not None and gate.probe == token:
            gate.probe = None
            return True
        return False

    # -- persistence and stats ---------------------------------------------------------

    def writes(self) -> list[Put | Delete]:
        """The pending resource records as store operations (and forget them)."""
        dirty, self.dirty = self.dirty, {}
        return [
            Delete("resources", resource_key(agent))
            if rec.holds_nothing()
            else Put("resources", resource_key(agent), encode(rec.to_dict()))
            for agent, rec in dirty.items()
        ]

    def stats(self) -> dict[str, dict[str, Any]]:
        """Per agent with limits, health checks or a record: its breaker, counts, health."""
        out: dict[str, dict[str, Any]] = {}
        checked = [] if self._health is None else self._health.agents()
        now = self._clock.monotonic()
        for agent in sorted(self._records.keys() | self._gates.keys() | set(checked)):
            rec = self._record(agent)
            gate = self._gates.get(agent)
            out[agent] = resource_stats(rec)
            health = None if self._health is None else self._health.stats(agent)
            if health is not None:
                out[agent].update(health, sick_holds=self._sick_holds.get(agent, 0))
            if gate is not None:
                out[agent].update(gate.stats(now, self._wake_at.get(agent)))
        return out

    # -- internals ---------------------------------------------------------------------

    def _load(self) -> None:
        """Read every stored resource record (one per agent name that ever needed one)."""
        corrupt: list[StoreCorrupt] = []
        self._records = read_resources(self._store.scan("resources", corrupt=corrupt), corrupt)
        for agent in self._records:
            self._track(agent)
        for error in corrupt:
            _log.error("a resource record is unreadable, reset: %s", error)

    def _record(self, agent: str) -> ResourceRecord:  # (a new one is kept once _set)
        return self._records.get(agent) or ResourceRecord(agent)

    def _set(self, agent: str, rec: ResourceRecord) -> ResourceRecord:
        self.breakers_moved |= self._record(agent).breaker is not rec.breaker
        gate = self._gates.get(agent)  # an adaptive limit stored goes with every write:
        if gate is not None and gate.adaptive is not None and rec.limit is not None:
            rec = rec.evolve(limit=gate.adaptive.limit)  # (or a failing agent's never would)
        rec = rec.evolve(updated=self._clock.time())
        self._records[agent] = self.dirty[agent] = rec
        if rec.holds_nothing():  # kept nowhere (a Delete): every name that had limits, a
            del self._records[agent]  # health check or a failure once kept one for ever
        return rec

    def _succeeded(self, agent: str, gate: Gate | None) -> None:
        rec = self._record(agent)
        if gate is not None:
            gate.sample(True, self._clock.monotonic())
        if rec.breaker is BreakerState.HALF_OPEN:
            _log.info("circuit breaker of agent %s closed: the probe succeeded", agent)
            if gate is not None:
                gate.probe = None
            self._set(agent, rec.evolve(breaker=BreakerState.CLOSED, failures=0))
        elif rec.failures:
            self._set(agent, rec.evolve(failures=0))
        self._track(agent)

    def _failed(self, agent: str, gate: Gate | None) -> None:
        rec = self._record(agent)
        rec = rec.evolve(failures=rec.failures + 1)
        self.tracked.add(agent)
        if gate is None or gate.breaker is None:
            self._records[agent] = rec  # only counted: written with a crash or lost count
            return
        gate.sample(False, now := self._clock.monotonic())
        if rec.breaker is BreakerState.HALF_OPEN or (
            rec.breaker is BreakerState.CLOSED and gate.trips(rec, now)
        ):
            self._open(agent, rec)
        else:
            self._set(agent, rec)

    def _cooled(self, agent: str, breaker: CircuitBreaker) -> float:
        """Seconds left of ``agent``'s open breaker's cool-down (a wake-up comes then), 0
        if not open; one whose cool-down is over is half-open from now on, work or not."""
        rec = self._record(agent)
        if rec.breaker is not BreakerState.OPEN:
            return 0.0
        left = (rec.opened_at or 0.0) + breaker.cooldown - self._clock.time()
        if left > 0:
            self._schedule(agent, left)
            return left
        _log.info("circuit breaker of agent %s half-open: probing", agent)
        self._set(agent, rec.evolve(breaker=BreakerState.HALF_OPEN))
        return 0.0

    def _open(self, agent: str, rec: ResourceRecord) -> None:
        gate = self._gates[agent]
        assert gate.breaker is not None
        gate.probe = None
        gate.clear_samples()
        _log.warning(
            "circuit breaker of agent %s open after %d consecutive failures; next probe in %ss",
            agent,
            rec.failures,
            gate.breaker.cooldown,
        )
        now = self._clock.time()
        self._set(agent, rec.evolve(breaker=BreakerState.OPEN, opened_at=now, opens=rec.opens + 1))
        self._schedule(agent, gate.breaker.cooldown)

    def _track(self, agent: str) -> None:
        """Keep :attr:`tracked` up to date for ``agent`` (its gate or failures changed)."""
        rec = self._records.get(agent)
        if agent in self._gates or (rec is not None and rec.failures):
            self.tracked.add(agent)
        else:
            self.tracked.discard(agent)

    def _keep_limit(self, agent: str, adaptive: AdaptiveLimit) -> None:
        """Store an adaptive limit that moved, at most every few seconds (a busy agent adds no
        commits; a wake-up keeps a later move): ``herder stats`` shows it, a restart resumes it."""
        rec = self._record(agent)
        wait = _KEEP_LIMIT_EVERY - (self._clock.time() - rec.updated)
        if rec.limit != adaptive.limit and (rec.limit is None or wait <= 0):
            self._set(agent, rec.evolve(limit=adaptive.limit))
        elif rec.limit != adaptive.limit:
            self._schedule(agent, wait)

    def _schedule(self, agent: str, delay: float) -> None:
        now = self._clock.monotonic()
        due = now + delay
        pending = self._wake_at.get(agent)
        if pending is not None and now < pending <= due + _EPSILON:
            return  # an earlier (or the same) wake-up is already on its way
        self._wake_at[agent] = due
        self._wake(agent, delay)
