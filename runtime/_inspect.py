"""``herder ls``, ``herder show`` (with the workflow's history), ``herder stats``: read a
store without disturbing it.

Each command opens the store read-only (``Store(path, readonly=True)``), which works
while a runtime in another process writes it: every read is one consistent snapshot.
Plain tables by default, ``--json`` for scripts.
"""

from __future__ import annotations

import datetime
import itertools
import sys
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any, TextIO

from herder.actors import FACTS_STALE, UnknownWorkflow, read_facts, resource_stats
from herder.runtime._console import (
    attempt_named,
    dump_json,
    dump_json_list,
    print_table,
    printable,
    value_text,
)
from herder.runtime._schedule_status import schedule_statuses
from herder.runtime._status import WorkflowStatus, in_plan_order
from herder.runtime._tally import tally
from herder.store import (
    Plan,
    StepRecord,
    StepState,
    Store,
    StoreCorrupt,
    WorkflowRecord,
    WorkflowState,
    pending_commands,
    read_history,
    read_resources,
)

QUEUED_LOOK = 1000
"""Queued commands (of every workflow, the oldest) ``herder show`` and a workflow's page
in the console look among for its own: a runtime that stays away lets an automation's
pile up."""


class _Reader:
    """Statuses out of a read-only store, steps ordered by their stored definitions."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._plans: dict[tuple[str, int], Plan | None] = {}
        self.corrupt: list[StoreCorrupt] = []  # records skipped, reported at the end

    def status(self, record: WorkflowRecord) -> WorkflowStatus:
        return WorkflowStatus.from_records(record, self.steps(record))

    def status_of(self, workflow_id: str) -> WorkflowStatus | None:
        """The workflow's record and steps read in one snapshot (None: there is none): two
        reads let a deletion (retention, a purge) land between them, a SUCCEEDED record
        shown with every step PENDING."""

        def read() -> WorkflowStatus | None:
            record = self.store.get_workflow(workflow_id)
            return None if record is None else self.status(record)

        return self.store.together(read)

    def steps(self, record: WorkflowRecord) -> list[StepRecord]:
        """The workflow's steps in plan order, PENDING for those without a record."""
        return in_plan_order(record, self.store.steps_of(record.id), self.plan(record))

    def plan(self, record: WorkflowRecord) -> Plan | None:
        """The workflow's stored definition (None if it cannot be read: noted)."""
        key = (record.name, record.version)
        if key not in self._plans:
            try:
                self._plans[key] = self.store.get_plan(*key)
            except StoreCorrupt as exc:  # steps are then shown in stored order
                self.corrupt.append(exc)
                self._plans[key] = None
        return self._plans[key]


def report_corrupt(corrupt: list[StoreCorrupt]) -> None:
    """Name each record a command had to skip on stderr (the output shows the rest)."""
    for exc in corrupt:
        sys.stderr.write(f"herder: skipped: {exc}\n")


def shown_time(t: float) -> str:
    """``t`` (seconds since the epoch) as a local date and time to the second; as seconds
    when it is no date (a runtime's clock may be far off: a custom Clock)."""
    try:
        return datetime.datetime.fromtimestamp(t).isoformat(sep=" ", timespec="seconds")
    except (OverflowError, OSError, ValueError):  # (a clock far off: no date, the seconds)
        return f"{t:.3f} s"


def list_workflows(
    out: TextIO,
    store: Store,
    *,
    state: str | None,
    limit: int | None,
    as_json: bool,
    since: float | None = None,
) -> None:
    """``herder ls``: one row per workflow (in ``state``, updated since ``since``), last
    updated first; reads the store's ``recent`` index, so only the rows shown are loaded,
    and keeps no more of each than it prints: ``--json`` writes each as it is read, the
    table keeps its cells (``--limit 0`` held every input and result to the end: 1.3 GB
    for 100,000 workflows, 4.7 GB as JSON)."""
    reader = _Reader(store)
    listed = _listed(store, reader, state, since, None if limit is None else limit + 1)
    shown = listed if limit is None else itertools.islice(listed, limit)
    if as_json:
        dump_json_list(out, (s.to_dict() for s in shown))
        report_corrupt(reader.corrupt)
        return
    rows = [_row(s) for s in shown]
    more = limit is not None and next(listed, None) is not None
    report_corrupt(reader.corrupt)
    print_table(out, "", ("id", "workflow", "state", "steps done", "updated", "error"), rows)
    if more:
        out.write(f"(the {limit} last updated; --limit N for more, 0 for all)\n")


