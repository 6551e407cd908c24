"""What the Scheduler runs on: its settings, what outlives one Scheduler, an attempt's port."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pykka

from herder.actors._adaptive import Adaptive
from herder.actors._agent import Agent, StepContext
from herder.actors._answers import Answers
from herder.actors._clock import Clock
from herder.actors._event_loop import EventLoop
from herder.actors._health import AgentHealth
from herder.actors._host import AgentHost
from herder.actors._limits import CircuitBreaker, RateLimit
from herder.actors._messages import Heartbeat, Run
from herder.actors._results import Results
from herder.actors._wiring import EngineListener
from herder.actors.engine import Defaults, Dispatched, Job, WorkflowRun, gathered, idempotency_key
from herder.store import LeaseLost, Plan, RetryPolicy, Store, builder, get_logger

_log = get_logger("herder.scheduler")


@dataclass(frozen=True)
class EngineConfig:
    """Engine settings the Runtime passes down (see ``RuntimeConfig`` for their meaning);
    fixed for the runtime's life, so every thread may read them."""

    default_retry: RetryPolicy = field(default_factory=RetryPolicy)
    default_timeout: float = 300.0
    max_result_bytes: int = 1 << 20
    instance_shutdown: float = 1.0
    idle_timeout: float = 60.0
    heartbeat_interval_fraction: float = 0.25
    agent_max_restarts: int = 20
    agent_restart_period: float = 10.0
    priority_aging: float = 10.0
    seed: int | None = None
    probe_timeout: float = 30.0
    agent_host: str = "pool"  # "pool" (PoolHost) or "thread" (ThreadHost)
    pool_workers: int = 32  # the pool's cap on worker threads (PoolHost max_workers)
    max_recoveries: int = 3  # crashes in a row an attempt may be running at (engine._recovery)
    recovery_stagger: float = 0.5  # seconds between suspects re-run after a crash
    prefetch: int = 0  # attempts reserved ahead per agent instance (actors/_ahead.py)
    passivate_after: float | None = None  # a workflow's next timer that far off: out of memory

    def defaults(self) -> Defaults:
        """The settings the engine itself runs by."""
        return Defaults(
            default_retry=self.default_retry,
            default_timeout=self.default_timeout,
            probe_timeout=self.probe_timeout,
            max_recoveries=self.max_recoveries,
            recovery_stagger=self.recovery_stagger,
        )


