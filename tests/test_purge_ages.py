"""``herder purge --older-than`` through a running runtime: the runtime takes the age
back from its own clock (the one the records' times are written on), as of when the
operator asked, and the CLI reports the cutoff the runtime used."""

from __future__ import annotations

import datetime
import re
import subprocess
import sys
from pathlib import Path

import pytest

from herder.runtime import Agent, Runtime, StepContext, Workflow, _retention
from herder.runtime._inspect import shown_time
from herder.runtime.testing import FakeClock
from herder.store import append_command, command_outcome, new_command

WAIT = 30.0
DAY = 86400.0
T0 = 1_700_000_000.0
HERDER = str(Path(sys.executable).parent / "herder")


class Shop(Agent):
    def buy(self, ctx: StepContext) -> str:
        return "ok"


def register(rt: Runtime) -> None:
    rt.add_agent("shop", Shop)
    rt.add_workflow(Workflow("order").step("pay", agent="shop", action="buy"))


def finish(rt: Runtime, wid: str) -> None:
    rt._wait_final(rt.start("order", {}, workflow_id=wid).id, WAIT)


def purge_through(rt: Runtime, path: Path, *argv: str) -> tuple[int, str, str]:
    """``herder purge`` (the executable) against the running ``rt``; a FakeClock fires no
    sweep by itself, so the test thread sweeps once per look, as test_retention does."""
    proc = subprocess.Popen(
        [HERDER, "purge", "--store", str(path), *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    while True:
        rt._sweep_now()
        try:
            out, err = proc.communicate(timeout=0.1)
        except subprocess.TimeoutExpired:
            continue
        return proc.returncode, out, err


@pytest.mark.timeout(60)
def test_purge_through_a_runtime_reports_the_cutoff_the_runtime_used(tmp_path: Path) -> None:
    """b41e36d: the runtime takes --older-than back from its engine clock, on which the
    records' times are written (and ``herder ls`` shows); the CLI still prints the cutoff
    it took on its own wall clock. Here the engine clock is 30 days behind the wall: the
    CLI says it purged everything last updated before an hour ago, though the runtime's
    cutoff was 30 days earlier (and the workflow it kept is 30 days old by the wall)."""
    path = tmp_path / "s"
    clock = FakeClock(start=datetime.datetime.now().timestamp() - 30 * DAY)
    with Runtime(path, clock=clock, setup=register, retention=None) as rt:
        finish(rt, "w0")
        code, out, err = purge_through(rt, path, "--older-than", "1h", "--timeout", "30")
        assert code == 0, err
        assert [s.id for s in rt.list()] == ["w0"]  # a minute old on the runtime's clock
        command_id = 1  # (the first command of this store)
        outcome = command_outcome(rt._store, command_id)
        assert outcome is not None
        assert outcome["state"] == "DONE", outcome
    used = float(outcome["args"]["before"])
    shown = re.search(r"last updated before (\S+ \S+)", out)
    assert shown is not None, out
    assert shown.group(1) == shown_time(used), (
        f"the CLI says {out.strip()!r}; the runtime's cutoff was {shown_time(used)}"
    )


@pytest.mark.timeout(60)
def test_a_queued_purge_older_than_is_aged_when_asked_not_when_picked_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The operator asks at T0 + 12 h for what is older than a day; the command waits (the
    runtime that held the store stopped before its sweep took it, the CLI exited 3: "it
    carries on") and a runtime takes it up at T0 + 3 days. It now ages the command from
    its own clock then, so it also deletes a workflow that ended at T0, half a day old
    when the operator asked. The time the command waited (by the wall clock it was created
    on) is taken off now."""
    path = tmp_path / "s"
    with Runtime(path, clock=FakeClock(start=T0), setup=register, retention=None) as rt:
        finish(rt, "young")
    asked = T0 + DAY / 2  # (the runtime's clock then)
    command = new_command(
        "purge",
        "",
        args={"before": 0.0, "older_than": DAY, "states": ["SUCCEEDED"]},
        who="operator",
        why="herder purge",
    )
    command_id = append_command(path, command)
    # Picked up 2.5 days later by the wall clock it was created on (and the runtime's).
    wall = command["created"] + 3 * DAY - DAY / 2
    monkeypatch.setattr(_retention, "_wall", lambda: wall, raising=False)
    assert asked + 2.5 * DAY == T0 + 3 * DAY
    with Runtime(path, clock=FakeClock(start=T0 + 3 * DAY), setup=register, retention=None) as rt:
        while command_outcome(rt._store, command_id) is None:
            rt._sweep_now()  # (each waits for one sweep; the purge takes a few)
        outcome = command_outcome(rt._store, command_id)
        assert outcome is not None
        assert outcome["state"] == "DONE", outcome
        assert [s.id for s in rt.list()] == ["young"], (
            f"deleted {outcome.get('deleted')}: a workflow half a day old when the "
            f"operator asked for those older than a day (cutoff used: "
            f"{outcome['args']['before'] - T0:+.0f} s from T0)"
        )