def _listed(
    store: Store, reader: _Reader, state: str | None, since: float | None, most: int | None
) -> Iterator[WorkflowStatus]:
    """The ``most`` (None: all) workflows in ``state`` updated since ``since``, last
    updated first, as the index lists them at one instant (read a page at a time, one
    that changed meanwhile moved above the pages read: ``--limit 0`` of a busy store left
    out a quarter of it); each as read (one unreadable, a damaged key: ``reader.corrupt``)."""
    states = None if state is None else frozenset({str(WorkflowState(state))})

    def ids() -> tuple[list[str], list[StoreCorrupt]]:  # (together() may run it again)
        damaged: list[StoreCorrupt] = []
        listed = store.recent(states=states, since=since, damaged=damaged)
        return [e[1] for e in itertools.islice(listed, most)], damaged

    wids, damaged = store.together(ids)
    reader.corrupt += damaged
    for wid in wids:
        try:
            status = reader.status_of(wid)
        except StoreCorrupt as exc:
            reader.corrupt.append(exc)
            continue
        if status is not None and (states is None or str(status.state) in states):
            yield status  # (else purged, or moved on, since the index was read)


def _row(s: WorkflowStatus) -> tuple[str, ...]:
    """``herder ls``'s row of a workflow."""
    done = sum(1 for st in s.steps.values() if st.state is StepState.SUCCEEDED)
    updated, error = shown_time(s.updated), (s.error or "")[:60]
    return (s.id, f"{s.name}@{s.version}", str(s.state), f"{done}/{len(s.steps)}", updated, error)


def show_workflow(
    out: TextIO, store: Store, workflow_id: str, *, as_json: bool, attempts: bool = False
) -> None:
    """``herder show ID``: a workflow's state, input, error, every step and its history;
    with ``attempts``, each failed attempt with its error and traceback. The status and
    the history are read in one transaction, so they tell the same story."""
    status, history = snapshot(store, workflow_id)
    queued = queued_for(store, workflow_id)
    if as_json:
        dump_json(out, {**status.to_dict(), "history": history, "queued": queued})
        return
    named = f"{printable(status.id)}: {printable(status.name)}@{status.version}"
    out.write(
        f"workflow {named} {status.state}\n"
        f"  created {shown_time(status.created)}, updated {shown_time(status.updated)}\n"
        f"  input   {value_text(status.input)}\n"
    )
    if status.error:  # (user code's words: printable, as every table cell is)
        out.write(f"  error   {printable(status.error)}\n")
    if status.deadline is not None:
        out.write(f"  deadline {shown_time(status.deadline)}\n")
    for step, agent in status.agents.items():
        out.write(
            f"  agent   {printable(step)} -> {printable(agent)} (chosen from the input at the "
            "start)\n"
        )
    for st in status.steps.values():
        if st.agent is not None:
            out.write(
                f"  agent   {printable(st.name)} -> {printable(st.agent)} (the AnyOf member it "
                "last ran on)\n"
            )
    rows = [
        (
            st.name,
            str(st.state),
            st.attempt,
            st.compensation_attempts,
            value_text(st.result) if st.result is not None else "",
            st.error or "",
        )
        for st in status.steps.values()
    ]
    print_table(out, "", ("step", "state", "attempts", "undo attempts", "result", "error"), rows)
    print_table(out, "history", ("when", "what", "change", "attempt", "details"), _story(history))
    if queued:  # (a decision already on its way: not to be taken twice)
        rows = [_queued_row(c) for c in queued]
        title = "queued: not applied yet (no runtime holds the store, or it has not got to them)"
        print_table(out, title, ("command", "action", "step", "who", "when", "why"), rows)
    if attempts:
        _failed_attempts(out, history)


def queued_for(store: Store, workflow_id: str) -> list[dict[str, Any]]:
    """The operator commands queued for a workflow and not applied yet, oldest first
    (among the :data:`QUEUED_LOOK` oldest queued)."""
    looked = pending_commands(store, corrupt=[], most=QUEUED_LOOK)
    return [c for c in looked if c.get("workflow_id") == workflow_id]


