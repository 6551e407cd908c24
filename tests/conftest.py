"""Shared fixtures: every test ends with no actor left running; simulation options."""

import os
from collections.abc import Iterator

import pykka
import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--sim-seeds",
        type=int,
        default=200,
        help="seeds the deterministic simulation runs (HERDER_SIM_SEED=N runs only seed N)",
    )


@pytest.fixture
def sim_seeds(request: pytest.FixtureRequest) -> list[int]:
    """The simulation's seeds: HERDER_SIM_SEED alone if set, else 0 .. --sim-seeds - 1."""
    one = os.environ.get("HERDER_SIM_SEED")
    if one is not None:
        return [int(one)]
    return list(range(request.config.getoption("--sim-seeds")))


@pytest.fixture(autouse=True)
def _stop_all_actors() -> Iterator[None]:
    yield
    pykka.ActorRegistry.stop_all()
