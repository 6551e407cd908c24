"""What ``pip install herder`` gets: the sdist and the wheel built from a clean checkout.

Both are built as ``python -m build`` does (the sdist from the committed files, the wheel
from the unpacked sdist), with setuptools in this process's environment, so no network:

- the sdist holds the packages' sources, the metadata and the license, and the wheel
  is built from it alone;
- the wheel holds exactly herder's three packages as ``herder.*`` (every module, each
  ``py.typed``, the console's static files), no tests, and the license and metadata.

It needs the git checkout (to know the committed files); it is skipped elsewhere.
"""

from __future__ import annotations

import dataclasses
import pathlib
import shutil
import subprocess
import sys
import tarfile
import tomllib
import zipfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE_DIRS = {"store": "herder/store", "actors": "herder/actors", "runtime": "herder/runtime"}
SHIPPED_DATA = ("py.typed", ".css", ".js")  # package data besides the modules

pytestmark = pytest.mark.timeout(120)


def _committed() -> list[str]:
    if not (ROOT / ".git").exists() or shutil.which("git") is None:
        pytest.skip("needs the git checkout: the committed files are what gets built")
    listed = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True, timeout=30
    )
    return [name for name in listed.stdout.decode().split("\0") if (ROOT / name).is_file()]


def _build(kind: str, source: pathlib.Path, out: pathlib.Path) -> pathlib.Path:
    """``setuptools.build_meta.build_<kind>`` run in ``source``; the file it made."""
    code = "import sys, setuptools.build_meta as b; print(getattr(b, sys.argv[1])(sys.argv[2]))"
    done = subprocess.run(
        [sys.executable, "-c", code, f"build_{kind}", str(out)],
        cwd=source,
        capture_output=True,
        text=True,
        check=False,
        timeout=100,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return out / done.stdout.strip().splitlines()[-1]


@dataclasses.dataclass(frozen=True)
class Built:
    committed: list[str]  # paths relative to the checkout
    sdist: list[str]  # relative to the sdist's top folder
    wheel: list[str]
    metadata: str  # the wheel's METADATA
    entry_points: str


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    committed = _committed()
    tmp = tmp_path_factory.mktemp("packaging")
    checkout = tmp / "checkout"
    for name in committed:  # a clean checkout: no build leftovers, no untracked files
        (checkout / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, checkout / name)
    sdist = _build("sdist", checkout, tmp / "dist")
    with tarfile.open(sdist) as tar:
        tar.extractall(tmp / "unpacked", filter="data")
        top = f"{sdist.name.removesuffix('.tar.gz')}/"
        in_sdist = [m.name.removeprefix(top) for m in tar.getmembers() if m.isfile()]
    wheel = _build("wheel", tmp / "unpacked" / top, tmp / "dist")
    with zipfile.ZipFile(wheel) as whl:
        info = next(n for n in whl.namelist() if n.endswith(".dist-info/METADATA"))
        info = info.removesuffix("METADATA")
        return Built(
            committed,
            in_sdist,
            whl.namelist(),
            whl.read(f"{info}METADATA").decode(),
            whl.read(f"{info}entry_points.txt").decode(),
        )


def test_the_sdist_holds_the_sources_the_metadata_and_the_license(built: Built) -> None:
    committed, in_sdist = built.committed, built.sdist
    sources = {
        name for name in committed if name.startswith(tuple(PACKAGE_DIRS)) and name.endswith(".py")
    }
    missing = sorted(sources - set(in_sdist))
    assert not missing, f"the sdist leaves out {len(missing)} modules: {missing[:20]}"
    assert {"docs/LICENSE", "README.md", "pyproject.toml"} <= set(in_sdist)
    assert not [name for name in in_sdist if "__pycache__" in name or name.endswith(".pyc")]


def test_the_wheel_holds_herders_packages_and_nothing_else(built: Built) -> None:
    committed, in_wheel = built.committed, built.wheel
    expected = {
        PACKAGE_DIRS[top] + name.removeprefix(top)
        for name in committed
        for top in PACKAGE_DIRS
        if name.startswith(f"{top}/") and name.endswith((".py", *SHIPPED_DATA))
    }
    code = {name for name in in_wheel if not name.startswith("herder-")}
    assert sorted(expected - code) == [], "committed modules or data the wheel leaves out"
    assert sorted(code - expected) == [], "files in the wheel that are not herder's source"
    for needed in ("herder/runtime/ui/static/console.css", "herder/runtime/ui/static/console.js"):
        assert needed in code  # `herder ui` serves them
    for package in PACKAGE_DIRS.values():
        assert f"{package}/py.typed" in code  # type checkers read the public API


def test_the_wheel_carries_the_license_version_and_the_herder_command(built: Built) -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert f"herder-{project['version']}.dist-info/licenses/docs/LICENSE" in built.wheel
    assert f"Version: {project['version']}\n" in built.metadata
    assert f"License-Expression: {project['license']}\n" in built.metadata
    assert "License-File: docs/LICENSE\n" in built.metadata
    assert "herder = herder.runtime._cli:main" in built.entry_points
