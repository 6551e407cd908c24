"""A failed attempt keeps a bounded traceback: in the step's history event, shown by
``herder show ID --attempts`` (the real executable), logged at WARNING with ids."""

from __future__ import annotations

import logging
import re
import subprocess
import sys
import threading
from pathlib import Path
from typing import NoReturn

import pytest

from herder.runtime import (
    Agent,
    Permanent,
    RetryPolicy,
    Runtime,
    StepContext,
    Workflow,
    WorkflowFailed,
)
from herder.runtime.testing import FakeClock, advance
from herder.store import MAX_TRACEBACK_CHARS

HERDER = str(Path(sys.executable).parent / "herder")
WAIT = 30.0


def innermost_helper(depth: int) -> NoReturn:
    if depth:
        innermost_helper(depth - 1)
    raise ValueError("the remote said no")


class Flaky(Agent):
    def call(self, ctx: StepContext) -> str:
        if ctx.attempt == 1:
            innermost_helper(300)  # a deep stack: only its innermost frames are kept
        raise KeyError("still failing")


def register(rt: Runtime) -> None:
    rt.add_agent("flaky", Flaky)
    rt.add_workflow(
        Workflow("w").step(
            "call", agent="flaky", action="call", retry=RetryPolicy(max_attempts=2, jitter=0.0,
                                                                    initial_interval=0.0)
        )
    )  # fmt: skip


@pytest.fixture
def failed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> tuple[Path, list[dict[str, object]]]:
    path = tmp_path / "s"
    with caplog.at_level(logging.WARNING, logger="herder"), Runtime(path, setup=register) as rt:
        with pytest.raises(WorkflowFailed):
            rt.start("w", workflow_id="wf").result(timeout=WAIT)
        history = rt.history("wf")
    return path, history


def test_each_failed_attempt_keeps_a_bounded_traceback_in_its_history_event(
    failed: tuple[Path, list[dict[str, object]]],
) -> None:
    _, history = failed
    traces = [e for e in history if e.get("traceback")]
    assert [e["attempt"] for e in traces] == [1, 2]
    first, second = (str(e["traceback"]) for e in traces)
    assert "innermost_helper" in first
    assert first.rstrip().endswith("ValueError: the remote said no")
    assert re.search(r"; 8 of 3\d\d frames", first)  # 300 frames deep, 8 kept
    assert len(first) <= MAX_TRACEBACK_CHARS
    assert "in call" in second
    assert "KeyError: 'still failing'" in second


def show_attempts(path: Path, workflow_id: str) -> str:
    """What ``herder show ID --attempts`` (the real executable) prints."""
    return subprocess.run(
        [HERDER, "show", workflow_id, "--attempts", "--store", str(path)],
        capture_output=True,
        text=True,
        timeout=WAIT * 2,
        check=True,
    ).stdout


def test_show_attempts_prints_each_failed_attempt_with_its_traceback(
    failed: tuple[Path, list[dict[str, object]]],
) -> None:
    path, _ = failed
    shown = show_attempts(path, "wf")
    assert "failed attempts: 2" in shown
    assert "step call attempt 1: ValueError: the remote said no" in shown
    assert "    File " in shown
    assert "innermost_helper" in shown


def test_a_failed_attempt_is_logged_at_warning_with_workflow_step_and_attempt(
    failed: tuple[Path, list[dict[str, object]]], caplog: pytest.LogCaptureFixture
) -> None:
    setup = caplog.get_records("setup")  # the fixture ran the workflow
    logged = [r for r in setup if getattr(r, "attempt", None) == 1]
    assert logged, [r.getMessage() for r in setup]
    record = logged[0]
    assert record.levelno == logging.WARNING
    assert (record.workflow_id, record.step) == ("wf", "call")  # type: ignore[attr-defined]
    assert "innermost_helper" in record.getMessage()


class Unrefundable(Agent):
    def charge(self, ctx: StepContext) -> str:
        return "charged"

    def refund(self, ctx: StepContext) -> NoReturn:
        raise RuntimeError("refund API down")  # the same words each time

    def ship(self, ctx: StepContext) -> NoReturn:
        raise Permanent("no stock")


