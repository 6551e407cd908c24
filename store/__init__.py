"""herder.store — the durable layer: one LMDB directory, written by one thread.

It imports nothing else from herder; ``actors`` and ``runtime`` build on it. The design
fits in a few types:

- :class:`Store` — one store directory (an LMDB environment with the named databases
  ``workflows``, ``steps``, ``timers``, ``meta``, ``definitions``). Opening it for writing
  takes an exclusive lock, checks the schema version and bumps the incarnation counter.
  Its read methods (``get``, ``get_workflow``, ``steps_of``, ``workflows``,
  ``due_timers``, ``scan``, ``count``; in ``_reads.py``) run short read transactions on
  any thread (the Store object in ``_env.py``; its reader gate, map growth, paging and
  direct writes in ``_access.py``; how the environment is opened in ``_open.py``).
  ``Store(path, mode="client")`` opens a
  store another process runs, to append operator commands (``_commands.py``).
- :class:`Writer` — ``store.writer``, the single group-commit thread. Every write is a
  :class:`Transition` (:class:`Put` / :class:`Delete` ops guarded by :class:`Expect`
  compare-and-set conditions, ``_ops.py``), or for the Scheduler plain :data:`Ops` handed
  over with ``submit_batch``. The writer drains all pending writes into one durable LMDB
  transaction and acknowledges them only after the commit reached the disk.
- Records — :class:`WorkflowRecord`, :class:`StepRecord`, :class:`Plan`,
  :class:`StepSpec` (``_records.py``), :class:`RetryPolicy` (``_policy.py``): frozen
  dataclasses stored as msgpack maps (:func:`encode` / :func:`decode`, never pickle);
  their fast copies and constructors (:func:`replacer`, :func:`builder`) are generated
  in ``_slots.py``.
  Every key layout and the timer entry's value are in ``_keys.py`` (:func:`workflow_key`,
  :func:`step_key`, :func:`timer_key`, :func:`timer_entry`, :func:`ms`, ...). The
  ``timers`` keys start with the big-endian due time, so :meth:`Store.due_timers` is a
  range scan. A step has no record until it leaves PENDING (:func:`plan_steps`).
- :class:`Lease` — the leader lease in ``meta``: only its holder writes, and every write
  batch re-checks it (a deposed holder gets :class:`LeaseLost`); a standby store takes
  it over when its holder is gone. ``_lease.py`` holds the record and its rules (read,
  take, guard, renew), ``_leaseholder.py`` the Store's lifecycle on them (take, renew,
  release, hand off; wall time passed in as ``now``), ``_locktable.py`` the flock and
  whether a holder lives, ``_fence.py`` what an open does about a holder stopped inside
  a commit (fence it, or a client's refusal).
- Errors — the :class:`HerderError` tree; ``lmdb`` and ``msgpack`` errors never escape.
- Beside the records: the ``history`` database (one event per transition, written in the
  same transaction: :func:`history_put`, :func:`step_event`; read back whole or by key
  range, :func:`read_history`, and counted from its keys, :func:`history_seqs`), the
  ``commands`` channel from the CLI to a live runtime (:func:`append_command`,
  :func:`pending_commands`), the ``resources`` database (:class:`ResourceRecord`), the
  ``schedules`` database (:class:`ScheduleRecord`, periodic schedules and their cursors),
  and test crash points (:func:`crash_point`).
- Untrusted objects — ``_untrusted.py``: how any layer describes a user's exception
  (:func:`describe`, :func:`error_types`, :func:`safe_str`) or calls user code
  (:func:`contain`) so that nothing it raises, ``BaseException`` included, escapes;
  ``_logs.py``: herder's loggers (:func:`get_logger`), which log user text as what it is
  (:func:`printable`).

``__all__`` is the contract the upper layers import through (never a ``_module``;
``tests/test_layers.py`` enforces it); users import from herder.runtime only.

Caveats:

- One :class:`Store` per directory per process (LMDB's rule); a second open in the same
  process raises :class:`StoreLocked`. Never use a store across ``fork()``.
- Only the writer thread writes. Transitions are applied in submission (FIFO) order; a
  failed :class:`Expect` skips only its own transition.
- Other processes (the CLI, a monitor) open the directory with ``readonly=True`` and see
  consistent snapshots while the writer runs; a second writer process gets
  :class:`StoreLocked`. Paged scans (``workflows``, ``scan``) take one snapshot per page.
- Keep ``sync=True``: throughput comes from group commit, not from weaker durability.
"""

