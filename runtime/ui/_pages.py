"""The console's HTML: one function per view, every store value escaped.

Views take plain data (statuses, history events, inbox items, stats) already read by the
shared read-only views (``_inspect``, ``_inbox``) and return a page. Nothing here reads
the store or knows about HTTP; :mod:`._server` does both.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from html import escape
from types import MappingProxyType
from typing import Any
from urllib.parse import urlencode

from herder.actors import FACTS_REFRESH, FACTS_STALE
from herder.actors.engine import operator_refusal
from herder.runtime._console import clipped, json_safe, printable
from herder.runtime._inbox import InboxItem
from herder.runtime._inspect import _more, shown_time
from herder.runtime._operator_cli import ACTIONS
from herder.runtime._status import WorkflowStatus
from herder.runtime.ui._query import Filters, Page
from herder.store import StepState, WorkflowState, printable_lines


def e(value: Any) -> str:
    """Escape anything for HTML text or a quoted attribute."""
    return escape(value if isinstance(value, str) else str(value), quote=True)


def shown(value: Any) -> str:
    """User text (an action's error or result, a name, an operator's why) as a page shows
    it: its lines kept, a control or a bidi-override character in each written as its
    escape (an override reversed the rest of its cell), then escaped. A form's value
    goes back as it is (:func:`e`)."""
    return e(printable_lines(value if isinstance(value, str) else str(value)))


def shown_id(workflow_id: str) -> str:
    """A workflow id as text of a page: as ``herder ls`` prints it, a line break, a control
    or a bidi-override character written as its escape (an override reversed the rest of
    its cell: one id could pass for another), then escaped."""
    return e(printable(workflow_id))


def when(t: float | None) -> str:
    """A local date and time, to the second (as seconds if it is no date)."""
    return "" if t is None else shown_time(t)


SHOWN = 4000
"""Characters of an input or a result a workflow's page shows (``herder show --json``
prints it whole): one big result must not make a page of tens of MB."""


def pretty(value: Any) -> str:
    """Stored data as indented JSON as ``herder show --json`` writes it (anything JSON
    cannot say, a bytes map key too, as its repr), clipped to :data:`SHOWN` characters."""
    text = json.dumps(json_safe(value), indent=2, default=repr, ensure_ascii=False)
    return clipped(text, SHOWN, "herder show ID --json")


def layout(title: str, body: str, *, store: str, active: str, csrf: str | None) -> str:
    """A whole page: navigation, live counters, ``body``."""
    nav = "".join(
        f'<a href="{href}" class="{"on" if key == active else ""}">{label}</a>'
        for key, href, label in (
            ("workflows", "/", "Workflows"),
            ("inbox", "/inbox", "Inbox"),
            ("agents", "/agents", "Agents"),
        )
    )
    mode = (
        '<span class="mode rw">operator</span>'
        if csrf
        else '<span class="mode ro" title="open the URL printed at start (with its token) '
        'to act">read-only</span>'
    )
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        '<meta name=viewport content="width=device-width, initial-scale=1">'
        f"<title>{e(title)} · herder</title>"
        '<link rel=icon href="data:,"><link rel=stylesheet href="/static/console.css">'
        "</head><body>"
        f'<header><span class="brand">herder</span><nav>{nav}</nav>'
        f'<span class="store" title="the store">{e(store)}</span>{mode}</header>'
        '<section id="counters" aria-live="polite"><span class="muted">counting…</span></section>'
        f"<main>{body}</main>"
        '<script src="/static/console.js"></script></body></html>'
    )


def error_cell(error: str | None, limit: int) -> str:
    """A table cell with an error, cut to ``limit`` characters (all of it on hover)."""
    text = error or ""
    if len(text) <= limit:
        return f'<td class="err">{shown(text)}</td>'
    return f'<td class="err" title="{shown(text)}">{shown(text[: limit - 1])}…</td>'


def state_badge(state: Any) -> str:
    """A workflow or step state as a coloured label."""
    return f'<span class="badge s-{e(str(state).lower())}">{e(state)}</span>'


def workflows_page(page: Page, filters: Filters, query: dict[str, str], note: str = "") -> str:
    """The list of workflows with its filter form and the link to older ones."""
    options = "".join(
        f'<option value="{s}"{" selected" if filters.state is s else ""}>{s}</option>'
        for s in WorkflowState
    )
    form = (
        '<form class="filters" method=get action="/">'
        f'<label>state <select name=state><option value="">any</option>{options}</select></label>'
        f'<label>name <input name=name value="{e(filters.name or "")}" size=14></label>'
        "<label>updated since <input type=datetime-local name=since "
        f'value="{e(query.get("since", ""))}"></label>'
        f'<label>until <input type=datetime-local name=until value="{e(query.get("until", ""))}">'
        '</label><button type=submit>Filter</button> <a href="/">clear</a></form>'
    )
    rows = "".join(_workflow_row(s) for s in page.rows)
    table = (
        '<table class="list" id="workflows"><thead><tr><th>id</th><th>workflow</th>'
        "<th>state</th><th>steps done</th><th>created</th><th>updated</th><th>error</th>"
        f"</tr></thead><tbody>{rows}</tbody></table>"
        if page.rows
        else '<p class="empty">No workflow matches.</p>'
    )
    more = ""
    if page.next_cursor:
        link = "/?" + urlencode({**query, "cursor": page.next_cursor})
        looked = (
            f"looked at {page.examined} workflows back to {when(page.oldest_examined)}; "
            if page.budget_spent
            else ""
        )
        more = f'<p class="more">{e(looked)}<a id="older" href="{e(link)}">older →</a></p>'
    return f"<h1>Workflows</h1>{form}{note}{skipped(page.corrupt)}{table}{more}"


def skipped(corrupt: Iterable[Exception]) -> str:
    """A warning naming each damaged record a view left out (``herder check`` says more)."""
    return "".join(f'<p class="warn">skipped: {shown(c)}</p>' for c in corrupt)


def _workflow_row(s: WorkflowStatus) -> str:
    done = sum(1 for st in s.steps.values() if st.state is StepState.SUCCEEDED)
    link = f"/workflow?{urlencode({'id': s.id})}"
    return (
        f'<tr><td><a href="{e(link)}">{shown_id(s.id)}</a></td><td>{shown(s.name)}@{s.version}</td>'
        f"<td>{state_badge(s.state)}</td><td>{done}/{len(s.steps)}</td>"
        f'<td class="t">{when(s.created)}</td><td class="t">{when(s.updated)}</td>'
        f"{error_cell(s.error, 90)}</tr>"
    )


def action_form(workflow_id: str, state: WorkflowState, csrf: str | None, step: str | None) -> str:
    """The operator's buttons for one workflow in ``state`` (only with the token: else a
    hint): only the actions that apply to a workflow in ``state`` (OPERATOR_ACTIONS). The
    form sends the state (and a skip the ``step``) it was offered for: an action decided
    on a page read before the workflow moved on is refused, not applied to what it is
    now."""
    if csrf is None:
        return '<p class="hint">Read-only: open the URL with the token to act.</p>'
    buttons = "".join(
        f'<button name=action value="{a}" title="{e(text)}">{a}</button>'
        for a, text in ACTIONS.items()
        if operator_refusal(workflow_id, state, a) is None
    )
    hidden_step = f'<input type=hidden name=step value="{e(step)}">' if step else ""
    # The id goes in the address, percent-encoded: a browser sends each line break of a
    # form's field as CRLF (an id "a\nb" came as "a\r\nb": "no workflow with id").
    target = "/act?" + urlencode({"id": workflow_id})
    return (
        f'<form class="act" method=post action="{e(target)}">'
        f'<input type=hidden name=csrf value="{e(csrf)}">'
        f'<input type=hidden name=state value="{e(state)}">{hidden_step}'
        '<input name=who placeholder="who" size=8 required>'
        '<input name=why placeholder="why (kept in the history)" size=28 required>'
        f"{buttons}</form>"
    )


def queued_line(command: dict[str, Any]) -> str:
    """One queued command as a page lists it: id, action, step, who, when and why."""
    args = command.get("args")
    step = args.get("step") if isinstance(args, dict) else None
    created = command.get("created")
    return (
        f"#{e(command.get('id'))} {_told(command.get('action'), 40)}"
        + ("" if step is None else f" step {_told(step, 100)}")
        + f" by {_told(command.get('who'), 200)}, "
        f"{e(when(float(created) if isinstance(created, int | float) else None))}: "
        f"{_told(command.get('why'), 300)}"
    )


def _told(value: Any, limit: int) -> str:
    return shown(clipped(str(value), limit, "herder show ID, once it is applied,"))


def inbox_page(
    items: Sequence[InboxItem],
    csrf: str | None,
    corrupt: Sequence[Exception] = (),
    total: int | None = None,
    queued: Mapping[str, list[dict[str, Any]]] = MappingProxyType({}),
) -> str:
    """The workflows waiting for an operator (parked), each with the actions and the
    commands ``queued`` for it (not applied yet), and the damaged records left out
    (``corrupt``), named; ``total``: how many are parked, when ``items`` are only the
    oldest of them."""
    parked = WorkflowState.NEEDS_ATTENTION
    rows = "".join(
        f'<tr><td><a href="{e("/workflow?" + urlencode({"id": i.id}))}">{shown_id(i.id)}</a></td>'
        f"<td>{shown(i.name)}@{i.version}</td><td>{shown(i.step or '')}</td>"
        f"<td>{state_badge(i.step_state) if i.step_state else ''}</td><td>{i.attempts}</td>"
        f"{error_cell(i.step_error or i.error, 120)}"
        f"<td>{when(i.since)}</td><td>{_waiting(queued.get(i.id, []))}"
        f"{action_form(i.id, parked, csrf, i.step)}</td></tr>"
        for i in items
    )
    head = "<h1>Inbox</h1>" + skipped(corrupt)
    if total is not None and total > len(items):
        everyone = "/?" + urlencode({"state": str(parked)})
        head += (
            f'<p class="warn" id="more">The {len(items)} oldest of the {total} waiting for an '
            f'operator: act on these and reload for the next, or see them all in <a href="'
            f'{e(everyone)}">the list</a> (or with <code>herder inbox</code>).</p>'
        )
    if not rows:
        other = " else" if corrupt else ""  # (a damaged one may be parked)
        return f"{head}<p class=empty>Nothing{other} waits for an operator.</p>"
    return (
        f'{head}<table class="list" id="inbox"><thead><tr><th>id</th><th>workflow</th>'
        "<th>step</th><th>state</th><th>attempts</th><th>error</th><th>since</th>"
        f"<th>act</th></tr></thead><tbody>{rows}</tbody></table>"
    )


def _waiting(commands: list[dict[str, Any]]) -> str:
    """A parked workflow's queued commands, in its inbox row (the first of them)."""
    if not commands:
        return ""
    more = f" and {len(commands) - 1} more" if len(commands) > 1 else ""
    return (
        f'<p class="warn queued">queued, not applied yet: {queued_line(commands[0])}{more}'
        "; an action sent now comes after</p>"
    )


