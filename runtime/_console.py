"""Terminal output for the CLI and the demo: tables and progress lines.

Uses ``rich`` on a terminal when it is installed (``pip install 'herder[demo]'``). Off a
terminal (a pipe, a file, a test) the output is plain text whose cells are never wrapped
or cut, so ``herder show ID | grep ...`` sees whole values; nothing else in herder depends
on rich.
"""

from __future__ import annotations

import json
import math
import os
import select
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TextIO

from herder.store import printable


def _rich_console(out: TextIO) -> Any | None:
    if not _is_terminal(out):
        return None
    try:
        from rich.console import Console
    except ImportError:
        return None
    return Console(file=out, highlight=False)


CLIP = 200
"""Characters of a value (its repr) that ``herder show``'s text view prints."""


def clipped(text: str, limit: int, whole: str) -> str:
    """``text`` cut to ``limit`` characters, saying how long it was and what prints it
    ``whole`` (one big input or result must not make a view of tens of MB)."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text):,} characters; {whole} prints it all)"


def dump_json(out: TextIO, data: Any) -> None:
    """``--json`` output: strict JSON (RFC 8259), which has no NaN or infinity, so a
    float that is one (a result an action returned) is written as the string "NaN",
    "Infinity" or "-Infinity"; anything JSON has no type for, a map key that is not a str
    (bytes get past the store's ``strict_map_key``) too, as its repr. Written once whole:
    never half a document."""
    out.write(json.dumps(json_safe(data), indent=2, default=repr, allow_nan=False) + "\n")


def dump_json_list(out: TextIO, items: Iterable[Any]) -> None:
    """:func:`dump_json` of a list, in the same text, written an item at a time: a
    listing of a million workflows is never held whole (cut short only by an error
    reading the store, which then exits 1, or by Ctrl-C)."""
    opening = "[\n  "
    for item in items:
        text = json.dumps(json_safe(item), indent=2, default=repr, allow_nan=False)
        out.write(opening + text.replace("\n", "\n  "))  # (JSON escapes a string's newlines)
        opening = ",\n  "
    out.write("[]\n" if opening == "[\n  " else "\n]\n")


_NON_FINITE = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}


def json_safe(value: Any) -> Any:
    """``value`` as strict JSON can say it (see :func:`dump_json`), but for the types
    ``default=repr`` takes care of."""
    kind = type(value)
    if kind is float:
        return value if math.isfinite(value) else _NON_FINITE[repr(value)]
    if kind is dict:  # (json.dump took int keys, and refused bytes ones mid-output)
        return {
            key if type(key) is str else repr(key): json_safe(item) for key, item in value.items()
        }
    if kind is list or kind is tuple:
        return [json_safe(item) for item in value]
    return value


def value_text(value: object) -> str:
    """A workflow's input or a step's result as ``herder show`` prints it: its repr,
    clipped to :data:`CLIP` characters, so that one big result does not become every
    row's width."""
    return clipped(repr(value), CLIP, "--json")


def attempt_named(event: dict[str, Any]) -> str:
    """``attempt N`` of a step event, ``undo attempt N`` for one of its compensation's
    (numbered from 1 as ``ctx.attempt`` counts them): "step charge attempt 3" read as
    the charge's own third attempt, which never ran."""
    which = "undo attempt" if event.get("from") == "COMPENSATING" else "attempt"
    attempt = event.get("attempt")
    return which if attempt is None or attempt == "" else f"{which} {attempt}"


RICH_ROWS = 1000
"""Rows a table may have to be drawn with ``rich``: it takes about 2 ms a row, and the
history of a workflow retried 20,000 times took 40 s and 320 MB to draw; a longer
table is printed plain, as to a pipe."""


def print_table(
    out: TextIO, title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]
) -> None:
    """Print ``rows`` under ``columns``; numbers right-aligned."""
    console = _rich_console(out) if len(rows) <= RICH_ROWS else None
    if console is not None:
        from rich.table import Table
        from rich.text import Text  # (a str is read as markup: an error's "[/x]" raised)

        table = Table(title=Text(title), title_justify="left")
        for i, col in enumerate(columns):
            numeric = bool(rows) and all(isinstance(r[i], int | float) for r in rows)
            table.add_column(Text(col), justify="right" if numeric else "left")
        for row in rows:
            table.add_row(*(Text(printable(v)) for v in row))
        console.print(table)
        return
    cells = [list(columns)] + [[printable(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    if title:
        out.write(f"{title}\n")
    for n, row in enumerate(cells):
        parts = [
            c.rjust(w) if n and isinstance(rows[n - 1][i], int | float) else c.ljust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        out.write("  " + "  ".join(parts).rstrip() + "\n")


def _is_terminal(out: TextIO) -> bool:
    try:
        return out.isatty()
    except (AttributeError, ValueError):  # a closed or file-like stream without isatty
        return False


class ProgressLine:
    """A ``[####....] done/total label`` line, redrawn in place on a terminal.

    Off a terminal (a pipe, a test) it writes a new line only every tenth of the way, so
    logs stay short.
    """

    WIDTH = 30

    def __init__(self, out: TextIO, total: int) -> None:
        self.out = out
        self.total = max(1, total)
        self.tty = _is_terminal(out)
        self._last_tenth = -1

    def update(self, done: int, label: str = "") -> None:
        """Show ``done`` of ``total``, with ``label`` after the counter."""
        filled = min(self.WIDTH, done * self.WIDTH // self.total)
        line = f"  [{'#' * filled}{'.' * (self.WIDTH - filled)}] {done}/{self.total} {label}"
        if self.tty:
            self.out.write(f"\r{line:<79}")
            self.out.flush()
            return
        tenth = done * 10 // self.total
        if tenth != self._last_tenth:
            self._last_tenth = tenth
            self.out.write(line.rstrip() + "\n")
            self.out.flush()

    def note(self, message: str) -> None:
        """Print ``message`` on its own line without breaking the progress line."""
        if self.tty:
            self.out.write("\n")
        self.out.write(f"  {message}\n")
        self.out.flush()

    def close(self) -> None:
        """End the progress line."""
        if self.tty:
            self.out.write("\n")
            self.out.flush()


class CountLine:
    """``  herder purge: 12,000 deleted so far (1,100/s)``: progress of long work whose
    total is not known, on stderr (stdout stays the result).

    Shown only once the work has run for ``EVERY`` seconds (a quick command prints just
    its result); on a terminal redrawn in place at most every ``EVERY`` seconds, off one
    (a pipe, a log) a new line at most every ``EVERY_PIPED`` seconds, so logs stay short.
    """

    EVERY = 1.0
    EVERY_PIPED = 10.0

    def __init__(self, label: str, what: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.out = sys.stderr
        self.label, self.what, self.clock = label, what, clock
        self.tty = _is_terminal(self.out)
        self.every = self.EVERY if self.tty else self.EVERY_PIPED
        self.began = self._shown = clock()
        self.drawn = False
        self.first: int | None = None  # (a runtime may have counted some before we looked)

    def update(self, count: int) -> None:
        """The work's count so far; shown if the interval since the last line is up."""
        now = self.clock()
        if self.first is None:
            self.first = count
        if now - self._shown < self.every:
            return
        self._shown = now
        rate = (count - self.first) / max(now - self.began, 1e-9)
        line = f"  {self.label}: {count:,} {self.what} so far ({rate:,.0f}/s)"
        self.out.write(f"\r{line:<79}" if self.tty else f"{line}\n")
        self.out.flush()
        self.drawn = True

    def close(self) -> None:
        """End the line (on a terminal) before the result is printed."""
        if self.tty and self.drawn:
            self.out.write("\n")
            self.out.flush()


def reader_left() -> None:
    """The reader of stdout left (``herder ls | head``), which is fine: let nothing else
    write there (the interpreter's last flush would fail)."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def reader_gone(out: TextIO) -> bool:
    """Whether ``out`` is a pipe or socket whose reader left: a BrokenPipeError from
    anywhere else (a socket, a pipe the command opened) is a failure, not a quiet exit."""
    try:
        fd = out.fileno()
    except (AttributeError, OSError, ValueError):  # no file (a StringIO, None): no pipe
        return False
    if not hasattr(select, "poll"):  # (no poll here: take the error for the reader's)
        return True
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))


def stdout() -> TextIO:
    """The stream the CLI writes to (a function so tests can swap ``sys.stdout``)."""
    return sys.stdout
