"""Security basics: private files, no unpickling anywhere, read-only inspection."""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from herder.runtime import Agent, Runtime, StepContext, Workflow
from herder.runtime.testing import FakeClock

ROOT = Path(__file__).resolve().parent.parent
SOURCES = sorted(p for d in ("store", "actors", "runtime") for p in (ROOT / d).rglob("*.py"))


class Echo(Agent):
    def echo(self, ctx: StepContext) -> object:
        return ctx.input


@pytest.fixture
def store(tmp_path: Path) -> Path:
    path = tmp_path / "s"
    with Runtime(path, clock=FakeClock()) as rt:
        rt.add_agent("svc", Echo)
        rt.add_workflow(Workflow("echo").step("s", agent="svc", action="echo"))
        rt.start("echo", {"secret": "x"}, workflow_id="w").result(timeout=10)
    return path


def test_every_store_file_is_0600_in_a_0700_directory(store: Path) -> None:
    assert stat.S_IMODE(store.stat().st_mode) == 0o700
    files = sorted(store.iterdir())
    assert {f.name for f in files} >= {"data.mdb", "lock.mdb", "herder.lock"}
    for f in files:
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f.name


UNSAFE = re.compile(
    r"\b(pickle|cPickle|cloudpickle|dill|marshal|shelve|jsonpickle)\b|yaml\.load\(|\beval\("
)


def test_nothing_ever_unpickles_or_evals_data() -> None:
    assert len(SOURCES) > 20
    offenders = [
        f"{p.relative_to(ROOT)}:{n}: {line.strip()}"
        for p in SOURCES
        for n, line in enumerate(p.read_text().splitlines(), 1)
        if UNSAFE.search(line) and "never pickle" not in line.lower()
    ]
    assert offenders == []


def test_every_msgpack_decode_is_raw_false_and_store_data_is_str_keyed() -> None:
    calls = [
        (p, line)
        for p in SOURCES
        for line in p.read_text().splitlines()
        if "unpackb(" in line or "Unpacker(" in line
    ]
    assert calls, "the codec decodes somewhere"
    for path, line in calls:
        assert "raw=False" in line, f"{path}: {line.strip()}"
        if path.parent.name == "store":  # everything read back from the store
            assert path.name == "_codec.py", f"decode stored data through the codec: {path}"
            assert "strict_map_key=True" in line


# Patches lmdb.open to record how the store is opened, then runs each CLI command given
# (as a JSON list of argument lists) and prints, per command, its exit code and opens.
SPY = """
import contextlib, io, json, sys, lmdb
from herder.runtime._cli import main
opened = []
real_open = lmdb.open
def spy(path, **kw):
    opened.append(bool(kw.get("readonly")))
    return real_open(path, **kw)
lmdb.open = spy
report = []
for argv in json.loads(sys.argv[1]):
    opened.clear()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        code = main(argv)
    report.append({"argv": argv, "code": code, "opened": list(opened)})
print(json.dumps(report))
"""

# Every read-only command (retry, skip, ... write a command for the running runtime).
COMMANDS = [["ls"], ["ls", "--json"], ["show", "w"], ["show", "missing"], ["stats", "--json"],
            ["check"], ["inbox"], ["inbox", "--json"]]  # fmt: skip


def test_read_only_commands_open_read_only_and_leave_the_data_untouched(store: Path) -> None:
    data = store / "data.mdb"
    before = (hashlib.sha256(data.read_bytes()).hexdigest(), data.stat().st_mtime_ns)
    commands = [[*argv, "--store", str(store)] for argv in COMMANDS]
    proc = subprocess.run(
        [sys.executable, "-c", SPY, json.dumps(commands)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    for result in json.loads(proc.stdout):
        assert result["code"] in (0, 1), result  # 1: the unknown id
        assert result["opened"], f"{result['argv']} opened the store"
        assert all(result["opened"]), f"{result['argv']} opened it read-only"
    after = (hashlib.sha256(data.read_bytes()).hexdigest(), data.stat().st_mtime_ns)
    assert after == before
    assert stat.S_IMODE(os.stat(store).st_mode) == 0o700
