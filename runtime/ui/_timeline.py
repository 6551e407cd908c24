"""A workflow's timeline as an SVG picture: its steps against time, from its history.

One row per step (plan order). Each stretch of a step's life between two history events
is a *segment*: an attempt (a bar coloured by how it ended: succeeded, retried, failed,
handed to ``complete_later``, left unknown, still running), a wait (a retry's backoff, a
delay, a ``complete_later`` wait, a step pending behind its dependencies: a thin grey
bar), a probe's unknown stretch, or a compensation. Probes are diamonds on their row;
operator actions are dashed lines across every row, labelled with the action and who.
Every value comes from the store and is escaped (user text as ``_pages.shown`` writes
it); each mark has a ``<title>`` tooltip.

A picture is 960 pixels wide whatever the history's length: the stretches of one row
and colour that cannot be told apart (each narrower than the 2 pixels a bar is drawn at
least, less than 2 pixels from the last) are drawn as one bar saying how many it stands
for, and a probe on the pixel of the last one drawn is not drawn again. So the picture
of a workflow retried 20,000 times is tens of KB, not 12 MB (the page's history lists
every event).
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from html import escape
from typing import Any

from herder.actors.engine import BUSY
from herder.runtime._console import clipped
from herder.runtime.ui._pages import shown

_FINAL_STEP = frozenset({"SUCCEEDED", "FAILED", "COMPENSATED"})
_WAITS = frozenset({"PENDING", "RETRY_WAIT", "WAITING", "PARKED", "UNDO_WAIT"})
_ACTIVE = frozenset(str(s) for s in BUSY) | {"UNDO_WAIT"}  # (a shown state only)
_OUTCOME = {  # how an attempt ended (the state it went to) -> its CSS class
    "SUCCEEDED": "ok",
    "COMPENSATED": "undone",
    "FAILED": "failed",
    "RETRY_WAIT": "retried",
    "DISPATCHED": "retried",  # lapsed and dispatched again at once
    "COMPENSATING": "retried",
    "WAITING": "handed",
    "UNKNOWN": "unknown",
    "NEEDS_ATTENTION": "failed",
}
LEGEND = (
    ("ok", "succeeded"),
    ("retried", "failed, retried"),
    ("failed", "failed"),
    ("running", "running"),
    ("handed", "complete_later"),
    ("unknown", "unknown (probed)"),
    ("undo", "compensating"),
    ("undone", "compensated"),
    ("wait", "waiting (backoff, delay)"),
    ("parked", "waiting for an operator"),
    ("pending", "pending"),
)

WIDTH, LABEL, ROW, TOP = 960, 150, 28, 34
_NARROW = 2.0  # pixels: the least width a bar is drawn at
TIP = 300  # characters of an error a tooltip shows


@dataclass(frozen=True, slots=True)
class Segment:
    """One stretch of a step's life: ``state`` from ``start`` to ``end``."""

    step: str
    state: str
    start: float
    end: float
    attempt: int
    ended_in: str | None  # the state it went to; None while it lasts
    error: str | None

    @property
    def css(self) -> str:
        """The CSS class the segment is drawn with."""
        if self.state == "PENDING":
            return "pending"
        if self.state == "PARKED":
            return "parked"
        if self.state in _WAITS:
            return "wait"
        if self.state == "UNKNOWN":
            return "unknown"
        if self.ended_in is None:
            return "undo" if self.state == "COMPENSATING" else "running"
        if self.state == "COMPENSATING" and self.ended_in != "COMPENSATED":
            return "undo" if self.ended_in in _WAITS else "failed"
        return _OUTCOME.get(self.ended_in, "retried")


