"""The CLI's edges, through the real ``herder`` executable in a subprocess: handoff
without a standby, ``--version``, ``$HERDER_STORE``, ``ls`` order and filters; and the
public surface exporting every error a caller can meet."""

from __future__ import annotations

import importlib
import json
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import herder.runtime as api
from herder.runtime import Agent, HerderError, Runtime, StepContext, StoreClosed, Workflow
from herder.runtime.testing import FakeClock
from herder.store._standby import StandbyMark

HERDER = str(Path(sys.executable).parent / "herder")
WAIT = 30.0


def herder(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [HERDER, *argv],
        capture_output=True,
        text=True,
        timeout=WAIT * 2,
        env={**os.environ, **(env or {})},
        check=False,
    )


class Echo(Agent):
    def echo(self, ctx: StepContext) -> object:
        return ctx.input


ECHO = Workflow("echo").step("only", agent="echo", action="echo")


@pytest.fixture
def store(tmp_path: Path) -> Path:
    """Five finished workflows, w0 updated first and w4 last (one clock second apart)."""
    path = tmp_path / "store"
    clock = FakeClock(start=1_700_000_000.0)
    with Runtime(path, clock=clock) as rt:
        rt.add_agent("echo", Echo)
        rt.add_workflow(ECHO)
        for i in range(5):
            rt.start("echo", i, workflow_id=f"w{i}").result(timeout=WAIT)
            clock.advance(1.0)
    return path


def test_ls_lists_the_last_updated_first_and_limits(store: Path) -> None:
    listed = herder("ls", "--store", str(store), "--json", "--limit", "3")
    assert listed.returncode == 0, listed.stderr
    assert [w["id"] for w in json.loads(listed.stdout)] == ["w4", "w3", "w2"]
    table = herder("ls", "--store", str(store), "--limit", "2").stdout
    assert table.index("w4") < table.index("w3")
    assert "--limit N for more" in table


def test_ids_a_terminal_would_act_on_are_shown_escaped_one_row_a_line(tmp_path: Path) -> None:
    """docs/operations.md: piped, the output is plain text with nothing wrapped, so grep
    sees whole lines. Ids may hold a newline, a tab or a bidi override."""
    path = tmp_path / "store"
    odd = ["two\nlines", "tab\there", "rlo\u202edi"]
    with Runtime(path) as rt:
        rt.add_agent("echo", Echo)
        rt.add_workflow(ECHO)
        for wid in odd:
            rt.start("echo", 1, workflow_id=wid).result(timeout=WAIT)
    listed = herder("ls", "--store", str(path)).stdout.splitlines()
    assert len(listed) == 1 + len(odd)  # the header and one line each
    for shown in ("two\\nlines", "tab\\there", "rlo\\u202edi"):
        assert sum(shown in line for line in listed) == 1
    shown = herder("show", "--store", str(path), "two\nlines").stdout
    assert shown.startswith("workflow two\\nlines: echo@1 SUCCEEDED\n")
    as_json = json.loads(herder("ls", "--store", str(path), "--json").stdout)
    assert sorted(w["id"] for w in as_json) == sorted(odd)  # JSON keeps them exact


def test_show_clips_a_big_input_and_result_and_json_keeps_them_whole(tmp_path: Path) -> None:
    # A result was printed whole as a table cell, and every other row padded to its
    # width: eight 16 MiB results made 167 MB of text.
    path = tmp_path / "store"
    rows = [{"n": i, "name": f"row {i}"} for i in range(5000)]
    with Runtime(path) as rt:
        rt.add_agent("echo", Echo)
        rt.add_workflow(ECHO)
        rt.start("echo", rows, workflow_id="big").result(timeout=WAIT)
    text = herder("show", "--store", str(path), "big").stdout
    assert len(text) < 4000, len(text)
    assert text.count("characters; --json prints it all)") == 2  # the input and the result
    whole = json.loads(herder("show", "--store", str(path), "big", "--json").stdout)
    assert whole["input"] == rows
    assert [step["result"] for step in whole["steps"]] == [rows]


