"""Shared fixtures: every test ends with no actor left running; simulation options."""

import os
from collections.abc import Iterator

import pykka
import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--sim-seeds",
        type=int,
        default=None,
        help="seeds the deterministic simulation runs, 0..N-1 (default: 0..49 in the default "
        "run, 50..199 under -m slow; HERDER_SIM_SEED=N runs only seed N)",
    )


@pytest.fixture
def sim_seeds(request: pytest.FixtureRequest) -> list[int]:
    """The simulation's seeds asked for: HERDER_SIM_SEED alone if set, else
    0 .. --sim-seeds - 1 if given, else none (each test then runs its own share)."""
    one = os.environ.get("HERDER_SIM_SEED")
    if one is not None:
        return [int(one)]
    count = request.config.getoption("--sim-seeds")
    return [] if count is None else list(range(count))


@pytest.fixture(autouse=True)
def _stop_all_actors() -> Iterator[None]:
    yield
    pykka.ActorRegistry.stop_all()
