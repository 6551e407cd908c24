"""User text in herder's log lines and error messages shows as what it is.

Workflow ids, step and agent names and the messages of the exceptions actions raise are
chosen by users (an id is often an external order number). Echoed as they came, a newline
forged a log line of its own, a terminal's control sequence rewrote the screen and a bidi
override (U+202E) reversed the rest of the line.
"""

from __future__ import annotations

import logging
import pathlib
import re

import pytest

from herder.runtime import Agent, Permanent, Runtime, StepContext, Workflow, WorkflowFailed
from herder.runtime.testing import FakeClock
from herder.store import get_logger

ROOT = pathlib.Path(__file__).resolve().parent.parent
WAIT = 30.0
LIE = "\nERROR herder.scheduler: all good \x1b[2K\r\u202etxt.exe"
"""What a user string could carry to make a log line lie."""


def _acts(text: str) -> bool:
    """Whether ``text`` holds a character a terminal acts on (a line break, a control
    or a bidi-override character)."""
    return any(not c.isprintable() for c in text)


class Fails(Agent):
    def work(self, ctx: StepContext) -> None:
        raise Permanent(f"no stock{LIE}")


def test_an_id_and_an_actions_error_are_logged_and_raised_as_what_they_are(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    wid = f"order-1{LIE}"
    with (
        caplog.at_level(logging.INFO, logger="herder"),
        Runtime(tmp_path / "s", clock=FakeClock(start=1_700_000_000.0)) as rt,
    ):
        rt.add_agent("svc", Fails)
        rt.add_workflow(Workflow("w").step("a", agent="svc", action="work"))
        with pytest.raises(WorkflowFailed) as failed:
            rt.start("w", workflow_id=wid).result(timeout=WAIT)
    assert not _acts(str(failed.value))  # (its status keeps the error as it was)
    assert "no stock\\nERROR herder.scheduler: all good \\x1b[2K\\r\\u202etxt.exe" in str(
        failed.value
    )
    assert failed.value.status.error is not None
    assert LIE in failed.value.status.error
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("herder")]
    about = [m for m in lines if m.startswith("order-1") or "workflow order-1" in m]
    assert len(about) >= 4  # started, the attempt failed, compensating, ended
    for message in about:
        first, *traceback = message.split("\n")
        assert not _acts(first), first
        assert "order-1\\nERROR herder.scheduler: all good \\x1b[2K\\r\\u202etxt.exe" in first
        # The attempt's traceback keeps its lines, indented, each printable.
        assert all(line.startswith("    ") and not _acts(line) for line in traceback)


def test_the_traceback_of_an_exception_logged_with_its_record_is_printable(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log = get_logger("herder.test_log_text")
    try:
        raise RuntimeError(f"callback failed{LIE}")
    except RuntimeError:
        with caplog.at_level(logging.ERROR, logger="herder.test_log_text"):
            log.exception("on_final callback failed for %s", f"w{LIE}")
    (record,) = caplog.records
    assert not _acts(record.getMessage())
    text = logging.Formatter().format(record)
    assert all(not _acts(line) for line in text.split("\n"))
    assert "RuntimeError: callback failed" in text
    assert "\\x1b[2K" in text
    assert text.count("\n") > 2  # (a traceback of lines still)


def test_every_logger_of_herder_is_made_by_get_logger() -> None:
    """A logger made by ``logging.getLogger`` logs its arguments as they are: herder's
    own modules make theirs with ``get_logger`` (``store/_logs.py``), which neutralises
    them."""
    made = re.compile(r"logging\.getLogger\((?!\)|\"herder\"\)\.setLevel)")
    found = [
        f"{path.relative_to(ROOT)}:{n}"
        for package in ("store", "actors", "runtime")
        for path in sorted((ROOT / package).rglob("*.py"))
        if path.name not in ("_logs.py", "_demo.py")  # (the demo quiets other libraries)
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if made.search(line)
    ]
    assert found == []
