"""What each console address shows, read through the shared read-only views.

Reads go through ``_inspect`` (statuses in plan order; ``store_stats`` in
``_counters``), ``_inbox`` (``inbox_items``) and ``read_history`` like ``herder
ls/show/stats/inbox`` do; an
operator action is a command on the store's channel (``store/_commands.py``), exactly as
``herder retry ...`` sends it, and the page shows its outcome.
"""

from __future__ import annotations

import itertools
import threading
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from herder.actors import Operate, UnknownWorkflow, read_facts
from herder.actors.engine import stale_refusal
from herder.runtime._console import printable
from herder.runtime._inbox import inbox_items
from herder.runtime._inspect import stored_resources
from herder.runtime._operator_cli import ACTIONS, queue_refusal
from herder.runtime._schedule_status import schedule_page
from herder.runtime.ui import _pages
from herder.runtime.ui._counters import Counters
from herder.runtime.ui._query import Filters, _cursor_key, workflow_page
from herder.runtime.ui._workflow_page import parse_before, queued, read_page
from herder.runtime.ui._workflow_page import workflow_page as one_workflow
from herder.store import (
    COMMAND_DONE,
    HerderError,
    InvalidInput,
    Plan,
    Store,
    StoreCorrupt,
    WorkflowState,
    append_command,
    command_outcome,
    is_held,
    new_command,
    validate_id,
)

if TYPE_CHECKING:
    from herder.runtime.ui._server import Console


INBOX_PAGE = 200
"""Parked workflows the inbox shows, the oldest first: an outage may park a hundred
thousand, and one page of them all took seconds and a hundred MB of HTML."""
SCHEDULES_PAGE = 200
"""Schedules the agents page lists at a time, by name (10,000 on one page: 1.3 MB)."""
_SEEN = "the page that sent this showed it"
"""Where an action's state was seen, in the engine's refusal of one that moved on."""


