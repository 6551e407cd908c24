"""The read side's text (`herder show`, `herder check`) writes what users chose (ids,
names) as printable: no terminal control, no bidi override, one line per line."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Any

from herder.runtime import Agent, Runtime, StepContext, Workflow
from herder.runtime._cli import main
from herder.store import (
    RECENT_BUILT,
    RECENT_DB,
    Delete,
    Put,
    Store,
    Transition,
    WorkflowRecord,
    WorkflowState,
    encode,
    workflow_key,
)


class Done(Agent):
    def go(self, ctx: StepContext) -> int:
        return 1


def _run(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    code = main(list(argv), out)
    return code, out.getvalue()


def test_show_writes_a_workflow_name_printable(tmp_path: Path) -> None:
    # `herder show`'s first line wrote the workflow's name raw: a name may hold a bidi
    # override (only controls are refused), which reversed the rest of the line on the
    # operator's terminal, the state included; every other place prints it escaped.
    path = tmp_path / "store"
    name = "pay\u202eevil"
    with Runtime(path) as rt:
        rt.add_agent("done", Done)
        rt.add_workflow(Workflow(name).step("s", agent="done", action="go"))
        rt._wait_final(rt.start(name, {}, workflow_id="w").id, 10)
    code, text = _run("show", "w", "--store", str(path))
    assert code == 0
    assert "\u202e" not in text
    assert text.splitlines()[0] == "workflow w: pay\\u202eevil@1 SUCCEEDED"


def test_check_writes_a_problem_about_an_odd_id_on_one_printable_line(tmp_path: Path) -> None:
    # A workflow id may hold any character but NUL; `herder check` wrote its problems raw,
    # and their messages name the id ("`herder show ID`"): the id's escapes cleared the
    # operator's terminal and its newline split one problem into two lines.
    path = tmp_path / "store"
    wid = "e\x1b[2J\x1b]0;pwned\x07\nx"
    record = WorkflowRecord(wid, "gone", 1, {}, WorkflowState.NEEDS_ATTENTION, 1.0, 1.0)
    with Store(path) as store:
        put = Put("workflows", workflow_key(wid), encode(record.to_dict()))
        store.writer.submit(Transition(ops=(put,))).result(timeout=10)
    code, text = _run("check", "--store", str(path))
    assert code == 1
    assert "\x1b" not in text
    assert "\x07" not in text
    problems = [line for line in text.splitlines() if line.startswith("  workflows ")]
    assert len(problems) == len(text.splitlines()) - 1  # (the heading, then one line each)
    assert any("its definition gone@1 is not stored" in line for line in problems)


def _listing_with_damage(tmp_path: Path, ops: tuple[Any, ...]) -> tuple[int, str, str]:
    path = tmp_path / "store"
    with Runtime(path) as rt:
        rt.add_agent("done", Done)
        rt.add_workflow(Workflow("w").step("s", agent="done", action="go"))
        for wid in ("a", "b"):
            rt._wait_final(rt.start("w", {}, workflow_id=wid).id, 10)
    with Store(path) as store:
        store.writer.submit(Transition(ops=ops)).result(timeout=10)
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code, text = _run("ls", "--store", str(path))
    return code, text, err.getvalue()


def test_ls_of_a_store_without_the_index_names_a_record_it_cannot_read(tmp_path: Path) -> None:
    # A store an older herder wrote (no `recent` index yet) is listed from its records:
    # one that did not read was left out of `herder ls` without a word, where the docs
    # (and every indexed listing) name it on stderr.
    unindex = Delete("meta", RECENT_BUILT)
    code, text, err = _listing_with_damage(
        tmp_path, (Put("workflows", workflow_key("a"), b"\xc1damaged"), unindex)
    )
    assert code == 0
    assert [line.split()[0] for line in text.splitlines()[1:]] == ["b"]
    assert "herder: skipped: corrupt record in database 'workflows' at key b'a'" in err


def test_ls_names_a_damaged_key_of_the_index(tmp_path: Path) -> None:
    # The console's list and the inbox name an index key that does not read; `herder
    # ls` passed over it without a word (`herder check` names it).
    code, text, err = _listing_with_damage(
        tmp_path, (Put(RECENT_DB, b"\xff\xff", encode("SUCCEEDED")),)
    )
    assert code == 0
    assert [line.split()[0] for line in text.splitlines()[1:]] == ["b", "a"]
    assert "herder: skipped: " in err
    assert "b'\\xff\\xff'" in err
