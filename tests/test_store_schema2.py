"""A store written in schema 2 (records and history events as msgpack maps) opens and runs.

Two ways to get such a store, both without a checked-in ``.mdb``:

- :func:`downgrade` rewrites a store the way the previous release laid it out (every
  workflow and step record as its ``to_dict`` map, every history event as a map, the
  ``schema`` marker 2); it always runs.
- The previous release itself, its source taken from this repository's git history
  (commit :data:`PREVIOUS_RELEASE`, the last to write schema 2) and run by this
  interpreter without the installed herder; or ``HERDER_PREVIOUS_PYTHON``, a Python with
  that release installed. A child started with it leaves workflows in flight and is
  SIGKILLed. Skipped only where neither is to be had (a checkout without history).

Either way a current Runtime must open it, recover what was in flight, finish it, move
each record it writes to the schema 3 array layout, keep reading the history of both
layouts, and leave a store ``herder check`` passes.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pathlib
import signal
import subprocess
import sys
import sysconfig
import textwrap
import threading
from typing import Any

import pytest

from herder.runtime import (
    Agent,
    RetryPolicy,
    Runtime,
    State,
    StepContext,
    Workflow,
    WorkflowFailed,
)
from herder.runtime._check import check_store
from herder.runtime._cli import main
from herder.runtime.testing import FakeClock
from herder.store import (
    SCHEMA_VERSION,
    Put,
    StepRecord,
    Store,
    Transition,
    WorkflowRecord,
    as_event,
    encode,
)

WAIT = 30.0
PREVIOUS_RELEASE = "1e6974e"  # the last commit whose store is schema 2
REPO = pathlib.Path(__file__).resolve().parent.parent


def run_previous(
    tmp: pathlib.Path, code: str, path: pathlib.Path, **pipes: Any
) -> subprocess.Popen[str]:
    """Run ``code`` (with the store ``path`` as its argument) on the previous release."""
    previous = previous_release(tmp)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    argv = [code, str(path)] if len(previous) > 1 else ["-c", code, str(path)]
    return subprocess.Popen(previous + argv, text=True, env=env, cwd=tmp, **pipes)


def previous_release(tmp: pathlib.Path) -> list[str]:
    """The command that runs Python code (``-c CODE ARGS``) against the previous release."""
    given = os.environ.get("HERDER_PREVIOUS_PYTHON")
    if given:
        return [given]
    src, pkg = tmp / "src", tmp / "pkg" / "herder"
    src.mkdir()
    pkg.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", PREVIOUS_RELEASE, "store", "actors", "runtime"],
        capture_output=True,
        check=False,
    )
    if archive.returncode != 0:
        pytest.skip(f"no git history with {PREVIOUS_RELEASE} to build the previous release from")
    subprocess.run(["tar", "-x", "-C", str(src)], input=archive.stdout, check=True)
    for part in ("store", "actors", "runtime"):
        (pkg / part).symlink_to(src / part)
    # -S: no site, so no .pth (the installed herder's finder); its dependencies added back.
    paths = [str(pkg.parent), sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    return [
        sys.executable,
        "-S",
        "-c",
        f"import sys; sys.path[:0] = {paths!r}; exec(sys.argv.pop(1))",
    ]


class Svc(Agent):
    def __init__(
        self, entered: threading.Event | None = None, gate: threading.Event | None = None
    ) -> None:
        self.entered = entered
        self.gate = gate or threading.Event()

    def work(self, ctx: StepContext) -> str:
        if self.entered is not None and ctx.workflow_id == "flying":
            self.entered.set()  # its DISPATCHED is durable: it is in flight when we stop
            self.gate.wait(WAIT)
        return f"{ctx.workflow_id}/{ctx.step}"


def flow() -> Workflow:
    return (
        Workflow("two")
        .step("a", agent="svc", action="work", timeout=60.0)
        .step("b", agent="svc", action="work", after=["a"], timeout=60.0)
    )


def downgrade(path: pathlib.Path) -> int:
    """Rewrite the store at ``path`` (closed) as schema 2; returns how many values moved."""
    with Store(path) as store:
        ops: list[Put] = []
        for db, kind in (("workflows", WorkflowRecord), ("steps", StepRecord)):
            for key, value in store.scan(db, b""):
                stored = kind.from_dict(value).to_dict()
                stored.pop("reason", None)  # (appended after schema 2: no map of it has one)
                ops.append(Put(db, key, encode(stored)))
        for key, value in store.scan("history", b""):
            event = as_event(value)
            assert event is not None
            ops.append(Put("history", key, encode(event)))
        ops.append(Put("meta", b"schema", encode(2)))
        store.writer.submit(Transition(ops=tuple(ops))).result(WAIT)
    return len(ops) - 1


def assert_runs_and_migrates(path: pathlib.Path, ids: list[str], finished: list[str]) -> None:
    """Open a schema 2 store with workflows ``ids``, of which ``finished`` had finished
    (their records stay maps until something writes them again), and finish them."""
    with Store(path, readonly=True) as ro:
        assert ro.schema_version == 2
        assert all(isinstance(v, dict) for _, v in ro.scan("workflows", b""))
    with Runtime(path) as rt:
        rt.add_agent("svc", Svc)
        rt.add_workflow(flow())
        for wid in ids:
            assert rt.handle(wid).result(WAIT) == {"a": f"{wid}/a", "b": f"{wid}/b"}
            kinds = [(e["kind"], e.get("to")) for e in rt.history(wid)]
            assert ("workflow", "SUCCEEDED") in kinds
            assert ("step", "DISPATCHED") in kinds
    with Store(path, readonly=True) as ro:
        assert ro.schema_version == SCHEMA_VERSION  # an old herder now refuses it
        for wid in ids:
            assert ro.get_workflow(wid).state is State.SUCCEEDED  # type: ignore[union-attr]
            stored = ro.get("workflows", wid.encode())
            assert isinstance(stored, dict if wid in finished else list)  # moved on write
        assert check_store(ro).problems == []


def test_a_store_laid_out_in_schema_2_opens_recovers_and_migrates(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "s"
    entered, gate = threading.Event(), threading.Event()
    try:
        with Runtime(path) as rt:
            rt.add_agent("svc", lambda: Svc(entered, gate))
            rt.add_workflow(flow())
            rt.start("two", {}, workflow_id="done").result(WAIT)
            rt.start("two", {}, workflow_id="flying")
            assert entered.wait(WAIT)
            rt.stop(timeout=1.0)  # step a of "flying" stays DISPATCHED in the store
    finally:
        gate.set()
    assert downgrade(path) > 0
    with Store(path, readonly=True) as ro:
        assert all(isinstance(v, dict) for _, v in ro.scan("history", b""))
    assert_runs_and_migrates(path, ["done", "flying"], finished=["done"])


CHILD = textwrap.dedent(
    """
    import os, sys, threading
    from herder.runtime import Agent, Runtime, Workflow

    class Svc(Agent):
        def work(self, ctx):
            if ctx.workflow_id.startswith("flying"):
                threading.Event().wait()  # in flight when this process is killed
            return ctx.workflow_id + "/" + ctx.step

    rt = Runtime(sys.argv[1])
    rt.add_agent("svc", Svc)
    rt.add_workflow(
        Workflow("two")
        .step("a", agent="svc", action="work", timeout=60.0)
        .step("b", agent="svc", action="work", after=["a"], timeout=60.0)
    )
    rt.start("two", {}, workflow_id="done").result(30)
    for i in range(3):
        rt.start("two", {}, workflow_id=f"flying-{i}")
    import herder.store
    print("ready", herder.store.__file__, flush=True)
    threading.Event().wait()
    """
)


@pytest.mark.timeout(120)
def test_a_store_written_by_the_previous_release_opens_recovers_and_migrates(
    tmp_path: pathlib.Path,
) -> None:
    path = tmp_path / "s"
    child = run_previous(tmp_path, CHILD, path, stdout=subprocess.PIPE)
    try:
        assert child.stdout is not None
        ready, source = child.stdout.readline().split()
        assert ready == "ready", "the previous release did not start"
        assert not pathlib.Path(source).resolve().is_relative_to(REPO)  # not this release
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(WAIT)
    assert_runs_and_migrates(path, ["done", "flying-0", "flying-1", "flying-2"], ["done"])


class Travel(Agent):
    """Books each step; ``broken`` names what fails for good (``undo:step``: its undo)."""

    def __init__(self, broken: set[str]) -> None:
        self.broken = broken

    def book(self, ctx: StepContext) -> str:
        if ctx.step in self.broken:
            raise RuntimeError(f"{ctx.step} is sold out")
        return ctx.step

    def cancel(self, ctx: StepContext) -> None:
        if f"undo:{ctx.step}" in self.broken:
            raise RuntimeError(f"cannot cancel {ctx.step}")


def trip() -> Workflow:
    return (
        Workflow("trip")
        .step("hotel", agent="t", action="book", compensate="cancel")
        .step("car", agent="t", action="book", compensate="cancel", after=["hotel"])
    )


def run_trip(path: pathlib.Path, broken: set[str]) -> Runtime:
    rt = Runtime(path, clock=FakeClock(), default_retry=RetryPolicy(max_attempts=1))
    rt.add_agent("t", lambda: Travel(broken))
    rt.add_workflow(trip())
    return rt


@pytest.mark.parametrize("action", ["retry", "skip"])
def test_a_migrated_workflow_resolved_by_an_operator_says_why_it_compensated(
    tmp_path: pathlib.Path, action: str
) -> None:
    # The previous release parked it when the hotel's undo failed; its record has no
    # `reason`, so once an operator resolved it, it ended COMPENSATED still saying the
    # undo failed (as if that were why it compensated) where a schema 3 one says the car.
    path = tmp_path / "s"
    with run_trip(path, {"car", "undo:hotel"}) as rt:
        with pytest.raises(WorkflowFailed):
            rt.start("trip", workflow_id="w").result(WAIT)
        assert rt.status("w").state is State.NEEDS_ATTENTION
    downgrade(path)
    with Store(path, readonly=True) as ro:
        assert "reason" not in ro.get("workflows", b"w")  # as the previous release left it
    why = "step 'car' failed: RuntimeError: car is sold out"
    with run_trip(path, {"car"}) as rt:  # the hotel's undo works again
        assert "compensation of step 'hotel' failed" in (rt.status("w").error or "")
        getattr(rt, action)("w", who="ada", why="hotel fixed")
        with pytest.raises(WorkflowFailed, match=r"ended COMPENSATED: step 'car' failed"):
            rt.handle("w").result(WAIT)
        assert rt.status("w").error == why
    out = io.StringIO()
    assert main(["show", "w", "--json", "--store", str(path)], out) == 0
    shown = json.loads(out.getvalue())
    assert (shown["state"], shown["error"]) == ("COMPENSATED", why)
    assert shown["history"][-1] == {**shown["history"][-1], "to": "COMPENSATED", "error": why}


BESIDE_A_STANDBY = textwrap.dedent(
    """
    import sys, threading
    from herder.runtime import Agent, Runtime, Workflow

    class Svc(Agent):
        def work(self, ctx):
            threading.Event().wait()  # in flight when this process is killed

    rt = Runtime(sys.argv[1])
    rt.add_agent("svc", Svc)
    rt.add_workflow(
        Workflow("two")
        .step("a", agent="svc", action="work", timeout=60.0)
        .step("b", agent="svc", action="work", after=["a"], timeout=60.0)
    )
    rt.start("two", {}, workflow_id="early")
    print("ready", flush=True)
    sys.stdin.readline()
    rt.start("two", {}, workflow_id="late")  # after the standby opened the store
    print("started", flush=True)
    threading.Event().wait()
    """
)


@pytest.mark.timeout(120)
def test_a_standby_takes_over_from_the_previous_release_and_recovers_all_it_started(
    tmp_path: pathlib.Path,
) -> None:
    # An upgrade without downtime: this release waits as a standby beside the previous
    # one. The standby built the `recent` index (which the previous release does not
    # keep) when it opened the store, so a workflow the old runtime started after that
    # was missing from it; recovery reads the unfinished workflows off that index, and
    # after the takeover the workflow was never resumed.
    path = tmp_path / "s"
    child = run_previous(
        tmp_path, BESIDE_A_STANDBY, path, stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        assert child.stdin is not None
        assert child.stdout is not None
        assert child.stdout.readline() == "ready\n", "the previous release did not start"
        with Runtime(path, standby=True) as rt:
            rt.add_agent("svc", Svc)
            rt.add_workflow(flow())
            child.stdin.write("go\n")
            child.stdin.flush()
            assert child.stdout.readline() == "started\n"
            child.send_signal(signal.SIGKILL)
            child.wait(WAIT)
            assert rt.wait_active(WAIT)
            for wid in ("early", "late"):
                assert rt.handle(wid).result(WAIT) == {"a": f"{wid}/a", "b": f"{wid}/b"}
    finally:
        child.kill()
        child.wait(WAIT)


HOLDING = textwrap.dedent(
    """
    import sys, threading
    from herder.runtime import Agent, Runtime, Workflow

    class Svc(Agent):
        def work(self, ctx):
            return ctx.step

    rt = Runtime(sys.argv[1])
    rt.add_agent("svc", Svc)
    rt.add_workflow(Workflow("two").step("a", agent="svc", action="work"))
    rt.start("two", {}, workflow_id="done").result(30)
    print("ready", flush=True)
    threading.Event().wait()
    """
)


@pytest.mark.timeout(120)
def test_purge_of_a_store_the_previous_release_runs_says_to_upgrade_it_first(
    tmp_path: pathlib.Path,
) -> None:
    # The previous release has no purge: the command went to its runtime, which
    # refused it as "unknown operator action 'purge'", naming neither the old herder
    # nor what to do; and the docs said to purge with the herder that runs the store.
    path = tmp_path / "s"
    child = run_previous(tmp_path, HOLDING, path, stdout=subprocess.PIPE)
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == "ready\n", "the previous release did not start"
        out, err = io.StringIO(), io.StringIO()
        argv = ["purge", "--store", str(path), "--older-than", "0s", "--timeout", "5"]
        with contextlib.redirect_stderr(err):
            assert main(argv, out=out) == 1
        assert "older herder" in err.getvalue()
        assert "upgrade" in err.getvalue()
        with Store(path, readonly=True) as ro:
            assert ro.schema_version == 2
            assert list(ro.scan("commands", b"")) == []  # nothing queued for it
            assert ro.get_workflow("done") is not None
    finally:
        child.kill()
        child.wait(WAIT)
