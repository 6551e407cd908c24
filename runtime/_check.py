"""``herder check``: verify a store's cross-database invariants, read-only.

:func:`check_store` reads one consistent snapshot of every database and reports each
broken invariant as a :class:`Problem` naming the database and key, so an operator (or a
crash test) can see exactly what is wrong. What it checks:

- every record decodes, its fields have their types (the checks every reader of the
  store applies) and its states are legal (``StoreCorrupt`` otherwise); in ``meta``
  too, the lease and a handoff request (a damaged lease keeps every runtime out);
- a workflow's definition (name and version) is stored, and its step records are exactly
  the plan's steps, keyed by their own workflow id and name;
- step states agree with the workflow's state (DESIGN.md, "State machines"): a SUCCEEDED
  workflow has only succeeded steps, a final one nothing dispatched or waiting, a
  compensated or compensating step had succeeded first; and (``_check_order``), in
  every state, a step ran and completed only after its dependencies succeeded and
  compensations ran in reverse completion order;
- the timer index and the steps agree both ways (``_check_timers``): every step that
  waits for a deadline, a retry or its start time has its timer entry, or its attempt
  a place in a batch entry (with its current fencing token), every step's own entry
  belongs to such a step, and final workflows have none; an unfinished workflow with a
  deadline has its deadline's entry;
- fencing tokens: none from a future incarnation; a step's completion token is not newer
  than its current token;
- the ``recent`` index (``_check_index``): each workflow has its one entry, under its
  record's last update and state (recovery resumes what it lists as unfinished);
- history (``_check_history``): every value is an event (``as_event``, the rule by which
  ``herder show`` lists one as damaged) under a history key of a workflow that exists,
  and each workflow's history ends in the states of its records;
- schedules: each reads, sits under its name, names a stored workflow, and no workflow
  it fired is for a slot after its cursor;
- agents chosen at run time: every step whose agent the plan templates from the input
  has the agent it resolved stored with the workflow, and nothing else is stored there;
  a step of an ``AnyOf`` group that ran names the member it ran on, one of the group
  (and the member of its undo mark, when it names one: a member too).

The CLI prints the problems (or ``--json``) and exits 1 if there are any, 0 if none (3
if it could not read the store: ``_cli_inspect``); the report's types are ``_check_report``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import closing
from typing import Any, TextIO, TypeVar

from herder.actors import FACTS_KEY, parse_facts
from herder.actors.engine import (
    ALLOWED_STEPS,
    DEADLINE_TIMER,
    MEMBER_KEY,
    UNDOING,
    holds_timer,
    to_undo,
)
from herder.runtime._check_history import HistoryCheck, States
from herder.runtime._check_index import IndexCheck
from herder.runtime._check_order import check_order
from herder.runtime._check_report import CheckReport, Problem, print_report
from herder.runtime._check_timers import TimerIndex, act
from herder.runtime._console import CountLine, reader_left
from herder.runtime._routing import template_fields
from herder.runtime._schedules import slot_of
from herder.store import (
    KEY_SEP,
    MARK_KEY,
    RECENT_DB,
    HandoffRequest,
    HerderError,
    InvalidInput,
    Lease,
    Plan,
    ResourceRecord,
    ScheduleRecord,
    Snapshot,
    StepRecord,
    StepState,
    Store,
    StoreCorrupt,
    StoreError,
    WorkflowRecord,
    WorkflowState,
    check_plan,
    check_record,
    decode,
    definition_key,
    has_store,
    ms,
    plan_steps,
    schedule_key,
    step_key,
    workflow_key,
)

_R = TypeVar("_R")


def _typed(from_dict: Callable[[Any], _R], check: Callable[[_R], None]) -> Callable[[Any], _R]:
    """``from_dict`` with the type checks every reader of the store applies (``check``
    raises TypeError), so a field of the wrong type is reported, not met later."""

    def parse(data: Any) -> _R:
        record = from_dict(data)
        check(record)
        return record

    return parse


_workflow = _typed(WorkflowRecord.from_dict, check_record)
_step = _typed(StepRecord.from_dict, check_record)
_plan = _typed(Plan.from_dict, check_plan)


def check_store(
    store: Store | str | os.PathLike[str], progress: Callable[[int], None] | None = None
) -> CheckReport:
    """Check every cross-database invariant of ``store`` (an open Store, ``store_of(rt)``,
    or a store's directory, opened read-only for the check) on one snapshot; never writes.
    ``progress`` is given the count of workflows read so far, at each."""
    if isinstance(store, str | os.PathLike):
        if not has_store(store):  # (a read-only open creates nothing, but says less)
            raise StoreError(f"no store at {store!s:.200} (no data.mdb there)")
        with Store(store, readonly=True) as opened:
            return check_store(opened, progress)
    if not isinstance(store, Store):
        raise InvalidInput(
            f"check_store takes an open Store or a store's path, got {type(store).__name__}"
            ": store_of(rt) for a runtime's"
        )
    return store.view(lambda snap: _Checker(snap, progress).run())


class _Checker:
    def __init__(self, snap: Snapshot, progress: Callable[[int], None] | None = None) -> None:
        self.snap = snap
        self.progress = progress
        self.report = CheckReport()
        self.plans: dict[tuple[str, int], Plan] = {}
        self.timers = TimerIndex(self.problem)
        self.index = IndexCheck(snap, self.problem)

    def problem(self, db: str, key: bytes, message: str) -> None:
        self.report.add(Problem(db, key, message))

    def load(
        self, db: str, key: bytes, raw: bytes, parse: Callable[[Any], _R], *, is_map: bool = True
    ) -> _R | None:
        """Decode and parse one record; a failure is reported and gives None."""
        try:
            data = decode(raw, db=db, key=key)
            if is_map and not isinstance(data, dict | list):  # a schema 2 map, 3 array
                raise StoreCorrupt(db, key, f"expected a record, got {type(data).__name__}")
            return parse(data)
        except StoreCorrupt as exc:
            self.problem(db, key, f"corrupt: {exc.reason}")
        except (KeyError, TypeError, ValueError) as exc:
            self.problem(db, key, f"bad record: {type(exc).__name__}: {exc}")
        return None

    def run(self) -> CheckReport:
        self.check_meta()
        self.load_definitions()
        ids: set[bytes] = set()
        history = HistoryCheck(
            self.snap.items("history"),
            ids,
            self.problem,
            lambda key, raw: self.load("history", key, raw, lambda d: (d,), is_map=False),
        )
        for key, raw in self.snap.items("workflows"):
            self.report.workflows += 1
            if self.progress is not None:
                self.progress(self.report.workflows)
            record = self.load("workflows", key, raw, _workflow)
            if record is None:
                ids.add(key)  # its steps are not orphans, only their workflow is unreadable
                history.upto(key, None)
                continue
            ids.add(workflow_key(record.id))
            if workflow_key(record.id) != key:
                self.problem("workflows", key, f"holds the record of workflow {record.id!r}")
                history.upto(key, None)
                continue
            self.index.workflow(key, raw)
            history.upto(key, self.check_workflow(record))
        history.rest()
        for key, _ in self.snap.items("steps"):
            self.report.steps += 1
            if key.partition(KEY_SEP)[0] not in ids:
                self.problem("steps", key, "step record of a workflow that does not exist")
        self.timers.check(
            self.snap.items("timers"),
            self.count_timer,
            lambda key, raw: self.load("timers", key, raw, lambda d: d),
        )
        self.check_schedules()
        self.index.entries()
        # Read by ls and by the sweep (queued commands): each value must decode; at open
        # (resources), each must be a record too.
        for db in (RECENT_DB, "commands"):
            for key, raw in self.snap.items(db):
                self.load(db, key, raw, lambda d: d, is_map=False)
        for key, raw in self.snap.items("resources"):
            self.load("resources", key, raw, ResourceRecord.from_dict, is_map=False)
        return self.report

    def check_schedules(self) -> None:
        """Each schedule record reads, sits under its own name, names a stored workflow
        definition, and no workflow it fired is for a slot after its cursor (the cursor
        moves in the transaction that creates the slot's workflow)."""
        names = {name for name, _ in self.plans}
        for key, raw in self.snap.items("schedules"):
            record = self.load("schedules", key, raw, ScheduleRecord.from_dict)
            if record is None:
                continue
            if schedule_key(record.name) != key:
                self.problem("schedules", key, f"holds schedule {record.name!r}")
                continue
            if record.workflow not in names:
                self.problem("schedules", key, f"workflow {record.workflow!r} is not stored")
            if record.fired < 0 or record.skipped < 0:
                self.problem("schedules", key, "negative counters")
            for wkey, _ in self.snap.items("workflows", workflow_key(f"{record.name}@")):
                slot = slot_of(record.name, wkey.decode("utf-8", "replace"))
                if slot is not None and slot > record.cursor_ms:
                    self.problem("workflows", wkey, f"fired after the cursor of {record.name!r}")

    def check_meta(self) -> None:
        # The incarnation is written with the first lease taken: a store no runtime held
        # yet (a standby's whose setup failed) has none, and needs none.
        held = self.snap.raw("meta", b"lease") or next(self.snap.items("workflows"), None)
        for name in (b"schema", b"incarnation"):
            raw = self.snap.raw("meta", name)
            value = None if raw is None else self.load("meta", name, raw, int, is_map=False)
            if raw is None and (name == b"schema" or held):
                self.problem("meta", name, "missing")
            elif name == b"incarnation":
                self.report.incarnation = value if isinstance(value, int) else 0
        # The runtime's published agent facts; the lease and a handoff request, which
        # every open that writes reads (a damaged lease keeps every runtime out).
        for key, parse in (
            (FACTS_KEY, parse_facts),
            (b"lease", Lease.from_dict),
            (b"handoff", HandoffRequest.from_dict),
        ):
            raw = self.snap.raw("meta", key)
            if raw is not None:
                self.load("meta", key, raw, parse)

    def load_definitions(self) -> None:
        for key, raw in self.snap.items("definitions"):
            self.report.definitions += 1
            plan = self.load("definitions", key, raw, _plan)
            if plan is None:
                continue
            if definition_key(plan.name, plan.version) != key:
                self.problem("definitions", key, f"holds plan {plan.name}@{plan.version}")
                continue
            self.plans[(plan.name, plan.version)] = plan

    def steps_of(self, record: WorkflowRecord) -> dict[str, StepRecord]:
        steps: dict[str, StepRecord] = {}
        for key, raw in self.snap.items("steps", step_key(record.id, "")):
            st = self.load("steps", key, raw, _step)
            if st is None:
                continue
            if step_key(st.workflow_id, st.name) != key:
                self.problem("steps", key, f"holds step {st.workflow_id!r}/{st.name!r}")
                continue
            steps[st.name] = st
        return steps

    def check_workflow(self, record: WorkflowRecord) -> States:
        """Check ``record`` and its steps; its state and its readable steps' states."""
        wkey = workflow_key(record.id)
        if record.deadline is not None and not record.state.is_final:
            # Its deadline's timer (engine._deadline): until it ends or the timer fires.
            self.timers.wanted[step_key(record.id, DEADLINE_TIMER)] = (ms(record.deadline), 0)
        steps = self.steps_of(record)
        states = (record.state, {name: st.state for name, st in steps.items()})
        plan = self.plans.get((record.name, record.version))
        if plan is None:
            self.problem(
                "workflows",
                wkey,
                f"its definition {record.name}@{record.version} is not stored",
            )
        else:
            names = [spec.name for spec in plan.steps]
            extra = sorted(set(steps) - set(names))
            # A step without a record is PENDING (its record is written when it leaves
            # PENDING): checked as one below, e.g. not allowed in a SUCCEEDED workflow.
            steps = {st.name: st for st in plan_steps(record, list(steps.values()), plan)}
            for name in extra:
                self.problem("steps", step_key(record.id, name), "step not in the definition")
            check_order(record, plan, steps, self.problem)
            self.check_agents(record, plan)
            self.check_members(record, plan, steps)
            if record.state in (WorkflowState.COMPENSATED, WorkflowState.CANCELLED):
                for spec in plan.steps:  # (what compensation would have undone)
                    st = steps.get(spec.name)
                    if st is not None and spec.compensate and to_undo(st):
                        why = (
                            "succeeded and never undone"
                            if st.state is StepState.SUCCEEDED
                            else "failed in a way that may have taken effect, and never undone"
                        )
                        self.problem("steps", step_key(record.id, spec.name), why)
        allowed = ALLOWED_STEPS[record.state]
        for st in steps.values():
            skey = step_key(record.id, st.name)
            if st.state not in allowed:
                self.problem("steps", skey, f"{st.state} in a {record.state} workflow")
            self.check_step(record, st, skey)
        return states

    def check_agents(self, record: WorkflowRecord, plan: Plan) -> None:
        wkey = workflow_key(record.id)
        templated = set()
        for spec in plan.steps:
            try:
                if template_fields(spec.agent):
                    templated.add(spec.name)
            except HerderError as exc:
                key = definition_key(plan.name, plan.version)
                self.problem("definitions", key, f"step {spec.name!r}: {exc}")
        for step in sorted(templated - set(record.agents)):
            self.problem("workflows", wkey, f"step {step!r} has no agent resolved from the input")
        for step in sorted(set(record.agents) - templated):
            self.problem("workflows", wkey, f"an agent is stored for {step!r}, not templated")

    def check_members(
        self, record: WorkflowRecord, plan: Plan, steps: dict[str, StepRecord]
    ) -> None:
        """A step of an AnyOf group that ran names the member it ran on, one of the
        group, and the member of its undo mark, if it names one, is one too; a step of
        one agent names none."""
        for spec in plan.steps:
            st = steps.get(spec.name)
            if st is None:
                continue
            used = st.extra.get(MEMBER_KEY)
            skey = step_key(record.id, spec.name)
            if not spec.members:
                if used is not None:
                    self.problem("steps", skey, f"names member {used!r} but has no AnyOf group")
            elif st.attempt > 0 and used not in spec.members:
                self.problem(
                    "steps", skey, f"ran, but on {used!r}, not a member of {list(spec.members)}"
                )
            mark = st.extra.get(MARK_KEY)  # [the member of its undo mark, that done_token]
            if mark is not None and not (
                isinstance(mark, list) and len(mark) == 2 and mark[0] in spec.members
            ):
                self.problem("steps", skey, f"names {mark!r} as its undo mark's [member, token]")

    def check_step(self, record: WorkflowRecord, st: StepRecord, skey: bytes) -> None:
        incarnation = self.report.incarnation
        if incarnation and st.token >> 32 > incarnation:
            self.problem("steps", skey, f"token {st.token} is from a future incarnation")
        if st.done_token is not None and st.done_token > st.token:
            self.problem("steps", skey, f"done_token {st.done_token} > token {st.token}")
        if st.state in UNDOING and st.done_token is None:
            self.problem("steps", skey, f"{st.state} but nothing marks it done (no done_token)")
        if st.state is StepState.SUCCEEDED and st.done_token is None:
            self.problem("steps", skey, "SUCCEEDED without a completion token")
        if st.state is StepState.SUCCEEDED and not st.succeeded:
            self.problem("steps", skey, "SUCCEEDED but not marked succeeded")
        if st.state in (StepState.PENDING, StepState.FAILED) and st.succeeded:
            self.problem("steps", skey, f"{st.state} but marked succeeded")
        waits = holds_timer(record.state, st)
        if not self.timers.want_step(skey, st, waits=waits):
            why = f"{st.state} with no timer: nothing would wake it: {act(record.id)}"
            self.problem("steps", skey, why)
        elif waits and st.state is StepState.RETRY_WAIT and st.retry_at is None:
            self.problem("steps", skey, "RETRY_WAIT without a retry time")
        elif waits and st.state is StepState.DISPATCHED and st.deadline is None:
            if st.retry_at is None:
                self.problem("steps", skey, "DISPATCHED without a deadline")
        elif not waits and st.timer_ms is not None:
            self.problem("steps", skey, f"{st.state} in a {record.state} workflow has a timer")

    def count_timer(self) -> None:
        self.report.timers += 1


def run_check(out: TextIO, store: Store, *, as_json: bool) -> int:
    """``herder check``: print the report; return 0 if the store is consistent, else 1."""
    with closing(CountLine("herder check", "workflows checked")) as progress:
        report = check_store(store, progress.update)
    try:
        print_report(out, report, store.path, as_json=as_json)
        out.flush()  # (a reader that left is found here, not at the interpreter's exit)
    except BrokenPipeError:  # `herder check | head`: the reader left, the outcome stands
        reader_left()
    return 0 if report.ok else 1