from herder.store._backup import backup
from herder.store._codec import (
    MAX_VALUE_BYTES,
    check_text,
    decode,
    encode,
    encoder,
    normalize,
    private_copy,
)
from herder.store._commands import DONE as COMMAND_DONE
from herder.store._commands import (
    answered_before,
    append_command,
    command_outcome,
    finished_ops,
    new_command,
    pending_commands,
    progress_ops,
    wait_outcome,
)
from herder.store._compact import compact
from herder.store._crashpoints import crash_point
from herder.store._entries import Watch
from herder.store._env import Store, opened
from herder.store._errors import (
    ConditionFailed,
    EncodeError,
    HerderError,
    InvalidInput,
    LeaseLost,
    MissingExtra,
    SchemaTooNew,
    StoreClosed,
    StoreCorrupt,
    StoreError,
    StoreIOError,
    StoreLocked,
    TimedOut,
)
from herder.store._fence import Unrenewed, fence
from herder.store._history import (
    MARK_KEY,
    as_event,
    event_flaw,
    history_put,
    history_seqs,
    marked_member,
    read_history,
    recall_reason,
    step_event,
    step_history,
    workflow_event,
    workflow_history,
)
from herder.store._keys import (
    BATCH_TIMER,
    KEY_SEP,
    MAX_ID_BYTES,
    batch_entry,
    batch_items,
    batch_put,
    batch_timer_key,
    definition_key,
    history_key,
    history_owner,
    key_prefix,
    ms,
    split_step_key,
    split_timer_key,
    started_key,
    step_key,
    step_timer_key,
    timer_entry,
    timer_key,
    timer_token,
    timer_upper_bound,
    validate_id,
    validate_name,
    workflow_key,
)
from herder.store._lease import DEFAULT_LEASE, HandoffRequest, Lease
from herder.store._locktable import holder_gone, holder_stopped, is_held
from herder.store._logs import Lines, Sparse, get_logger, printable, printable_lines
from herder.store._open import has_store
from herder.store._ops import BatchSink, Delete, Expect, Ops, Put, Transition
from herder.store._plan import Plan, StepSpec
from herder.store._policy import MAX_SECONDS, RetryPolicy, real_number
from herder.store._reads import Snapshot
from herder.store._recent import BUILT_KEY as RECENT_BUILT
from herder.store._recent import COUNTS_KEY as RECENT_COUNTS
from herder.store._recent import (
    RECENT_AT_DB,
    RECENT_DB,
    UNREADABLE,
    Indexed,
    index_entry,
    indexed,
)
from herder.store._recent import read_counts as read_recent_counts
from herder.store._recent import split as split_recent_key
from herder.store._records import (
    SCHEMA_VERSION,
    StepRecord,
    StepState,
    WorkflowRecord,
    WorkflowState,
    fields_getter,
    peek_field,
    peek_fields,
    plan_steps,
    stored_field,
)
from herder.store._resources import BreakerState, ResourceRecord, read_resources, resource_key
from herder.store._retention import (
    BATCH,
    FINISHED,
    PURGEABLE,
    RETENTION_SCAN,
    candidates,
    commit_group,
    deletions,
    purge,
    resumed_candidates,
)
from herder.store._retention import count as count_purgeable
from herder.store._schedules import CatchUp, Overlap, ScheduleRecord, clock_ms, schedule_key
from herder.store._slots import builder, replacer
from herder.store._standby import StandbyMark, standby_waiting
from herder.store._tracebacks import MAX_CHARS as MAX_TRACEBACK_CHARS
from herder.store._tracebacks import bounded_traceback
from herder.store._untrusted import (
    UserCodeFailed,
    bounded_text,
    contain,
    describe,
    error_types,
    exception_name,
    explain,
    safe_repr,
    safe_str,
    type_name,
)
from herder.store._validate import check_plan, check_record
from herder.store._writer import Writer