def test_ls_since_keeps_only_workflows_updated_since_then(store: Path) -> None:
    listed = herder("ls", "--store", str(store), "--json", "--since", "2023-11-14T22:13:22+00:00")
    assert listed.returncode == 0, listed.stderr
    # w0 finished at 1_700_000_000 (22:13:20 UTC), one per second after it.
    assert [w["id"] for w in json.loads(listed.stdout)] == ["w4", "w3", "w2"]
    bad = herder("ls", "--store", str(store), "--since", "yesterday-ish")
    assert bad.returncode == 2  # bad usage, as any bad option
    assert "argument --since: 'yesterday-ish' is neither a duration" in bad.stderr


def test_ls_state_filters_through_the_index(store: Path) -> None:
    done = herder("ls", "--store", str(store), "--json", "--state", "succeeded", "--limit", "0")
    assert [w["id"] for w in json.loads(done.stdout)] == ["w4", "w3", "w2", "w1", "w0"]
    none = herder("ls", "--store", str(store), "--json", "--state", "RUNNING")
    assert json.loads(none.stdout) == []


def test_herder_store_in_the_environment_is_the_default_store(store: Path) -> None:
    listed = herder("ls", "--json", env={"HERDER_STORE": str(store)})
    assert listed.returncode == 0, listed.stderr
    assert len(json.loads(listed.stdout)) == 5
    missing = herder("ls", env={"HERDER_STORE": ""})
    assert missing.returncode == 2
    assert "--store DIR is required (or set $HERDER_STORE" in missing.stderr
    empty = herder("ls", "--store", "", env={"HERDER_STORE": ""})  # (not the current directory)
    assert empty.returncode == 2
    assert "--store DIR is required" in empty.stderr


def test_version_prints_the_installed_version() -> None:
    from importlib.metadata import version

    shown = herder("--version")
    assert shown.returncode == 0
    assert shown.stdout.strip() == f"herder {version('herder')}"


@pytest.mark.timeout(120)
def test_handoff_without_a_standby_refuses_unless_forced(tmp_path: Path) -> None:
    path = tmp_path / "store"
    rt = Runtime(path, sweep_interval=0.05)
    try:
        refused = herder("handoff", "--store", str(path), "--deadline", "1")
        assert refused.returncode == 1
        assert "no standby waits" in refused.stderr
        assert "--force" in refused.stderr
        assert rt.is_active  # nothing was asked of it
        forced = herder("handoff", "--store", str(path), "--deadline", "1", "--force")
        assert forced.returncode == 0, forced.stderr
        assert "released" in forced.stdout
    finally:
        rt.stop()


@pytest.mark.timeout(120)
def test_handoff_goes_ahead_when_a_standby_waits(tmp_path: Path) -> None:
    path = tmp_path / "store"
    rt = Runtime(path, sweep_interval=0.05)
    mark = StandbyMark(path)  # what a waiting standby runtime holds
    try:
        asked = herder("handoff", "--store", str(path), "--deadline", "1", "--wait", "2")
        assert asked.returncode == 0, asked.stderr
        assert "asked pid" in asked.stdout
    finally:
        mark.release()
        rt.stop()


@pytest.mark.timeout(120)
def test_handoff_with_no_wait_asks_and_succeeds(tmp_path: Path) -> None:
    # --wait 0 said "the lease did not move within 0.0 s" and exited 1, though the request
    # was written and the runtime went on to hand over.
    path = tmp_path / "store"
    rt = Runtime(path, sweep_interval=0.05)
    mark = StandbyMark(path)
    try:
        asked = herder("handoff", "--store", str(path), "--deadline", "1", "--wait", "0")
        assert asked.returncode == 0, asked.stderr
        assert "asked pid" in asked.stdout
        assert "not waiting" in asked.stdout
    finally:
        mark.release()
        rt.stop()


@pytest.mark.timeout(60)
def test_handoff_refuses_a_deadline_over_ten_years_as_rt_handoff_does(tmp_path: Path) -> None:
    path = tmp_path / "store"
    Runtime(path).stop()
    with Runtime(path, standby=True) as rt, pytest.raises(api.InvalidInput, match="ten years"):
        rt.handoff(deadline=1e12)
    refused = herder("handoff", "--store", str(path), "--deadline", "1e12", "--force")
    assert refused.returncode == 2, refused
    assert "more than ten years" in refused.stderr


HOLDER = """
import sys
from herder.store import Store
store = Store(sys.argv[1], lease=60.0)
print("open", flush=True)
sys.stdin.readline()
"""


