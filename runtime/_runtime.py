"""The Runtime facade: open a store, register agents and workflows, start and watch work.

The facade's jobs live in its base classes, one module each: settings (``_config``),
life (``_lifecycle``: becoming active, handoff, drain, stop, ``run_forever``),
registration (``_registration``), starting (``_start``, with ``_capacity``), waiting for
an end (``_handle``), operator actions (``_operations``), schedules (``_schedule_api``)
and the asyncio forms (``_async``). This module opens the store, holds the shared state
and answers the read-only questions (status, list, history, inbox, stats).
"""

from __future__ import annotations

import builtins
import collections
import contextlib
import inspect
import logging
import os
import threading
from collections.abc import Callable
from typing import Any

import pykka

from herder.actors import (
    Clock,
    EngineContext,
    RuntimeClosed,
    SteadyClock,
    SystemClock,
    call,
)
from herder.runtime._async import AsyncRuntime
from herder.runtime._capacity import Capacity, QueuedSlots, QueuedStart
from herder.runtime._claims import Claims
from herder.runtime._config import RuntimeConfig, check_gil
from herder.runtime._firing import Firer
from herder.runtime._ha import StandbyWatcher, lease_kept
from herder.runtime._handle import Final, Waiting, WorkflowHandle, unknown
from herder.runtime._inbox import InboxItem, inbox_items
from herder.runtime._keeper import LeaseKeeper
from herder.runtime._lifecycle import Lifecycle
from herder.runtime._listener import RuntimeListener
from herder.runtime._metrics import stats_collector
from herder.runtime._operations import Operations
from herder.runtime._registration import Registration
from herder.runtime._retention import Retention
from herder.runtime._routing import Router
from herder.runtime._schedule_api import ScheduleMethods
from herder.runtime._start import Starting
from herder.runtime._status import WorkflowStatus, workflow_counts
from herder.runtime._tracing import tracing_for
from herder.runtime._waits import NotifyingEvent, OneShot
from herder.store import (
    InvalidInput,
    Plan,
    ScheduleRecord,
    Store,
    StoreCorrupt,
    WorkflowState,
    get_logger,
    read_history,
)

__all__ = ["Runtime", "WorkflowHandle"]

_log = get_logger("herder.runtime")


