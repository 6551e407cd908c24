"""What the exact simulation checks as it goes, and how it writes a run down.

The rules of write-ahead, checked when they matter (the end state is ``verify``'s): an
attempt runs only once its DISPATCHED record is durable and, going forward, once every
step it depends on is durably SUCCEEDED; a final state is announced only once durable.
The trace: each delivery as :func:`describe` shows it, ended by a :func:`digest` of the
store, so a test compares two runs of a seed byte for byte.
"""

from __future__ import annotations

import hashlib

from herder.runtime.testing._inline_host import Sent
from herder.store import Plan, Store, WorkflowRecord

DUMPED = ("workflows", "steps", "timers", "definitions", "history", "commands", "resources")
"""The databases whose bytes end a trace (``meta`` holds the lease: an owner id)."""


def check_write_ahead(store: Store, plan: Plan, sent: Sent, problems: list[str]) -> None:
    """What must be durable before agent code sees an attempt: its DISPATCHED record
    (its token, or a later one if it was superseded meanwhile), and for a forward
    attempt, the SUCCEEDED records of every step it depends on."""
    ctx = sent.run.context
    st = store.get_step(ctx.workflow_id, ctx.step)
    if st is None or st.token < sent.run.token:
        problems.append(
            f"{ctx.idempotency_key}: attempt {ctx.attempt} (token {sent.run.token}) runs "
            f"before its dispatch is durable (the store has {st})"
        )
    if ctx.compensating or st is None or st.token != sent.run.token:
        return
    spec = next(spec for spec in plan.steps if spec.name == ctx.step)
    for name in spec.after:
        dep = store.get_step(ctx.workflow_id, name)
        if dep is None or not dep.succeeded:
            problems.append(f"{ctx.idempotency_key} runs before {name} succeeded durably ({dep})")


def check_announced(store: Store, record: WorkflowRecord, problems: list[str]) -> None:
    """A final state is announced to waiters: it must be durable already."""
    stored = store.get_workflow(record.id)
    if stored is None or stored.state is not record.state:
        problems.append(f"{record.id}: {record.state} announced before it was durable ({stored})")


def describe(message: object) -> str:
    """A message as the trace shows it: its kind and its plain fields (no addresses)."""
    fields = getattr(message, "__dataclass_fields__", None)
    if fields is None:
        return type(message).__name__
    parts = []
    for name in fields:
        value = getattr(message, name)
        if isinstance(value, str | int | float | bool | type(None)):
            parts.append(f"{name}={value!r}")
        elif isinstance(value, list | tuple):
            parts.append(f"{name}#{len(value)}")
    return f"{type(message).__name__}({', '.join(parts)})"


def digest(store: Store) -> str:
    """A digest of the store's content (all but ``meta``), to end the trace with."""
    hashed = hashlib.sha256()
    for db in DUMPED:
        for key, value in store.raw_scan(db):
            hashed.update(b"%s\0%d:%s%d:%s" % (db.encode(), len(key), key, len(value), value))
    return f"store {hashed.hexdigest()}"
