"""The console's edges an operator meets: a damaged parked workflow."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import test_ui_http
from _http_kit import request
from test_ui_bounds import damage

from herder.runtime.ui import Console

pytestmark = pytest.mark.timeout(60)

# the HTTP tests' fixtures: the built store ("done" succeeded, "stuck" parked), a copy
built, store = test_ui_http.built, test_ui_http.store
make_console, console = test_ui_http.make_console, test_ui_http.console


def test_the_inbox_names_a_parked_workflow_it_cannot_read(
    store: Path, make_console: Callable[..., Console]
) -> None:
    damage(store, "stuck")  # the one parked workflow
    status, _, html = request(make_console(), "GET", "/inbox")
    assert status == 200
    assert "skipped: " in html  # "Nothing waits for an operator." before
    assert "stuck" in html
    assert "Nothing else waits for an operator." in html
