"""A Runtime's settings: one frozen, validated :class:`RuntimeConfig`.

``Runtime(path, config=None, **overrides)`` takes a config, keyword settings, or both
(keywords override the config's fields); every value is checked here, before the store is
opened, and a bad one raises :class:`InvalidInput` naming the field, what it expects and
what it got.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import math
import sys
from dataclasses import dataclass, field, fields, replace
from typing import Any

from herder.actors import Clock, EngineConfig, host_kind
from herder.runtime._retention import DEFAULT_RETENTION, retention_seconds
from herder.store import (
    DEFAULT_LEASE,
    MAX_SECONDS,
    MAX_VALUE_BYTES,
    HerderError,
    InvalidInput,
    RetryPolicy,
    safe_repr,
)

DEFAULT_PREFETCH = 7
"""Attempts per agent instance recorded ahead by default (hot-path.md §6, §8: 7 ran 2.5x
as many steps/s as 0 in the prototype, with every guard of §6)."""

MAX_PREFETCH = 64
"""The most attempts per agent instance that may be recorded ahead (``prefetch``)."""


@dataclass(frozen=True)
class RuntimeConfig:
    """Every setting of a :class:`Runtime`, checked when it is built.

    ``clock`` (inject a FakeClock in tests; default the system clock), ``sweep_interval``
    (seconds between the Supervisor's sweeps of the timer index), ``default_retry`` and
    ``default_timeout`` (for steps that give none), ``map_size`` (initial store size; it
    grows on demand), ``max_input_bytes``/``max_result_bytes`` (encoded size limits),
    ``max_active_workflows`` (``start`` blocks while that many are unfinished),
    ``instance_idle_timeout`` (idle agent instances are stopped after it),
    ``instance_shutdown`` (how long a stopping agent instance may take),
    ``agent_restarts`` (``(max_restarts, period)``: a per-agent supervisor that restarts
    crashing instances more often than this gives up, and a fresh one is started for the
    next step), ``max_recoveries`` (a workflow whose attempt was running at more crashes
    of the process in a row than this is parked in NEEDS_ATTENTION as poison work),
    ``priority_aging`` (seconds of waiting in an agent's queue worth one priority level,
    so low-priority work is never starved), ``seed`` (for retry jitter, to make runs
    repeatable), ``ask_timeout`` (how long a call into the actors may take),
    ``log_level`` (level of the ``herder`` loggers; handlers are left to the embedding
    program), ``probe_timeout`` (how long a ``probe_<action>`` may take to tell whether
    a lapsed attempt was applied), ``retention`` (seconds or a ``timedelta``, default 7
    days: finished workflows (SUCCEEDED, COMPENSATED, CANCELLED, ABANDONED) last updated
    longer ago are deleted with their steps and history, a bounded batch per sweep;
    ``None`` keeps everything; see docs/operations.md), ``agent_host`` (``"pool"``, the
    default: every agent's attempts run on one elastic pool of worker threads and idle
    agents hold none; ``"thread"``: a thread per busy agent instance and one per busy
    agent name, see docs/agents.md), ``pool_workers`` (default 32: the most worker
    threads the pool grows to, so the most attempts of plain ``def`` actions that run at
    once on it), ``prefetch`` (default 7: attempts of an agent recorded ahead of a free
    instance, per instance, so the next one starts the moment an instance frees instead
    of after the next commit; 0 turns it off; capped so an attempt waits at most about a
    tenth of its timeout,
    and never for steps with a heartbeat timeout or agents with a breaker, rate limit or
    adaptive concurrency; see docs/agents.md), ``passivate_after`` (default 300 seconds:
    a running workflow whose steps all wait on timers at least that far off, with nothing
    running, leaves the Scheduler's memory until the first of them fires or an operator
    acts on it; None keeps every unfinished workflow in memory), ``tracer_provider`` (an
    OpenTelemetry tracer provider for spans per workflow and attempt; default: the global
    one if set, else no tracing at all; see docs/tracing.md), ``loop`` (the event loop
    ``async def`` actions run on, e.g. ``asyncio.get_running_loop()``; default: one the
    runtime runs on a thread of its own, started with the first asyncio agent; see
    docs/asyncio.md).

    High availability (docs/high_availability.md): ``lease`` is the leader lease in
    seconds (renewed every third of it); ``standby=True`` opens the store of a runtime
    running in another process and waits to take over; ``standby_poll`` is how often it
    looks.

    ``config.replace(**changes)`` is a checked copy with some fields changed.
    """

    clock: Clock | None = None
    sweep_interval: float = 0.25
    default_retry: RetryPolicy = field(default_factory=RetryPolicy)
    default_timeout: float = 300.0
    map_size: int = 64 << 20
    max_input_bytes: int = 1 << 20
    max_result_bytes: int = 1 << 20
    max_active_workflows: int = 100_000
    instance_idle_timeout: float = 60.0
    instance_shutdown: float = 1.0
    agent_restarts: tuple[int, float] = (20, 10.0)
    max_recoveries: int = 3
    priority_aging: float = 10.0
    seed: int | None = None
    ask_timeout: float = 30.0
    log_level: int | str | None = None
    standby: bool = False
    lease: float = DEFAULT_LEASE
    standby_poll: float = 0.05
    probe_timeout: float = 30.0
    retention: float | datetime.timedelta | None = DEFAULT_RETENTION
    agent_host: str = "pool"
    pool_workers: int = 32
    prefetch: int = DEFAULT_PREFETCH
    passivate_after: float | None = 300.0
    tracer_provider: Any = None
    loop: asyncio.AbstractEventLoop | None = None

    def __post_init__(self) -> None:
        if self.default_retry is None:  # Runtime(default_retry=None) always meant "the default"
            object.__setattr__(self, "default_retry", RetryPolicy())
        _positive("sweep_interval", self.sweep_interval)
        _positive("priority_aging", self.priority_aging)
        _positive("default_timeout", self.default_timeout)
        _positive("ask_timeout", self.ask_timeout)
        _positive("standby_poll", self.standby_poll)
        _positive("probe_timeout", self.probe_timeout)
        _positive("lease", self.lease)
        # (Both numbers, checked just above. On an injected clock the sweeps follow that
        # clock, not the wall clock the lease runs on: nothing to compare.)
        if self.clock is None and self.lease < 2 * self.sweep_interval:
            raise InvalidInput(
                f"lease {self.lease} s is shorter than two sweeps ({self.sweep_interval} s "
                "each): the lease is renewed only while the Supervisor sweeps, so a late sweep "
                "would let a standby take it from this healthy runtime; give a lease of at "
                "least 2 x sweep_interval"
            )
        for name in ("instance_shutdown", "instance_idle_timeout"):
            at_least(name, getattr(self, name), 0, "a finite number of seconds >= 0")
        if self.passivate_after is not None:
            at_least("passivate_after", self.passivate_after, 0, "None or seconds >= 0")
        for name in ("max_input_bytes", "max_result_bytes"):
            value = getattr(self, name)
            if not _is_int(value) or not 0 < value <= MAX_VALUE_BYTES:
                raise _wrong(name, f"an int in 1..{MAX_VALUE_BYTES}", value)
        for name in ("max_active_workflows", "map_size"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise _wrong(name, "an int >= 1", value)
        if not _is_int(self.pool_workers) or self.pool_workers < 1:
            raise _wrong("pool_workers", "an int >= 1", self.pool_workers)
        if not _is_int(self.prefetch) or not 0 <= self.prefetch <= MAX_PREFETCH:
            raise _wrong("prefetch", f"an int in 0..{MAX_PREFETCH}", self.prefetch)
        if not _is_int(self.max_recoveries) or self.max_recoveries < 0:
            raise _wrong("max_recoveries", "an int >= 0", self.max_recoveries)
        restarts = self.agent_restarts
        if (
            not isinstance(restarts, tuple)
            or len(restarts) != 2
            or not _is_int(restarts[0])
            or restarts[0] < 0
            or not _is_number(restarts[1])
            or not 0 < restarts[1] <= MAX_SECONDS
        ):
            expected = "(max_restarts: int >= 0, period: seconds > 0, at most ten years)"
            raise _wrong("agent_restarts", expected, restarts)
        if not isinstance(self.default_retry, RetryPolicy):
            raise _wrong("default_retry", "a RetryPolicy or None", self.default_retry)
        if self.seed is not None and not _is_int(self.seed):
            raise _wrong("seed", "an int or None", self.seed)
        if not isinstance(self.standby, bool):
            raise _wrong("standby", "True or False", self.standby)
        host_kind(self.agent_host)
        if self.loop is not None and not isinstance(self.loop, asyncio.AbstractEventLoop):
            raise _wrong(
                "loop", "an asyncio event loop (asyncio.get_running_loop()) or None", self.loop
            )
        if self.loop is not None and self.loop.is_closed():
            raise InvalidInput(
                "loop= is closed: async def actions could never run on it; pass the loop "
                "that will run them (asyncio.get_running_loop() inside it), or None for "
                "the runtime's own"
            )
        retention_seconds(self.retention)
        _check_clock(self.clock)
        if self.tracer_provider is not None and not _has_methods(
            self.tracer_provider, ("get_tracer",)
        ):
            raise _wrong(
                "tracer_provider", "None or an OpenTelemetry TracerProvider", self.tracer_provider
            )
        level = self.log_level
        if level is not None and not (
            (isinstance(level, int) and not isinstance(level, bool) and level >= 0)
            or (isinstance(level, str) and level in logging.getLevelNamesMapping())
        ):
            raise _wrong("log_level", "None, an int >= 0 or a level name such as 'INFO'", level)

    @classmethod
    def of(cls, config: RuntimeConfig | None, overrides: dict[str, Any]) -> RuntimeConfig:
        """``config`` (default: all defaults) with ``overrides`` applied, checked."""
        base = cls() if config is None else config
        if not isinstance(base, RuntimeConfig):
            raise _wrong("config", "a RuntimeConfig or None", base)
        return base.replace(**overrides) if overrides else base

    def replace(self, **changes: Any) -> RuntimeConfig:
        """A checked copy with ``changes``; an unknown name raises :class:`InvalidInput`."""
        unknown = sorted(set(changes) - _NAMES)
        if unknown:
            raise InvalidInput(
                f"unknown Runtime setting {', '.join(map(repr, unknown))}; the settings are: "
                f"{', '.join(sorted(_NAMES))}"
            )
        return replace(self, **changes)

    @property
    def retention_seconds(self) -> float | None:
        """``retention`` in seconds (None keeps everything)."""
        return retention_seconds(self.retention)

    def engine_config(self) -> EngineConfig:
        """The settings the engine runs on."""
        return EngineConfig(
            default_retry=self.default_retry,
            default_timeout=self.default_timeout,
            max_result_bytes=self.max_result_bytes,
            instance_shutdown=self.instance_shutdown,
            idle_timeout=self.instance_idle_timeout,
            agent_max_restarts=self.agent_restarts[0],
            agent_restart_period=self.agent_restarts[1],
            max_recoveries=self.max_recoveries,
            priority_aging=float(self.priority_aging),
            seed=self.seed,
            probe_timeout=self.probe_timeout,
            agent_host=host_kind(self.agent_host),
            pool_workers=self.pool_workers,
            prefetch=self.prefetch,
            passivate_after=self.passivate_after,
        )


_NAMES = frozenset(f.name for f in fields(RuntimeConfig))


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    """A finite float or an int (not a bool); every caller bounds it by MAX_SECONDS (an
    int compares with a float exactly, however large)."""
    return _is_int(value) or (isinstance(value, float) and math.isfinite(value))


def _wrong(name: str, expected: str, actual: object) -> InvalidInput:
    return InvalidInput(f"{name} must be {expected}, got {safe_repr(actual)}")


def _check_clock(clock: object) -> None:
    if clock is not None and not _has_methods(clock, ("time", "monotonic", "call_later")):
        raise _wrong(
            "clock", "None or a clock (time, monotonic and call_later methods: FakeClock)", clock
        )


def _has_methods(obj: object, names: tuple[str, ...]) -> bool:
    try:
        return all(callable(getattr(obj, name, None)) for name in names)
    except Exception:  # a user object's __getattr__ raised
        return False


def _positive(name: str, value: Any) -> None:
    if not _is_number(value) or not 0 < value <= MAX_SECONDS:
        raise _wrong(name, "a number of seconds > 0 and at most ten years", value)


def at_least(name: str, value: Any, low: float, expected: str) -> None:
    """:class:`InvalidInput` unless ``value`` is a number (not a bool) from ``low`` to
    :data:`MAX_SECONDS` (every such setting is a time)."""
    if not _is_number(value) or not low <= value <= MAX_SECONDS:
        raise _wrong(name, expected + " (at most ten years)", value)


def check_gil() -> None:
    """The engine's lock-free hand-offs (actors/_answers.py, runtime/_starts.py's
    ``Landing``) rely on the GIL making a deque operation, a counter's ``__next__`` and a
    flag's store atomic: refuse an interpreter running without it."""
    gil_enabled = getattr(sys, "_is_gil_enabled", None)  # (3.13+; always on before)
    if gil_enabled is not None and not gil_enabled():
        raise HerderError(
            "herder needs the GIL, and this free-threaded interpreter runs without it; "
            "run with PYTHON_GIL=1 (or -X gil=1), or use a build with the GIL"
        )
