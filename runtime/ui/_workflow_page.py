"""One workflow's console page: summary, timeline, steps, input, and its history a
window at a time.

A workflow retried for ever has a history without end (an event and a traceback of
about 1.5 KB per attempt): the page shows the :data:`HISTORY_PAGE` newest events of it,
and their errors, with a link to the ones before them (``?id=...&before=SEQ``), so every
event is reachable and a page stays a few hundred KB however long the story. The
timeline is drawn from the :data:`TIMELINE_EVENTS` newest events (see :mod:`._timeline`
for how it stays small). Only those events and the window's are read (:func:`read_page`):
the page of a workflow retried 20,000 times read and decoded its whole history, 0.3 to
0.45 s and a 43 MB peak of Python memory a request (0.05 s and 6 MB now, at any length).
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from herder.actors import UnknownWorkflow
from herder.actors.engine import STUCK, ended_for_good, stuck_step
from herder.runtime._console import attempt_named, clipped
from herder.runtime._inspect import QUEUED_LOOK, _Reader, _story
from herder.runtime._status import WorkflowStatus
from herder.runtime.ui import _timeline
from herder.runtime.ui._pages import (
    action_form,
    e,
    pretty,
    queued_line,
    shown,
    shown_id,
    state_badge,
    when,
)
from herder.store import (
    InvalidInput,
    StepRecord,
    StepState,
    Store,
    WorkflowState,
    history_seqs,
    pending_commands,
    read_history,
)

HISTORY_PAGE = 100
"""History events a workflow's page lists (with their errors and tracebacks), the
newest of them (oldest first, as ``herder show`` lists them): one workflow retried
20,000 times made a page of 43 MB."""

TIMELINE_EVENTS = 4000
"""History events the timeline is drawn from, the newest: a longer history's picture
begins with the first of them (what each step was then is the ``from`` of its first
event, or its state now if it has none)."""


@dataclass(frozen=True, slots=True)
class Story:
    """What a workflow's page shows of its history: the window of the history table
    (``window``, after ``start`` events, of ``total``), the sequence of the event the
    window after it ends before (``newer``; None when that one is the newest), and the
    events the timeline is drawn from (``timeline``, the newest)."""

    window: list[dict[str, Any]]
    start: int
    total: int
    newer: int | None
    timeline: list[dict[str, Any]]


def read_page(
    store: Store, workflow_id: str, before: int | None
) -> tuple[WorkflowStatus, Story, str | None]:
    """A workflow's status, what its page shows of its history and the step its skip
    names (:func:`skip_step`), read in one transaction (they tell the same story);
    UnknownWorkflow if there is none. Only the keys of the whole history are read, and
    the events shown."""

    def read() -> tuple[WorkflowStatus, Story, str | None]:
        reader = _Reader(store)
        record = store.get_workflow(workflow_id)
        if record is None:
            raise UnknownWorkflow(f"no workflow with id {workflow_id!r} in {store.path}")
        steps = reader.steps(record)
        status = WorkflowStatus.from_records(record, steps)
        # One pass over the keys, keeping a window's worth (not a list of them all: a
        # history retried for ever has millions): the last events before ``before``, the
        # ones after it, and the newest, which the timeline draws.
        total = stop = 0
        window: deque[int] = deque(maxlen=HISTORY_PAGE)  # (the last before ``before``)
        after: list[int] = []  # (from ``before`` on, a window and one more)
        newest: deque[int] = deque(maxlen=TIMELINE_EVENTS)
        for seq in history_seqs(store, workflow_id):
            total += 1
            newest.append(seq)
            if before is None or seq < before:
                stop += 1
                window.append(seq)
            elif len(after) <= HISTORY_PAGE:
                after.append(seq)
        timeline = read_history(store, workflow_id, since=newest[0]) if newest else []
        if not after and len(timeline) >= len(window):  # (the newest: read already)
            events = timeline[len(timeline) - len(window) :]
        else:
            upto = after[0] if after else None
            since = window[0] if window else upto
            events = read_history(store, workflow_id, since=since or 0, before=upto)
        newer = after[HISTORY_PAGE] if len(after) > HISTORY_PAGE else None
        story = Story(events, stop - len(window), total, newer, timeline)
        return status, story, skip_step(record.state, steps)

    return store.together(read)


def skip_step(state: WorkflowState, steps: list[StepRecord]) -> str | None:
    """The step a skip from the page names: the one that waited for a decision when the
    page was read (a parked workflow's is the inbox's; else a compensation that failed,
    or a running workflow's one step under way), so that a skip sent once the workflow
    moved on to another step is refused, not applied to a step the operator never saw
    (a page shown while the undo of 'b' had failed skipped 'a', left undone, once a
    retry got past 'b'). None where the runtime asks for a step (several under way)."""
    if state is not WorkflowState.NEEDS_ATTENTION:
        undoing = [st.name for st in steps if st.state is StepState.COMPENSATING]
        if undoing:
            return undoing[0] if len(undoing) == 1 else None
        if state is WorkflowState.RUNNING:
            under_way = [st.name for st in steps if st.state in STUCK]
            return under_way[0] if len(under_way) == 1 else None
    stuck = stuck_step(steps)
    return None if stuck is None else stuck.name


QUEUED_SHOWN = 10
"""Queued commands of one workflow its page lists (it says how many more there are)."""


def queued(store: Store) -> tuple[dict[str, list[dict[str, Any]]], bool]:
    """The commands queued and not applied yet, oldest first, by workflow id, among the
    :data:`QUEUED_LOOK` oldest queued; and whether more are queued than were looked at."""
    looked = pending_commands(store, corrupt=[], most=QUEUED_LOOK)
    by_id: dict[str, list[dict[str, Any]]] = {}
    for command in looked:
        by_id.setdefault(str(command.get("workflow_id")), []).append(command)
    return by_id, len(looked) >= QUEUED_LOOK


def parse_before(text: str | None) -> int | None:
    """The ``before`` of a workflow page's address: the sequence of the event its window
    of the history ends before (None: the newest events)."""
    if text is None or text == "":
        return None
    if not (text.isascii() and text.isdigit()) or len(text) > 20:
        raise InvalidInput(
            f"before={text[:40]!r} is not an event's sequence number; follow the page's "
            "links to older events, or drop before= for the newest ones"
        )
    return int(text)


def workflow_page(
    status: WorkflowStatus,
    story: Story,
    now: float,
    csrf: str | None,
    *,
    step: str | None = None,
    queued: tuple[list[dict[str, Any]], bool] = ([], False),
) -> str:
    """One workflow: summary, its commands ``queued`` (:func:`queued_for`), timeline,
    steps, input, and the window of its history (and of its errors) that ``story``
    holds; a skip names ``step``."""
    final = ended_for_good(status.state)  # (no action applies any more)
    end = status.updated if final else now
    svg, drawn = _picture(status, story, end)
    legend = "".join(
        f'<span class="key"><i class="seg {css}"></i>{label}</span>'
        for css, label in _timeline.LEGEND
    )
    steps = "".join(
        f"<tr><td>{shown(st.name)}</td><td>{state_badge(st.state)}</td><td>{st.attempt}</td>"
        f"<td>{st.compensation_attempts}</td>"
        f"<td><pre>{shown(pretty(st.result)) if st.result is not None else ''}</pre></td>"
        f'<td class="err">{shown(st.error or "")}</td></tr>'
        for st in status.steps.values()
    )
    actions = "" if final else action_form(status.id, status.state, csrf, step)
    return (
        f"<h1>{shown_id(status.id)} {state_badge(status.state)}</h1>"
        f'<p class="meta">{shown(status.name)}@{status.version} · created {when(status.created)}'
        f" · updated {when(status.updated)} · priority {status.priority}</p>"
        + (f'<p class="err">{shown(status.error)}</p>' if status.error else "")
        + _queued(*queued)
        + actions
        + f'<h2>Timeline</h2>{drawn}<div class="legend">{legend}</div>'
        f'<div class="svgbox">{svg}</div>'
        '<h2>Steps</h2><table class="list" id="steps"><thead><tr><th>step</th><th>state</th>'
        "<th>attempts</th><th>undo attempts</th><th>result</th><th>error</th></tr></thead>"
        f"<tbody>{steps}</tbody></table>"
        f"<h2>Input</h2><pre>{shown(pretty(status.input))}</pre>" + _history(status.id, story)
    )


def _queued(commands: list[dict[str, Any]], more: bool) -> str:
    """The workflow's queued commands, which a runtime has not applied yet: an operator
    who sees only the workflow's state may send another (two decisions, one unseen)."""
    if not commands:
        return (
            f'<p class="hint" id="queued">More than {QUEUED_LOOK:,} operator commands are '
            "queued in this store (no runtime applies them): this page did not look "
            "among the newer ones for this workflow's.</p>"
            if more
            else ""
        )
    items = "".join(f"<li>{queued_line(c)}</li>" for c in commands[:QUEUED_SHOWN])
    rest = len(commands) - QUEUED_SHOWN
    others = f"<li>and {rest} more</li>" if rest > 0 else ""
    return (
        f'<div class="warn" id="queued"><p>Queued for this workflow and not applied yet: '
        "the runtime holding the store applies each at its next sweep (if it has this "
        "workflow's definition), or the next runtime to open it does, in this order, each "
        "refused if it no longer applies then; an action sent now comes after them.</p>"
        f"<ul>{items}{others}</ul></div>"
    )


def _picture(status: WorkflowStatus, story: Story, end: float) -> tuple[str, str]:
    """The timeline's SVG, and a note saying which events it shows when not all."""
    events, steps = story.timeline, list(status.steps)
    if len(events) >= story.total:
        return _timeline.render(steps, events, status.created, end), ""
    begin = next((ev["t"] for ev in events if isinstance(ev.get("t"), int | float)), end)
    start: dict[str, tuple[str, int]] = {}
    for ev in events:  # (each step as its first event found it)
        if ev.get("kind") == "step" and ev.get("step") is not None:
            attempt = ev.get("attempt")
            state = (str(ev.get("from")), attempt if isinstance(attempt, int) else 0)
            start.setdefault(str(ev["step"]), state)
    for st in status.steps.values():  # (no event of it since: as it is now)
        start.setdefault(st.name, (str(st.state), st.attempt))
    note = (
        f'<p class="more">The newest {len(events):,} of {story.total:,} events, since '
        f"{e(when(begin))}; the history below lists every one.</p>"
    )
    return _timeline.render(steps, events, float(begin), end, start), note


def _history(workflow_id: str, story: Story) -> str:
    """The errors and the history table of the story's window, with the links to the
    events before and after it."""
    window, start, total = story.window, story.start, story.total
    stop = start + len(window)
    failures = "".join(_failure(ev) for ev in window if ev.get("error"))
    story_rows = "".join(
        "<tr>" + "".join(f"<td>{shown(_cell(c))}</td>" for c in row) + "</tr>"
        for row in _story(window)
    )
    links = []
    if start > 0:
        older = urlencode({"id": workflow_id, "before": window[0]["seq"]})
        links.append(f'<a id="older" href="/workflow?{e(older)}">← {start} older events</a>')
    if stop < total:
        newer = {"id": workflow_id} | ({"before": story.newer} if story.newer is not None else {})
        links.append(f'<a id="newer" href="/workflow?{e(urlencode(newer))}">newer events →</a>')
        newest = urlencode({"id": workflow_id})
        links.append(f'<a id="newest" href="/workflow?{e(newest)}">newest</a>')
    which = (
        f"events {start + 1} to {stop} of {total}"
        if window
        else f"no event before this one; {total} in all"
    )
    nav = f'<p class="more">{e(which)} · {" · ".join(links)}</p>' if links else ""
    below = re.sub(r' id="\w+"', "", nav)  # (the same links under the table: ids once)
    errors = f'<h2>Errors</h2><ul class="errors">{failures}</ul>' if failures else ""
    return (
        errors
        + f"<h2>History</h2>{nav}"
        + '<table class="list" id="history"><thead><tr><th>when</th>'
        "<th>what</th><th>change</th><th>attempt</th><th>details</th></tr></thead>"
        f"<tbody>{story_rows}</tbody></table>{below}"
    )


CELL = 300
"""Characters of a history row's cell the page shows: an error is up to 8 KB, and the
Errors list above shows it whole."""


def _cell(value: Any) -> str:
    return clipped(str(value), CELL, "the Errors list or `herder show ID`")


def _failure(ev: dict[str, Any]) -> str:
    """One stored error of the window, with its traceback behind a toggle."""
    trace = ev.get("traceback")
    return (
        f"<li><b>{e(when(ev.get('t')))}</b> {shown(ev.get('step') or 'workflow')} "
        f"{e(attempt_named(ev))}: <pre>{shown(ev['error'])}</pre>"
        + (
            f'<details class="tb"><summary>traceback</summary><pre>{shown(trace)}</pre></details>'
            if isinstance(trace, str)
            else ""
        )
        + "</li>"
    )
