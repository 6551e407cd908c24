"""One workflow's console page: summary, timeline, steps, input, and its history a
window at a time.

A workflow retried for ever has a history without end (an event and a traceback of
about 1.5 KB per attempt): the page shows the :data:`HISTORY_PAGE` newest events of it,
and their errors, with a link to the ones before them (``?id=...&before=SEQ``), so every
event is reachable and a page stays a few hundred KB however long the story. The
timeline is drawn from the whole history (see :mod:`._timeline` for how it stays small).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlencode

from herder.actors.engine import ended_for_good
from herder.runtime._console import clipped
from herder.runtime._inspect import _story
from herder.runtime._status import WorkflowStatus
from herder.runtime.ui import _timeline
from herder.runtime.ui._pages import action_form, e, pretty, shown_id, state_badge, when
from herder.store import InvalidInput

HISTORY_PAGE = 100
"""History events a workflow's page lists (with their errors and tracebacks), the
newest of them (oldest first, as ``herder show`` lists them): one workflow retried
20,000 times made a page of 43 MB."""


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
    history: Sequence[dict[str, Any]],
    now: float,
    csrf: str | None,
    before: int | None = None,
) -> str:
    """One workflow: summary, timeline, steps, input, and the window of its history (and
    of its errors) that ends before the event ``before`` (the newest when None)."""
    final = ended_for_good(status.state)  # (no action applies any more)
    end = status.updated if final else now
    svg = _timeline.render(list(status.steps), history, status.created, end)
    legend = "".join(
        f'<span class="key"><i class="seg {css}"></i>{label}</span>'
        for css, label in _timeline.LEGEND
    )
    steps = "".join(
        f"<tr><td>{e(st.name)}</td><td>{state_badge(st.state)}</td><td>{st.attempt}</td>"
        f"<td>{st.compensation_attempts}</td>"
        f"<td><pre>{e(pretty(st.result)) if st.result is not None else ''}</pre></td>"
        f'<td class="err">{e(st.error or "")}</td></tr>'
        for st in status.steps.values()
    )
    actions = "" if final else action_form(status.id, status.state, csrf, None)
    return (
        f"<h1>{shown_id(status.id)} {state_badge(status.state)}</h1>"
        f'<p class="meta">{e(status.name)}@{status.version} · created {when(status.created)}'
        f" · updated {when(status.updated)} · priority {status.priority}</p>"
        + (f'<p class="err">{e(status.error)}</p>' if status.error else "")
        + actions
        + f'<h2>Timeline</h2><div class="legend">{legend}</div>'
        f'<div class="svgbox">{svg}</div>'
        '<h2>Steps</h2><table class="list" id="steps"><thead><tr><th>step</th><th>state</th>'
        "<th>attempts</th><th>undo attempts</th><th>result</th><th>error</th></tr></thead>"
        f"<tbody>{steps}</tbody></table>"
        f"<h2>Input</h2><pre>{e(pretty(status.input))}</pre>" + _history(status.id, history, before)
    )


def _history(workflow_id: str, history: Sequence[dict[str, Any]], before: int | None) -> str:
    """The errors and the history table of the window of ``history`` ending before the
    event ``before``, with the links to the events before and after it."""
    stop = len(history) if before is None else _index(history, before)
    start = max(0, stop - HISTORY_PAGE)
    window = list(history[start:stop])
    failures = "".join(_failure(ev) for ev in window if ev.get("error"))
    story = "".join(
        "<tr>" + "".join(f"<td>{e(_cell(c))}</td>" for c in row) + "</tr>" for row in _story(window)
    )
    links = []
    if start > 0:
        older = urlencode({"id": workflow_id, "before": window[0]["seq"]})
        links.append(f'<a id="older" href="/workflow?{e(older)}">← {start} older events</a>')
    if stop < len(history):
        end = stop + HISTORY_PAGE  # (the window after this one; the newest: no before)
        newer = {"id": workflow_id} | (
            {"before": history[end]["seq"]} if end < len(history) else {}
        )
        links.append(f'<a id="newer" href="/workflow?{e(urlencode(newer))}">newer events →</a>')
        newest = urlencode({"id": workflow_id})
        links.append(f'<a id="newest" href="/workflow?{e(newest)}">newest</a>')
    shown = (
        f"events {start + 1} to {stop} of {len(history)}"
        if window
        else f"no event before this one; {len(history)} in all"
    )
    nav = f'<p class="more">{e(shown)} · {" · ".join(links)}</p>' if links else ""
    below = re.sub(r' id="\w+"', "", nav)  # (the same links under the table: ids once)
    errors = f'<h2>Errors</h2><ul class="errors">{failures}</ul>' if failures else ""
    return (
        errors
        + f"<h2>History</h2>{nav}"
        + '<table class="list" id="history"><thead><tr><th>when</th>'
        "<th>what</th><th>change</th><th>attempt</th><th>details</th></tr></thead>"
        f"<tbody>{story}</tbody></table>{below}"
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
        f"<li><b>{e(when(ev.get('t')))}</b> {e(ev.get('step') or 'workflow')} "
        f"attempt {e(ev.get('attempt') or '')}: <pre>{e(ev['error'])}</pre>"
        + (
            f'<details class="tb"><summary>traceback</summary><pre>{e(trace)}</pre></details>'
            if isinstance(trace, str)
            else ""
        )
        + "</li>"
    )


def _index(history: Sequence[dict[str, Any]], before: int) -> int:
    """How many events come before the one of sequence ``before`` (oldest first)."""
    low, high = 0, len(history)
    while low < high:
        mid = (low + high) // 2
        if history[mid]["seq"] < before:
            low = mid + 1
        else:
            high = mid
    return low
