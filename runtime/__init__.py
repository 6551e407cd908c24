"""herder.runtime — the public API of herder. Users import from here only.

``herder`` has three layers; imports point down only:

- ``herder.store``: the LMDB store, msgpack codec, record types and group-commit writer.
- ``herder.actors``: every actor: the supervision tree, Scheduler, agent hosts and the
  pattern's Supervisor (the watchdog). Uses the store.
- ``herder.runtime`` (this package): the :class:`Runtime` facade, the :class:`Workflow`
  builder, status types and the testing kit (``herder.runtime.testing``).

Everything not listed in ``__all__`` here is internal and may change.
"""

from herder.actors._agent import Agent, StepContext
from herder.actors._errors import (
    CompletionRefused,
    InvalidDefinition,
    InvalidState,
    NotActive,
    Permanent,
    RuntimeClosed,
    UnknownName,
    UnknownWorkflow,
    WorkflowConflict,
)
from herder.actors._limits import CircuitBreaker, RateLimit
from herder.actors._outcomes import ProbeResult
from herder.runtime._inbox import InboxItem
from herder.runtime._metrics import MissingExtra
from herder.runtime._runtime import Runtime, WorkflowHandle
from herder.runtime._status import State, StepStatus, WorkflowFailed, WorkflowStatus
from herder.runtime._workflow import Workflow
from herder.store._errors import (
    EncodeError,
    HerderError,
    InvalidInput,
    LeaseLost,
    SchemaTooNew,
    StoreCorrupt,
    StoreError,
    StoreIOError,
    StoreLocked,
)
from herder.store._records import RetryPolicy, StepState

__all__ = [
    "Agent",
    "CircuitBreaker",
    "CompletionRefused",
    "EncodeError",
    "HerderError",
    "InboxItem",
    "InvalidDefinition",
    "InvalidInput",
    "InvalidState",
    "LeaseLost",
    "MissingExtra",
    "NotActive",
    "Permanent",
    "ProbeResult",
    "RateLimit",
    "RetryPolicy",
    "Runtime",
    "RuntimeClosed",
    "SchemaTooNew",
    "State",
    "StepContext",
    "StepState",
    "StepStatus",
    "StoreCorrupt",
    "StoreError",
    "StoreIOError",
    "StoreLocked",
    "UnknownName",
    "UnknownWorkflow",
    "Workflow",
    "WorkflowConflict",
    "WorkflowFailed",
    "WorkflowHandle",
    "WorkflowStatus",
]
