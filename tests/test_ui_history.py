"""A workflow's console page whatever the length of its history: a window of the newest
events and their errors, links to the older ones (every event reachable, once), and a
timeline of bounded size (``herder ui``'s ``/workflow``)."""

from __future__ import annotations

import html as htmllib
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from _http_kit import request

from herder.runtime import Agent, Permanent, RetryPolicy, Runtime, StepContext, Workflow
from herder.runtime._inspect import _story
from herder.runtime.testing import FakeClock
from herder.runtime.ui import Console, _workflow_page
from herder.runtime.ui._workflow_page import HISTORY_PAGE
from herder.store import Store, StoreLocked, read_history

pytestmark = pytest.mark.timeout(120)

ATTEMPTS = 450
CLOCK = FakeClock(start=1_700_000_000.0)


class Flaky(Agent):
    def go(self, ctx: StepContext) -> None:
        CLOCK.advance(0.5)  # (each attempt takes half a second of the story)
        raise RuntimeError(f"failure number {ctx.attempt} " + "x" * 200)


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    """A console over a workflow ("big") that failed ATTEMPTS times."""
    path: Path = tmp_path_factory.mktemp("history") / "store"
    retry = RetryPolicy(max_attempts=ATTEMPTS, initial_interval=0.0, jitter=0.0)
    with Runtime(path, default_retry=retry, clock=CLOCK) as rt:
        rt.add_agent("flaky", Flaky)
        rt.add_workflow(Workflow("flaky").step("s", agent="flaky", action="go"))
        rt._wait_final(rt.start("flaky", {}, workflow_id="big").id, 60)
    console = Console(str(path), port=0, token="t")
    console.start()
    yield console
    console.shutdown()


def rows(page: str) -> list[tuple[str, ...]]:
    """The history table's rows, as text."""
    body = re.search(r'<table class="list" id="history">.*?<tbody>(.*?)</tbody>', page, re.S)
    assert body is not None
    return [
        tuple(htmllib.unescape(cell) for cell in re.findall(r"<td>(.*?)</td>", row, re.S))
        for row in re.findall(r"<tr>(.*?)</tr>", body.group(1), re.S)
    ]


def test_a_long_history_is_paged_and_every_event_is_reachable(console: Console) -> None:
    # The page rendered the whole history and every traceback: 1 MB here, 43 MB for a
    # workflow retried 20,000 times, and a retry-forever one grew without end.
    with Store(console.gate.path, readonly=True) as store:
        history = read_history(store, "big")
    assert len(history) > 2 * ATTEMPTS
    status, _, page = request(console, "GET", "/workflow?id=big")
    assert status == 200
    assert len(page) < 150_000, len(page)
    assert len(re.findall(r"<rect ", page)) < 2 * 820  # (at most a bar a pixel per colour)
    pages, tracebacks = [rows(page)], page.count('<details class="tb">')
    assert len(pages[0]) == HISTORY_PAGE
    while (older := re.search(r'<a id="older" href="([^"]+)"', page)) is not None:
        status, _, page = request(console, "GET", htmllib.unescape(older.group(1)))
        assert status == 200
        assert 'id="newer"' in page
        assert 'id="newest"' in page
        pages.append(rows(page))
        tracebacks += page.count('<details class="tb">')
    listed = [row for window in reversed(pages) for row in window]
    expected = [tuple(str(c) for c in row) for row in _story(history)]
    assert listed == expected  # every event, once, in order
    assert tracebacks == ATTEMPTS  # every failed attempt's traceback, on its event's page


def test_the_newer_link_goes_back_the_way_it_came(console: Console) -> None:
    _, _, newest = request(console, "GET", "/workflow?id=big")
    older = re.search(r'<a id="older" href="([^"]+)"', newest)
    assert older is not None
    _, _, page = request(console, "GET", htmllib.unescape(older.group(1)))
    newer = re.search(r'<a id="newer" href="([^"]+)"', page)
    assert newer is not None
    _, _, back = request(console, "GET", htmllib.unescape(newer.group(1)))
    assert rows(back) == rows(newest)


def test_a_bad_before_is_a_clear_400(console: Console) -> None:
    status, _, page = request(console, "GET", "/workflow?id=big&before=-3")
    assert status == 400
    assert "is not an event&#x27;s sequence number" in page


def test_a_console_refuses_a_store_a_runtime_of_its_process_has_open(tmp_path: Path) -> None:
    # Console.start said "for tests and embedding", but beside a Runtime of the same
    # process it served 503 pages for ever ("works again as soon as the store can be
    # read"; LMDB allows one environment per store per process); it now says so at once.
    path = tmp_path / "store"
    with Runtime(path) as rt:
        rt.add_workflow(Workflow("flaky").step("s", agent="flaky", action="go"))
        with pytest.raises(StoreLocked, match=r"herder ui --store") as caught:
            Console(str(path), port=0, token="t")
        assert "this process" in str(caught.value)
    console = Console(str(path), port=0, token="t")  # (once the runtime is gone: it serves)
    console.start()
    try:
        status, _, _ = request(console, "GET", "/")
        assert status == 200
    finally:
        console.shutdown()


def test_each_link_id_is_on_the_page_once(console: Console) -> None:
    _, _, newest = request(console, "GET", "/workflow?id=big")
    older = re.search(r'<a id="older" href="([^"]+)"', newest)
    assert older is not None
    _, _, page = request(console, "GET", htmllib.unescape(older.group(1)))
    for name in ("older", "newer", "newest"):
        assert page.count(f'id="{name}"') == 1, name