def outcome_page(action: str, workflow_id: str, outcome: str, ok: bool | None) -> str:
    """What became of an operator action sent from the console."""
    css = {True: "ok", False: "bad", None: "queued"}[ok]
    link = "/workflow?" + urlencode({"id": workflow_id})
    return (
        f'<h1>{e(action)} {shown_id(workflow_id)}</h1><p class="outcome {css}" id="outcome">'
        f'{shown(outcome)}</p><p><a href="{e(link)}">back to the workflow</a> · '
        '<a href="/inbox">inbox</a></p>'
    )


_FACT_COLUMNS = (
    "concurrency",
    "adaptive",
    "limit",
    "instances",
    "busy",
    "queued",
    "ahead",
    "rate_per_second",
    "throttled",
    "breaker",
    "failures",
    "opens",
    "crashes",
    "lost",
)


def agents_page(
    stats: dict[str, Any],
    agents: dict[str, list[str]],
    facts: dict[str, Any] | None = None,
    now: float = 0.0,
) -> str:
    """Agents: who uses them (definitions), their protection state (stored records) and the
    live facts the running runtime last published (concurrency, instances, queue, limits)."""
    live = (facts or {}).get("agents", {})
    stored = stats.get("resources", {})
    names = sorted(set(agents) | set(stored) | set(live))
    rows = "".join(
        f"<tr><td>{shown(n)}</td><td>{shown(', '.join(agents.get(n, [])))}</td>"
        + "".join(
            f"<td>{shown({**stored.get(n, {}), **live.get(n, {})}.get(c, ''))}</td>"
            for c in _FACT_COLUMNS
        )
        + "</tr>"
        for n in names
    )
    head = "".join(f"<th>{c}</th>" for c in ("agent", "used by", *_FACT_COLUMNS))
    return (
        "<h1>Agents</h1>"
        + _freshness(facts, now, stats.get("running"))
        + f'<table class="list" id="agents"><thead><tr>{head}</tr></thead><tbody>{rows}</tbody>'
        "</table>"
    )


