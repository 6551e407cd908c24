"""The layering holds: store <- actors.engine <- actors <- runtime (DESIGN.md, "Layers").

Every import in herder's source is read with ``ast`` (nothing is executed), so a lazy
import inside a function or under ``TYPE_CHECKING`` counts as much as one at the top:

- nothing imports a layer above its own;
- no package imports another package's private module (``herder.<pkg>._x``): it goes
  through that package's ``__init__``, so each ``__all__`` is the real contract;
- each package's ``__init__`` lists a sorted ``__all__`` of names it really has.

And no module of herder's source is over ``MAX_LINES`` lines (STYLE.md: a module has one
job and stays under ~400 lines); tests and benchmarks are not held to it.
"""

from __future__ import annotations

import ast
import importlib
import pathlib
from collections.abc import Iterator

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent

# Each package, the folder it is read from, and its rank: a module may import only
# packages of its own rank or lower.
PACKAGES = {
    "herder.store": ("store", 0),
    "herder.actors.engine": ("actors/engine", 1),
    "herder.actors": ("actors", 2),
    "herder.runtime": ("runtime", 3),
}


MAX_LINES = 400


def _package_of(module: str) -> str | None:
    """The herder package a dotted module name belongs to (the longest match)."""
    for package in sorted(PACKAGES, key=len, reverse=True):
        if module == package or module.startswith(package + "."):
            return package
    return None


def _source_files() -> Iterator[tuple[str, pathlib.Path]]:
    """(package, file) for every source file, each under its innermost package."""
    for package, (folder, _) in PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            module = package + "." + ".".join(path.relative_to(ROOT / folder).with_suffix("").parts)
            if _package_of(module) == package:
                yield package, path


def _imports(path: pathlib.Path) -> Iterator[tuple[int, str]]:
    """(line, imported module) for every import in a file; ``from m import x`` gives
    ``m.x`` too, so importing a private module by name is seen."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                yield node.lineno, "." * node.level + (node.module or "")
                continue
            assert node.module is not None
            yield node.lineno, node.module
            for alias in node.names:
                yield node.lineno, f"{node.module}.{alias.name}"


def _violations() -> list[str]:
    found = []
    for package, path in _source_files():
        rank = PACKAGES[package][1]
        where = path.relative_to(ROOT)
        for line, module in _imports(path):
            if module.startswith("."):
                found.append(f"{where}:{line}: relative import {module!r}; spell it out")
                continue
            target = _package_of(module)
            if target is None:
                continue
            if PACKAGES[target][1] > rank:
                found.append(f"{where}:{line}: {package} imports {module} from a layer above")
            rest = module[len(target) + 1 :].split(".")
            if target != package and rest[0].startswith("_"):
                found.append(
                    f"{where}:{line}: imports the private {module}; "
                    f"import it from {target} (add it to its __all__)"
                )
    return found


def test_no_module_imports_upward_or_another_packages_private_module() -> None:
    assert _violations() == []


def test_the_walk_sees_what_it_must_refuse(tmp_path: pathlib.Path) -> None:
    # The walk itself: each kind of import yields the names the rules look at.
    source = tmp_path / "m.py"
    source.write_text(
        "import herder.store._env\n"
        "from herder.store import _codec\n"
        "def f():\n"
        "    from herder.runtime._runtime import Runtime\n"
        "from . import sibling\n"
    )
    seen = {module for _, module in _imports(source)}
    assert {"herder.store._env", "herder.store._codec", "herder.runtime._runtime"} <= seen
    assert "." in seen
    assert _package_of("herder.actors.engine._states") == "herder.actors.engine"
    assert _package_of("herder.actors._scheduler") == "herder.actors"


def _ruff_order(name: str) -> tuple[int, str]:
    """The order ruff's RUF022 keeps ``__all__`` in: CONSTANTS, Classes, functions."""
    kind = 0 if name.isupper() else 1 if name[:1].isupper() else 2
    return kind, name


@pytest.mark.parametrize("package", list(PACKAGES))
def test_each_package_exports_a_sorted_all_of_names_it_has(package: str) -> None:
    module = importlib.import_module(package)
    exported = list(module.__all__)
    assert exported == sorted(exported, key=_ruff_order)
    assert len(set(exported)) == len(exported)
    for name in exported:
        assert hasattr(module, name), f"{package}.__all__ lists {name!r}, which it lacks"


def _oversized(paths: Iterator[pathlib.Path]) -> list[str]:
    """``path (N lines)`` for each file of ``paths`` over ``MAX_LINES`` lines."""
    found = []
    for path in paths:
        lines = len(path.read_text().splitlines())
        if lines > MAX_LINES:
            where = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
            found.append(f"{where} ({lines} lines)")
    return found


def test_no_module_is_over_400_lines() -> None:
    oversized = _oversized(path for _, path in _source_files())
    assert not oversized, (
        f"modules over {MAX_LINES} lines: {', '.join(oversized)}. A module has one job "
        f"(STYLE.md): split each along its jobs, not by line count, into modules of their "
        f"own (the parts reach their owner only through the methods it hands them, as "
        f"actors/_recovery.py's Shell), and name the new modules in the docstrings that "
        f"name the old one"
    )


def test_the_size_check_counts_lines(tmp_path: pathlib.Path) -> None:
    at_limit, over = tmp_path / "at_limit.py", tmp_path / "over.py"
    at_limit.write_text("x = 1\n" * MAX_LINES)
    over.write_text("x = 1\n" * (MAX_LINES + 1))
    assert _oversized(iter([at_limit, over])) == [f"{over} ({MAX_LINES + 1} lines)"]


TOP_LEVEL = {
    *("actors", "runtime", "store", "tests", "benchmarks", "pyproject.toml"),
    *("README.md", "Makefile", ".ci", "docs", "examples", ".gitignore"),
}
"""The repository's top level, fixed: new packages and files go inside these folders."""


def test_the_top_level_holds_only_what_the_project_fixed() -> None:
    import shutil
    import subprocess

    if not (ROOT / ".git").exists() or shutil.which("git") is None:
        pytest.skip("needs the git checkout: the committed files are what is checked")
    listed = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True, timeout=30
    )
    top = {name.split("/", 1)[0] for name in listed.stdout.decode().split("\0") if name}
    assert top <= TOP_LEVEL, f"at the top level, not fixed there: {sorted(top - TOP_LEVEL)}"