class Runtime(
    Lifecycle,
    Registration,
    Starting,
    Capacity,
    Operations,
    Waiting,
    AsyncRuntime,
    ScheduleMethods,
):
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

    ``setup`` may only register agents, workflows and schedules (starting work inside it
    raises :class:`NotActive`); an
    exception from it closes the store and propagates. Registering after ``Runtime()``
    returned also works: recovered workflows wait (``stats()["awaiting_definition"]``)
    until their definition and agents arrive.

    Settings are the fields of :class:`RuntimeConfig` (see it for each one's meaning):
    pass ``config=RuntimeConfig(...)``, keywords (``Runtime(path, sweep_interval=0.1)``),
    or both (keywords override the config's fields). Every value is checked before the
    store is opened; an unknown or bad one raises :class:`InvalidInput`. ``rt.config``
    is the config the runtime runs on.

    High availability (see docs/high_availability.md): ``lease`` is the leader lease in
    seconds (renewed every third of it). ``standby=True`` opens the store of a runtime
    running in another process and waits: it serves ``status``/``list`` and takes over
    (recovering every unfinished workflow) once that runtime dies, lets its lease lapse or
    hands over; ``standby_poll`` is how often it looks. Register agents and workflows on a
    standby as on an active runtime.

    asyncio (docs/asyncio.md): every call that waits has an ``_async`` form that never
    blocks the event loop (``await rt.start_async(...)``, ``await h.result_async()``,
    ``await rt.run_forever_async()``); ``async with Runtime(path) as rt`` stops it.
    Agents with ``async def`` actions run as tasks on an event loop (``loop``).
    """

    _in_setup: int | None = None  # the thread running setup (start() refuses meanwhile)
    _firer: Firer | None  # fires schedules while this runtime is active
    _watcher: StandbyWatcher | None  # a standby's: takes over once the active one is gone
    _keeper: LeaseKeeper | None  # the active runtime's: renews the lease
    _routers: dict[str, Router]  # add_router: {@name} in agent templates

    def __init__(
        self,
        path: str | os.PathLike[str],
        config: RuntimeConfig | None = None,
        *,
        setup: Callable[[Runtime], object] | None = None,
        **overrides: Any,
    ) -> None:
        check_gil()
        self._config = config = RuntimeConfig.of(config, overrides)
        if setup is not None and not callable(setup):
            raise InvalidInput(
                f"setup must be a function taking the Runtime (setup=register), got {setup!r}"
            )
        if config.log_level is not None:
            # Only the level: handlers and formatting belong to the embedding program.
            logging.getLogger("herder").setLevel(config.log_level)
        self._clock = config.clock or SystemClock()
        self._max_input_bytes = config.max_input_bytes
        self._max_active = config.max_active_workflows
        self._ask_timeout = config.ask_timeout
        # The store first: whatever fails after it (in _parts, setup, start) closes it.
        self._store = Store(
            path, map_size=config.map_size, standby=config.standby, lease=config.lease
        )
        parts = False
        try:
            self._parts(config)
            parts = True
            if setup is not None:
                with lease_kept(self._store):  # (no sweep renews it yet)
                    self._setup(setup)
            if config.standby:
                self._watcher = StandbyWatcher(
                    self._store,
                    config.standby_poll,
                    self._promote,
                    self._standby_polled,
                    self._failed,  # (a newer herder took the store over meanwhile)
                )
            else:
                self._become_active()
        except BaseException:
            if parts:  # the actors may run already (becoming active failed after the tree)
                try:
                    self.stop()
                except Exception:  # (the store is closed below all the same)
                    _log.exception("stopping a runtime that failed to start")
            self._store.close()
            raise

    def _parts(self, config: RuntimeConfig) -> None:
        """Everything but the store (open already): anything that fails in here closes it."""
        # Tracing: None without OpenTelemetry or a provider (no cost at all).
        self._tracing = tracing_for(config.tracer_provider)
        # The engine's time follows the monotonic clock (actors/_clock.py, SteadyClock).
        steady = SteadyClock(self._clock)
        # On the engine's clock: the ``updated`` it compares with are its times (a step
        # of the wall clock must not make a workflow that just ended look old). Read
        # through _ctx each time: becoming active gives the engine a new, re-based clock.
        self._retention = Retention(
            self._store, self._engine_time, config.retention_seconds, interval=config.sweep_interval
        )
        self._listener = RuntimeListener(self)
        self._ctx = EngineContext(
            self._store, steady, config.engine_config(), self._listener, loop=config.loop
        )
        self._latest: dict[str, Plan] = {}
        self._started: set[tuple[str, int]] = set()  # definitions marked started in meta
        self._actions: dict[str, frozenset[str] | None] = {}
        # Bumped by add_agent/remove_agent: a definition whose agents start() found
        # registered at one version needs no new look at them until the next (_start.py).
        self._agents_version = 0
        self._agents_seen: dict[int, tuple[Plan, int]] = {}
        self._claims = Claims()  # ids a start() is creating (runtime/_claims.py)
        self._waiters: dict[str, builtins.list[OneShot[Final]]] = {}
        self._running: set[str] = set()  # started here, admitted, not yet announced final
        self._passed: set[str] = set()  # ending: their slot went on early (_capacity._pass_on)
        self._lock = threading.Condition()
        self._active = 0
        self._queued: collections.deque[QueuedStart | QueuedSlots]  # starts for a slot
        self._queued = collections.deque()
        self._handing = False  # a thread is handing slots to queued starts (_capacity)
        self._closed = False
        self._draining = False
        self._fatal: BaseException | None = None
        self._wake = NotifyingEvent()  # run_forever's: a signal, a stop, a failure
        self._stopped = threading.Event()  # the stop() that closed the runtime is done
        self._stopper: int | None = None  # the thread running that stop()
        # Held while a standby becomes active, so registration and stop() never see it half
        # done; the tree (self._root) exists only on the active runtime.
        self._promotion = threading.RLock()
        # Held while add_workflow queues a definition's write and registers it once durable
        # (_storing meanwhile), and while a start that writes its definition's started mark
        # is queued (runtime/_starts.py, submit_creations): no workflow starts on a
        # definition replaced meanwhile.
        self._defining = threading.Lock()
        self._storing: dict[tuple[str, int], Plan] = {}
        self._root: pykka.ActorRef[Any] | None = None
        self._is_active = NotifyingEvent()  # became active, or stopped or failed first
        self._health_listeners: builtins.list[Callable[[], None]] = []
        self._watcher = self._keeper = None
        self._firer, self._routers = None, {}
        # rt.schedule() calls made before there is a firer (in setup, on a standby), the
        # last of each name: defined when this runtime becomes active (_lifecycle).
        self._declared: dict[str, ScheduleRecord] = {}

    def _engine_time(self) -> float:
        """The engine's clock time now (its clock is replaced when this becomes active)."""
        return self._ctx.clock.time()

    def _setup(self, setup: Callable[[Runtime], object]) -> None:
        """Run the application's registration before anything is recovered."""
        self._in_setup = threading.get_ident()
        try:
            made = setup(self)
        finally:
            self._in_setup = None
        if inspect.iscoroutine(made):  # (an async def: none of it ran, nothing registered)
            made.close()
            raise InvalidInput(
                "setup (herder run: the app factory) returned a coroutine: it is an async "
                "def, which runs only when awaited, and the runtime calls it without "
                "awaiting, so it would register nothing. Make it a plain def: add_agent, "
                "add_workflow and schedule are plain calls"
            )
        # add_workflow checked the actions of the agents registered before it; one
        # registered after it (a release that renamed an action) is checked here, before
        # recovery: a recovered workflow would fail that step for good and compensate.
        for plan in list(self._ctx.plans.values()):
            self._check_actions(plan)

    @property
    def config(self) -> RuntimeConfig:
        """The settings this runtime runs on."""
        return self._config

    @property
    def path(self) -> str:
        """The store directory."""
        return str(self._store.path)

    @property
    def clock(self) -> Clock:
        """The clock this runtime runs on."""
        return self._clock

    def handle(self, workflow_id: str) -> WorkflowHandle:
        """A handle to an existing workflow (e.g. one recovered after a restart)."""
        if self._store.get_workflow(workflow_id) is None:
            raise unknown(workflow_id)
        return WorkflowHandle(self, workflow_id)

    def status(self, workflow_id: str) -> WorkflowStatus:
        """The durable status of a workflow; :class:`UnknownWorkflow` if there is none."""
        found = self._with_steps(workflow_id)
        if found is None:
            raise unknown(workflow_id)
        return WorkflowStatus.from_records(*found)

    def list(self, state: WorkflowState | str | None = None) -> builtins.list[WorkflowStatus]:
        """Every workflow (in a given state, if asked), as statuses.

        A workflow whose records are corrupt is left out (and logged); :meth:`status`
        of its id raises :class:`StoreCorrupt` naming the bad key.
        """
        if state is not None:
            try:
                state = WorkflowState(state)
            except ValueError:
                known = ", ".join(WorkflowState)
                raise InvalidInput(f"no workflow state {state!r}; the states: {known}") from None
        corrupt: builtins.list[StoreCorrupt] = []
        out = []
        for record in self._store.workflows(state, corrupt=corrupt):
            try:  # (its steps, if it was not deleted meanwhile: see _with_steps)
                steps = self._steps_if_kept(record)
                if steps is not None:
                    out.append(WorkflowStatus.from_records(record, steps))
            except StoreCorrupt as exc:
                corrupt.append(exc)
        for bad in corrupt:
            _log.error("list() left out a workflow: %s", bad)
        return out

    def inbox(self) -> builtins.list[InboxItem]:
        """The workflows waiting for an operator (NEEDS_ATTENTION), oldest change first."""
        return inbox_items(self._store, self._ctx.plans)

    def history(self, workflow_id: str) -> builtins.list[dict[str, Any]]:
        """Every recorded transition and operator action of a workflow, oldest first."""

        def read() -> builtins.list[dict[str, Any]]:  # (one snapshot: see _with_steps)
            if self._store.get_workflow(workflow_id) is None:
                raise unknown(workflow_id)
            return read_history(self._store, workflow_id)

        return self._store.together(read)

    def stats(self) -> dict[str, Any]:
        """Counters and gauges: workflows by state, step counters, agents, store commits, and
        ``corrupt`` ("db:key" -> reason) for records that could not be read."""
        if self._root is None and not self._closed:
            self._check_active()  # a standby has no engine to count
        by_state, corrupt = workflow_counts(self._store)
        engine = self._ask_scheduler("stats")
        bad = {f"{e.db}:{e.key!r}": e.reason for e in corrupt} | engine["corrupt"]
        host = engine["host"]  # (with the health checks' threads, as the hosts' own)
        host["abandoned_threads"] = host.get("abandoned_threads", 0) + self._ctx.health.abandoned()
        return {
            "workflows": by_state,
            "steps": {k: v for k, v in engine.items() if isinstance(v, int)},
            "agents": engine["agents"],
            "host": host,
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

    def _restart_counts(self) -> dict[str, int]:
        if self._root is None:
            return {}
        try:
            children = call(self._root, "which_children", timeout=self._ask_timeout)
        except pykka.ActorDeadError:
            return {}
        return {c.id: c.restarts for c in children}

    def _watchdog(self, method: str) -> None:
        """Call ``method`` of the watchdog (the pattern's Supervisor) and wait for it."""
        assert self._root is not None
        children = call(self._root, "which_children", timeout=self._ask_timeout)
        for child in children:
            if child.id == "supervisor" and child.ref is not None:
                call(child.ref, method, timeout=self._ask_timeout)

    def _sweep_now(self) -> None:
        """Have the watchdog sweep the timer index now and wait for it (testing aid)."""
        self._check_active()
        self._watchdog("sweep")

    def _settle(self, rounds: int = 3) -> None:
        """Wait until messages and commits in flight have been handled (testing aid), the
        watchdog's first (a sweep that a FakeClock's move told it of reports to the
        Scheduler); a Scheduler being replaced: :class:`NotActive` (``_ask_scheduler``)."""
        self._ask_scheduler("sync")  # (first: while replaced, the tree is busy with it)
        with contextlib.suppress(pykka.ActorDeadError):  # (replaced: the Scheduler too)
            self._watchdog("sync")
        for _ in range(rounds):
            self._ask_scheduler("sync")
            self._store.writer.flush(timeout=self._ask_timeout)
            self._store.writer.flush(timeout=self._ask_timeout)
