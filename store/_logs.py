"""herder's loggers, and the text they echo from users as what it is.

Log lines echo what users and their code chose: workflow ids, agent, step and schedule
names, the messages of the exceptions their actions raised. Written as they came, a
newline in one forged a log line of its own (``ERROR herder.scheduler: ...``), a
terminal's control sequence rewrote what the terminal showed, and a bidi override
(U+202E) reversed the rest of the line. Every logger of herder is made by
:func:`get_logger`, whose filter (:class:`PrintableArgs`) writes each argument of a
record's message as :func:`printable` does and the lines of an exception logged with it
each so: the message itself is herder's own text. An argument that is herder's own text
of several lines, each already printable (an attempt's traceback), is a :class:`Lines`.
"""

from __future__ import annotations

import logging
import threading
import time

from herder.store._untrusted import safe_str

_PLAIN = (int, float, bool, type(None))
_FORMAT = logging.Formatter()


def printable(value: object) -> str:
    """``str(value)`` (as :func:`~._untrusted.safe_str` reads it) with what a terminal
    would act on (a newline, a tab, a control or a bidi-override character) written as
    its escape: one line stays one line, and an id shows as what it is."""
    text = safe_str(value)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def printable_lines(text: str) -> str:
    """``text`` line by line, each as :func:`printable` writes it: the lines it has stay
    (a carriage return or another line break starts one), nothing else acts."""
    return "\n".join(map(printable, text.splitlines()))


class Lines(str):
    """herder's own text of several lines, each already printable (an attempt's
    traceback, :func:`printable_lines`): logged as it is."""

    __slots__ = ()


class PrintableArgs(logging.Filter):
    """Writes a record's arguments as :func:`printable` (numbers, None and
    :class:`Lines` as they are; an argument that is printable already is left to the
    handler's formatting), and the traceback of an exception logged with it line by line
    so (its text is the handler's ``exc_text`` from then on)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(map(_shown, record.args))
        if record.exc_info and not record.exc_text:
            try:  # (the traceback of user code's exception: reading it may raise anything)
                text = _FORMAT.formatException(record.exc_info)
            except BaseException:  # the handler's own formatting says what it can
                return True
            record.exc_text = printable_lines(text)
        return True


_FILTER = PrintableArgs()


def _shown(arg: object) -> object:
    if type(arg) in _PLAIN or isinstance(arg, Lines):
        return arg
    text = safe_str(arg)
    return arg if text.isprintable() else printable(text)


def get_logger(name: str) -> logging.Logger:
    """The logger ``name`` (one of ``herder``'s), with :class:`PrintableArgs` on it."""
    log = logging.getLogger(name)
    if _FILTER not in log.filters:
        log.addFilter(_FILTER)
    return log


class Sparse:
    """One log line said at most once per ``every`` seconds, with how many it held back
    meanwhile: a full disk under load fails thousands of commits a second, each caller
    gets its own error, and a line for each flooded the log (on the full disk, often)."""

    def __init__(self, every: float = 10.0) -> None:
        self.every = every
        self._at = -every
        self._held = 0
        self._lock = threading.Lock()  # (the writer's and a caller's threads)

    def due(self) -> str | None:
        """None when this line is held back (and counted); else the text to add to it:
        how many were held back since it was last said ("" when none was)."""
        with self._lock:
            now = time.monotonic()
            if now - self._at < self.every:
                self._held += 1
                return None
            held, self._at, self._held = self._held, now, 0
        return f" (and {held} more like it in the last {self.every:.0f} s)" if held else ""
