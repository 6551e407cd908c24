"""A bounded traceback of an exception from user code, storable and safe to build.

A failed attempt keeps its ``"Type: message"`` (``describe``) and, next to it in the
step's history event, the innermost frames of where it was raised: the frames nearest the
error are the ones that say what went wrong, and a deep stack (a framework, a recursion)
must not make every history event megabytes. Only frame data is read (file, line, function
and the source line from the file); no method of the user's exception or of any local
runs, so building it cannot raise into an actor.
"""

from __future__ import annotations

import traceback

from herder.store._untrusted import bounded_text, describe

FRAMES = 8
"""Innermost frames kept."""

MAX_CHARS = 4000
"""Longest traceback text kept (its innermost end when cut)."""

_TRACEBACK = BaseException.__dict__["__traceback__"]


def bounded_traceback(
    exc: BaseException, *, frames: int = FRAMES, limit: int = MAX_CHARS
) -> str | None:
    """The innermost ``frames`` frames of ``exc``'s traceback and its ``"Type: message"``,
    at most ``limit`` characters; None if it has none or it cannot be read."""
    try:
        tb = _TRACEBACK.__get__(exc)  # the slot itself: a subclass property is not run
        if tb is None:
            return None
        stack = traceback.extract_tb(tb)
        shown = stack[-frames:]
        head = "Traceback (innermost last"
        head += f"; {len(shown)} of {len(stack)} frames):\n" if len(stack) > frames else "):\n"
        text = head + "".join(traceback.format_list(shown)) + describe(exc)
        if len(text) > limit:
            text = "...\n" + text[-limit:]
        return bounded_text(text)
    except BaseException:  # reading frames of user code must never fail the attempt
        return None
