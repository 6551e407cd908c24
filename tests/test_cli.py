"""The herder command line against stores a real runtime wrote."""

from __future__ import annotations

import io
import itertools
import json
import re
from pathlib import Path
from typing import Any

import pytest

from herder.runtime import Agent, Permanent, RetryPolicy, Runtime, StepContext, Workflow
from herder.runtime._cli import _PASS_THROUGH, main
from herder.store import Store, pending_commands

FAST = RetryPolicy(max_attempts=2, initial_interval=0.0, jitter=0.0)


class Shop(Agent):
    def buy(self, ctx: StepContext) -> dict[str, str]:
        if ctx.input.get("sold_out") and ctx.step == "ship":
            raise Permanent("out of stock")
        return {"item": ctx.step}

    def refund(self, ctx: StepContext) -> None:
        if ctx.input.get("refunds_down"):
            raise Permanent("refunds are down")


ORDER = (
    Workflow("order", version=2)
    .step("pay", agent="shop", action="buy", compensate="refund")
    .step("pack", agent="shop", action="buy", compensate="refund", after=["pay"])
    .step("ship", agent="shop", action="buy", after=["pack"])
)
INPUTS = {"o-ok": {}, "o-undone": {"sold_out": 1}, "o-stuck": {"sold_out": 1, "refunds_down": 1}}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """o-ok succeeded, o-undone compensated, o-stuck needs attention (its refund failed).

    The runtime is opened twice (the second start of each id finds the first).
    """
    path = tmp_path_factory.mktemp("cli") / "store"
    for _ in range(2):
        with Runtime(path, default_retry=FAST) as rt:
            rt.add_agent("shop", Shop)
            rt.add_workflow(ORDER)
            for wid, data in INPUTS.items():
                rt._wait_final(rt.start("order", data, workflow_id=wid).id, 10)
    return path


