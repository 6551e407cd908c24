"""The Runtime facade: open a store, register agents and workflows, start and watch work."""

from __future__ import annotations

import asyncio
import builtins
import datetime
import logging
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future
from dataclasses import replace
from typing import Any

import pykka

from herder.actors import (
    Adaptive,
    Admit,
    Agent,
    ChildSpec,
    CircuitBreaker,
    Clock,
    Complete,
    Define,
    EngineConfig,
    EngineContext,
    InvalidDefinition,
    NotActive,
    Operate,
    Permanent,
    RateLimit,
    Restart,
    RuntimeClosed,
    Scheduler,
    SteadyClock,
    Strategy,
    SystemClock,
    UnknownName,
    UnknownWorkflow,
    WorkflowConflict,
    WorkflowSupervisor,
    action_names,
    agent_class_of,
    agents_listener,
    call,
    coroutine_actions,
    host_kind,
    parse_task_token,
    start_supervisor,
)
from herder.runtime._async import (
    AsyncHandle,
    AsyncRuntime,
    NotifyingEvent,
    Pulse,
    Steps,
    Wait,
    awaited,
    run_blocking,
)
from herder.runtime._firing import Firer
from herder.runtime._ha import LeaseKeeper, StandbyWatcher
from herder.runtime._inbox import InboxItem, inbox_items
from herder.runtime._metrics import stats_collector
from herder.runtime._retention import DEFAULT_RETENTION, Retention, retention_seconds
from herder.runtime._routing import Router, check_registered, resolve_agents
from herder.runtime._schedule_api import ScheduleMethods
from herder.runtime._starts import NewStart, creation, same_record, same_start, start_args
from herder.runtime._status import WorkflowFailed, WorkflowStatus, in_plan_order
from herder.runtime._timing import begin_at, check_priority
from herder.runtime._tracing import tracing_for
from herder.runtime._workflow import Workflow
from herder.store import (
    DEFAULT_LEASE,
    MAX_VALUE_BYTES,
    ConditionFailed,
    InvalidInput,
    LeaseLost,
    Plan,
    Put,
    RetryPolicy,
    StepRecord,
    Store,
    StoreCorrupt,
    Transition,
    WorkflowRecord,
    WorkflowState,
    bounded_text,
    check_text,
    definition_key,
    describe,
    encode,
    error_types,
    normalize,
    read_history,
    safe_str,
    started_key,
    validate_id,
    validate_name,
)

_log = logging.getLogger("herder.runtime")

Final = tuple[WorkflowRecord, "list[StepRecord] | None"]
"""What a waiter on a workflow gets: its final record and, when the Scheduler announced
it, its steps in plan order (None when it had ended before: read them from the store)."""


class WorkflowHandle(AsyncHandle):
    """A started workflow: wait for its result (``result`` or ``await result_async``) or
    look at its status."""

    def __init__(self, runtime: Runtime, workflow_id: str) -> None:
        self._runtime = runtime
        self.id = workflow_id

    def result(self, timeout: float | None = None) -> dict[str, Any]:
        """Step results by name once the workflow SUCCEEDED.

        Raises :class:`WorkflowFailed` once it is COMPENSATED, CANCELLED or
        NEEDS_ATTENTION, and :class:`TimeoutError` if ``timeout`` seconds pass first.
        """
        return self._outcome(self._runtime._wait_final(self.id, timeout))

    def _outcome(self, final: Final) -> dict[str, Any]:
        record, steps = final
        if steps is None:  # it had ended before anyone watched: read them from the store
            steps = self._runtime._ordered_steps(record)
        status = WorkflowStatus.from_records(record, steps)
        if status.state is WorkflowState.SUCCEEDED:
            return status.results
        raise WorkflowFailed(status)

    def status(self) -> WorkflowStatus:
        """The workflow's current durable status."""
        return self._runtime.status(self.id)

    def done(self) -> bool:
        """True once the workflow reached a final state."""
        return self._runtime.status(self.id).state.is_final

    def __repr__(self) -> str:
        return f"WorkflowHandle({self.id!r})"


