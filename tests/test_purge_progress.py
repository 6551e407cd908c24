"""Long CLI work shows its progress on stderr. ``herder purge``: the count deleted so far,
offline and through a running runtime (which records it on the pending command per
batch); a runtime SIGKILLed mid-purge leaves the command pending with its count, and the
next runtime counts on from it. ``herder check``: workflows checked; ``herder compact``:
bytes of the copy written."""

from __future__ import annotations

import functools
import io
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from herder.runtime import Agent, Runtime, StepContext, Workflow, _cli_admin
from herder.runtime._cli import main
from herder.runtime._console import CountLine
from herder.runtime.testing import FakeClock
from herder.store import (
    Store,
    append_command,
    command_outcome,
    new_command,
    pending_commands,
    purge,
)
from herder.store._commands import pending_key

WAIT = 30.0
T0 = 1_700_000_000.0
COUNT = re.compile(r"herder purge: ([\d,]+) deleted so far \(")


class Shop(Agent):
    def buy(self, ctx: StepContext) -> str:
        return "ok"


def register(rt: Runtime) -> None:
    rt.add_agent("shop", Shop)
    rt.add_workflow(Workflow("order").step("pay", agent="shop", action="buy"))


def finished_store(path: Path, n: int) -> None:
    with Runtime(path, clock=FakeClock(start=T0), setup=register, retention=None) as rt:
        for i in range(n):
            rt._wait_final(rt.start("order", {}, workflow_id=f"w{i}").id, WAIT)


def shown(err: str) -> list[int]:
    """The counts of the progress lines, each once, in order."""
    counts = [int(m.replace(",", "")) for m in COUNT.findall(err)]
    return [c for i, c in enumerate(counts) if i == 0 or c != counts[i - 1]]


@pytest.fixture
def every_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(CountLine, "EVERY", 0.0)
    monkeypatch.setattr(CountLine, "EVERY_PIPED", 0.0)


