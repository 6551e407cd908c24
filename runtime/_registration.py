"""Registering agents, routers and workflow definitions on a :class:`Runtime` (a base
class of it). Definitions are checked against the registered agents' actions, stored,
and handed to the Scheduler as ``Define`` messages."""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable

import pykka

from herder.actors import (
    DEFAULT_HEALTH_INTERVAL,
    MAX_COUNT,
    NO_LIMITS,
    RESERVED_AGENT_NAMES,
    Adaptive,
    Agent,
    AgentEntry,
    CircuitBreaker,
    Define,
    HealthPolicy,
    InvalidDefinition,
    RateLimit,
    UnknownName,
    action_names,
    agent_class_of,
    call,
    coroutine_actions,
)
from herder.actors.ray import RayHost, attach
from herder.runtime._part import whole as _runtime
from herder.runtime._routing import Router, agent_name, check_actions
from herder.runtime._workflow import Workflow
from herder.store import (
    ConditionFailed,
    Expect,
    InvalidInput,
    Plan,
    Put,
    TimedOut,
    Transition,
    UserCodeFailed,
    contain,
    definition_key,
    encode,
    get_logger,
    safe_repr,
    started_key,
    type_name,
    validate_name,
)

_log = get_logger("herder.runtime")


class Registration:
    """``add_agent``, ``add_router``, ``remove_agent``, ``add_workflow``."""

    def add_agent(
        self,
        name: str,
        factory: Callable[[], Agent],
        *,
        concurrency: int | Adaptive = 1,
        breaker: CircuitBreaker | None = None,
        rate_limit: RateLimit | None = None,
        asyncio: bool | None = None,
        health_interval: float | None = DEFAULT_HEALTH_INTERVAL,
        health_timeout: float | None = None,
        host: RayHost | None = None,
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
        the agent's queue, highest priority first, spending no attempt. If the agent's
        class defines ``health(self)`` (returns, or raises when the resource is unwell),
        the Supervisor runs it every ``health_interval`` seconds (None: never) under
        ``health_timeout`` (default 5 s, or the interval if shorter); while the last check failed
        the agent's steps wait as behind an open breaker (docs/failover.md). Adding a name
        again replaces its factory, concurrency, limits and health checks.

        An agent with ``async def`` actions runs on the asyncio host (docs/asyncio.md):
        one object serves up to ``concurrency`` attempts at once, each a task on the
        runtime's event loop (``Runtime(loop=...)``). ``asyncio=True`` picks that host when
        the class cannot be told from ``factory`` (a lambda, an ``async def`` factory);
        ``asyncio=False`` refuses ``async def`` actions.

        ``host=RayHost(...)`` runs the agent's actions on a Ray cluster (docs/ray.md):
        this call connects to it (on the calling thread) and checks that the agent's code
        loads there, raising :class:`InvalidInput` if not. An agent's placement cannot
        change while the runtime runs (a Ray agent removed keeps it).
        """
        rt = _runtime(self)
        rt._check_open()
        agent_name(name)
        if name in RESERVED_AGENT_NAMES:
            raise InvalidInput(
                f"agent name {name!r} is reserved: the runtime names its worker pool so in "
                "its own events; choose another name"
            )
        _check_factory(name, factory, asyncio)
        adaptive = concurrency if isinstance(concurrency, Adaptive) else None
        if adaptive is not None:
            concurrency = adaptive.max  # instances to hold; the limit admits fewer
        if (
            not isinstance(concurrency, int)
            or isinstance(concurrency, bool)
            or not 1 <= concurrency <= MAX_COUNT
        ):
            raise InvalidInput(
                f"agent {name!r}: concurrency must be an int from 1 to 2**53 or an Adaptive, "
                f"got {safe_repr(concurrency):.80}"
            )
        for kind, value, want in (
            ("breaker", breaker, CircuitBreaker),
            ("rate_limit", rate_limit, RateLimit),
            ("host", host, RayHost),
        ):
            if value is not None and not isinstance(value, want):
                raise InvalidInput(
                    f"agent {name!r}: {kind} must be a {want.__name__} or None, "
                    f"got {safe_repr(value):.80}"
                )
        health = HealthPolicy.of(health_interval, health_timeout)
        placed = rt._ctx.placements.get(name)  # (kept by remove_agent: its host holds it)
        if (name in rt._ctx.agents or placed is not None) and placed != host:
            raise InvalidInput(
                f"agent {name!r} was registered with host={placed!r}; its placement "
                "cannot change while the runtime runs: restart it with the new placement"
            )
        cls = agent_class_of(factory)
        offered, coroutines = _offered(name, cls)
        if host is not None and (coroutines or asyncio):
            raise InvalidInput(
                f"agent {name!r}: a Ray agent runs its actions on threads of its worker "
                "processes, so they must be plain def methods (no asyncio)"
            )
        if coroutines and asyncio is False:
            raise InvalidInput(
                f"agent {name!r}: {', '.join(map(repr, coroutines))} "
                f"{'is an async def' if len(coroutines) == 1 else 'are async def'}, which "
                "a thread cannot run: leave out asyncio=False to run the agent on the "
                "asyncio host, or make them plain def methods"
            )
        on_loop = bool(coroutines) if asyncio is None else asyncio
        if host is not None:  # connects here, never on the Scheduler's thread
            attach(rt._ctx, host, name, factory, rt._store.path)
        with rt._promotion:
            rt._agents_version += 1  # start() looks at every definition's agents again
            rt._actions[name] = offered
            if rt._tracing is not None and host is None:  # (a Ray worker has no tracer:
                factory = rt._tracing.wrap_factory(name, factory)  # its factory is sent)
            rt._ctx.agents[name] = (factory, concurrency)
            if host is not None:
                rt._ctx.placements[name] = host
            (rt._ctx.async_agents.add if on_loop else rt._ctx.async_agents.discard)(name)
            if breaker is None and rate_limit is None and adaptive is None:
                rt._ctx.limits.pop(name, None)
            else:
                rt._ctx.limits[name] = (breaker, rate_limit, adaptive)
            if health is not None and (offered is None or "health" in offered):
                rt._ctx.health.watch(name, factory, health, hidden=offered is None)
            else:
                rt._ctx.health.unwatch(name)
            if rt._root is not None:  # a standby's Scheduler reads ctx.agents at start
                entry = AgentEntry(factory, concurrency, rt._ctx.limits.get(name, NO_LIMITS))
                rt._tell_agents("add_agent", name, entry)

    def _tell_agents(self, method: str, *args: object) -> None:
        """Have the Scheduler take a change of ``ctx.agents`` (made first). One the tree is
        replacing after a crash misses it harmlessly: the next reads ``ctx.agents`` once
        it runs (after it is ``ctx.scheduler``, which this call found it was not yet)."""
        rt = _runtime(self)
        with contextlib.suppress(pykka.ActorDeadError):
            call(rt._scheduler, method, *args, timeout=rt._ask_timeout)

    def add_router(self, name: str, router: Router) -> None:
        """Register ``router(input) -> str`` for agent templates that name ``{@name}``.

        It runs once when a workflow whose steps use it starts, and what it returns is
        stored with the workflow (see ``Workflow.step``): later runs never call it for
        that workflow again. Whatever it raises fails the start with
        :class:`InvalidInput`; one that does not return within ``ask_timeout`` fails it
        with :class:`TimedOut`. Adding a name again replaces the router.
        """
        rt = _runtime(self)
        rt._check_open()
        validate_name("router", name)
        if not name.isidentifier():
            raise InvalidInput(
                f"router name {name!r:.120} is not a Python identifier, which a template's "
                "{@name} field must be: no step could name it; choose a name such as "
                "'nearest_region'"
            )
        if not callable(router):
            raise InvalidInput(f"router {name!r} must be callable, got {safe_repr(router):.80}")
        rt._routers[name] = router

    def remove_agent(self, name: str) -> None:
        """Stop serving agent ``name``; steps waiting for it resume when it is added again."""
        rt = _runtime(self)
        rt._check_open()
        validate_name("agent", name, lookup=True)  # (a list would raise TypeError below)
        with rt._promotion:
            if name not in rt._ctx.agents:
                raise UnknownName(f"no agent named {name!r} is registered")
            del rt._ctx.agents[name]
            rt._agents_version += 1
            rt._ctx.async_agents.discard(name)
            rt._ctx.limits.pop(name, None)
            rt._ctx.health.unwatch(name)
            rt._actions.pop(name, None)
            if rt._root is not None:
                rt._tell_agents("remove_agent", name)

    def add_workflow(self, workflow: Workflow) -> None:
        """Register a workflow definition (validated and compiled here).

        Each step's action and compensation are checked against its agent if that agent
        is registered (else at the end of ``Runtime(setup=...)``, or at :meth:`start`);
        :class:`UnknownName` lists the known names.
        The compiled plan is stored. A different plan under a stored name and version
        replaces it while no workflow of it has ever started (a typo needs no new
        version); after that it is refused, because workflows under it would change.
        """
        rt = _runtime(self)
        rt._check_open()
        if not isinstance(workflow, Workflow):
            raise InvalidInput(
                "add_workflow takes a Workflow (Workflow(name).step(...)), "
                f"got {safe_repr(workflow):.80}"
            )
        plan = workflow.compile()
        self._check_actions(plan)
        for spec in plan.steps:  # (warned, not refused: code that ran before keeps running)
            if spec.compensate_retry is not None and spec.compensate is None:
                _log.warning(
                    "workflow %r step %r: compensate_retry is set but the step has no "
                    "compensate action, so it never applies; name one with compensate=..., "
                    "or drop compensate_retry (under a new version once workflows of it "
                    "started)",
                    plan.name,
                    spec.name,
                )
        stored = rt._store.get_plan(plan.name, plan.version)
        changed = stored is not None and stored != plan
        if changed and self._ever_started(plan):
            raise _started(plan)
        with rt._promotion:
            if (stored is None or changed) and rt._root is not None:  # standby: at promotion
                self._store_definition(plan, replacing=changed, then=self._register)
            else:
                with rt._defining:
                    self._register(plan)
        if rt._firer is not None:
            rt._firer.wake()  # a schedule may have waited for this workflow

    def _register(self, plan: Plan) -> None:
        """Run ``plan`` from now on (called holding ``rt._defining``)."""
        rt = _runtime(self)
        rt._ctx.plans[(plan.name, plan.version)] = plan
        current = rt._latest.get(plan.name)
        if current is None or plan.version >= current.version:
            rt._latest[plan.name] = plan
        # In line with the starts taken up early (a start made with this plan comes after
        # it), not told: a drain in the inbox would take such a start first (_answers).
        rt._ctx.answers.put(Define(plan))

    def _store_definition(
        self, plan: Plan, *, replacing: bool = False, then: Callable[[Plan], None] | None = None
    ) -> None:
        """Write ``plan``; ``replacing`` another under its version: only if no workflow of
        it has started, checked in the write (a first start may have landed since
        :meth:`_ever_started` looked), else :class:`InvalidDefinition`. Once durable,
        ``then(plan)`` runs holding ``rt._defining``. That lock is held to queue the write
        and after it, not while it commits: the store writer may need it meanwhile, to
        hand a freed slot to a queued first start of a definition (``submit_creations``,
        which refuses a first start of other steps of this version meanwhile:
        ``rt._storing``)."""
        rt = _runtime(self)
        name = (plan.name, plan.version)
        key = definition_key(plan.name, plan.version)
        put = Put("definitions", key, encode(plan.to_dict()))
        unstarted = Expect("meta", started_key(plan.name, plan.version), exists=False)
        write = Transition(ops=(put,), expect=(unstarted,) if replacing else ())
        with rt._defining:
            rt._storing[name] = plan
            done = rt._store.writer.submit(write)
        try:
            done.result(timeout=rt._ask_timeout)
        except BaseException as exc:
            with rt._defining:
                del rt._storing[name]
            if isinstance(exc, ConditionFailed):
                raise _started(plan) from None
            if isinstance(exc, TimeoutError):
                raise TimedOut(
                    f"the store did not commit workflow {plan.name!r} version {plan.version} "
                    f"within {rt._ask_timeout} s (ask_timeout; a slow or stalled disk?); it "
                    "is not registered: call add_workflow again"
                ) from None
            raise
        with rt._defining:
            del rt._storing[name]
            if then is not None:
                then(plan)

    def _store_definitions(self) -> None:
        """Becoming active: store each registered plan the store lacks or holds another
        of under its version that never started. One that did start (the previous holder
        started it after this runtime, a standby, registered its own) stays: its
        workflows go on under the stored steps, as do new starts of that version, since
        their records name those steps; the registered plan is refused in the log."""
        rt = _runtime(self)
        for key, plan in list(rt._ctx.plans.items()):
            stored = rt._store.get_plan(plan.name, plan.version)
            if stored is None or (stored != plan and not self._ever_started(plan)):
                self._store_definition(plan)
            elif stored != plan:
                _log.error("%s; this runtime runs the stored one", _started(plan))
                rt._ctx.plans[key] = stored
                if rt._latest.get(plan.name) is plan:
                    rt._latest[plan.name] = stored

    def _check_actions(self, plan: Plan) -> None:
        """Each step's action and compensation exist on its agent, if it is registered
        (a templated agent is checked once resolved, at start)."""
        actions_of = _runtime(self)._actions
        for spec in plan.steps:
            for agent in spec.members or (spec.agent,):  # every member of an AnyOf group
                actions = actions_of.get(agent)
                if actions is not None:
                    check_actions(plan, spec, agent, actions)

    def _ever_started(self, plan: Plan) -> bool:
        """True if a workflow of this definition was ever started (its mark in ``meta``,
        or, for a store older than the mark, a workflow record of it)."""
        store = _runtime(self)._store
        if store.get("meta", started_key(plan.name, plan.version)) is not None:
            return True
        return any(
            r.name == plan.name and r.version == plan.version for r in store.workflows(corrupt=[])
        )


def _offered(name: str, cls: type | None) -> tuple[frozenset[str] | None, tuple[str, ...]]:
    """The actions of agent class ``cls`` (None: hidden by its factory) and those of them
    that are ``async def``; :class:`InvalidInput` if reading the class raised (its
    attributes and metaclass are user code)."""
    if cls is None:
        return None, ()
    try:
        return contain(action_names, cls), contain(coroutine_actions, cls)
    except UserCodeFailed as failed:
        raise InvalidInput(
            f"agent {name!r}: reading the actions of its class {type_name(cls)} raised "
            f"{failed.error}; an agent's class attributes must be readable"
        ) from None


def _check_factory(name: str, factory: object, asyncio: object) -> None:
    """``add_agent``'s checks of the factory and its ``asyncio`` choice."""
    if not callable(factory):
        raise InvalidInput(
            f"agent {name!r}: factory must be callable, got {safe_repr(factory):.80}"
        )
    if isinstance(factory, type) and not issubclass(factory, Agent):
        raise InvalidInput(
            f"agent {name!r}: factory {factory.__qualname__} is a class but not an Agent "
            "subclass; subclass herder.runtime.Agent (its actions are its methods)"
        )
    if asyncio is not None and asyncio is not True and asyncio is not False:
        raise InvalidInput(
            f"agent {name!r}: asyncio must be None, True or False, got {safe_repr(asyncio):.80}"
        )
    if asyncio is not True and inspect.iscoroutinefunction(factory):
        raise InvalidInput(
            f"agent {name!r}: its factory is an async def, which only the asyncio host "
            "awaits: pass add_agent(..., asyncio=True), or make it a plain def"
        )


def _started(plan: Plan) -> InvalidDefinition:
    return InvalidDefinition(
        f"workflow {plan.name!r} version {plan.version} is stored with different steps and "
        "workflows of it have started; give the changed definition a new version"
    )