def segments(
    steps: Sequence[str],
    history: Iterable[dict[str, Any]],
    created: float,
    end: float,
    start: Mapping[str, tuple[str, int]] | None = None,
) -> list[Segment]:
    """Every segment of every step, from the history events (oldest first); ``start``:
    the (state, attempt) of steps at ``created`` other than PENDING and 0 (the picture
    of the newest events only begins with what they were then)."""
    first = start or {}
    current: dict[str, tuple[str, float, int]] = {}
    for name in steps:
        state, attempt = first.get(name, ("PENDING", 0))
        current[name] = (state, created, attempt)
    out: list[Segment] = []
    for e in history:
        if not isinstance(e.get("t"), int | float):
            continue
        if e.get("kind") == "workflow" and e.get("to") == "NEEDS_ATTENTION":
            out += _park(current, float(e["t"]), e.get("error"))
        if e.get("kind") != "step" or not _stepwise(e):  # (naming no step: no row is its)
            continue
        step = str(e.get("step"))
        state, since, attempt = current.get(step, (str(e.get("from")), created, 0))
        to = str(e.get("to"))
        new_attempt = e["attempt"] if isinstance(e.get("attempt"), int) else attempt
        if state not in _FINAL_STEP:
            out.append(Segment(step, state, since, float(e["t"]), attempt, to, e.get("error")))
        if state == to == "COMPENSATING" and new_attempt == attempt and e.get("error"):
            to = "UNDO_WAIT"  # a compensation attempt failed: it waits for its retry
        current[step] = (to, float(e["t"]), new_attempt)
    for step, (state, since, attempt) in current.items():
        if state not in _FINAL_STEP and end > since:
            out.append(Segment(step, state, since, end, attempt, None, None))
    return out


def _park(current: dict[str, tuple[str, float, int]], t: float, error: str | None) -> list[Segment]:
    """The workflow stopped for an operator at ``t``: what was running there failed, and
    each such step waits for the operator from then on (no step event says so)."""
    out = []
    for step, (state, since, attempt) in current.items():
        if state in _ACTIVE and since <= t:
            out.append(Segment(step, state, since, t, attempt, "NEEDS_ATTENTION", error))
            current[step] = ("PARKED", t, attempt)
    return out


def render(
    steps: Sequence[str],
    history: Sequence[dict[str, Any]],
    created: float,
    end: float,
    start: Mapping[str, tuple[str, int]] | None = None,
) -> str:
    """The SVG markup of a workflow's timeline (``end``: its last event, or now if it runs;
    ``created`` and ``start``: where it begins, as for :func:`segments`)."""
    end = max(end, created + 0.001, *(e["t"] for e in history if _timed(e)))
    rows = list(steps) + sorted({str(e.get("step")) for e in history if _stepwise(e)} - set(steps))
    height = TOP + ROW * len(rows) + 16
    scale = (WIDTH - LABEL - 12) / (end - created)

    def x(t: float) -> float:
        return LABEL + (t - created) * scale

    parts = [
        f'<svg class="timeline" xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" '
        f'height="{height}" viewBox="0 0 {WIDTH} {height}" role="img" '
        'aria-label="timeline of the workflow\'s steps">'
    ]
    parts += _axis(created, end, x, height)
    index = {name: i for i, name in enumerate(rows)}
    for name, i in index.items():
        y = TOP + ROW * i
        parts.append(f'<text class="step-label" x="8" y="{y + 17}">{shown(name[:22])}</text>')
        parts.append(
            f'<line class="row" x1="{LABEL}" x2="{WIDTH - 12}" y1="{y + 24}" y2="{y + 24}"/>'
        )
    for seg, x0, x1, merged in _merged(segments(rows, history, created, end, start), x):
        parts.append(_bar(seg, x0, x1, TOP + ROW * index[seg.step], merged))
    probed: dict[str, int] = {}  # the pixel of each row's last probe drawn
    for e in history:
        if e.get("kind") == "probe" and _timed(e) and str(e.get("step")) in index:
            row, cx = str(e.get("step")), x(e["t"])
            if probed.get(row) != int(cx):
                probed[row] = int(cx)
                parts.append(_probe(e, cx, TOP + ROW * index[row]))
        elif e.get("kind") == "operator" and _timed(e):
            parts.append(_operator(e, x(e["t"]), height))
    parts.append("</svg>")
    return "\n".join(parts)