@pytest.mark.timeout(60)
def test_an_offline_purge_shows_its_count_as_it_goes(
    tmp_path: Path,
    every_time: None,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = tmp_path / "s"
    finished_store(path, 5)
    monkeypatch.setattr(_cli_admin, "purge", functools.partial(purge, batch=2))
    out = io.StringIO()
    assert main(["purge", "--store", str(path), "--before", "2099-01-01"], out) == 0
    assert out.getvalue().startswith("deleted 5 ")
    assert shown(capsys.readouterr().err) == [2, 4, 5]


@pytest.mark.timeout(60)
def test_a_quick_purge_prints_only_its_result(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "s"
    finished_store(path, 3)
    out = io.StringIO()
    assert main(["purge", "--store", str(path), "--before", "2099-01-01"], out) == 0
    assert out.getvalue().startswith("deleted 3 ")
    assert capsys.readouterr().err == ""


CLI = """
import sys
from herder.runtime._cli import main
from herder.runtime._console import CountLine

CountLine.EVERY_PIPED = 0.0  # (a line at each look at the command)
sys.exit(main(sys.argv[1:]))
"""


def batches_of_two(rt: Runtime) -> None:
    """Every batch of the runtime's retention 2 workflows (not sized by the backlog)."""
    rt._retention._batch = rt._retention._size = 2
    rt._retention._pace = lambda size, took: None  # type: ignore[method-assign]


@pytest.mark.timeout(60)
def test_a_purge_through_a_runtime_shows_the_count_the_runtime_records(tmp_path: Path) -> None:
    path = tmp_path / "s"
    finished_store(path, 6)
    clock = FakeClock(start=T0)
    with Runtime(path, clock=clock, setup=register, retention=None) as rt:
        batches_of_two(rt)
        argv = ["purge", "--store", str(path), "--before", "2099-01-01", "--timeout", "30"]
        cli = subprocess.Popen(
            [sys.executable, "-c", CLI, *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert cli.stderr is not None
        recorded, lines = [], []
        while cli.poll() is None:  # the fake clock fires no sweep by itself: one at a time
            rt._sweep_now()
            rt._store.writer.flush(WAIT)
            pending = pending_commands(rt._store)
            deleted = pending[0].get("deleted") if pending else None
            if deleted and deleted not in recorded:  # shown before the next batch goes
                recorded.append(deleted)
                while not lines or f" {deleted:,} deleted so far" not in lines[-1]:
                    lines.append(cli.stderr.readline())
                    assert lines[-1], "the CLI ended without showing it"
        out, err = cli.communicate(timeout=WAIT)
    assert cli.returncode == 0, err
    assert out.startswith("deleted 6 ")
    assert recorded == [2, 4]  # (per batch, with the next one: 6 is the outcome's)
    assert shown("".join(lines) + err) == [2, 4]


SCRIPT = """
import sys
from herder.runtime import Agent, Runtime, StepContext, Workflow
from herder.runtime.testing import FakeClock
from herder.store._commands import pending_key


class Shop(Agent):
    def buy(self, ctx: StepContext) -> str:
        return "ok"


def register(rt: Runtime) -> None:
    rt.add_agent("shop", Shop)
    rt.add_workflow(Workflow("order").step("pay", agent="shop", action="buy"))


with Runtime(sys.argv[1], clock=FakeClock(start=2e9), setup=register, retention=None) as rt:
    rt._retention._batch = rt._retention._size = 2  # (as batches_of_two)
    rt._retention._pace = lambda size, took: None
    for _ in range(100):  # the fake clock fires no sweep by itself: one at a time
        rt._sweep_now()
        rt._store.writer.flush(30)
        record = rt._store.get("commands", pending_key(int(sys.argv[2]))) or {}
        if record.get("deleted", 0) >= 4:
            print("mid", flush=True)
            sys.stdin.read()  # (until SIGKILLed)
    print("no progress recorded", flush=True)
"""


@pytest.mark.timeout(120)
def test_a_runtime_killed_mid_purge_leaves_its_count_and_the_next_counts_on(
    tmp_path: Path,
) -> None:
    path = tmp_path / "s"
    finished_store(path, 10)
    command = new_command("purge", "", args={"before": T0 + 1e6}, who="t", why="test")
    command_id = append_command(path, command)
    script = tmp_path / "purging.py"
    script.write_text(SCRIPT)
    proc = subprocess.Popen(
        [sys.executable, str(script), str(path), str(command_id)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "mid"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(WAIT)
    with Store(path, readonly=True) as store:
        left = store.count("workflows")
        so_far = store.get("commands", pending_key(command_id))["deleted"]
    assert 0 < left < 10
    assert 10 - left - 2 <= so_far <= 10 - left  # one batch short at most, never more
    with Runtime(path, clock=FakeClock(start=2e9), setup=register, retention=None) as rt:
        batches_of_two(rt)
        for _ in range(100):
            rt._sweep_now()
            rt._store.writer.flush(WAIT)
            outcome = command_outcome(rt._store, command_id)
            if outcome is not None:
                break
        assert outcome is not None
        assert rt._store.count("workflows") == 0
    assert (outcome["state"], outcome["deleted"]) == ("DONE", so_far + left)


@pytest.mark.timeout(60)
def test_check_and_compact_show_their_progress(
    tmp_path: Path, every_time: None, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "s"
    finished_store(path, 3)
    out = io.StringIO()
    assert main(["check", "--store", str(path)], out) == 0, capsys.readouterr().err
    assert out.getvalue().startswith("ok: ")
    checked = re.findall(r"herder check: (\d) workflows checked so far", capsys.readouterr().err)
    assert checked == ["1", "2", "3"]
    assert main(["compact", "--store", str(path)], out) == 0
    after = int(out.getvalue().split("-> ")[1].split(" bytes")[0].replace(",", ""))
    copied = re.findall(r"herder compact: ([\d,]+) bytes copied so far", capsys.readouterr().err)
    assert copied  # (at least once it is whole)
    assert int(copied[-1].replace(",", "")) == after