__all__ = [
    "BATCH",
    "BATCH_TIMER",
    "COMMAND_DONE",
    "DEFAULT_LEASE",
    "FINISHED",
    "KEY_SEP",
    "MARK_KEY",
    "MAX_ID_BYTES",
    "MAX_SECONDS",
    "MAX_TRACEBACK_CHARS",
    "MAX_VALUE_BYTES",
    "PURGEABLE",
    "RECENT_AT_DB",
    "RECENT_BUILT",
    "RECENT_COUNTS",
    "RECENT_DB",
    "RETENTION_SCAN",
    "SCHEMA_VERSION",
    "UNREADABLE",
    "BatchSink",
    "BreakerState",
    "CatchUp",
    "ConditionFailed",
    "Delete",
    "EncodeError",
    "Expect",
    "HandoffRequest",
    "HerderError",
    "Indexed",
    "InvalidInput",
    "Lease",
    "LeaseLost",
    "Lines",
    "MissingExtra",
    "Ops",
    "Overlap",
    "Plan",
    "Put",
    "ResourceRecord",
    "RetryPolicy",
    "ScheduleRecord",
    "SchemaTooNew",
    "Snapshot",
    "Sparse",
    "StandbyMark",
    "StepRecord",
    "StepSpec",
    "StepState",
    "Store",
    "StoreClosed",
    "StoreCorrupt",
    "StoreError",
    "StoreIOError",
    "StoreLocked",
    "TimedOut",
    "Transition",
    "Unrenewed",
    "UserCodeFailed",
    "Watch",
    "WorkflowRecord",
    "WorkflowState",
    "Writer",
    "answered_before",
    "append_command",
    "as_event",
    "backup",
    "batch_entry",
    "batch_items",
    "batch_put",
    "batch_timer_key",
    "bounded_text",
    "bounded_traceback",
    "builder",
    "candidates",
    "check_plan",
    "check_record",
    "check_text",
    "clock_ms",
    "command_outcome",
    "commit_group",
    "compact",
    "contain",
    "count_purgeable",
    "crash_point",
    "decode",
    "definition_key",
    "deletions",
    "describe",
    "encode",
    "encoder",
    "error_types",
    "event_flaw",
    "exception_name",
    "explain",
    "fence",
    "fields_getter",
    "finished_ops",
    "get_logger",
    "has_store",
    "history_key",
    "history_owner",
    "history_put",
    "history_seqs",
    "holder_gone",
    "holder_stopped",
    "index_entry",
    "indexed",
    "is_held",
    "key_prefix",
    "marked_member",
    "ms",
    "new_command",
    "normalize",
    "opened",
    "peek_field",
    "peek_fields",
    "pending_commands",
    "plan_steps",
    "printable",
    "printable_lines",
    "private_copy",
    "progress_ops",
    "purge",
    "read_history",
    "read_recent_counts",
    "read_resources",
    "real_number",
    "recall_reason",
    "replacer",
    "resource_key",
    "resumed_candidates",
    "safe_repr",
    "safe_str",
    "schedule_key",
    "split_recent_key",
    "split_step_key",
    "split_timer_key",
    "standby_waiting",
    "started_key",
    "step_event",
    "step_history",
    "step_key",
    "step_timer_key",
    "stored_field",
    "timer_entry",
    "timer_key",
    "timer_token",
    "timer_upper_bound",
    "type_name",
    "validate_id",
    "validate_name",
    "wait_outcome",
    "workflow_event",
    "workflow_history",
    "workflow_key",
]