class Views:
    """The console's pages and actions, over its :class:`StoreGate`."""

    def __init__(self, console: Console) -> None:
        self._console = console
        self._gate = console.gate
        self._counters = Counters(console.gate)

    def page(self, path: str, query: dict[str, str], csrf: str | None) -> tuple[int, str]:
        """(HTTP status, HTML) of a GET."""
        render = {
            "/": self._workflows,
            "/workflow": self._workflow,
            "/inbox": self._inbox,
            "/agents": self._agents,
        }.get(path)
        if render is None:
            return 404, _pages.error_page("Not found", f"nothing at {path}", "Start at /.")
        status, title, active, body = render(query, csrf)
        html = _pages.layout(title, body, store=self._gate.path, active=active, csrf=csrf)
        return status, html

    def _workflows(self, query: dict[str, str], csrf: str | None) -> tuple[int, str, str, str]:
        filters = Filters.parse(query)
        with self._gate.read() as store:
            note = (
                ""
                if store.indexed
                else '<p class="warn">This store was written before the index of recent '
                "workflows, which its next runtime builds when it opens it: until then "
                "<code>herder ls</code> lists them.</p>"
            )
            page = workflow_page(store, filters, query.get("cursor"))
            if filters.name is not None and not page.rows:
                note += _unknown_name(store, filters.name)
        shown = {k: v for k, v in query.items() if k != "cursor" and v}
        return 200, "Workflows", "workflows", _pages.workflows_page(page, filters, shown, note)

    def _workflow(self, query: dict[str, str], csrf: str | None) -> tuple[int, str, str, str]:
        workflow_id = query.get("id", "")
        shown = _pages.e(f"{workflow_id!r:.80}")
        before = parse_before(query.get("before"))  # (InvalidInput: 400)
        with self._gate.read() as store:
            try:
                status, story, step = read_page(store, workflow_id, before)  # (one read)
            except UnknownWorkflow:
                return _not_found(f"No workflow with id {shown}.")
            except InvalidInput as exc:  # empty, NUL, too long: no workflow has such an id
                return _not_found(f"{shown} is not a valid workflow id: {_pages.shown(exc)}.")
            by_id, more = queued(store)
        mine = (by_id.get(workflow_id, []), more)
        body = one_workflow(status, story, time.time(), csrf, step=step, queued=mine)
        return 200, printable(status.id), "workflows", body

    def _inbox(self, query: dict[str, str], csrf: str | None) -> tuple[int, str, str, str]:
        corrupt: list[StoreCorrupt] = []  # (named on the page: a parked one may be among them)
        with self._gate.read() as store:
            items = inbox_items(store, corrupt=corrupt, limit=INBOX_PAGE)
            counts = store.workflow_counts() if len(items) >= INBOX_PAGE else None
            by_id, _ = queued(store)
        total = None if counts is None else counts.get(str(WorkflowState.NEEDS_ATTENTION), 0)
        return 200, "Inbox", "inbox", _pages.inbox_page(items, csrf, corrupt, total, by_id)

    def _agents(self, query: dict[str, str], csrf: str | None) -> tuple[int, str, str, str]:
        start = _cursor_key(query["schedules"]) if query.get("schedules") else None
        used: dict[str, set[str]] = {}
        damaged: list[StoreCorrupt] = []  # (records left out: named on the page)
        with self._gate.read() as store:
            for key, value in store.scan("definitions", corrupt=damaged):
                try:
                    plan = Plan.from_dict(value)
                except (KeyError, TypeError, ValueError) as exc:
                    damaged.append(StoreCorrupt("definitions", key, f"bad definition: {exc}"))
                    continue
                for spec in plan.steps:  # (each member of an AnyOf group: any may do it)
                    for agent in spec.members or (spec.agent,):
                        used.setdefault(agent, set()).add(f"{plan.name}@{plan.version}")
            schedules, last = schedule_page(store, start, SCHEDULES_PAGE, damaged)
            total = store.count("schedules")
            try:
                facts = read_facts(store)
            except StoreCorrupt as exc:
                facts = None  # as if none was published
                damaged.append(exc)
            # (not self.stats(): the first count of a big store took a minute, or failed)
            resources = stored_resources(store, damaged)
            stored = {"resources": resources, "running": is_held(store.path)}
        agents = {a: sorted(w) for a, w in used.items()}
        page = _pages.agents_page(stored, agents, facts, time.time())
        more = None if last is None else "/agents?" + urlencode({"schedules": last.hex()})
        body = page + _pages.skipped(damaged) + _pages.schedules_section(schedules, total, more)
        return 200, "Agents", "agents", body

    def stats(self) -> dict[str, Any]:
        """``herder stats`` numbers, as last counted (see :mod:`._counters`)."""
        return self._counters.get()

    def act(self, form: dict[str, str]) -> tuple[int, str]:
        """Send one operator command from a console form; the page says what became of it."""
        action, workflow_id = form.get("action", ""), form.get("id", "")
        who, why = form.get("who", "").strip(), form.get("why", "").strip()
        if action not in ACTIONS:
            raise ValueError(f"unknown action {action!r}; use one of {', '.join(ACTIONS)}")
        if not who or not why:
            raise ValueError("say who acts and why: both are kept in the history")
        args: dict[str, Any] = {}
        if action == "skip":
            args = {"step": form.get("step") or None, "result": None}
        # The API's and the CLI's checks, before anything is queued (InvalidInput: 400).
        try:
            validate_id(workflow_id)
        except InvalidInput as exc:
            raise InvalidInput(f"{workflow_id!r:.80} is not a valid workflow id: {exc}") from None
        Operate(action, workflow_id, args.get("step"), who=who, why=why).check()
        with self._gate.read() as store:
            record = store.get_workflow(workflow_id)
        ok: bool | None
        status = 200
        refusal = (  # (as the CLI refuses it: a runtime would, later)
            f"no workflow with id {workflow_id!r} is in the store (a purge or retention "
            "deleted it since the page was read, or it never was)"
            if record is None  # (400 "complete the form and send it again" before)
            else queue_refusal(workflow_id, record.state, action)
            or stale_refusal(  # (a form that names no state, a script's: taken as it comes)
                workflow_id, record.state, form.get("state") or None, action, seen=_SEEN
            )
        )
        if record is None or refusal is not None:  # (one is not without the other)
            outcome, ok = f"refused: {refusal}; nothing was queued", False
            status = 404 if record is None else 409
        else:
            # The state the page showed: the runtime refuses the command if the workflow
            # is in another when it applies it (two were queued from one view, say).
            decided_on = str(record.state)
            command = new_command(
                action, workflow_id, args=args, who=who, why=why, decided_on=decided_on
            )
            try:
                with self._gate.exclusive():  # one LMDB environment per store per process
                    command_id = append_command(self._gate.path, command)
            except HerderError as exc:  # a user who may not write the store, a compaction
                outcome, ok, status = f"not sent: {exc}; nothing was queued", False, 503
            else:
                outcome, ok = self._outcome(command_id)
                status = 200 if ok is not False else 409
        html = _pages.outcome_page(action, workflow_id, outcome, ok)
        page = _pages.layout(  # (only a signed-in operator gets here: not read-only)
            action, html, store=self._gate.path, active="inbox", csrf=self._console.csrf
        )
        return status, page

    def _outcome(self, command_id: int) -> tuple[str, bool | None]:
        """What became of the command: looked up every 50 ms for up to ``wait`` seconds,
        while a runtime holds the store (asked at once, then every half second: one that
        stops meanwhile does not apply it, and waiting on told nothing)."""
        queued = (
            f"command #{command_id} is queued: no runtime holds the store; the next one to "
            "open it applies it",
            None,
        )
        if not is_held(self._gate.path):
            return queued
        deadline = time.monotonic() + self._console.wait
        pause = threading.Event()  # never set: the pause between two looks
        for look in itertools.count(1):
            held = look % 10 or is_held(self._gate.path)  # (before the look: see below)
            with self._gate.read() as store:
                record = command_outcome(store, command_id)
            if record is not None:
                if record.get("state") == COMMAND_DONE:
                    return f"done (command #{command_id}, by {record.get('who')})", True
                return f"refused: {record.get('error')}", False
            if not held:  # (and it did not apply it before it let go of the store)
                return queued
            if time.monotonic() >= deadline:
                break
            pause.wait(0.05)
        return (
            f"command #{command_id} is queued: the runtime did not apply it within "
            f"{self._console.wait:g} s; it is applied when the runtime gets to it",
            None,
        )


def _unknown_name(store: Store, name: str) -> str:
    """A warning if no stored definition has the workflow ``name`` (a typo, or the name
    with the ``@version`` the list shows): no workflow can match, however far back the
    list looks. Nothing if one has, or if a definition cannot be read."""
    damaged: list[StoreCorrupt] = []
    names: set[str] = set()
    for _, value in store.scan("definitions", corrupt=damaged):
        found = value.get("name") if isinstance(value, dict) else None
        if not isinstance(found, str):  # (unreadable: it may be any name)
            return ""
        names.add(found)
    if damaged or name in names:
        return ""
    known = sorted(names)
    return (
        f'<p class="warn">No workflow definition in this store is named {_pages.e(repr(name))}'
        f" (the filter takes a workflow's name without its @version): the names are: "
        f"{_pages.shown(', '.join(known) or 'none')}.</p>"
    )


def _not_found(problem: str) -> tuple[int, str, str, str]:
    return 404, "Not found", "workflows", f'<h1>Not found</h1><p id="problem">{problem}</p>'