def _queued_row(command: dict[str, Any]) -> tuple[Any, ...]:
    args = command.get("args")
    step = args.get("step") if isinstance(args, dict) else None
    created = command.get("created")
    when = shown_time(created) if isinstance(created, int | float) else "?"
    who, why = command.get("who"), command.get("why")
    return (f"#{command.get('id')}", command.get("action"), step or "", who, when, why)


def snapshot(store: Store, workflow_id: str) -> tuple[WorkflowStatus, list[dict[str, Any]]]:
    """A workflow's status and history, read in one transaction (they tell the same
    story); UnknownWorkflow if there is none."""
    return store.together(lambda: _status_and_history(store, workflow_id))


def _status_and_history(
    store: Store, workflow_id: str
) -> tuple[WorkflowStatus, list[dict[str, Any]]]:
    record = store.get_workflow(workflow_id)
    if record is None:
        raise UnknownWorkflow(f"no workflow with id {workflow_id!r} in {store.path}")
    return _Reader(store).status(record), read_history(store, workflow_id)


def _failed_attempts(out: TextIO, history: list[dict[str, Any]]) -> None:
    """Each failed attempt (a step event with an error): when, step, attempt, error and
    the traceback kept with it, indented under it; each line printable (user code's
    words: no escape reaches the terminal)."""
    failures = [e for e in history if e.get("kind") == "step" and e.get("error")]
    out.write(f"\nfailed attempts: {len(failures)}\n")
    for e in failures:
        when = shown_time(e["t"]) if isinstance(e.get("t"), int | float) else "?"
        what = f"step {e.get('step')} {attempt_named(e)}: {e['error']}"
        out.write(f"  {when} {printable(what)}\n")
        trace = e.get("traceback")
        if isinstance(trace, str) and trace:
            lines = trace.rstrip("\n").splitlines()
            out.write("".join(f"    {printable(line)}\n" for line in lines))


def show_schedules(out: TextIO, store: Store, *, as_json: bool) -> None:
    """``herder schedules``: every schedule, its cadence, policies and next firing."""
    corrupt: list[StoreCorrupt] = []
    statuses = schedule_statuses(store, corrupt)
    report_corrupt(corrupt)  # on stderr: the table shows the rest
    if as_json:
        dump_json(out, [s.to_dict() for s in statuses])
        return
    rows = [
        (
            s.name,
            s.workflow,
            s.cadence,
            f"{s.overlap}/{s.catch_up}",
            "paused" if s.paused else ("-" if s.next_at is None else shown_time(s.next_at)),
            s.fired,
            s.skipped,
            s.last_id or "",
        )
        for s in statuses
    ]
    columns = ("schedule", "workflow", "when", "overlap/catch-up", "next", "fired", "skipped")
    print_table(out, "", (*columns, "last workflow"), rows)


