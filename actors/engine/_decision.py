"""Effects: what a decision causes once its writes are durable, as typed data.

The write-ahead rule is the reason effects exist: an attempt is handed to its agent
only after the transaction holding its DISPATCHED record (attempt, fencing token,
deadline) has been committed; a waiter hears of a final state only once it is on disk;
an operator's call returns only once its action is. So a decision's effects wait beside
its writes, and the Scheduler performs them when the writer reports the batch durable.
If the commit fails instead, no effect runs: every reply is answered with the error,
and the rest is dropped with the reloaded workflow (the store stays the truth).

- :class:`Dispatch` — hand attempt ``token`` to the agent instance reserved for it.
- :class:`Announce` — the workflow's final state is durable: tell its waiters.
- :class:`Resolve` / :class:`Refuse` — answer a caller waiting on a future: done, or
  refused with an error once the workflow's earlier writes are durable.

Imports: herder.store records only; effects are plain data (a caller's future is the
one live object, carried through untouched).
"""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass

from herder.store import StepRecord, WorkflowRecord


@dataclass(frozen=True, slots=True)
class Dispatch:
    """Hand attempt ``token`` of ``workflow_id``/``step`` to its agent instance."""

    workflow_id: str
    step: str
    token: int


@dataclass(frozen=True, slots=True)
class Announce:
    """The workflow reached this final ``record``: tell whoever waits on it (with its
    ``steps`` in plan order when they are in memory, so nobody has to read them back)."""

    record: WorkflowRecord
    steps: list[StepRecord] | None = None


@dataclass(frozen=True, slots=True)
class Resolve:
    """The caller's request is durable: resolve its ``future``."""

    future: Future[None]


@dataclass(frozen=True, slots=True)
class Refuse:
    """Refuse the caller with ``error``, now that the state it speaks of is durable."""

    future: Future[None]
    error: BaseException


Reply = Resolve | Refuse
"""An effect that answers a caller; a failed commit answers it with its error instead."""

Effect = Dispatch | Announce | Resolve | Refuse
"""Anything a decision causes once its writes are durable."""