def _freshness(facts: dict[str, Any] | None, now: float, running: Any) -> str:
    """How old the published facts are, and whether a runtime still publishes them."""
    if facts is None:
        return (
            '<p class="hint" id="facts-age">No runtime has published live facts into this '
            "store yet: concurrency, instances and queues show once one runs. Breaker and "
            "crash counters below are from the store.</p>"
        )
    at = float(facts.get("at", 0.0))
    age = max(0.0, now - at)
    shown = f"published {when(at)} ({age:.0f} s ago)"
    total, kept = facts.get("total"), len(facts.get("agents", {}))  # (total: not in older)
    more = f"; the {kept} busiest of {total:,} agents" if _more(total, kept) else ""
    if age > FACTS_STALE or running is False:
        why = (
            "No runtime holds the store"
            if running is False
            else f"No runtime has published them for over {FACTS_STALE:.0f} s (a running "
            f"one does at least every {FACTS_REFRESH:.0f} s)"
        )
        return (
            f'<p class="warn stale" id="facts-age">Stale: live facts {shown}{more}. {why}: '
            "they are the last known, not the current ones.</p>"
        )
    return (
        f'<p class="hint" id="facts-age">Live facts {shown}{more}, by the running runtime '
        f"(written when they change, at least every {FACTS_REFRESH:.0f} s).</p>"
    )