def _merged(segs: Iterable[Segment], x: Any) -> Iterable[tuple[Segment, float, float, int]]:
    """Each bar to draw: its (last) segment, its left and right edges in pixels, and how
    many segments it stands for; a segment narrower than :data:`_NARROW` pixels that starts
    less than that after the last bar of its row and colour joins that bar."""
    open_: dict[tuple[str, str], list[Any]] = {}  # (row, css) -> [seg, x0, x1, count]
    for seg in segs:
        x0, x1 = x(seg.start), x(seg.end)
        key = (seg.step, seg.css)
        bar = open_.get(key)
        if bar is not None and x1 - x0 < _NARROW and x0 - bar[2] < _NARROW:
            bar[0], bar[2], bar[3] = seg, max(bar[2], x1), bar[3] + 1
            continue
        if bar is not None:
            yield bar[0], bar[1], bar[2], bar[3]
        open_[key] = [seg, x0, x1, 1]
    for seg, x0, x1, count in open_.values():
        yield seg, x0, x1, count


def _timed(e: dict[str, Any]) -> bool:
    return isinstance(e.get("t"), int | float)


def _stepwise(e: dict[str, Any]) -> bool:
    return e.get("kind") in ("step", "probe") and e.get("step") is not None


def _bar(seg: Segment, x0: float, x1: float, y: float, merged: int = 1) -> str:
    width = max(2.0, x1 - x0)
    thin = seg.css in ("wait", "pending", "parked")
    top, h = (y + 11, 4) if seg.css == "pending" else (y + 10, 6) if thin else (y + 5, 16)
    what = (
        "waiting for an operator"
        if seg.css == "parked"
        else "waiting"
        if thin
        else (f"attempt {seg.attempt}")
    )
    state = "COMPENSATING, waiting to retry" if seg.state == "UNDO_WAIT" else seg.state
    tip = f"{seg.step}: {state} ({what}) {_span(seg.end - seg.start)}"
    if seg.ended_in:
        tip += f" -> {seg.ended_in}"
    if seg.error:
        tip += f"\n{clipped(str(seg.error), TIP, 'the history')}"  # (8 KB; str(): any type)
    if merged > 1:  # (too narrow to draw apart: the page's history lists each)
        tip = f"{merged} stretches in this bar (each too short to draw); the last:\n{tip}"
    return (
        f'<rect class="seg {seg.css}" data-step="{escape(seg.step)}" '
        f'data-state="{escape(seg.state)}" '
        f'x="{x0:.1f}" y="{top}" width="{width:.1f}" height="{h}" rx="2">'
        f"<title>{shown(tip)}</title></rect>"
    )


def _probe(e: dict[str, Any], cx: float, y: float) -> str:
    tip = f"probe of {e.get('step')}: {e.get('error') or 'still unknown'}"
    points = f"{cx:.1f},{y + 5} {cx + 6:.1f},{y + 13} {cx:.1f},{y + 21} {cx - 6:.1f},{y + 13}"
    return f'<polygon class="probe" points="{points}"><title>{shown(tip)}</title></polygon>'


def _operator(e: dict[str, Any], cx: float, height: float) -> str:
    label = f"{e.get('action')} by {e.get('who') or '?'}"
    tip = f"{label}: {e.get('why') or ''}"
    right = cx > WIDTH - 180  # near the right edge: the label goes to the line's left
    return (
        f'<g class="operator"><line x1="{cx:.1f}" x2="{cx:.1f}" y1="{TOP - 6}" '
        f'y2="{height - 14}"/><text x="{cx - 3 if right else cx + 3:.1f}" y="{TOP - 8}" '
        f'text-anchor="{"end" if right else "start"}">{shown(label[:40])}</text>'
        f"<title>{shown(tip)}</title></g>"
    )


def _axis(created: float, end: float, x: Any, height: float) -> list[str]:
    try:
        start = datetime.datetime.fromtimestamp(created).strftime("%H:%M:%S")
    except (OverflowError, OSError, ValueError):  # (a clock far off: no date)
        start = f"{created:.3f} s"
    out = [f'<text class="axis" x="8" y="14">{start}</text>']
    for i in range(6):
        t = created + (end - created) * i / 5
        px = x(t)
        anchor = "end" if i == 5 else "middle" if i else "start"
        out.append(
            f'<line class="tick" x1="{px:.1f}" x2="{px:.1f}" y1="{TOP - 4}" y2="{height - 14}"/>'
            f'<text class="axis" x="{px:.1f}" y="{height - 2}" text-anchor="{anchor}">'
            f"+{_span(t - created)}</text>"
        )
    return out


def _span(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