@pytest.mark.timeout(120)
def test_handoff_from_a_runtime_that_died_says_it_is_gone_and_holds_nothing(
    tmp_path: Path,
) -> None:
    # The runtime holding the lease was SIGKILLed, its lease not yet expired. `herder
    # handoff` said "no standby waits ... would stop the only runtime (pid N)"; forced, it
    # asked the dead pid, held the store's flock while it waited (--wait, 60 s by default:
    # a runtime restarted meanwhile was refused, StoreLocked) and ended "did not move".
    path = tmp_path / "store"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None
    assert holder.stdout.readline().strip() == "open"
    holder.kill()
    holder.wait(timeout=WAIT)
    for forced in ([], ["--force"]):
        told = herder("handoff", "--store", str(path), "--wait", "20", *forced)
        assert told.returncode == 1
        assert f"(pid {holder.pid}) is gone" in told.stderr
        assert "asked" not in told.stdout
    with Runtime(path) as rt:  # and it is free to open
        assert rt.is_active


def _herder_errors() -> set[type[HerderError]]:
    for pkg in ("herder.store", "herder.actors", "herder.runtime"):
        path = importlib.import_module(pkg).__path__
        for module in pkgutil.walk_packages(path, pkg + "."):
            if not module.name.endswith("__main__"):
                try:
                    importlib.import_module(module.name)
                except ModuleNotFoundError as exc:  # an optional extra's module
                    if exc.name != "ray":
                        raise
    found: set[type[HerderError]] = set()
    todo: list[type[HerderError]] = [HerderError]
    while todo:
        cls = todo.pop()
        found.add(cls)
        todo += cls.__subclasses__()
    return {c for c in found if c.__module__.startswith("herder.")}


def test_every_herder_error_is_exported_from_herder_runtime() -> None:
    missing = {c.__name__ for c in _herder_errors() if getattr(api, c.__name__, None) is not c}
    assert missing == set()


def test_stats_after_the_runtime_stopped_raises_the_exported_store_closed(tmp_path: Path) -> None:
    rt = Runtime(tmp_path / "store")
    rt.stop()
    with pytest.raises(StoreClosed):
        rt.stats()


@pytest.mark.parametrize(
    ("argv", "error"),
    [
        (["ls", "--limit", "-1"], "'-1' is not a whole number >= 0"),
        (["cancel", "w", "--why", "x", "--timeout", "-1"], "'-1' is not a number of seconds"),
        (["purge", "--older-than", "7d", "--timeout", "nan"], "'nan' is not a number of seconds"),
        (["handoff", "--deadline", "inf"], "'inf' is not a number of seconds"),
        (["run", "--app", "m:f", "--lease", "-1"], "--lease: '-1' is not a number of seconds > 0"),
        # The Runtime's own rules for a lease, and the shape of --app, were checked only
        # after the app was imported: exit 1, no usage line, while the others exit 2.
        (["run", "--app", "m:f", "--lease", "1e300"], "--lease: '1e300': lease must be a"),
        (["run", "--app", "m:f", "--lease", "0.1"], "--lease: '0.1': lease 0.1 s is shorter"),
        (["run", "--app", "nosuch"], "argument --app: 'nosuch' is not module:factory: name"),
        (["run", "--app", "m:f", "--lease", "0"], "argument --lease: '0' is not a number of"),
        (["run", "--app", "m:f", "--lease", "nan"], "argument --lease: 'nan' is not a number"),
        (["ls", "--since", "soon"], "argument --since: 'soon' is neither a duration"),
        (["purge", "--older-than", "7"], "argument --older-than: '7' is not an age: give"),
        # An age only: a date goes to --before, with or without a zone (one with a "Z"
        # was taken as an absolute cutoff).
        (["purge", "--older-than", "2099-01-01T00:00Z"], "'2099-01-01T00:00Z' is not an age"),
        (["purge", "--older-than", "5x"], "'5x' is not an age: give a number and a unit"),
        (["purge", "--before", "2026-13-01"], "argument --before: '2026-13-01' is neither"),
    ],
)
def test_a_bad_number_is_a_usage_error(
    tmp_path: Path, argv: list[str], error: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from herder.runtime._cli import main

    with pytest.raises(SystemExit) as exited:
        main([*argv, "--store", str(tmp_path)])
    assert exited.value.code == 2
    assert error in capsys.readouterr().err


def test_a_store_the_user_may_not_look_into_is_an_error_not_a_traceback(tmp_path: Path) -> None:
    # A store directory is 0700, its runtime's user's: an operator running `herder ls` as
    # themselves met EACCES from a path probe (Path.is_file() raises every errno but "not
    # there") as a Python traceback. Root enters any directory: a name too long takes
    # the same way there.
    path = tmp_path / "store"
    with Runtime(path):
        pass
    if os.geteuid() == 0:
        path, says = tmp_path / ("x" * 300), "File name too long"
    else:
        path.chmod(0)
        says = "Permission denied"
    try:
        done = herder("ls", "--store", str(path))
    finally:
        (tmp_path / "store").chmod(0o700)
    assert done.returncode == 1, done.stderr
    assert says in done.stderr
    assert "Traceback" not in done.stderr


READS = (["ls"], ["show", "w0"], ["inbox"], ["stats"], ["schedules"])


@pytest.mark.parametrize("as_json", [[], ["--json"]], ids=["text", "json"])
def test_the_read_commands_exit_codes_are_the_documented_ones(
    store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], as_json: list[str]
) -> None:
    """docs/operations.md: 0 printed, 1 the store cannot be read or the workflow is not
    there (stdout empty), 2 bad usage."""
    import io

    from herder.runtime._cli import main

    def run(*argv: str) -> tuple[int, str]:
        out = io.StringIO()
        try:
            code = main([*argv, *as_json], out)
        except SystemExit as exc:  # (argparse: bad usage)
            code = int(exc.code or 0)
        return code, out.getvalue()

    for argv in READS:
        code, text = run(*argv, "--store", str(store))
        assert code == 0, argv
        if as_json:
            json.loads(text)
        assert run(*argv, "--store", str(tmp_path / "nowhere")) == (1, ""), argv
    assert run("show", "nobody", "--store", str(store)) == (1, "")
    assert run("ls", "--limit", "-1", "--store", str(store))[0] == 2
    assert "no store at" in capsys.readouterr().err