def test_each_failed_compensation_attempt_keeps_its_error_and_traceback_too(
    tmp_path: Path,
) -> None:
    """A compensation that fails stays COMPENSATING, retried or escalated: no state
    changes, yet each failed attempt is an event of its own, with its traceback."""
    path = tmp_path / "s"
    thrice = RetryPolicy(max_attempts=3, initial_interval=0.0, jitter=0.0)
    with Runtime(path) as rt:
        rt.add_agent("pay", Unrefundable)
        rt.add_workflow(
            Workflow("order")
            .step("charge", agent="pay", action="charge", compensate="refund",
                  compensate_retry=thrice)
            .step("ship", agent="pay", action="ship", after=["charge"])
        )  # fmt: skip
        with pytest.raises(WorkflowFailed, match="NEEDS_ATTENTION"):
            rt.start("order", workflow_id="o").result(timeout=WAIT)
        history = rt.history("o")
    failures = [(e["step"], e["attempt"], e["error"]) for e in history if e.get("traceback")]
    assert failures == [
        ("ship", 1, "Permanent: no stock"),
        ("charge", 1, "RuntimeError: refund API down"),
        ("charge", 2, "RuntimeError: refund API down"),
        ("charge", 3, "RuntimeError: refund API down"),
    ]
    shown = show_attempts(path, "o")
    assert "failed attempts: 4" in shown
    assert "step ship attempt 1: Permanent: no stock" in shown
    assert "step charge undo attempt 3: RuntimeError: refund API down" in shown


@pytest.mark.timeout(120)
def test_a_failed_undo_is_logged_and_listed_as_an_undo_attempt(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The refund's failures were "o/charge attempt 1 failed: ..." in the log and "step
    charge attempt 3: ..." in ``herder show --attempts``, as if the charge itself had
    failed, three times, where it succeeded at its one attempt: an operator read a
    failed charge, not a refund waiting for them."""
    path = tmp_path / "s"
    twice = RetryPolicy(max_attempts=2, initial_interval=0.0, jitter=0.0)
    with caplog.at_level(logging.INFO, logger="herder"), Runtime(path) as rt:
        rt.add_agent("pay", Unrefundable)
        rt.add_workflow(
            Workflow("order")
            .step("charge", agent="pay", action="charge", compensate="refund",
                  compensate_retry=twice)
            .step("ship", agent="pay", action="ship", after=["charge"])
        )  # fmt: skip
        with pytest.raises(WorkflowFailed, match="NEEDS_ATTENTION"):
            rt.start("order", workflow_id="o").result(timeout=WAIT)
    lines = [
        r.getMessage().splitlines()[0]
        for r in caplog.records
        if r.name == "herder.scheduler" and getattr(r, "step", None) == "charge"
    ]
    assert lines == [
        "o/charge undo attempt 1 failed: RuntimeError: refund API down",
        "o/charge undo attempt 1 failed, will retry: RuntimeError: refund API down",
        "o/charge undo attempt 2 failed: RuntimeError: refund API down",
    ]
    shown = show_attempts(path, "o").splitlines()
    listed = [m[1] for line in shown if (m := re.match(r"  \S+ \S+ step (.*)", line))]
    assert listed == [
        "ship attempt 1: Permanent: no stock",
        "charge undo attempt 1: RuntimeError: refund API down",
        "charge undo attempt 2: RuntimeError: refund API down",
    ]


class SlowRefund(Agent):
    """Charges on its second attempt; its first refund hangs past the step's timeout."""

    def __init__(self) -> None:
        self.entered, self.release = threading.Event(), threading.Event()

    def charge(self, ctx: StepContext) -> str:
        if ctx.attempt == 1:
            raise ConnectionError("bank busy")
        return "charged"

    def refund(self, ctx: StepContext) -> None:
        if ctx.attempt == 1:
            self.entered.set()
            self.release.wait(WAIT)

    def ship(self, ctx: StepContext) -> NoReturn:
        raise Permanent("no stock")


def test_a_compensation_attempt_that_times_out_is_logged_with_its_own_number(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The line said the forward attempt's number ("o/charge attempt 2 timed out") for
    compensation attempt 1, and its ``attempt`` extra too: it matched no attempt of
    ``herder show --attempts``, and the next line, "attempt 1 failed, will retry"."""
    clock, agent = FakeClock(), SlowRefund()
    twice = RetryPolicy(max_attempts=2, initial_interval=0.0, jitter=0.0)
    with (
        caplog.at_level(logging.INFO, logger="herder"),
        Runtime(tmp_path / "s", clock=clock, sweep_interval=1.0) as rt,
    ):
        rt.add_agent("pay", lambda: agent, concurrency=2)
        rt.add_workflow(
            Workflow("order")
            .step("charge", agent="pay", action="charge", compensate="refund", retry=twice,
                  compensate_retry=twice, timeout=5.0)
            .step("ship", agent="pay", action="ship", after=["charge"])
        )  # fmt: skip
        handle = rt.start("order", workflow_id="o")
        try:
            assert agent.entered.wait(WAIT)
            advance(rt, clock, 6.0)
            with pytest.raises(WorkflowFailed, match="COMPENSATED"):
                handle.result(timeout=WAIT)
        finally:
            agent.release.set()
    timed_out = [r for r in caplog.records if r.getMessage().endswith("timed out")]
    assert [r.getMessage() for r in timed_out] == ["o/charge undo attempt 1 timed out"]
    assert timed_out[0].attempt == 1  # type: ignore[attr-defined]