class Runtime(AsyncRuntime, ScheduleMethods):
    """One herder runtime over one store directory.

    ``Runtime(path, setup=register)`` opens (or creates) the store, calls
    ``register(rt)`` to add the application's agents and workflows, and only then starts
    the supervision tree and recovers every unfinished workflow, so recovered work
    resumes at once with nothing reported missing::

        def register(rt: Runtime) -> None:
            rt.add_agent("airline", Airline, concurrency=4)
            rt.add_workflow(trip)

        with Runtime("var/herder", setup=register) as rt:
            rt.start("trip", {"who": "ada"}, workflow_id="order-42").result(timeout=10)

    ``setup`` may only register (starting work inside it raises :class:`NotActive`); an
    exception from it closes the store and propagates. Registering after ``Runtime()``
    returned also works: recovered workflows wait (``stats()["awaiting_definition"]``)
    until their definition and agents arrive.

    Settings: ``clock`` (inject a FakeClock in tests), ``sweep_interval`` (seconds between
    the Supervisor's sweeps of the timer index), ``default_retry`` and ``default_timeout``
    (for steps that give none), ``map_size`` (initial store size; it grows on demand),
    ``max_input_bytes``/``max_result_bytes`` (encoded size limits),
    ``max_active_workflows`` (``start`` blocks while that many are unfinished),
    ``instance_idle_timeout`` (idle agent instances are stopped after it),
    ``instance_shutdown`` (how long a stopping agent instance may take),
    ``agent_restarts`` (``(max_restarts, period)``: a per-agent supervisor that restarts
    crashing instances more often than this gives up, and a fresh one is started for the
    next step), ``max_recoveries`` (a workflow whose attempt was running at more crashes
    of the process in a row than this is parked in NEEDS_ATTENTION as poison work),
    ``priority_aging`` (seconds of waiting in an agent's queue worth one priority level,
    so low-priority work is never starved), ``log_level`` (level of the ``herder``
    loggers; handlers are left to the embedding program), ``seed`` (for retry jitter, to
    make runs repeatable), ``probe_timeout`` (how long a ``probe_<action>`` may take to
    tell whether a lapsed attempt was applied), ``retention`` (seconds or a
    ``timedelta``, default 7 days: finished workflows (SUCCEEDED, COMPENSATED, CANCELLED,
    ABANDONED) last updated longer ago are deleted with their steps and history, a
    bounded batch per sweep; ``None`` keeps everything; see docs/operations.md),
    ``agent_host`` (``"thread"``: a thread per busy agent instance; ``"pool"``: every
    agent's attempts run on one elastic pool of worker threads and idle agents hold none),
    ``tracer_provider`` (an OpenTelemetry tracer provider for spans per workflow and
    attempt; default: the global one if set, else no tracing at all; see
    docs/tracing.md).

    High availability (see docs/high_availability.md): ``lease`` is the leader lease in
    seconds (renewed every third of it). ``standby=True`` opens the store of a runtime
    running in another process and waits: it serves ``status``/``list`` and takes over
    (recovering every unfinished workflow) once that runtime dies, lets its lease lapse or
    hands over; ``standby_poll`` is how often it looks. Register agents and workflows on a
    standby as on an active runtime.

    asyncio (docs/asyncio.md): every call that waits has an ``_async`` form that never
    blocks the event loop (``await rt.start_async(...)``, ``await h.result_async()``,
    ``await rt.run_forever_async()``); ``async with Runtime(path) as rt`` stops it.
    """

    _in_setup = False  # True while the setup function registers (start() refuses then)
    _firer: Firer | None  # fires schedules while this runtime is active
    _routers: dict[str, Router]  # add_router: {@name} in agent templates

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        clock: Clock | None = None,
        sweep_interval: float = 0.25,
        default_retry: RetryPolicy | None = None,
        default_timeout: float = 300.0,
        map_size: int = 64 << 20,
        max_input_bytes: int = 1 << 20,
        max_result_bytes: int = 1 << 20,
        max_active_workflows: int = 100_000,
        instance_idle_timeout: float = 60.0,
        instance_shutdown: float = 1.0,
        agent_restarts: tuple[int, float] = (20, 10.0),
        max_recoveries: int = 3,
        priority_aging: float = 10.0,
        seed: int | None = None,
        ask_timeout: float = 30.0,
        log_level: int | str | None = None,
        standby: bool = False,
        lease: float = DEFAULT_LEASE,
        standby_poll: float = 0.05,
        probe_timeout: float = 30.0,
        setup: Callable[[Runtime], object] | None = None,
        retention: float | datetime.timedelta | None = DEFAULT_RETENTION,
        agent_host: str = "thread",
        tracer_provider: Any = None,
    ) -> None:
        if log_level is not None:
            # Only the level: handlers and formatting belong to the embedding program.
            logging.getLogger("herder").setLevel(log_level)
        if sweep_interval <= 0:
            raise InvalidInput(f"sweep_interval must be > 0, got {sweep_interval!r}")
        if not 0 < priority_aging < float("inf"):
            raise InvalidInput(
                f"priority_aging must be a finite number of seconds > 0, got {priority_aging!r}"
            )
        for name, limit in (
            ("max_input_bytes", max_input_bytes),
            ("max_result_bytes", max_result_bytes),
        ):
            if not 0 < limit <= MAX_VALUE_BYTES:
                raise InvalidInput(f"{name} must be 1..{MAX_VALUE_BYTES}, got {limit!r}")
        if max_active_workflows < 1:
            raise InvalidInput(f"max_active_workflows must be >= 1, got {max_active_workflows!r}")
        self._clock = clock or SystemClock()
        self._max_input_bytes = max_input_bytes
        self._max_active = max_active_workflows
        self._ask_timeout = ask_timeout
        self._sweep_interval = sweep_interval
        keep = retention_seconds(retention)  # checked before the store is opened
        # The store, and tracing (None without OpenTelemetry or a provider: no cost at all).
        self._store, self._tracing = (
            Store(path, map_size=map_size, standby=standby, lease=lease),
            tracing_for(tracer_provider),
        )
        self._config = EngineConfig(
            default_retry=default_retry or RetryPolicy(),
            default_timeout=default_timeout,
            max_result_bytes=max_result_bytes,
            instance_shutdown=instance_shutdown,
            idle_timeout=instance_idle_timeout,
            agent_max_restarts=agent_restarts[0],
            agent_restart_period=agent_restarts[1],
            max_recoveries=max_recoveries,
            priority_aging=float(priority_aging),
            seed=seed,
            probe_timeout=probe_timeout,
            agent_host=host_kind(agent_host),
        )
        # The engine's time follows the monotonic clock (actors/_clock.py, SteadyClock).
        steady = SteadyClock(self._clock)
        self._retention = Retention(self._store, self._clock, keep)
        self._ctx = EngineContext(self._store, steady, self._config, self._on_final)
        self._ctx.on_lease_lost = self._on_lease_lost
        self._ctx.on_resumed = self._on_resumed
        self._latest: dict[str, Plan] = {}
        self._started: set[tuple[str, int]] = set()  # definitions marked started in meta
        self._actions: dict[str, frozenset[str] | None] = {}
        self._waiters: dict[str, list[Future[Final]]] = {}
        self._lock = threading.Condition()
        self._capacity_freed = Pulse()  # start_async's wake-up where start() waits on _lock
        self._active = 0
        self._closed = False
        self._draining = False
        self._fatal: BaseException | None = None
        self._wake = NotifyingEvent()  # run_forever's: a signal, a stop, a failure
        # Held while a standby becomes active, so registration and stop() never see it half
        # done; the tree (self._root) exists only on the active runtime.
        self._promotion = threading.RLock()
        self._root: pykka.ActorRef | None = None
        self._is_active = NotifyingEvent()
        self._health_listeners: builtins.list[Callable[[], None]] = []
        self._watcher: StandbyWatcher | None = None
        self._firer, self._routers = None, {}
        try:
            if setup is not None:
                self._setup(setup)
            if standby:
                self._watcher = StandbyWatcher(
                    self._store, standby_poll, self._promote, self._healthy
                )
            else:
                self._become_active()
        except BaseException:
            self._store.close()
            raise

    def _setup(self, setup: Callable[[Runtime], object]) -> None:
        """Run the application's registration before anything is recovered."""
        self._in_setup = True
        try:
            setup(self)
        finally:
            self._in_setup = False

    # -- lifecycle ---------------------------------------------------------------------

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stop(self, timeout: float = 10.0, *, drain: bool = False) -> None:
        """Stop the actors and close the store. Unfinished work resumes at the next open.

        From the moment it is called, :meth:`start` raises :class:`RuntimeClosed`. With
        ``drain=True`` nothing new is dispatched and attempts already running on agents
        may finish (their outcome recorded) for up to ``timeout`` seconds first; whatever
        still runs then is run again, with the same idempotency key, at the next open.
        ``timeout`` also bounds how long the actors may take to stop. Idempotent.
        """
        with self._lock:
            if self._closed:
                return
            self._draining = True
        if self._firer is not None:
            self._firer.stop()
        if drain:
            try:
                self._drain(timeout)
            except Exception:
                # A drain that cannot finish must not leave the runtime half-stopped.
                _log.exception("draining failed; stopping without it")
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if self._watcher is not None:
            self._watcher.stop()
        with self._promotion:
            root = self._root
        try:
            if root is not None and root.is_alive():
                root.stop(timeout=timeout)
        except pykka.ActorDeadError:
            pass
        except pykka.Timeout:
            _log.warning("supervision tree did not stop within %ss", timeout)
        finally:
            if root is not None:
                self._store.note_clock(self._ctx.clock.time())  # for the next holder
            self._store.close()
        with self._lock:
            waiters, self._waiters = self._waiters, {}
            self._lock.notify_all()
        self._capacity_freed.fire()
        for futures in waiters.values():
            for fut in futures:
                if not fut.done():
                    fut.set_exception(RuntimeClosed("the runtime was stopped"))
        self._wake.set()

    def run_forever(self, *, drain_timeout: float = 30.0) -> None:
        """Serve until SIGTERM or SIGINT, then drain and stop (see :meth:`stop`).

        Must be called from the main thread, which is where Python runs signal handlers:
        the handlers only set an event, and this thread performs the ordered shutdown.
        Returns early if the runtime is stopped from elsewhere or fails for good.
        """
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError(
                "run_forever() must run in the main thread (Python delivers signals only "
                "there); from another thread, wait on your own event and call stop(drain=True)"
            )
        wake = self._wake
        received: list[str] = []

        def on_signal(signum: int, frame: object) -> None:
            received.append(signal.Signals(signum).name)
            wake.set()

        previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            _log.info("runtime on %s serving until SIGTERM or SIGINT", self.path)
            while not wake.wait(1.0):  # wakes to notice a stop() or failure elsewhere
                if self._closed or self._fatal is not None:
                    break
            if received:
                _log.info("%s received: draining for up to %ss", received[0], drain_timeout)
            # A deposed runtime cannot record outcomes: nothing to wait for.
            self.stop(drain_timeout, drain=self._ctx.lost is None)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        _log.info("runtime on %s stopped", self.path)

    @property
    def path(self) -> str:
        """The store directory."""
        return str(self._store.path)

    @property
    def clock(self) -> Clock:
        """The clock this runtime runs on."""
        return self._clock

    # -- high availability -------------------------------------------------------------

    @property
    def is_active(self) -> bool:
        """True while this runtime holds the lease and runs its actors (not a standby)."""
        return self._is_active.is_set() and self._ctx.lost is None and not self._closed

    def wait_active(self, timeout: float | None = None) -> bool:
        """Block until this (standby) runtime took the lease and recovered; False on timeout."""
        return self._is_active.wait(timeout)

    def handoff(self, deadline: float = 30.0, *, timeout: float | None = None) -> bool:
        """Hand the store over without downtime.

        On the active runtime: dispatch nothing new, let running attempts finish for up
        to ``deadline`` seconds (their outcomes are recorded), release the lease so a
        standby takes over at once, and stop. Workflows started meanwhile wait in the
        store for the new leader. Returns True.

        On a standby: ask the active runtime (another process) to do the above, then wait
        up to ``timeout`` seconds (default: ``deadline`` plus two leases) until this
        runtime took the lease; returns whether it did (another standby may win).
        """
        if self._root is not None:
            self._hand_over(deadline)
            return True
        self._check_open()
        self._store.request_handoff(deadline)
        if timeout is None:
            timeout = deadline + 2 * self._store.lease_duration
        return self.wait_active(timeout)

    def _hand_over(self, deadline: float) -> None:
        _log.warning("handing over %s: draining for up to %ss", self.path, deadline)
        started = time.monotonic()
        self._drain(deadline)
        with self._lock:
            self._draining = True  # start() refuses from here: the lease is going
        released = self._store.release_lease(timeout=self._ask_timeout)
        _log.warning(
            "lease of %s %s after %.2fs of handoff; stopping",
            self.path,
            "released" if released else "was already lost",
            time.monotonic() - started,
        )
        self.stop()

    def _become_active(self) -> None:
        """Start the actors and recover, once the store's lease is ours."""
        with self._promotion:
            if self._closed:
                return
            self._ctx.reset_tokens()
            # Persisted deadlines are re-based: time starts no earlier than the last time
            # the store's previous holder recorded, however the wall clock stepped since.
            lease = self._store.lease
            floor = 0.0 if lease is None or lease.clock is None else lease.clock
            self._ctx.clock = SteadyClock(self._clock, floor=floor)
            for plan in builtins.list(self._ctx.plans.values()):
                stored = self._store.get_plan(plan.name, plan.version)
                if stored is None or (stored != plan and not self._ever_started(plan)):
                    self._store_definition(plan)
            # The Scheduler's first recovery counts the unfinished workflows (one scan).
            with self._lock:
                self._active = 0
            self._ctx.on_recovered = self._on_recovered
            keeper = LeaseKeeper(self._store, self._ctx, self._hand_over)
            self._ctx.sweep_listeners[:] = [
                keeper.on_sweep,
                self._healthy,
                self._retention.on_sweep,
            ]
            self._root = self._start_tree()
            call(self._scheduler, "sync", timeout=self._ask_timeout)  # recovery has run
            self._firer = Firer(self, self._ask_timeout)
            self._firer.start()
            self._is_active.set()

    def _promote(self, reason: str) -> None:
        """The standby watcher took the lease: become the active runtime."""
        try:
            self._become_active()
        except BaseException as exc:
            _log.critical("standby took the lease but could not start: %s", exc)
            self._fatal = exc
            self._wake.set()

    def _healthy(self) -> None:
        for listener in builtins.list(self._health_listeners):
            listener()

    # -- registration ------------------------------------------------------------------

    def add_agent(
        self,
        name: str,
        factory: Callable[[], Agent],
        *,
        concurrency: int | Adaptive = 1,
        breaker: CircuitBreaker | None = None,
        rate_limit: RateLimit | None = None,
    ) -> None:
        """Serve agent ``name`` with instances built by ``factory`` (a zero-argument callable).

        ``factory`` is an Agent subclass or e.g. ``functools.partial(HostAgent, host=h)``
        for one agent per remote resource. Up to ``concurrency`` instances run at once
        (the agent's concurrency limit); they start when work arrives and stop after
        being idle. ``concurrency=Adaptive(min=1, max=64)`` lets the limit follow the
        resource: it grows while latency holds and shrinks on failures, timeouts, crashes
        and rising latency (``stats()["resources"][name]["limit"]``). ``breaker`` (a
        :class:`CircuitBreaker`) stops dispatching to a
        resource that keeps failing and probes it after a cool-down; ``rate_limit`` (a
        :class:`RateLimit`) caps attempts per second. Steps held back by either wait in
        the agent's queue, highest priority first, spending no attempt. Adding a name
        again replaces its factory, concurrency and limits.
        """
        self._check_open()
        validate_name("agent", name)
        if not callable(factory):
            raise InvalidInput(f"agent {name!r}: factory must be callable, got {factory!r}")
        adaptive = concurrency if isinstance(concurrency, Adaptive) else None
        if adaptive is not None:
            concurrency = adaptive.max  # instances to hold; the limit admits fewer
        if not isinstance(concurrency, int) or concurrency < 1:
            raise InvalidInput(
                f"agent {name!r}: concurrency must be an int >= 1 or an Adaptive, "
                f"got {concurrency!r}"
            )
        for kind, value, want in (
            ("breaker", breaker, CircuitBreaker),
            ("rate_limit", rate_limit, RateLimit),
        ):
            if value is not None and not isinstance(value, want):
                raise InvalidInput(
                    f"agent {name!r}: {kind} must be a {want.__name__} or None, got {value!r}"
                )
        cls = agent_class_of(factory)
        refused = () if cls is None else coroutine_actions(cls)
        if refused:
            raise InvalidInput(
                f"agent {name!r}: {', '.join(map(repr, refused))} "
                f"{'is an async def' if len(refused) == 1 else 'are async def'}, which this "
                "runtime's agent host cannot run (it calls actions on threads); make them "
                "plain def methods (asyncio.run() inside one runs a coroutine to its end)"
            )
        with self._promotion:
            self._actions[name] = None if cls is None else action_names(cls)
            if self._tracing is not None:
                factory = self._tracing.wrap_factory(name, factory)
            self._ctx.agents[name] = (factory, concurrency)
            if breaker is None and rate_limit is None and adaptive is None:
                self._ctx.limits.pop(name, None)
            else:
                self._ctx.limits[name] = (breaker, rate_limit, adaptive)
            if self._root is not None:  # a standby's Scheduler reads ctx.agents at start
                call(self._scheduler, "add_agent", name, timeout=self._ask_timeout)

    def add_router(self, name: str, router: Router) -> None:
        """Register ``router(input) -> str`` for agent templates that name ``{@name}``.

        It runs once when a workflow whose steps use it starts, and what it returns is
        stored with the workflow (see ``Workflow.step``): later runs never call it for
        that workflow again. Whatever it raises fails the start with
        :class:`InvalidInput`. Adding a name again replaces the router.
        """
        self._check_open()
        validate_name("router", name)
        if not callable(router):
            raise InvalidInput(f"router {name!r} must be callable, got {router!r}")
        self._routers[name] = router

    def remove_agent(self, name: str) -> None:
        """Stop serving agent ``name``; steps waiting for it resume when it is added again."""
        self._check_open()
        with self._promotion:
            if name not in self._ctx.agents:
                raise UnknownName(f"no agent named {name!r} is registered")
            del self._ctx.agents[name]
            self._ctx.limits.pop(name, None)
            self._actions.pop(name, None)
            if self._root is not None:
                call(self._scheduler, "remove_agent", name, timeout=self._ask_timeout)

    def add_workflow(self, workflow: Workflow) -> None:
        """Register a workflow definition (validated and compiled here).

        Each step's action and compensation are checked against its agent if that agent
        is registered (else at :meth:`start`); :class:`UnknownName` lists the known names.
        The compiled plan is stored. A different plan under a stored name and version
        replaces it while no workflow of it has ever started (a typo needs no new
        version); after that it is refused, because workflows under it would change.
        """
        self._check_open()
        plan = workflow.compile()
        self._check_actions(plan)
        stored = self._store.get_plan(plan.name, plan.version)
        changed = stored is not None and stored != plan
        if changed and self._ever_started(plan):
            raise InvalidDefinition(
                f"workflow {plan.name!r} version {plan.version} is stored with different "
                "steps and workflows of it have started; give the changed definition a new "
                "version"
            )
        with self._promotion:
            if (stored is None or changed) and self._root is not None:  # standby: at promotion
                self._store_definition(plan)
            self._ctx.plans[(plan.name, plan.version)] = plan
            current = self._latest.get(plan.name)
            if current is None or plan.version >= current.version:
                self._latest[plan.name] = plan
            self._ctx.tell_scheduler(Define(plan))
        if self._firer is not None:
            self._firer.wake()  # a schedule may have waited for this workflow

    def _store_definition(self, plan: Plan) -> None:
        key = definition_key(plan.name, plan.version)
        put = Put("definitions", key, encode(plan.to_dict()))
        self._store.writer.submit(Transition(ops=(put,))).result(timeout=self._ask_timeout)

    # -- starting and watching work ----------------------------------------------------

    def start(
        self,
        workflow: str | Workflow,
        input: Any = None,
        *,
        workflow_id: str | None = None,
        timeout: float | None = None,
        priority: int = 0,
        start_at: datetime.datetime | None = None,
        delay: float | None = None,
    ) -> WorkflowHandle:
        """Start a workflow; it is durable when this returns.

        Idempotent on ``workflow_id``: the same id with the same input returns a handle to
        the existing workflow; with different input it raises :class:`WorkflowConflict`.
        Blocks while ``max_active_workflows`` are unfinished (up to ``timeout`` seconds,
        then :class:`TimeoutError`).

        ``priority`` (default 0; higher first) orders its steps against other work
        waiting for the same agent; waiting raises it (see ``priority_aging``).
        ``start_at`` (a datetime) or ``delay`` (seconds) holds its first steps until then;
        the wait is a timer in the store and survives restarts.
        """
        steps = self._starting(
            workflow,
            input,
            workflow_id=workflow_id,
            timeout=timeout,
            priority=priority,
            start_at=start_at,
            delay=delay,
        )
        return run_blocking(steps)

    def _start(self, workflow: str | Workflow, input: Any, **options: Any) -> WorkflowHandle:
        """:meth:`start`, with ``_starting``'s extra options (``also``)."""
        return run_blocking(self._starting(workflow, input, **options))

    def _starting(
        self,
        workflow: str | Workflow,
        input: Any,
        *,
        workflow_id: str | None,
        timeout: float | None,
        priority: int = 0,
        start_at: datetime.datetime | None = None,
        delay: float | None = None,
        also: tuple[Put, ...] = (),
    ) -> Steps[WorkflowHandle]:
        """The body of :meth:`start` and ``start_async``; it yields their two waits.

        ``also`` is written in the transaction that creates the workflow, and only if it
        does (a schedule's cursor, see ``_firing``)."""
        self._check_active()
        new = self._prepare(
            workflow,
            input,
            workflow_id=workflow_id,
            priority=priority,
            start_at=start_at,
            delay=delay,
        )
        plan, wid, normalized = new.plan, new.workflow_id, new.input
        # An existing id is found by the compare-and-set below, without a read. Only when
        # start() would have to wait for capacity is it worth looking first: a repeated
        # start of an existing workflow never waits.
        if self._active >= self._max_active:
            existing = self._store.get_workflow(wid)
            if existing is not None:
                return self._same_start(existing, plan, normalized)
        yield Wait(lambda: self._wait_capacity(timeout), lambda: self._capacity_async(timeout))
        record, steps, transition = self._creation(new, also)
        committed = self._store.writer.submit(transition)
        gave_up = threading.Event()
        slot = threading.Lock()  # whoever acquires it first gives the capacity back

        def release_once() -> None:
            if slot.acquire(blocking=False):
                self._release_capacity()

        def on_commit(done: Future[None]) -> None:
            # Admitted from here, so a start() that stopped waiting (timeout) still gets
            # its workflow running once it is durable, or its capacity back if it failed.
            if done.exception() is None:
                self._ctx.tell_scheduler(Admit(record, steps))
            elif gave_up.is_set():
                release_once()

        committed.add_done_callback(on_commit)
        try:
            yield Wait(
                lambda: committed.result(timeout=self._ask_timeout),
                lambda: awaited(committed, self._ask_timeout),
            )
            self._started.add((plan.name, plan.version))
        except ConditionFailed:
            self._id_taken(record)
            raced = self._store.get_workflow(wid)
            assert raced is not None
            return self._same_start(raced, plan, normalized)
        except (TimeoutError, asyncio.CancelledError):  # the commit may still land
            gave_up.set()
            if committed.done() and committed.exception() is not None:
                release_once()  # it failed between the timeout and gave_up
            raise
        except BaseException:
            self._release_capacity()
            raise
        _log.info(
            "workflow %s started (%s@%d)",
            wid,
            plan.name,
            plan.version,
            extra={"workflow_id": wid, "workflow": plan.name},
        )
        return WorkflowHandle(self, wid)

    def start_many(
        self, starts: Iterable[Mapping[str, Any]], *, timeout: float | None = None
    ) -> builtins.list[WorkflowHandle]:
        """Start many workflows in one group commit (one fsync, not one each); all are
        durable when this returns, with one handle per item, in order.

        Each item is a mapping of :meth:`start`'s arguments: ``workflow`` (required),
        ``input``, ``workflow_id``, ``priority``, ``start_at``, ``delay``. Every item is
        checked before anything is written: a bad one raises and nothing starts.
        Idempotent per id like :meth:`start`: an id that exists (or repeats in the list)
        with the same input gives a handle to that workflow; when one has different
        input, the others still start and :class:`WorkflowConflict` names it. Blocks while
        ``max_active_workflows`` are unfinished (up to ``timeout`` seconds).
        """
        return run_blocking(self._starting_many(builtins.list(starts), timeout))

    def _starting_many(
        self, starts: builtins.list[Mapping[str, Any]], timeout: float | None
    ) -> Steps[builtins.list[WorkflowHandle]]:
        """The body of :meth:`start_many` and ``start_many_async``."""
        self._check_active()
        news = [self._prepare(**start_args(i, item)) for i, item in enumerate(starts)]
        unique: dict[str, NewStart] = {}
        for new in news:
            first = unique.setdefault(new.workflow_id, new)
            if first is not new and not same_start(first, new):
                raise WorkflowConflict(
                    f"workflow id {new.workflow_id!r} appears twice in start_many with "
                    "different workflows or input; nothing was started"
                )
        taken = self._take_capacity_now(len(unique))
        try:
            while taken < len(unique):
                yield Wait(
                    lambda: self._wait_capacity(timeout), lambda: self._capacity_async(timeout)
                )
                taken += 1
        except BaseException:
            for _ in range(taken):
                self._release_capacity()
            raise
        marked = set(self._started)  # one started mark per definition, not one per item
        created = []
        for new in unique.values():
            key = (new.plan.name, new.plan.version)
            created.append(self._creation(new, mark=key not in marked))
            marked.add(key)
        committed: Future[builtins.list[BaseException | None]] = Future()

        def on_done(results: builtins.list[BaseException | None]) -> None:
            # Admitted here, on the writer thread, so workflows are running once durable
            # even if the caller stopped waiting; a failed one gives its capacity back.
            committed.set_result(results)
            for (record, steps, _), result in zip(created, results, strict=True):
                if result is None:
                    self._ctx.tell_scheduler(Admit(record, steps))
                else:
                    self._id_taken(record)  # or not written at all: the same for both

        self._store.writer.submit_many([c[2] for c in created], on_done)
        outcomes = yield Wait(
            lambda: committed.result(timeout=self._ask_timeout),
            lambda: awaited(committed, self._ask_timeout),
        )
        conflicts = []
        for new, outcome in zip(unique.values(), outcomes, strict=True):
            if outcome is None:
                self._started.add((new.plan.name, new.plan.version))
                continue
            if not isinstance(outcome, ConditionFailed):
                raise outcome
            existing = self._store.get_workflow(new.workflow_id)
            if existing is None or not same_record(existing, new):
                conflicts.append(new.workflow_id)
        if conflicts:
            raise WorkflowConflict(
                f"{len(conflicts)} workflow ids were already started with different input "
                f"({', '.join(map(repr, conflicts[:5]))}); the other workflows started"
            )
        _log.info("%d workflows started in one commit", len(created))
        return [WorkflowHandle(self, new.workflow_id) for new in news]

    def _prepare(
        self,
        workflow: str | Workflow,
        input: Any,
        *,
        workflow_id: str | None,
        priority: int,
        start_at: datetime.datetime | None,
        delay: float | None,
    ) -> NewStart:
        """Check one start's arguments (nothing is written): see :meth:`start`."""
        name = workflow.name if isinstance(workflow, Workflow) else workflow
        plan = self._latest.get(name) if isinstance(name, str) else None
        if plan is None:
            known = ", ".join(sorted(self._latest)) or "none"
            raise UnknownName(
                f"no workflow named {name!r} is registered (registered: {known}); "
                "call add_workflow first"
            )
        wid = uuid.uuid4().hex if workflow_id is None else validate_id(workflow_id)
        priority = check_priority(priority)
        begin = begin_at(self._ctx.clock.time(), start_at, delay, wall=self._clock.time())
        normalized = normalize(input, limit=self._max_input_bytes, what="workflow input")
        agents = resolve_agents(plan, normalized, self._routers)
        check_registered(plan, agents, self._ctx.agents, self._actions)
        return NewStart(plan, wid, normalized, priority, begin, agents)

    def _creation(
        self, new: NewStart, also: tuple[Put, ...] = (), *, mark: bool | None = None
    ) -> tuple[WorkflowRecord, builtins.list[StepRecord], Any]:
        """The new workflow's records and transition; ``mark`` (default: unless this
        runtime marked it already) adds its definition's started mark."""
        if mark is None:
            mark = (new.plan.name, new.plan.version) not in self._started
        now = self._ctx.clock.time()
        return creation(
            new,
            now,
            self._ctx.next_token(),
            mark_started=mark,
            also=also,
            trace=None
            if self._tracing is None
            else self._tracing.start_workflow(new.plan.name, new.workflow_id, now),
        )

    def handle(self, workflow_id: str) -> WorkflowHandle:
        """A handle to an existing workflow (e.g. one recovered after a restart)."""
        if self._store.get_workflow(workflow_id) is None:
            raise UnknownWorkflow(f"no workflow with id {workflow_id!r}")
        return WorkflowHandle(self, workflow_id)

    def status(self, workflow_id: str) -> WorkflowStatus:
        """The durable status of a workflow; :class:`UnknownWorkflow` if there is none."""
        record = self._store.get_workflow(workflow_id)
        if record is None:
            raise UnknownWorkflow(f"no workflow with id {workflow_id!r}")
        return WorkflowStatus.from_records(record, self._ordered_steps(record))

    def list(self, state: WorkflowState | str | None = None) -> list[WorkflowStatus]:
        """Every workflow (in a given state, if asked), as statuses.

        A workflow whose records are corrupt is left out (and logged); :meth:`status`
        of its id raises :class:`StoreCorrupt` naming the bad key.
        """
        if state is not None:
            state = WorkflowState(state)
        corrupt: builtins.list[StoreCorrupt] = []
        out = []
        for record in self._store.workflows(state, corrupt=corrupt):
            try:
                out.append(WorkflowStatus.from_records(record, self._ordered_steps(record)))
            except StoreCorrupt as exc:
                corrupt.append(exc)
        for bad in corrupt:
            _log.error("list() left out a workflow: %s", bad)
        return out

    def cancel(self, workflow_id: str, *, who: str | None = None, why: str | None = None) -> None:
        """Stop dispatching and compensate completed steps; the workflow ends CANCELLED."""
        self._operate(Operate("cancel", workflow_id, who=who, why=why))

    def retry(self, workflow_id: str, *, who: str | None = None, why: str | None = None) -> None:
        """Resume a NEEDS_ATTENTION workflow: the failed compensation, else the failed step."""
        self._operate(Operate("retry", workflow_id, who=who, why=why))

    def skip(
        self,
        workflow_id: str,
        step: str | None = None,
        result: Any = None,
        *,
        who: str | None = None,
        why: str | None = None,
    ) -> None:
        """Mark a step done by hand and let the workflow go on.

        ``step`` defaults to the step that needs attention. A step whose compensation
        failed becomes COMPENSATED and the remaining compensations run; any other
        unfinished step (in a running or parked workflow) becomes SUCCEEDED with
        ``result`` (its running attempt, if any, is fenced out) and its dependents run.
        """
        self._operate(Operate("skip", workflow_id, step, result, who=who, why=why))

    def compensate(
        self, workflow_id: str, *, who: str | None = None, why: str | None = None
    ) -> None:
        """Undo the completed steps of a running or parked workflow; it ends COMPENSATED.

        Steps whose outcome is unknown or awaited are given up (not undone): skip them
        first if they did take effect.
        """
        self._operate(Operate("compensate", workflow_id, who=who, why=why))

    def abandon(self, workflow_id: str, *, who: str | None = None, why: str | None = None) -> None:
        """Give up on a workflow: it ends ABANDONED, nothing more runs and nothing is undone."""
        self._operate(Operate("abandon", workflow_id, who=who, why=why))

    def complete_step(self, task_token: str, result: Any = None) -> None:
        """Complete a step whose action returned ``ctx.complete_later()``; durable on return.

        Callable from any thread. Raises :class:`CompletionRefused` if the attempt the
        token names is no longer current (timed out and retried, or the step finished).
        """
        self._ask_durable("complete", self._completion(task_token, result))

    def _completion(self, task_token: str, result: Any) -> Complete:
        wf, step, token = parse_task_token(task_token)
        result = normalize(result, limit=self._config.max_result_bytes, what="step result")
        return Complete(wf, step, token, ok=True, result=result)

    def fail_step(
        self, task_token: str, error: str | BaseException, *, permanent: bool = False
    ) -> None:
        """Fail a step whose action returned ``ctx.complete_later()``; durable on return.

        The step is retried under its policy unless ``permanent`` (or ``error``'s type is
        non-retryable). Refusals as for :meth:`complete_step`.
        """
        self._ask_durable("complete", self._failure(task_token, error, permanent=permanent))

    def _failure(self, task_token: str, error: str | BaseException, *, permanent: bool) -> Complete:
        wf, step, token = parse_task_token(task_token)
        if isinstance(error, BaseException):
            text, types = describe(error), error_types(error)
            permanent = permanent or isinstance(error, Permanent)
        else:
            text, types = bounded_text(safe_str(error)), ()
        return Complete(
            wf, step, token, ok=False, error=text, error_types=types, permanent=permanent
        )

    def inbox(self) -> builtins.list[InboxItem]:
        """The workflows waiting for an operator (NEEDS_ATTENTION), oldest change first."""
        return inbox_items(self._store, self._ctx.plans)

    def history(self, workflow_id: str) -> builtins.list[dict[str, Any]]:
        """Every recorded transition and operator action of a workflow, oldest first."""
        if self._store.get_workflow(workflow_id) is None:
            raise UnknownWorkflow(f"no workflow with id {workflow_id!r}")
        return read_history(self._store, workflow_id)

    def stats(self) -> dict[str, Any]:
        """Counters and gauges: workflows by state, step counters, agents, store commits, and
        ``corrupt`` ("db:key" -> reason) for records that could not be read."""
        if self._root is None and not self._closed:
            self._check_active()  # a standby has no engine to count
        by_state: dict[str, int] = dict.fromkeys(WorkflowState, 0)
        corrupt: builtins.list[StoreCorrupt] = []
        for record in self._store.workflows(corrupt=corrupt):
            by_state[record.state] += 1
        engine = call(self._scheduler, "stats", timeout=self._ask_timeout)
        bad = {f"{e.db}:{e.key!r}": e.reason for e in corrupt} | engine["corrupt"]
        return {
            "workflows": by_state,
            "steps": {k: v for k, v in engine.items() if isinstance(v, int)},
            "agents": engine["agents"],
            "host": engine["host"],
            "awaiting_definition": engine["awaiting_definition"],
            "resources": engine["resources"],
            "store": self._store.writer.stats(),
            "restarts": self._restart_counts(),
            "corrupt": bad,
        }

    def prometheus_collector(self) -> Any:
        """A prometheus-client collector exposing :meth:`stats` as ``herder_*`` metrics.

        Register it with ``prometheus_client.REGISTRY.register(rt.prometheus_collector())``;
        needs the ``prometheus`` extra (``pip install 'herder[prometheus]'``).
        """
        return stats_collector(self.stats)

    # -- internals ---------------------------------------------------------------------

    @property
    def _scheduler(self) -> pykka.ActorRef:
        ref = self._ctx.scheduler
        if ref is None:
            raise RuntimeClosed("the scheduler is not running")
        return ref

    def _start_tree(self) -> pykka.ActorRef:
        ctx = self._ctx

        def start_agents() -> pykka.ActorRef:
            listener = agents_listener(ctx.tell_scheduler)
            ref = start_supervisor(
                "agents", Strategy.ONE_FOR_ONE, listener=listener, clock=self._clock
            )
            ctx.agents_supervisor = ref
            return ref

        children = [
            ChildSpec(id="agents", start=start_agents, restart=Restart.PERMANENT),
            ChildSpec(id="scheduler", start=lambda: Scheduler.start(ctx)),
            ChildSpec(
                id="supervisor",
                start=lambda: WorkflowSupervisor.start(
                    ctx, self._sweep_interval, local_commands={"purge": self._retention.on_command}
                ),
            ),
        ]
        return start_supervisor(
            "herder",
            Strategy.ONE_FOR_ALL,
            children,
            clock=self._clock,
            on_fatal=self._on_fatal,
        )

    def _on_fatal(self, exc: BaseException) -> None:
        _log.critical("herder runtime gave up restarting its actors: %s", exc)
        self._fatal = exc
        self._wake.set()

    def _on_lease_lost(self, exc: LeaseLost) -> None:
        if self._store.releasing:
            return  # commits after our own release (a handoff): not a deposition
        self._fatal = exc
        self._wake.set()

    def _drain(self, timeout: float) -> None:
        self._ctx.paused = True
        _log.info(
            "draining: dispatching nothing new, waiting up to %ss for running attempts", timeout
        )
        deadline = time.monotonic() + timeout
        idle = threading.Event()  # never set: a pause between polls of the Scheduler
        running = 0
        while (left := deadline - time.monotonic()) > 0:
            try:
                running = call(self._scheduler, "in_flight", timeout=min(left, self._ask_timeout))
            except (RuntimeClosed, pykka.ActorDeadError):
                return
            if running == 0:
                self._settle(rounds=1)  # the last outcomes' commits
                return
            idle.wait(0.01)
        _log.warning(
            "%d attempts still running after draining %ss; they run again at the next open",
            running,
            timeout,
        )

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeClosed("the runtime is stopped; open a new Runtime to continue")
        if self._draining:
            raise RuntimeClosed("the runtime is stopping (stop() was called)")
        if self._fatal is not None:
            raise RuntimeClosed(f"the runtime failed and stopped its actors: {self._fatal}")

    def _check_active(self) -> None:
        self._check_open()
        if self._in_setup:
            raise NotActive(
                "setup registers agents and workflows before recovery begins; start, "
                "cancel or retry workflows once Runtime() has returned (or from a thread "
                "that calls rt.wait_active() first)"
            )
        if self._root is None:
            raise NotActive(
                f"this runtime is a standby on {self.path}: it serves status() and list() "
                "until it takes the lease; call start/cancel/retry on the active runtime, "
                "or wait_active() first"
            )

    def _check_actions(self, plan: Plan) -> None:
        """Each step's action and compensation exist on its agent, if it is registered
        (a templated agent is checked once resolved, at start)."""
        for spec in plan.steps:
            actions = self._actions.get(spec.agent)
            if actions is None:
                continue
            for action in (spec.action, spec.compensate):
                if action is not None and action not in actions:
                    raise UnknownName(
                        f"workflow {plan.name!r} step {spec.name!r}: agent {spec.agent!r} "
                        f"has no action {action!r} (it has: {', '.join(sorted(actions))})"
                    )

    def _ever_started(self, plan: Plan) -> bool:
        """True if a workflow of this definition was ever started (its mark in ``meta``,
        or, for a store older than the mark, a workflow record of it)."""
        if self._store.get("meta", started_key(plan.name, plan.version)) is not None:
            return True
        return any(
            r.name == plan.name and r.version == plan.version
            for r in self._store.workflows(corrupt=[])
        )

    def _same_start(self, existing: WorkflowRecord, plan: Plan, normalized: Any) -> WorkflowHandle:
        same = existing.input == normalized or encode(existing.input) == encode(normalized)
        if existing.name != plan.name or not same:  # (the bytes also match when NaN is in it)
            raise WorkflowConflict(
                f"workflow id {existing.id!r} was already started as {existing.name!r} with "
                "different input; use a new id, or the same input to get the existing handle"
            )
        return WorkflowHandle(self, existing.id)

    def _take_capacity_now(self, n: int) -> int:
        """Take ``n`` slots at once if they are free (start_many's fast path); else none."""
        with self._lock:
            self._check_open()
            if self._active + n > self._max_active:
                return 0
            self._active += n
            return n

    def _wait_capacity(self, timeout: float | None) -> None:
        with self._lock:
            if not self._lock.wait_for(
                lambda: self._active < self._max_active or self._closed, timeout
            ):
                raise TimeoutError(
                    f"{self._active} workflows are unfinished (max_active_workflows="
                    f"{self._max_active}); start() waited {timeout}s for one to finish"
                )
            self._check_open()
            self._active += 1

    async def _capacity_async(self, timeout: float | None) -> None:
        """As :meth:`_wait_capacity`, awaited: woken by :attr:`_capacity_freed`."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            with self._lock:
                if self._active < self._max_active or self._closed:
                    self._check_open()
                    self._active += 1
                    return
                freed = self._capacity_freed.arm()
            left = None if deadline is None else deadline - loop.time()
            try:
                await asyncio.wait_for(freed, left)
            except TimeoutError:
                raise TimeoutError(
                    f"{self._active} workflows are unfinished (max_active_workflows="
                    f"{self._max_active}); start_async() waited {timeout}s for one to finish"
                ) from None

    def _release_capacity(self) -> None:
        with self._lock:
            self._active -= 1
            self._lock.notify()
        self._capacity_freed.fire()

    def _operate(self, op: Operate) -> None:
        self._ask_durable("operate", self._operation(op))

    def _operation(self, op: Operate) -> Operate:
        """``op`` checked, as plain data (nothing is written)."""
        self._check_active()
        check_text("who", op.who, 200)
        check_text("why", op.why)
        # Plain data only reaches the Scheduler: a user object's methods must not run there.
        return replace(
            op,
            result=normalize(op.result, what="result"),  # its size is checked with the step
            who=normalize(op.who),
            why=normalize(op.why),
        )

    def _ask_durable(self, method: str, msg: Operate | Complete) -> None:
        """Ask the Scheduler to record ``msg``; return once that is durable."""
        self._check_active()
        done: Future[None] = call(self._scheduler, method, msg, timeout=self._ask_timeout)
        done.result(timeout=self._ask_timeout)

    def _on_recovered(self, unfinished: int) -> None:
        with self._lock:
            self._active += unfinished

    def _on_resumed(self) -> None:
        with self._lock:
            self._active += 1

    def _id_taken(self, record: WorkflowRecord) -> None:
        """A start was not written (its id was taken): give its capacity back and drop
        its span."""
        self._release_capacity()
        if self._tracing is not None and record.trace is not None:
            self._tracing.discard(record.trace)

    def _on_final(self, record: WorkflowRecord, steps: builtins.list[StepRecord] | None) -> None:
        level = logging.WARNING if record.state is WorkflowState.NEEDS_ATTENTION else logging.INFO
        extra = {"workflow_id": record.id, "workflow": record.name, "state": str(record.state)}
        _log.log(level, "workflow %s ended %s", record.id, record.state, extra=extra)
        if self._tracing is not None:
            self._tracing.ended(record, self._ctx.clock.time())
        with self._lock:
            futures = self._waiters.pop(record.id, [])
            self._active = max(0, self._active - 1)
            self._lock.notify()
        if self._firer is not None:
            self._firer.on_final(record.id)
        self._capacity_freed.fire()
        for fut in futures:
            if not fut.done():
                fut.set_result((record, steps))

    def _wait_final(self, workflow_id: str, timeout: float | None) -> Final:
        waiter = self._watch(workflow_id)
        try:
            return waiter.result(timeout)
        finally:
            self._unwatch(workflow_id, waiter)

    def _watch(self, workflow_id: str) -> Future[Final]:
        """A future resolved with the workflow's :data:`Final` (at once if it is final);
        pass it to :meth:`_unwatch` when done with it. :class:`UnknownWorkflow` if none."""
        fut: Future[Final] = Future()
        with self._lock:
            self._waiters.setdefault(workflow_id, []).append(fut)
        record = self._store.get_workflow(workflow_id)
        if record is None or record.state.is_final:
            with self._lock:
                mine = self._unlisted(workflow_id, fut)  # else _on_final resolves it
            if record is None:
                raise UnknownWorkflow(f"no workflow with id {workflow_id!r}")
            if mine:
                fut.set_result((record, None))
        return fut

    def _unwatch(self, workflow_id: str, fut: Future[Final]) -> None:
        with self._lock:
            self._unlisted(workflow_id, fut)

    def _unlisted(self, workflow_id: str, fut: Future[Final]) -> bool:
        """Take ``fut`` off the waiters (under ``_lock``); False if it was not on them."""
        futures = self._waiters.get(workflow_id)
        if futures is None or fut not in futures:
            return False
        futures.remove(fut)
        if not futures:
            del self._waiters[workflow_id]
        return True

    def _ordered_steps(self, record: WorkflowRecord) -> builtins.list[StepRecord]:
        plan = self._ctx.plans.get((record.name, record.version))
        return in_plan_order(record, self._store.steps_of(record.id), plan)

    def _restart_counts(self) -> dict[str, int]:
        if self._root is None:
            return {}
        try:
            children = call(self._root, "which_children", timeout=self._ask_timeout)
        except pykka.ActorDeadError:
            return {}
        return {c.id: c.restarts for c in children}

    def _sweep_now(self) -> None:
        """Have the watchdog sweep the timer index now and wait for it (testing aid)."""
        self._check_active()
        assert self._root is not None
        children = call(self._root, "which_children", timeout=self._ask_timeout)
        for child in children:
            if child.id == "supervisor" and child.ref is not None:
                call(child.ref, "sweep", timeout=self._ask_timeout)

    def _settle(self, rounds: int = 3) -> None:
        """Wait until messages and commits in flight have been handled (testing aid)."""
        for _ in range(rounds):
            call(self._scheduler, "sync", timeout=self._ask_timeout)
            self._store.writer.flush(timeout=self._ask_timeout)
