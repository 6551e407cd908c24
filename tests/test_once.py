"""SaidOnce: a recurring trouble is logged once per cause, again once it changes or
cleared (the schedule firer's and a standby's warnings share it)."""

from __future__ import annotations

import logging

import pytest

from herder.runtime._once import SaidOnce

_log = logging.getLogger("herder.test.once")


def _said(caplog: pytest.LogCaptureFixture) -> list[tuple[int, str]]:
    return [(r.levelno, r.getMessage()) for r in caplog.records if r.name == _log.name]


@pytest.mark.timeout(10)
def test_a_trouble_is_said_once_per_cause_per_key_and_again_after_it_cleared(
    caplog: pytest.LogCaptureFixture,
) -> None:
    said = SaidOnce(_log)
    with caplog.at_level(logging.DEBUG, logger=_log.name):
        for _ in range(3):
            said.say(("fail", "a"), "a failed: disk")
        said.say(("fail", "b"), "b failed: disk")  # another key: said on its own
        said.say(("fail", "a"), "a failed: lease")  # a new cause
        said.say(("fail", "a"), "a failed: lease")
        said.clear(("fail", "a"))
        said.clear(("fail", "never said"))  # (nothing to clear: no error)
        said.say(("fail", "a"), "a failed: lease")  # came back after it cleared
    assert _said(caplog) == [
        (logging.WARNING, "a failed: disk"),
        (logging.WARNING, "b failed: disk"),
        (logging.WARNING, "a failed: lease"),
        (logging.WARNING, "a failed: lease"),
    ]


@pytest.mark.timeout(10)
def test_a_cause_other_than_the_text_decides_and_the_level_is_the_one_given(
    caplog: pytest.LogCaptureFixture,
) -> None:
    said = SaidOnce(_log, logging.ERROR)
    with caplog.at_level(logging.DEBUG, logger=_log.name):
        said.say("flush", "could not fire: 3 left", cause="TimedOut")
        said.say("flush", "could not fire: 2 left", cause="TimedOut")  # same cause
        said.say("flush", "could not fire: closed", cause="StoreClosed")
        said.say("flush", "could not fire: 50% of 100%")  # (no %-formatting of the text)
    assert _said(caplog) == [
        (logging.ERROR, "could not fire: 3 left"),
        (logging.ERROR, "could not fire: closed"),
        (logging.ERROR, "could not fire: 50% of 100%"),
    ]