class EngineContext:
    """What outlives one Scheduler actor: registrations, the token counter, the ports.

    The supervision tree may restart the Scheduler; the new one copies the registrations
    from here when it starts (later ones reach it only as messages: ``Define``,
    ``add_agent``), recovers workflows from the store, and tokens keep increasing.
    Upward, the actors call ``listener`` (actors/_wiring.py) and nothing else.
    """

    def __init__(
        self,
        store: Store,
        clock: Clock,
        config: EngineConfig,
        listener: EngineListener,
        *,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.config = config
        self.listener = listener  # the runner, upward (actors/_wiring.py)
        self.plans: dict[tuple[str, int], Plan] = {}
        self.agents: dict[str, tuple[Callable[[], Agent], int]] = {}
        # Agents whose attempts run on the asyncio host, and the loop it runs them on.
        self.async_agents: set[str] = set()
        self.event_loop = EventLoop(loop)  # the application's, or None: our own
        # Per agent name: (circuit breaker, rate limit, adaptive concurrency), for agents
        # registered with any of them.
        self.limits: dict[str, tuple[CircuitBreaker | None, RateLimit | None, Adaptive | None]] = {}
        # Agents with health checks, and their last verdicts (the Supervisor's sweep runs
        # the checks; the Scheduler's admission holds the work of an unhealthy agent).
        self.health = AgentHealth(lambda: self.clock, self.tell_scheduler)
        # Agents placed off this host (name -> a RayHost, see actors/_placed_host.py), and
        # that host's own state (its worker processes), which outlives one Scheduler.
        self.placements: dict[str, Any] = {}
        self.remote: Any = None
        self._scheduler: pykka.ActorRef | None = None
        # Notified as each Scheduler starts (``scheduler`` names it then): what a wait for
        # the one the tree starts in place of a Scheduler that crashed wakes on.
        self.started = threading.Condition()
        self.agents_supervisor: pykka.ActorRef | None = None
        self.paused = False  # a draining runtime: dispatch nothing new
        # The agent host each Scheduler builds at start, when not the configured ones
        # (a test's host, which a single-threaded simulation drives).
        self.make_host: Callable[[], AgentHost] | None = None
        self.lost: LeaseLost | None = None
        # Until when (time.monotonic()) this runtime surely holds the lease: its last
        # renewal's start plus a lease (runtime/_ha.py); a standby takes it no earlier.
        # Its changes, and ``lost``, are told to ``leased`` (see AttemptPort.leased).
        self.lease_until = float("inf")
        self.leased = threading.Condition()
        # The hosts' outcomes on their way to the Scheduler, taken in bursts (_answers).
        self.answers = Answers(self.tell_scheduler)
        # Bumped by a Scheduler before it lets go of a start it took up early (Admit.early),
        # and by a new Scheduler before its recovery reads the store: a start that sees it
        # changed once durable is admitted again (actors/_messages.py, EarlyStart).
        self.early_epoch = 0
        # Attempts the last Scheduler to end left running in user code on a thread host
        # (a thread cannot be stopped): the next one holds their slots (actors/_carried.py).
        self.carried: list[tuple[str, str, int, float | None, Any]] = []
        # The unfinished workflows a recovery counted chunk by chunk (actors/_recovery.py),
        # until it is done: the next one, after a crash of its Scheduler, counts them not again.
        self.recovery_counted: set[str] = set()
        self.reset_tokens()

    def reset_tokens(self) -> None:
        """Issue tokens from the store's current incarnation (after taking the lease).

        ``next_token()`` returns a fencing token greater than every token issued before,
        in any incarnation. It is the counter's own ``__next__`` (no Python frame: the
        Scheduler draws ~4 per step), so whoever holds it must have taken it after the
        last reset: the actors are started after the lease is taken.
        """
        self.next_token: Callable[[], int] = itertools.count(
            (self.store.incarnation << 32) + 1
        ).__next__

    def lease_lost(self, error: LeaseLost) -> None:
        """Another runtime holds the lease: dispatch nothing more and tell the runtime."""
        self.paused = True
        if self.lost is not None:
            return
        _log.critical("lease lost: %s", error)
        self.listener.on_lease_lost(error)
        self.lost = error  # last: whoever sees it set sees the runtime told
        with self.leased:  # (an attempt waiting in AttemptPort.leased hears it)
            self.leased.notify_all()

    @property
    def scheduler(self) -> pykka.ActorRef | None:
        """The Scheduler that started last (None before the first one did)."""
        return self._scheduler

    @scheduler.setter
    def scheduler(self, ref: pykka.ActorRef) -> None:
        with self.started:
            self._scheduler = ref
            self.started.notify_all()

    def tell_scheduler(self, message: Any) -> None:
        """Deliver a hint to the current Scheduler; dropped if none runs (the store is truth)."""
        ref = self._scheduler
        if ref is None:
            return
        try:
            ref.tell(message)
        except pykka.ActorDeadError:
            _log.debug("scheduler gone; dropped %s", type(message).__name__)


class AttemptPort:
    """The running attempt's line back to the Scheduler (heartbeats, cancel flags)."""

    __slots__ = ("_clock", "_ctx", "_last", "_min_gap", "cancelled", "superseded", "token")

    def __init__(self, ctx: EngineContext, token: int, min_gap: float) -> None:
        self._ctx = ctx
        self._clock = ctx.clock
        self.token = token
        self._min_gap = min_gap
        self._last: float | None = None
        self.cancelled = False
        self.superseded = False

    def leased(self, wait: float) -> bool:
        """Whether this runtime still holds the lease, for an attempt about to start: a
        process paused past its lease (SIGSTOP, a VM suspended) must start nothing it had
        queued (a standby may be running those steps) until a renewal says the lease is
        still its own; waits up to ``wait`` seconds for one (0 on an event loop)."""
        ctx = self._ctx
        if _holds_lease(ctx):
            return True
        with ctx.leased:
            ctx.leased.wait_for(lambda: ctx.lost is not None or _holds_lease(ctx), wait)
        return _holds_lease(ctx)

    def heartbeat(self, details: Any) -> None:
        """Tell the Scheduler the attempt is alive, at most once per ``min_gap`` seconds."""
        now = self._clock.monotonic()
        if self._last is not None and now - self._last < self._min_gap:
            return
        self._last = now
        self._ctx.tell_scheduler(Heartbeat(self.token, details))


def _holds_lease(ctx: EngineContext) -> bool:
    """Whether the runtime surely still holds the lease (``EngineContext.lease_until``)."""
    return ctx.lost is None and time.monotonic() < ctx.lease_until


_new_context = builder(StepContext)  # (StepContext(...) at half the cost: once per step)


def results_of(run: WorkflowRun) -> Results:
    """What an attempt of ``run`` is given as ``ctx.results``: the results gathered, or
    a view of the run's log if it keeps one (a wide plan's, actors/engine/_results.py)."""
    log = run.results
    return Results(gathered(run.steps)) if log is None else Results.viewing(log)


def prepare(ctx: EngineContext, run: WorkflowRun, job: Job, done: Dispatched) -> None:
    """Build what the agent will be told of the attempt the engine just recorded
    (``done``): its :class:`StepContext` with its port, in the :class:`Run` message the
    attempt keeps until its DISPATCHED is durable."""
    attempt, record, token = done.attempt, run.record, done.attempt.token
    port = AttemptPort(ctx, token, done.window * ctx.config.heartbeat_interval_fraction)
    key = idempotency_key(record.id, job.step, compensating=job.compensating)
    # Not copied here: the action's own copies are made on its thread, of the input
    # before it runs (call_action), of a result when it reads it (Results): an action
    # that changes either changes neither what is kept nor what another attempt is given.
    # Every field in order: workflow_id, step, action, attempt, input, results,
    # idempotency_key, token, compensating, _port, trace_context (the workflow's;
    # runtime/_tracing.py refines it), deadline.
    context = _new_context(
        record.id,
        job.step,
        done.action,
        done.number,
        record.input,
        results_of(run),
        key,
        token,
        job.compensating,
        port,
        record.trace,
        record.deadline,
    )
    attempt.port = port
    attempt.message = Run(attempt.agent, attempt.instance, done.action, token, context)
