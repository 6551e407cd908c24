"""herder.actors — every actor, and the supervision tree they live in.

What lives here: the injectable :class:`Clock` (``_clock``), the generic Erlang/OTP-style
supervision tree (``_supervision_specs`` for specs and reports, ``_supervised`` for the
child side, ``_supervision`` for the supervisor), the :class:`Scheduler` that drives the
workflows, the agent hosts (the ``AgentHost`` protocol in ``_host``, the attempt runner
every host shares in ``_action``, the agent state they share in ``_hosted``, the default
``PoolHost`` in ``_pool_host`` with its workers in ``_pool_worker``, the pykka
``ThreadHost`` in ``_thread_host``, the ``AsyncHost`` for ``async def`` agents in
``_async_host`` on the loop of ``_event_loop``, and ``HostRouter`` in ``_placed_host``,
which routes each agent to one of them) and the
watchdog (``WorkflowSupervisor``). The supervision tree knows nothing about workflows.
The pattern's rules live below, in the subpackage ``herder.actors.engine`` (pure: no
threads, no pykka).

Imports: herder.store and herder.actors.engine, each through its ``__init__`` (never a
private ``_module`` of another package), never herder.runtime; ``tests/test_layers.py``
enforces it. ``__all__`` is the contract herder.runtime builds on; what users need is
re-exported by herder.runtime.
"""

from herder.actors._action import coroutine_actions, run_attempt, run_attempt_async
from herder.actors._adaptive import Adaptive
from herder.actors._agent import Agent, StepContext, action_names, agent_class_of
from herder.actors._ask import call, call_future
from herder.actors._async_host import AsyncHost
from herder.actors._clock import (
    Clock,
    FakeClock,
    SteadyClock,
    SystemClock,
    TimerHandle,
    advance_seconds,
)
from herder.actors._engine import EngineConfig, EngineContext
from herder.actors._errors import (
    CompletionRefused,
    InvalidDefinition,
    InvalidState,
    NotActive,
    Permanent,
    RestartIntensityExceeded,
    RuntimeClosed,
    SupervisorStartError,
    UnknownName,
    UnknownWorkflow,
    WorkflowConflict,
    WrongThread,
)
from herder.actors._event_loop import EventLoop, LoopInbox, inbox
from herder.actors._facts import FACTS_KEY, FACTS_REFRESH, FACTS_STALE, parse_facts, read_facts
from herder.actors._health import DEFAULT_INTERVAL as DEFAULT_HEALTH_INTERVAL
from herder.actors._health import AgentHealth, HealthPolicy
from herder.actors._host import AgentHost, AgentUnavailable, InstanceCrash, host_kind
from herder.actors._hosted import INSTANCE_BACKOFF, agents_listener
from herder.actors._limits import MAX_COUNT, CircuitBreaker, RateLimit, resource_stats
from herder.actors._messages import (
    Admit,
    Committed,
    Complete,
    Crash,
    Define,
    EarlyStart,
    InstanceEvent,
    Operate,
    Outcome,
    Run,
    Unadmit,
)
from herder.actors._outcomes import ProbeResult, parse_task_token
from herder.actors._pool_host import PoolHost
from herder.actors._pool_worker import PoolWorker
from herder.actors._queue import JobQueue
from herder.actors._scheduler import Scheduler
from herder.actors._supervised import SupervisedActor
from herder.actors._supervision_specs import (
    Backoff,
    ChildEvent,
    ChildEventKind,
    ChildInfo,
    ChildSpec,
    Restart,
    Strategy,
)
from herder.actors._supervision_start import start_supervisor
from herder.actors._supervisor import WorkflowSupervisor
from herder.actors._thread_host import ThreadHost
from herder.actors._tree import start_tree
from herder.actors._wiring import (
    NO_LIMITS,
    AgentEntry,
    EngineListener,
    QuietListener,
    registered_agents,
)
from herder.actors._worker_pool import RESERVED_AGENT_NAMES

__all__ = [
    "DEFAULT_HEALTH_INTERVAL",
    "FACTS_KEY",
    "FACTS_REFRESH",
    "FACTS_STALE",
    "INSTANCE_BACKOFF",
    "MAX_COUNT",
    "NO_LIMITS",
    "RESERVED_AGENT_NAMES",
    "Adaptive",
    "Admit",
    "Agent",
    "AgentEntry",
    "AgentHealth",
    "AgentHost",
    "AgentUnavailable",
    "AsyncHost",
    "Backoff",
    "ChildEvent",
    "ChildEventKind",
    "ChildInfo",
    "ChildSpec",
    "CircuitBreaker",
    "Clock",
    "Committed",
    "Complete",
    "CompletionRefused",
    "Crash",
    "Define",
    "EarlyStart",
    "EngineConfig",
    "EngineContext",
    "EngineListener",
    "EventLoop",
    "FakeClock",
    "HealthPolicy",
    "InstanceCrash",
    "InstanceEvent",
    "InvalidDefinition",
    "InvalidState",
    "JobQueue",
    "LoopInbox",
    "NotActive",
    "Operate",
    "Outcome",
    "Permanent",
    "PoolHost",
    "PoolWorker",
    "ProbeResult",
    "QuietListener",
    "RateLimit",
    "Restart",
    "RestartIntensityExceeded",
    "Run",
    "RuntimeClosed",
    "Scheduler",
    "SteadyClock",
    "StepContext",
    "Strategy",
    "SupervisedActor",
    "SupervisorStartError",
    "SystemClock",
    "ThreadHost",
    "TimerHandle",
    "Unadmit",
    "UnknownName",
    "UnknownWorkflow",
    "WorkflowConflict",
    "WorkflowSupervisor",
    "WrongThread",
    "action_names",
    "advance_seconds",
    "agent_class_of",
    "agents_listener",
    "call",
    "call_future",
    "coroutine_actions",
    "host_kind",
    "inbox",
    "parse_facts",
    "parse_task_token",
    "read_facts",
    "registered_agents",
    "resource_stats",
    "run_attempt",
    "run_attempt_async",
    "start_supervisor",
    "start_tree",
]