def schedules_section(schedules: Sequence[Any], total: int, more: str | None = None) -> str:
    """A page of the periodic schedules (``herder schedules``' rows), if the store has
    any: of ``total``, with a link to the next page (``more``) if there is one."""
    if not schedules:
        return ""
    shown_of = ""
    if total > len(schedules) or more:
        link = f' <a id="more-schedules" href="{e(more)}">next →</a>' if more else ""
        shown_of = f'<p class="more">{len(schedules)} of {total} schedules, by name.{link}</p>'
    rows = "".join(
        f"<tr><td>{shown(s.name)}</td><td>{shown(s.workflow)}</td><td>{e(s.cadence)}</td>"
        f"<td>{e(s.overlap)}/{e(s.catch_up)}</td>"
        f"<td>{'paused' if s.paused else when(s.next_at) or '-'}</td>"
        f"<td>{s.fired}</td><td>{s.skipped}</td><td>"
        + (
            f'<a href="{e("/workflow?" + urlencode({"id": s.last_id}))}">{shown_id(s.last_id)}</a>'
            if s.last_id
            else ""
        )
        + "</td></tr>"
        for s in schedules
    )
    head = "".join(
        f"<th>{c}</th>"
        for c in (
            "schedule",
            "workflow",
            "when",
            "overlap/catch-up",
            "next",
            "fired",
            "skipped",
            "last workflow",
        )
    )
    return (
        f'<h2>Schedules</h2><table class="list" id="schedules"><thead><tr>{head}</tr>'
        f"</thead><tbody>{rows}</tbody></table>{shown_of}"
    )


def error_page(title: str, message: str, hint: str) -> str:
    """A page for what went wrong, and what to do about it (no traceback)."""
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        f'<title>{e(title)} · herder</title><link rel=icon href="data:,">'
        '<link rel=stylesheet href="/static/console.css">'
        f'</head><body><main class="problem"><h1>{e(title)}</h1><p id="problem">{shown(message)}'
        f"</p><p>{e(hint)}</p></main></body></html>"
    )