@pytest.mark.timeout(60)
def test_a_handoff_that_a_stop_cuts_short_ends_quietly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A stop() while the runtime drained for a handoff left RuntimeClosed as an unhandled
    # exception of the herder-handoff thread (a traceback on stderr); the stop releases
    # the lease itself, so the handoff has nothing left to do.
    import threading

    path = tmp_path / "store"
    rt = Runtime(path, sweep_interval=0.05)
    mark = StandbyMark(path)  # (a standby waits: the request is heard)
    draining, failures = threading.Event(), []

    def stopped_meanwhile(deadline: float) -> None:
        draining.set()
        raise api.RuntimeClosed("the runtime is stopped; open a new Runtime to continue")

    monkeypatch.setattr(rt, "_drain", stopped_meanwhile)
    monkeypatch.setattr(threading, "excepthook", failures.append)
    try:
        rt._store.request_handoff(1.0, "test")
        assert draining.wait(30)
        [handing] = [t for t in threading.enumerate() if t.name == "herder-handoff"] or [None]
        if handing is not None:
            handing.join(30)
        assert failures == []
    finally:
        mark.release()
        rt.stop()


@pytest.mark.timeout(60)
def test_handoff_waits_by_default_for_the_deadline_plus_two_leases(tmp_path: Path) -> None:
    # `herder handoff --deadline 120` exited 1 ("the lease did not move within 60 s")
    # while the runtime still drained as asked: the wait did not follow the deadline, as
    # rt.handoff() on a standby does. Here a holder that never hands over (a store that
    # renews its lease, and reads no request): the default wait is the deadline plus two
    # of its leases, 0.5 + 2 x 1.0 s, not a minute.
    from herder.runtime._ha import lease_kept
    from herder.store import Store

    path = tmp_path / "store"
    with Store(path, lease=1.0) as held, lease_kept(held):
        mark = StandbyMark(path)
        try:
            told = subprocess.run(
                [HERDER, "handoff", "--store", str(path), "--deadline", "0.5"],
                capture_output=True,
                text=True,
                timeout=20,  # (it waited a minute)
                check=False,
            )
        finally:
            mark.release()
    assert told.returncode == 1, told.stdout
    assert "did not move within 2.5 s" in told.stderr
    assert "--wait" in told.stderr  # how to wait longer
