"""How the engine logs an attempt's fate: one line per failure (with its traceback) or
retry, under the ``herder.scheduler`` logger, with the workflow, step and attempt as
``extra`` fields for structured handlers.

Imports: herder.store records only.
"""

from __future__ import annotations

from herder.store import Lines, StepRecord, get_logger, printable

_log = get_logger("herder.scheduler")


def log_failure(workflow_id: str, st: StepRecord, error: str, trace: str | None) -> None:
    """A failed attempt at WARNING, with its traceback when the agent sent one."""
    which, attempt = _attempt(st)
    extra = {"workflow_id": workflow_id, "step": st.name, "attempt": attempt}
    # Indented: a log reader (or a test) looking for crashes at "Traceback" line starts
    # must not mistake an attempt's expected failure for one. (Each line printable, as
    # the logger writes the arguments: the message of the user's exception ends it.)
    lines = trace.splitlines() if trace else ()
    detail = Lines("".join(f"\n    {printable(line)}" for line in lines))
    _log.warning(
        "%s/%s %s %d failed: %s%s", workflow_id, st.name, which, attempt, error, detail, extra=extra
    )


def log_step(what: str, workflow_id: str, st: StepRecord) -> None:
    """What became of an attempt (retried, timed out) at INFO."""
    which, attempt = _attempt(st)
    extra = {"workflow_id": workflow_id, "step": st.name, "attempt": attempt}
    _log.info("%s/%s %s %d %s", workflow_id, st.name, which, attempt, what, extra=extra)


def _attempt(st: StepRecord) -> tuple[str, int]:
    """Which attempt of ``st`` this is, and its number: while it is undone, its
    compensation's ("undo attempt", numbered as ``ctx.attempt`` and its history events
    count them), so the line is not read as the step's own attempt of that number."""
    if st.state.is_compensation:
        return "undo attempt", st.comp_attempt
    return "attempt", st.attempt
