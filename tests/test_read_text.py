"""The read side's text (`herder show`, `herder check`) writes what users chose (ids,
names) as printable: no terminal control, no bidi override, one line per line."""

from __future__ import annotations

import io
from pathlib import Path

from herder.runtime import Agent, Runtime, StepContext, Workflow
from herder.runtime._cli import main


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
