"""The commands, files and links README.md and docs/*.md show exist as shown.

- each ``herder SUBCOMMAND`` in a ```sh block or in `inline code` exists and knows every
  ``--option`` written after it (``retry|skip`` and ``ls/show`` name several: each must
  exist, and an option must belong to one of them);
- each ``make TARGET`` shown is a target of the Makefile;
- each repository file the pages name (``tests/test_ha.py``, ``actors/engine/...``) exists,
  and so does each relative link's file and #anchor.

The Python in the pages: ``test_docs_snippets.py``.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterator
from pathlib import Path

from _docs import FENCE, PAGES, ROOT, spans

from herder.runtime._cli import _parser
from herder.runtime._demo import _parser as _demo_parser


def _subcommands() -> dict[str, set[str]]:
    parser = _parser()
    (sub,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    options = {name: set(p._option_string_actions) for name, p in sub.choices.items()}
    options["demo"] = set(_demo_parser()._option_string_actions)
    options["bench"] = {"--peers", "--quick"}  # the rest goes to the benchmark scripts
    return options


def _commands(program: str) -> Iterator[tuple[str, str]]:
    """(where, the rest of the line) of each ``program ...`` in shell blocks and code spans."""
    for page in PAGES:
        text = page.read_text()
        snippets = [
            (text.count("\n", 0, m.start(2)) + 1 + i, line)
            for m in FENCE.finditer(text)
            if m[1] == "sh"
            for i, line in enumerate(m[2].splitlines())
        ]
        for line, snippet in [*snippets, *spans(text)]:
            for found in re.finditer(rf"(?:^|\s){program} ([^#]*)", snippet):
                yield f"{page.relative_to(ROOT)}:{line}", found[1]


def test_every_herder_command_shown_exists_with_its_options() -> None:
    options = _subcommands()
    problems = []
    seen = 0
    for where, rest in _commands("herder"):
        if not rest.strip():  # `pip install herder  # ...`: the package, not a command
            continue
        first = rest.split()[0]
        if first.startswith("-"):
            allowed = {"--version", "--help", "-h"}
        else:
            names = re.split(r"\\?\||/", first)
            unknown = [n for n in names if n not in options]
            if unknown:
                problems.append(f"{where}: no command herder {'/'.join(unknown)}")
                continue
            allowed = set().union(*(options[n] for n in names))
        seen += 1
        for option in re.findall(r"(?<![\w-])--?[a-z][a-z-]*", rest):
            if option not in allowed:
                problems.append(f"{where}: herder {first} has no {option}")
    assert problems == []
    assert seen > 40  # the search still finds the commands


def test_every_make_target_shown_exists() -> None:
    targets = set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), flags=re.M))
    shown = [(where, rest.split()[0]) for where, rest in _commands("make") if rest.strip()]
    assert [f"{where}: make {t}" for where, t in shown if t not in targets] == []
    assert len(shown) > 5


def _anchors(page: Path) -> set[str]:
    """The #anchors of a page's headings, as GitHub spells them."""
    headings = re.findall(r"^#+ (.*)$", page.read_text(), flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def test_every_file_and_link_the_docs_name_exists() -> None:
    named = {
        path
        for page in PAGES
        for path in re.findall(
            r"\b(?:actors|benchmarks|docs|examples|runtime|store|tests)/[\w./-]*\w",
            page.read_text(),
        )
    }
    assert sorted(p for p in named if not (ROOT / p).exists()) == []
    assert len(named) > 50
    broken = []
    for page in PAGES:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if target.startswith(("https://", "http://")):
                continue
            path, _, anchor = target.partition("#")
            linked = page.parent / path if path else page
            if not linked.exists() or (anchor and anchor not in _anchors(linked)):
                broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert broken == []


def test_the_crash_points_page_names_every_crash_point() -> None:
    # docs/recovery.md lists the names HERDER_CRASH_AT takes; scheduler.rearm, added to
    # the code, was missing from it.
    from herder.store._crashpoints import FAULT_POINTS, POINTS

    page = (ROOT / "docs" / "recovery.md").read_text()
    assert [p for p in (*POINTS, *FAULT_POINTS) if f"`{p}`" not in page] == []


def test_the_operations_page_names_every_counter_of_rt_stats(tmp_path: Path) -> None:
    # rt.stats()["store"] had `refused` and `halted`, which docs/operations.md left out.
    from herder.runtime import Runtime

    with Runtime(tmp_path / "store") as rt:
        stats = rt.stats()
    page = (ROOT / "docs" / "operations.md").read_text()
    named = [*stats, *stats["steps"], *stats["host"], *stats["store"]]
    assert [key for key in named if f"`{key}`" not in page] == []
