"""herder.runtime — the public API of herder. Users import from here only.

``herder`` has four layers; imports point down only (``tests/test_layers.py``):

- ``herder.store``: the LMDB store, msgpack codec, record types and group-commit writer.
- ``herder.actors.engine``: the pattern's rules as tables and pure functions.
- ``herder.actors``: every actor: the supervision tree, Scheduler, agent hosts and the
  pattern's Supervisor (the watchdog). Uses the store and the engine.
- ``herder.runtime`` (this package): the :class:`Runtime` facade, the :class:`Workflow`
  builder, status types and the testing kit (``herder.runtime.testing``).

Everything not listed in ``__all__`` here is internal and may change.
"""

from herder.actors import (
    Adaptive,
    Agent,
    CircuitBreaker,
    CompletionRefused,
    InstanceCrash,
    InvalidDefinition,
    InvalidState,
    NotActive,
    Permanent,
    ProbeResult,
    RateLimit,
    RestartIntensityExceeded,
    RuntimeClosed,
    StepContext,
    SupervisorStartError,
    UnknownName,
    UnknownWorkflow,
    WorkflowConflict,
    WrongThread,
)
from herder.actors.ray import RayHost
from herder.runtime._anyof import AnyOf
from herder.runtime._config import RuntimeConfig
from herder.runtime._handle import WorkflowHandle
from herder.runtime._inbox import InboxItem
from herder.runtime._runtime import Runtime
from herder.runtime._schedule_status import ScheduleStatus
from herder.runtime._status import State, StepStatus, WorkflowFailed, WorkflowStatus
from herder.runtime._workflow import Workflow
from herder.store import (
    ConditionFailed,
    EncodeError,
    HerderError,
    InvalidInput,
    LeaseLost,
    MissingExtra,
    RetryPolicy,
    SchemaTooNew,
    StepState,
    StoreClosed,
    StoreCorrupt,
    StoreError,
    StoreIOError,
    StoreLocked,
    TimedOut,
    UserCodeFailed,
    WorkflowState,
)

__all__ = [
    "Adaptive",
    "Agent",
    "AnyOf",
    "CircuitBreaker",
    "CompletionRefused",
    "ConditionFailed",
    "EncodeError",
    "HerderError",
    "InboxItem",
    "InstanceCrash",
    "InvalidDefinition",
    "InvalidInput",
    "InvalidState",
    "LeaseLost",
    "MissingExtra",
    "NotActive",
    "Permanent",
    "ProbeResult",
    "RateLimit",
    "RayHost",
    "RestartIntensityExceeded",
    "RetryPolicy",
    "Runtime",
    "RuntimeClosed",
    "RuntimeConfig",
    "ScheduleStatus",
    "SchemaTooNew",
    "State",
    "StepContext",
    "StepState",
    "StepStatus",
    "StoreClosed",
    "StoreCorrupt",
    "StoreError",
    "StoreIOError",
    "StoreLocked",
    "SupervisorStartError",
    "TimedOut",
    "UnknownName",
    "UnknownWorkflow",
    "UserCodeFailed",
    "Workflow",
    "WorkflowConflict",
    "WorkflowFailed",
    "WorkflowHandle",
    "WorkflowState",
    "WorkflowStatus",
    "WrongThread",
]