def _story(history: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """One row per history event: transitions, probes and operator actions."""
    rows: list[tuple[Any, ...]] = []
    for e in history:
        kind = e.get("kind")
        when = shown_time(e["t"]) if isinstance(e.get("t"), int | float) else ""
        if kind == "operator":
            target = f" step {e['step']}" if e.get("step") else ""
            given = e.get("result")
            result = f" result={value_text(given)}" if given is not None else ""
            details = f"by {e.get('who') or '?'}: {e.get('why') or ''}{result}"
            if e.get("refused"):  # (a queued command the runtime refused)
                details += f"; refused: {e['refused']}"
            rows.append((when, f"operator {e.get('action')}{target}", "", "", details))
        elif kind == "step":
            change = f"{e.get('from')} -> {e.get('to')}"
            on = f"on {e['agent']}" if e.get("agent") else ""  # an AnyOf member
            # (str(): a stored error of another type is shown, not a TypeError)
            details = "; ".join(str(d) for d in (on, e.get("error") or "") if d)
            rows.append((when, f"step {e.get('step')}", change, e.get("attempt"), details))
        elif kind == "probe":
            rows.append((when, f"probe {e.get('step')}", "UNKNOWN", "", e.get("error") or ""))
        elif kind == "damaged":  # (read_history: an event that cannot be read)
            rows.append((when, f"event #{e.get('seq')}", "damaged", "", e.get("error") or ""))
        else:
            change = f"{e.get('from') or 'new'} -> {e.get('to')}"
            rows.append((when, "workflow", change, "", e.get("error") or ""))
    return rows


def store_stats(store: Store, corrupt: list[StoreCorrupt] | None = None) -> dict[str, Any]:
    """Counts from the store alone: workflows and steps by state, retries, timer entries. The
    records that could not be read are counted and named on stderr, or added to
    ``corrupt`` if given (the console counts every few seconds: a line each time). The
    workflows are those the writer keeps, where it keeps them (``rt.stats()``'s, as of
    one instant; the scan of a busy store reads each record at another)."""
    kept = store.kept_workflow_counts()
    report, corrupt = corrupt is None, [] if corrupt is None else corrupt
    view = _Reader(store)  # its plans: a step without a record counts as PENDING
    counted = tally(store, view.plan, corrupt)
    corrupt += view.corrupt  # definitions that could not be read
    workflows = counted.workflows
    if kept is not None:  # (an unreadable record, kept as no state of ours: in corrupt)
        workflows = Counter({state: kept.get(state, 0) for state in workflows})
    resources = stored_resources(store, corrupt)
    if report:
        report_corrupt(corrupt)
    return {
        "store": str(store.path),
        "schema_version": store.schema_version,
        "incarnation": store.incarnation,
        "workflows": dict(workflows),
        "steps": dict(counted.steps),
        "retries": counted.retries,
        "compensation_retries": counted.compensation_retries,
        "timers": store.count("timers"),
        "definitions": store.count("definitions"),
        "corrupt": len(corrupt),
        "resources": resources,
    }


def stored_resources(store: Store, corrupt: list[StoreCorrupt]) -> dict[str, dict[str, Any]]:
    """Per agent name, its stored protection state (breaker, crash counters): one small
    database, read without the workflows (the console's Agents page)."""
    records = read_resources(store.scan("resources", corrupt=corrupt), corrupt)
    return {agent: resource_stats(record) for agent, record in records.items()}


def show_stats(out: TextIO, store: Store, *, as_json: bool) -> None:
    """``herder stats``: :func:`store_stats` as a table or JSON."""
    stats = store_stats(store)
    try:
        live = read_facts(store)
    except StoreCorrupt as exc:
        report_corrupt([exc])
        live = None
    if as_json:
        dump_json(out, {**stats, "live": live})
        return
    rows: list[tuple[str, Any]] = [(f"workflows {k}", v) for k, v in stats["workflows"].items()]
    rows += [(f"steps {k}", v) for k, v in stats["steps"].items()]
    rows += [(k, stats[k]) for k in ("retries", "compensation_retries")]
    rows += [("timer entries", stats["timers"])]  # (an ended attempt's stays until due)
    rows += [(k, stats[k]) for k in ("definitions", "corrupt", "incarnation", "schema_version")]
    print_table(out, f"store {stats['store']}", ("", "count"), rows)
    if stats["resources"]:
        columns = ("breaker", "failures", "opens", "crashes", "lost", "limit")
        resources = [(a, *(v.get(c, "-") for c in columns)) for a, v in stats["resources"].items()]
        out.write("\n")
        print_table(out, "agents (resource protection)", ("agent", *columns), resources)
    if live is not None and live["agents"]:
        _show_live(out, live)


def _show_live(out: TextIO, live: dict[str, Any]) -> None:
    """The facts the running runtime last published (``herder.actors._facts``), and their age."""
    age = max(0.0, time.time() - live["at"])
    stale = "; STALE: no runtime renews them" if age > FACTS_STALE else ""
    columns = ("concurrency", "instances", "busy", "queued", "ahead", "breaker", "healthy")
    rows = [(agent, *(row.get(c, "") for c in columns)) for agent, row in live["agents"].items()]
    total = live.get("total")  # (more than it holds: the busiest were published)
    more = f"; the {len(rows)} busiest of {total:,} agents" if _more(total, len(rows)) else ""
    out.write("\n")
    title = f"agents (live, published {age:.0f} s ago{more}{stale})"
    print_table(out, title, ("agent", *columns), rows)


def _more(total: object, shown: int) -> bool:
    """Whether published facts left agents out (``total``: absent in older records)."""
    return isinstance(total, int) and total > shown