def test_a_runtime_beside_a_console_of_its_process_is_told_it_is_the_console(
    tmp_path: Path,
) -> None:
    # The Runtime was told to "stop the Runtime that has it open": there was none, the
    # console's read-only store held it.
    path = tmp_path / "store"
    with Runtime(path):
        pass
    console = Console(str(path), port=0, token="t")
    console.start()
    try:
        assert request(console, "GET", "/")[0] == 200  # (it opened the store)
        with pytest.raises(StoreLocked, match="read-only") as caught:
            Runtime(path)
        assert "Console" in str(caught.value)
        assert "stop the Runtime" not in str(caught.value)
    finally:
        console.shutdown()
    Runtime(path).stop()  # (once the console is gone, it opens)


class Verbose(Agent):
    def go(self, ctx: StepContext) -> None:
        VERBOSE_CLOCK.advance(1.0)
        raise RuntimeError(f"failure number {ctx.attempt} " + "y" * 9000)  # (stored: 8 KB)


VERBOSE_CLOCK = FakeClock(start=1_700_000_000.0)


def test_a_page_of_long_errors_stays_under_a_megabyte(tmp_path: Path) -> None:
    # Each timeline bar's tooltip held its attempt's whole error (up to 8 KB), and the
    # history table held it again beside the Errors list: 300 attempts of long errors
    # made a 4 MB page whatever the paging.
    path = tmp_path / "store"
    retry = RetryPolicy(max_attempts=300, initial_interval=0.0, jitter=0.0)
    with Runtime(path, default_retry=retry, clock=VERBOSE_CLOCK) as rt:
        rt.add_agent("verbose", Verbose)
        rt.add_workflow(Workflow("verbose").step("s", agent="verbose", action="go"))
        rt._wait_final(rt.start("verbose", {}, workflow_id="v").id, 60)
    console = Console(str(path), port=0, token="t")
    console.start()
    try:
        status, _, page = request(console, "GET", "/workflow?id=v")
    finally:
        console.shutdown()
    assert status == 200
    assert len(page.encode()) < 1_000_000, len(page.encode())
    assert page.count("y" * 8000) >= 40  # (each error of the window whole, under Errors)


def test_a_page_reads_only_the_events_it_shows(
    console: Console, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The page read and decoded the whole history for its timeline and its window: a
    # workflow retried 20,000 times took 0.45 s and 70 MB a request. It reads the keys,
    # the newest TIMELINE_EVENTS events and its window now.
    from herder.store import _history

    decoded: list[object] = []
    real = _history.as_event

    def counted(value: object) -> object:
        decoded.append(value)
        return real(value)

    monkeypatch.setattr(_history, "as_event", counted)
    monkeypatch.setattr(_workflow_page, "TIMELINE_EVENTS", 150)
    status, _, page = request(console, "GET", "/workflow?id=big")
    assert status == 200
    assert len(decoded) == 150  # (the window of the newest events is among them)
    total = re.search(r"events \d+ to \d+ of (\d+)", page)
    assert total is not None
    assert int(total.group(1)) > 2 * ATTEMPTS
    assert f"The newest 150 of {int(total.group(1)):,} events" in page
    assert len(rows(page)) == HISTORY_PAGE
    older = re.search(r'<a id="older" href="([^"]+)"', page)
    assert older is not None
    decoded.clear()
    status, _, page = request(console, "GET", htmllib.unescape(older.group(1)))
    assert status == 200
    assert len(decoded) == 150 + HISTORY_PAGE  # (a window before the timeline's)
    assert len(rows(page)) == HISTORY_PAGE


def test_a_timeline_of_the_newest_events_begins_with_each_step_as_it_was(
    console: Console, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_workflow_page, "TIMELINE_EVENTS", 5)
    _, _, page = request(console, "GET", "/workflow?id=big")
    svg = re.search(r'<svg class="timeline".*?</svg>', page, re.S)
    assert svg is not None
    states = re.findall(r'<rect class="seg (\w+)" data-step="s" data-state="(\w+)"', svg.group(0))
    # (the last five: DISPATCHED -> RETRY_WAIT -> DISPATCHED -> FAILED, the workflow's two)
    assert states == [("retried", "DISPATCHED"), ("wait", "RETRY_WAIT"), ("failed", "DISPATCHED")]


class Unrefundable(Agent):
    def charge(self, ctx: StepContext) -> str:
        return "charged"

    def refund(self, ctx: StepContext) -> None:
        raise RuntimeError("refund API down")

    def ship(self, ctx: StepContext) -> None:
        raise Permanent("no stock")


def test_the_errors_list_names_a_failed_undo_an_undo_attempt(tmp_path: Path) -> None:
    # The refund's failures were listed as "charge attempt 1", "charge attempt 2", as if
    # the charge had failed where it succeeded at its one attempt.
    path = tmp_path / "store"
    twice = RetryPolicy(max_attempts=2, initial_interval=0.0, jitter=0.0)
    with Runtime(path) as rt:
        rt.add_agent("pay", Unrefundable)
        rt.add_workflow(
            Workflow("order")
            .step("charge", agent="pay", action="charge", compensate="refund",
                  compensate_retry=twice)
            .step("ship", agent="pay", action="ship", after=["charge"])
        )  # fmt: skip
        rt._wait_final(rt.start("order", workflow_id="o").id, 60)
    console = Console(str(path), port=0, token="t")
    console.start()
    try:
        status, _, page = request(console, "GET", "/workflow?id=o")
    finally:
        console.shutdown()
    assert status == 200
    assert re.findall(r"</b> (\w+ (?:undo )?attempt \d+): <pre>", page) == [
        "ship attempt 1",
        "charge undo attempt 1",
        "charge undo attempt 2",
    ]
