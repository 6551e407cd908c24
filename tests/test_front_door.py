"""The front door: the README's commands, packaging metadata and plain CLI output off a
terminal (the real ``herder`` executable in a subprocess)."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from herder.runtime import Agent, Permanent, RetryPolicy, Runtime, StepContext, Workflow

ROOT = Path(__file__).resolve().parent.parent
HERDER = str(Path(sys.executable).parent / "herder")
LONG = "the remote side refused the booking because " + "-".join(f"w{i}" for i in range(40))


class Refuser(Agent):
    def book(self, ctx: StepContext) -> None:
        raise Permanent(LONG)


def test_ci_runs_the_demo_then_the_tests_in_the_same_clone() -> None:
    commands = [
        line.strip()
        for line in (ROOT / ".ci" / "run").read_text().splitlines()
        if line.strip().startswith("make")
    ]
    # then the Ray extra's tests, in their own venv (docs/ray.md)
    assert commands == ["make demo", "make test", "make test-ray"]


def test_the_license_is_an_spdx_string_and_the_build_needs_a_setuptools_that_reads_it() -> None:
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert meta["project"]["license"] == "Apache-2.0"
    requires = meta["build-system"]["requires"]
    assert any(re.fullmatch(r"setuptools>=(\d+)", r) and int(r[12:]) >= 77 for r in requires)


def test_the_readme_has_no_relative_links_that_break_in_the_long_description() -> None:
    links = re.findall(r"(!?)\[[^\]]*\]\(([^)\s]+)\)", (ROOT / "README.md").read_text())
    relative = [
        target
        for image, target in links
        if not target.startswith(("https://", "http://"))
        # Issue 20: the README shows the console's timeline. Where a relative image cannot
        # be resolved (the long description), its alt text stands in for it.
        and not (image and target.startswith("docs/img/"))
    ]
    assert relative == []


@pytest.mark.timeout(120)
def test_show_off_a_terminal_prints_plain_unwrapped_text_even_with_rich_installed(
    tmp_path: Path,
) -> None:
    pytest.importorskip("rich")  # a test dependency: the case `make demo` creates
    store = tmp_path / "store"
    with Runtime(store, default_retry=RetryPolicy(max_attempts=1)) as rt:
        rt.add_agent("refuser", Refuser)
        rt.add_workflow(Workflow("w").step("book", agent="refuser", action="book"))
        rt._wait_final(rt.start("w", {}, workflow_id="wf-1").id, 10)
    shown = subprocess.run(
        [HERDER, "show", "wf-1", "--store", str(store)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert LONG in shown  # one line: grep finds it
    assert not re.search("[\u2500-\u257f]", shown)  # no box drawing