def run(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    code = main(list(argv), out)
    return code, out.getvalue()


def test_ls_json_lists_every_workflow_with_its_state(store: Path) -> None:
    code, out = run("ls", "--store", str(store), "--json")
    assert code == 0
    states = {w["id"]: w["state"] for w in json.loads(out)}
    assert states == {"o-ok": "SUCCEEDED", "o-undone": "COMPENSATED", "o-stuck": "NEEDS_ATTENTION"}


def test_ls_filters_by_state_case_insensitively(store: Path) -> None:
    code, out = run("ls", "--store", str(store), "--state", "succeeded", "--json")
    assert code == 0
    assert [w["id"] for w in json.loads(out)] == ["o-ok"]


def test_ls_prints_a_table_with_ids_and_states(store: Path) -> None:
    code, out = run("ls", "--store", str(store))
    assert code == 0
    assert "o-undone" in out
    assert "COMPENSATED" in out
    assert "order@2" in out


def test_show_json_gives_steps_in_definition_order_with_attempts(store: Path) -> None:
    code, out = run("show", "o-undone", "--store", str(store), "--json")
    assert code == 0
    shown = json.loads(out)
    assert shown["state"] == "COMPENSATED"
    assert [(s["name"], s["state"]) for s in shown["steps"]] == [
        ("pay", "COMPENSATED"),
        ("pack", "COMPENSATED"),
        ("ship", "FAILED"),
    ]
    assert "out of stock" in shown["error"]


def test_show_of_an_unknown_id_fails_with_a_message(
    store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _ = run("show", "nope", "--store", str(store))
    assert code == 1
    assert "no workflow with id 'nope'" in capsys.readouterr().err


def test_stats_json_counts_workflows_and_steps_by_state(store: Path) -> None:
    code, out = run("stats", "--store", str(store), "--json")
    assert code == 0
    stats = json.loads(out)
    assert stats["workflows"]["SUCCEEDED"] == 1
    assert stats["workflows"]["COMPENSATED"] == 1
    assert stats["workflows"]["NEEDS_ATTENTION"] == 1
    assert stats["steps"]["COMPENSATED"] == 2
    assert stats["steps"]["SUCCEEDED"] == 3 + 1  # o-ok's three, o-stuck's unrefunded pay
    assert stats["incarnation"] == 2  # opened twice by a runtime
    assert stats["definitions"] == 1


def test_stats_counts_timer_entries_and_says_so(store: Path) -> None:
    # A finished store showed "timers 2": the timeout entries of attempts that ended stay
    # in the timer index until they come due (then they are dropped), and the count is of
    # those entries, read in O(1), not of timers still to fire. The label said "timers".
    with Store(store, readonly=True) as s:
        entries = s.count("timers")
    assert entries > 0  # (every workflow here is final)
    code, out = run("stats", "--store", str(store))
    assert code == 0
    rows = dict(re.findall(r"^  (\S.*?)  +(\S+)$", out, re.M))
    assert rows["timer entries"] == str(entries)
    assert "timers" not in rows
    assert json.loads(run("stats", "--store", str(store), "--json")[1])["timers"] == entries


def test_retry_without_a_runtime_is_queued_and_changes_nothing_now(
    store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _ = run("retry", "o-stuck", "--store", str(store), "--why", "test")
    assert code == 3
    err = capsys.readouterr().err
    assert "no runtime holds the store" in err
    assert "queued" in err
    assert json.loads(run("show", "o-stuck", "--store", str(store), "--json")[1])["state"] == (
        "NEEDS_ATTENTION"
    )


def test_an_action_on_a_workflow_that_ended_is_refused_at_once_and_not_queued(
    store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # COMPENSATED is for good: no runtime could ever apply it, so none is waited for.
    for action in ("retry", "cancel", "abandon"):
        code, _ = run(action, "o-undone", "--store", str(store), "--why", "test")
        assert code == 1
        err = capsys.readouterr().err
        assert "refused: workflow 'o-undone' is COMPENSATED" in err
        assert "nothing was queued" in err
    with Store(store, readonly=True) as ro:
        assert [c for c in pending_commands(ro) if c["workflow_id"] == "o-undone"] == []


def test_show_prints_the_workflow_history(store: Path) -> None:
    code, out = run("show", "o-stuck", "--store", str(store), "--json")
    assert code == 0
    story = [(e["kind"], e.get("step"), e["to"]) for e in json.loads(out)["history"]]
    assert story[0] == ("workflow", None, "RUNNING")
    assert ("step", "ship", "FAILED") in story
    assert story[-1] == ("workflow", None, "NEEDS_ATTENTION")
    code, out = run("show", "o-stuck", "--store", str(store))
    assert "history" in out
    assert "COMPENSATING -> NEEDS_ATTENTION" in out


def test_inbox_lists_the_workflow_that_needs_attention(store: Path) -> None:
    code, out = run("inbox", "--store", str(store), "--json")
    assert code == 0
    [item] = json.loads(out)
    assert (item["id"], item["step"], item["step_state"]) == ("o-stuck", "pack", "COMPENSATING")
    assert "refunds are down" in item["step_error"]
    code, out = run("inbox", "--store", str(store))
    assert "o-stuck" in out


def test_inspecting_a_directory_without_a_store_fails_clearly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _ = run("stats", "--store", str(tmp_path / "none"))
    assert code == 1
    assert "no store at" in capsys.readouterr().err


def test_ctrl_c_in_a_command_exits_130_without_a_traceback(
    store: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # A Ctrl-C while `herder retry --timeout` waited, or `herder ls` read a large store,
    # ended in a KeyboardInterrupt traceback.
    def interrupted(args: object, out: object) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr("herder.runtime._cli_inspect._run", interrupted)
    try:
        code = main(["ls", "--store", str(store)], io.StringIO())
    except KeyboardInterrupt:
        pytest.fail("Ctrl-C escaped herder's CLI as a traceback")
    assert code == 130
    assert capsys.readouterr().err == "herder ls: interrupted\n"


@pytest.mark.parametrize(
    ("argv", "seam", "said"),
    [
        (["ls", "--store", "s"], "herder.runtime._cli._parser", "herder"),
        (["ls", "--store", "s"], "herder.runtime._cli.require_store", "herder ls"),
        (["demo", "--workflows", "1"], "herder.runtime._cli._demo", "herder demo"),
    ],
    ids=["parsing", "checking-usage", "demo-loading"],
)
def test_ctrl_c_while_a_command_starts_exits_130_without_a_traceback(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    seam: str,
    said: str,
) -> None:
    # Only the command's own work was guarded: a Ctrl-C while its arguments were parsed
    # or `herder demo` (or bench) loaded its module ended in a KeyboardInterrupt traceback.
    def interrupted(*args: object) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(seam, interrupted)
    if seam.endswith("_demo"):
        monkeypatch.setitem(_PASS_THROUGH, "demo", interrupted)
    try:
        code = main(argv, io.StringIO())
    except KeyboardInterrupt:
        pytest.fail("Ctrl-C escaped herder's CLI as a traceback")
    assert code == 130
    assert capsys.readouterr().err == f"{said}: interrupted\n"


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_long_table_on_a_terminal_is_printed_plain() -> None:
    # rich draws about 2 ms a row: `herder show` of a workflow retried 20,000 times took
    # 40 s and 320 MB on a terminal (1.6 s piped). A short table still gets its box.
    pytest.importorskip("rich")
    from herder.runtime._console import print_table

    short, long = _Terminal(), _Terminal()
    print_table(short, "", ("a", "b"), [("x", 1)] * 3)
    print_table(long, "", ("a", "b"), [("x", 1)] * 1001)  # (docs: rich up to 1,000 rows)
    assert "─" in short.getvalue()
    assert "─" not in long.getvalue()
    assert long.getvalue().count("\n") == 1002  # (the header, then every row)


def test_a_table_on_a_terminal_shows_user_text_as_it_is_not_as_markup() -> None:
    # rich read every cell as markup: an action's error with "[/x]" in it made
    # `herder ls`, `show` and `inbox` fail with a MarkupError traceback on a terminal, and
    # "[red]a[/red]" or "[link=...]" showed (or linked) other than what was stored.
    pytest.importorskip("rich")
    from herder.runtime._console import print_table

    out = _Terminal()
    cells = ("bad [/x] input", "[red]a[/red] [link=https://evil.example]b[/link]")
    print_table(out, "store [/y]", ("[/z]", "b"), [cells])
    text = out.getvalue()
    assert "store [/y]" in text
    assert "[/z]" in text
    assert "bad [/x] input" in text
    assert "[red]a[/red] [link=https://evil.example]b[/link]" in text
    assert "\x1b]8;" not in text  # (no hyperlink escape)


class Hostile(Agent):
    def go(self, ctx: StepContext) -> None:
        raise Permanent("evil \x1b[2J\x1b]0;pwned\x07 one\ntwo")


def test_show_writes_no_terminal_control_from_an_error(tmp_path: Path) -> None:
    # A table cell was made printable, but `herder show`'s error line and --attempts
    # wrote an action's error raw: its escapes cleared the operator's terminal and set
    # its title, a newline in it read as another line of the report.
    path = tmp_path / "store"
    with Runtime(path, default_retry=FAST) as rt:
        rt.add_agent("hostile", Hostile)
        rt.add_workflow(Workflow("evil").step("s", agent="hostile", action="go"))
        rt._wait_final(rt.start("evil", {}, workflow_id="e").id, 10)
    code, text = run("show", "e", "--attempts", "--store", str(path))
    assert code == 0
    assert "\x1b" not in text
    assert "\x07" not in text
    assert "evil \\x1b[2J" in text
    error_lines = [line for line in text.splitlines() if line.startswith("  error ")]
    assert len(error_lines) == 1
    assert error_lines[0].endswith("one\\ntwo")


@pytest.mark.parametrize("as_json", [False, True])
def test_ls_of_every_workflow_keeps_no_more_of_each_than_it_printed(
    tmp_path: Path, as_json: bool
) -> None:
    # `herder ls --limit 0` held every workflow it listed whole, input and step results
    # included, until its last row was read: 1.3 GB for 100,000 workflows of 2 KB inputs
    # that printed a 6.6 MB table, 4.7 GB as JSON (written only once all was read).
    import tracemalloc

    from herder.store import Put, Transition, WorkflowRecord, WorkflowState, encode, workflow_key

    path, blob = tmp_path / "store", "x" * 50_000
    with Store(path) as s:
        done = WorkflowState.SUCCEEDED
        ops = tuple(
            Put("workflows", workflow_key(r.id), encode(r.to_stored()))
            for i in range(100)
            for r in [WorkflowRecord(f"w-{i:03}", "bulk", 1, {"blob": blob}, done, i, i)]
        )
        s.writer.submit(Transition(ops=ops)).result(timeout=10)
    argv = ["ls", "--store", str(path), "--limit", "0", *(["--json"] if as_json else [])]
    with open(tmp_path / "out", "w") as out:  # (not a StringIO: no output held either)
        tracemalloc.start()
        try:
            assert main(argv, out) == 0
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    text = (tmp_path / "out").read_text()
    if as_json:
        listed = json.loads(text)
        assert [r["id"] for r in listed] == [f"w-{i:03}" for i in reversed(range(100))]
        assert all(r["input"] == {"blob": blob} for r in listed)
    else:
        lines = text.splitlines()
        assert len(lines) == 101
        assert lines[1].split()[0] == "w-099"
    assert peak < 20 * len(blob), f"{peak:,} bytes at the peak for 5 MB of inputs"


def test_ls_lists_a_workflow_that_changed_while_it_listed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `herder ls` read the index a page at a time, each page in a read of its own: a
    # workflow that changed meanwhile moved above the pages read and was left out
    # (--limit 0 of a store of 20,000 whose workflows were finishing listed 15,000).
    from herder.runtime import _inspect
    from herder.store import Put, Transition, WorkflowRecord, WorkflowState, encode, workflow_key

    def put(wid: str, state: WorkflowState, at: float) -> Put:
        record = WorkflowRecord(wid, "order", 1, {}, state, at, at)
        return Put("workflows", workflow_key(wid), encode(record.to_stored()))

    ids = [f"w-{i:02}" for i in range(12)]
    monkeypatch.setattr("herder.store._recent.PAGE", 5)  # (three pages)
    with Store(tmp_path / "store") as s:
        ops = tuple(put(wid, WorkflowState.RUNNING, 1e9 + i) for i, wid in enumerate(ids))
        s.writer.submit(Transition(ops=ops)).result(timeout=10)
        real = _inspect._Reader.status_of
        finished: list[str] = []

        def status_of(reader: Any, wid: str) -> Any:
            if not finished:  # the oldest one finishes as the first row is read
                done = put("w-00", WorkflowState.SUCCEEDED, 2e9)
                s.writer.submit(Transition(ops=(done,))).result(timeout=10)
                finished.append("w-00")
            return real(reader, wid)

        monkeypatch.setattr(_inspect._Reader, "status_of", status_of)
        out = io.StringIO()
        _inspect.list_workflows(out, s, state=None, limit=None, as_json=True)
    listed = {row["id"]: row["state"] for row in json.loads(out.getvalue())}
    assert sorted(listed) == ids, f"{sorted(set(ids) - set(listed))} left out"
    assert listed["w-00"] == "SUCCEEDED"  # (as it is when read)


def test_ls_lists_every_workflow_when_its_read_of_the_index_is_run_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The ids are read in one read transaction (Store.together), which runs the read
    # again when another process grew the map meanwhile: the second run went on from
    # where the first had stopped, in an iterator it had used up, and listed nothing.
    import lmdb

    from herder.runtime import _inspect
    from herder.store import Put, Transition, WorkflowRecord, WorkflowState, encode, workflow_key

    ids = [f"w-{i}" for i in range(5)]
    with Store(tmp_path / "store") as s:
        done = WorkflowState.SUCCEEDED
        ops = tuple(
            Put("workflows", workflow_key(r.id), encode(r.to_stored()))
            for i, wid in enumerate(ids)
            for r in [WorkflowRecord(wid, "order", 1, {}, done, i, i)]
        )
        s.writer.submit(Transition(ops=ops)).result(timeout=10)
    with Store(tmp_path / "store", readonly=True) as s:
        real, calls = s.recent, []

        def recent(**kw: Any) -> Any:
            calls.append(kw)
            rows = real(**kw)
            if len(calls) == 1:  # the first run: two rows, then the map grew
                yield from itertools.islice(rows, 2)
                raise lmdb.MapResizedError("another process grew the map")
            yield from rows

        monkeypatch.setattr(s, "recent", recent)
        out = io.StringIO()
        _inspect.list_workflows(out, s, state=None, limit=None, as_json=True)
    assert len(calls) == 2
    assert [row["id"] for row in json.loads(out.getvalue())] == ids[::-1]
