"""``herder check``'s order checks: one workflow's step records against its plan's graph.

The write-ahead rule (DESIGN.md, "The three roles"): a result is recorded SUCCEEDED
before any step that runs after it is dispatched, and nothing turns a step back to
PENDING while a step after it has run. So, in every state of the workflow (a step keeps
``succeeded`` while it is undone, and its ``done_token``, the token of its success):

- a step that left PENDING runs after steps that each succeeded;
- none completed (its ``done_token``) before a step it runs after succeeded;
- compensations ran in reverse completion order.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

from herder.actors.engine import UNDOING
from herder.store import Plan, StepRecord, StepState, WorkflowRecord, step_key, workflow_key

AHEAD = (
    "herder dispatches a step only once what it runs after succeeded, so the store was "
    "damaged or edited: its result may be wrong; `herder show {wid}`, then undo or redo "
    "its work by hand, or restore a backup"
)


def _succeeded(st: StepRecord | None) -> bool:
    """Whether a step (None: it has no record, so PENDING) succeeded: it is SUCCEEDED, or
    being undone after it succeeded."""
    if st is None:
        return False
    return st.state is StepState.SUCCEEDED or (st.state in UNDOING and st.succeeded)


def check_order(
    record: WorkflowRecord,
    plan: Plan,
    steps: dict[str, StepRecord],
    problem: Callable[[str, bytes, str], None],
) -> None:
    """Report each step of ``record`` (``steps`` by name, those without a record
    PENDING) that ran before what it runs after, and compensations out of order."""
    ahead = AHEAD.format(wid=record.id)
    for spec in plan.steps:
        st = steps.get(spec.name)
        if st is None or st.state is StepState.PENDING:
            continue
        deps = [(name, steps.get(name)) for name in spec.after]
        early = [name for name, dep in deps if not _succeeded(dep)]
        done = st.done_token
        later = [
            name
            for name, dep in deps
            if dep is not None and done is not None and (dep.done_token or 0) > done
        ]
        skey = step_key(record.id, spec.name)
        if early:
            problem(
                "steps",
                skey,
                f"{st.state} while its dependencies {early} have not succeeded: {ahead}",
            )
        elif later:
            problem("steps", skey, f"completed before its dependencies {later} succeeded: {ahead}")
    undone = sorted(
        (st for st in steps.values() if st.state is StepState.COMPENSATED and st.done_token),
        key=lambda st: st.done_token or 0,
    )
    for earlier, later_one in itertools.pairwise(undone):
        if earlier.token < later_one.token:
            problem(
                "workflows",
                workflow_key(record.id),
                f"step {earlier.name!r} completed before {later_one.name!r} but was "
                "compensated first: compensation must run in reverse completion order",
            )
