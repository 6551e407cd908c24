"""The examples in examples/ run and do what their docstrings say."""

from __future__ import annotations

import runpy
from pathlib import Path
from typing import Any

EXAMPLES = Path(__file__).parent.parent / "examples"


def _load(name: str) -> dict[str, Any]:
    return runpy.run_path(str(EXAMPLES / name), run_name="example")


def test_travel_booking_example_books_some_trips_and_undoes_the_sold_out_ones(
    tmp_path: Path,
) -> None:
    outcome = _load("travel_booking.py")["main"](str(tmp_path / "store"))
    assert outcome == {
        "ada": "SUCCEEDED",
        "alan": "COMPENSATED",
        "grace": "SUCCEEDED",
        "linus": "COMPENSATED",
    }
