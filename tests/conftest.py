"""Shared fixtures: every test ends with no actor left running; simulation options."""

import os
import pathlib
import shutil
import tempfile
from collections.abc import Iterator

import pykka
import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--sim-seeds",
        type=int,
        default=200,
        help="seeds the threaded simulation runs (HERDER_SIM_SEED=N runs only seed N)",
    )
    parser.addoption(
        "--exact-seeds",
        type=int,
        default=1000,
        help="seeds the exact simulation runs (HERDER_SIM_SEED=N runs only seed N)",
    )


@pytest.fixture
def sim_seeds(request: pytest.FixtureRequest) -> list[int]:
    """The threaded simulation's seeds: HERDER_SIM_SEED alone if set, else 0 ..
    --sim-seeds - 1."""
    return _seeds(request, "--sim-seeds")


@pytest.fixture
def exact_seeds(request: pytest.FixtureRequest) -> list[int]:
    """The exact simulation's seeds: HERDER_SIM_SEED alone if set, else 0 ..
    --exact-seeds - 1."""
    return _seeds(request, "--exact-seeds")


@pytest.fixture
def scratch(tmp_path: pathlib.Path) -> Iterator[pathlib.Path]:
    """A directory for simulation stores: on tmpfs when there is one (these runs test
    logic, not fsync), removed afterwards."""
    shm = pathlib.Path("/dev/shm")
    if not (shm.is_dir() and os.access(shm, os.W_OK)):
        yield tmp_path
        return
    root = pathlib.Path(tempfile.mkdtemp(dir=shm, prefix="herder-sim-"))
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _seeds(request: pytest.FixtureRequest, option: str) -> list[int]:
    one = os.environ.get("HERDER_SIM_SEED")
    if one is not None:
        return [int(one)]
    return list(range(request.config.getoption(option)))


@pytest.fixture(autouse=True)
def _stop_all_actors() -> Iterator[None]:
    yield
    pykka.ActorRegistry.stop_all()
