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
    attempt = _attempt(st)
    extra = {"workflow_id": workflow_id, "step": st.name, "attempt": attempt}
    # Indented: a log reader (or a test) looking for crashes at "Traceback" line starts
    # must not mistake an attempt's expected failure for one. (Each line printable, as
    # the logger writes the arguments: the message of the user's exception ends it.)
    lines = trace.splitlines() if trace else ()
    detail = Lines("".join(f"\n    {printable(line)}" for line in lines))
    _log.warning(
        "%s/%s attempt %d failed: %s%s", workflow_id, st.name, attempt, error, detail, extra=extra
    )


def log_step(what: str, workflow_id: str, st: StepRecord) -> None:
    """What became of an attempt (retried, timed out) at INFO."""
    attempt = _attempt(st)
    extra = {"workflow_id": workflow_id, "step": st.name, "attempt": attempt}
    _log.info("%s/%s attempt %d %s", workflow_id, st.name, attempt, what, extra=extra)


def _attempt(st: StepRecord) -> int:
    """The number of ``st``'s attempt: its compensation's while it is undone (as
    ``ctx.attempt`` and its history events count)."""
    return st.comp_attempt if st.state.is_compensation else st.attempt
