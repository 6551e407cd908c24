"""The console's edges an operator meets: a damaged parked workflow, a count of a big
store that neither an action nor the console's stop may wait for, a store replaced, a
console never started, an id with a line break."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import socket
import threading
import time
import types
from collections.abc import Callable, Iterator
from html import escape, unescape
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
import test_ui_http
from _http_kit import request
from test_ui import ids_listed
from test_ui_bounds import damage
from test_ui_http import FAST, ORDER, TOKEN, Shop, form, sign_in, signed_in

from herder.actors.engine import stale_refusal
from herder.runtime import (
    Agent,
    HerderError,
    Permanent,
    RetryPolicy,
    Runtime,
    StepContext,
    Workflow,
)
from herder.runtime._console import printable
from herder.runtime.testing import FakeClock, advance, wait_until
from herder.runtime.ui import Console, _counters
from herder.runtime.ui import _views as views
from herder.store import (
    RECENT_COUNTS,
    Put,
    StepState,
    Store,
    Transition,
    WorkflowState,
    encode,
    wait_outcome,
    workflow_key,
)
from herder.store._commands import pending_commands

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


@pytest.fixture
def slow_count(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Counting that blocks once it has read a page, until ``release`` is set."""
    started, release = threading.Event(), threading.Event()
    real = _counters.store_stats

    def slow(st: Store, **kw: Any) -> dict[str, Any]:
        st.count("workflows")  # a first page read
        started.set()
        release.wait(30)
        return real(st, **kw)  # its next page, in a store that may have been closed meanwhile

    monkeypatch.setattr(_counters, "store_stats", slow)
    yield started, release
    release.set()


def in_thread(fn: Callable[[], Any]) -> threading.Event:
    """Run ``fn`` on a thread of its own; the event is set when it returns."""
    done = threading.Event()
    threading.Thread(target=lambda: (fn(), done.set()), daemon=True).start()
    return done


def test_an_action_does_not_wait_for_a_count(
    make_console: Callable[..., Console], slow_count: Any
) -> None:
    started, release = slow_count
    console = make_console()
    in_thread(lambda: request(console, "GET", "/api/stats"))  # the first count starts
    assert started.wait(10)
    headers = {"Cookie": sign_in(console), "Origin": console.origin}
    answer: list[Any] = []
    acted = in_thread(
        lambda: answer.append(request(console, "POST", "/act", body=form(console), headers=headers))
    )
    assert acted.wait(5)  # it waited for the whole count before
    assert answer[0][0] == 200
    assert "is queued: no runtime holds the store" in answer[0][2]
    release.set()
    assert console.views._counters._counted.wait(10)  # given up: the store closed under it
    status, _, _ = request(console, "GET", "/api/stats")  # counted again
    assert status == 200


def test_the_console_stops_without_waiting_for_a_count_and_keeps_the_store_closed(
    store: Path, slow_count: Any
) -> None:
    started, release = slow_count
    console = Console(str(store), port=0, token="t")
    console.start()
    in_thread(lambda: request(console, "GET", "/api/stats"))
    assert started.wait(10)
    assert in_thread(console.shutdown).wait(5)  # it waited for the whole count before
    release.set()
    assert console.views._counters._counted.wait(10)
    with pytest.raises(HerderError, match="has stopped"), console.gate.read():
        pass  # nothing opens it again
    with Store(store):  # this process may open it again (a Runtime, say)
        pass


def test_a_store_replaced_under_the_console_is_read_anew(
    store: Path, make_console: Callable[..., Console]
) -> None:
    console = make_console()
    status, _, html = request(console, "GET", "/workflow?id=stuck")
    assert status == 200
    shutil.rmtree(store)  # the operator removes it (or restores a backup over it)
    status, _, html = request(console, "GET", "/workflow?id=stuck")
    assert status == 503, html  # the removed store's contents, 200, before
    assert "no store at" in html
    with Runtime(store, default_retry=FAST, clock=FakeClock(start=1_800_000_000.0)) as rt:
        rt.add_agent("shop", Shop)
        rt.add_workflow(ORDER)
        rt._wait_final(rt.start("order", {}, workflow_id="fresh").id, 10)
    status, _, html = request(console, "GET", "/")
    assert status == 200
    assert ids_listed(html) == ["fresh"]


def test_a_console_never_started_shuts_down_at_once(store: Path) -> None:
    console = Console(str(store), port=0, token="t")  # (a setup that failed before start)
    assert in_thread(console.shutdown).wait(5)  # it waited for a serve_forever for ever
    with socket.create_server(("127.0.0.1", console.port)):  # its port is free again
        pass


ODD = "refund\u202egpj.exe\nretry-me"  # a right-to-left override and a line break


@pytest.fixture(scope="module")
def odd_built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One parked workflow whose id is ``ODD`` (any id but "" and NUL is one)."""
    path = tmp_path_factory.mktemp("odd") / "store"
    with Runtime(path, default_retry=FAST, clock=FakeClock(start=1_700_000_000.0)) as rt:
        rt.add_agent("shop", Shop)
        rt.add_workflow(ORDER)
        stuck = {"sold_out": 1, "refunds_down": 1}
        rt._wait_final(rt.start("order", stuck, workflow_id=ODD).id, 10)
    return path


@pytest.fixture
def odd(odd_built: Path, tmp_path: Path) -> Iterator[Console]:
    """A console over a copy of that store (a test may queue a command)."""
    shutil.copytree(odd_built, tmp_path / "store")
    console = Console(str(tmp_path / "store"), port=0, token=TOKEN, wait=0.5)
    console.start()
    yield console
    console.shutdown()


def posted(html: str, button: str, **typed: str) -> tuple[str, dict[str, str]]:
    """Where a browser sends a page's operator form, and what, when ``button`` is clicked
    with ``typed`` filled in: the HTML standard has every line break of every field sent
    as CRLF, hidden ones too (headless Chromium sent the id "a\\nb" as "a\\r\\nb")."""
    found = re.search(r'<form class="act" method=post action="([^"]*)">(.*?)</form>', html, re.S)
    assert found is not None
    hidden = re.findall(r'<input type=hidden name=(\w+) value="([^"]*)">', found.group(2))
    fields = {name: unescape(value) for name, value in hidden} | typed | {"action": button}
    sent = {name: re.sub(r"\r\n|\r|\n", "\r\n", value) for name, value in fields.items()}
    return unescape(found.group(1)), sent


def test_a_workflow_whose_id_has_a_line_break_can_be_acted_on(odd: Console) -> None:
    headers = {"Cookie": sign_in(odd), "Origin": odd.origin}
    for page in ("/inbox", "/workflow?" + urlencode({"id": ODD})):
        _, _, html = request(odd, "GET", page, headers=headers)
        target, fields = posted(html, "retry", who="ada", why="it is back")
        status, _, html = request(odd, "POST", target, body=fields, headers=headers)
        assert status == 200, html  # 400 "no workflow with id '...\r\nretry-me'" before
        assert "is queued: no runtime holds the store" in html
    with Store(odd.gate.path, readonly=True) as st:
        assert [c["workflow_id"] for c in pending_commands(st)] == [ODD, ODD]


def test_an_id_shows_as_what_it_is_as_herder_ls_prints_it(odd: Console) -> None:
    headers = {"Cookie": sign_in(odd), "Origin": odd.origin}
    pages = {p: request(odd, "GET", p, headers=headers)[2] for p in ("/", "/inbox")}
    target, fields = posted(pages["/inbox"], "retry", who="ada", why="it is back")
    pages["outcome"] = request(odd, "POST", target, body=fields, headers=headers)[2]
    pages["workflow"] = request(odd, "GET", target.replace("/act", "/workflow"))[2]
    for name, html in pages.items():
        assert "\u202e" not in html, name  # it reversed the rest of its cell before
        assert escape(printable(ODD)) in html, name  # as `herder ls` prints it


def test_counting_a_store_with_a_damaged_record_is_quiet(
    store: Path, make_console: Callable[..., Console], capsys: pytest.CaptureFixture[str]
) -> None:
    damage(store, "done")
    console = make_console()
    status, _, body = request(console, "GET", "/api/stats")
    assert status == 200
    assert json.loads(body)["corrupt"] == 1  # counted, and named by the pages that meet it
    assert "skipped" not in capsys.readouterr().err  # a line per record and count before


def test_a_count_that_fails_unexpectedly_is_named_and_tried_again(
    make_console: Callable[..., Console], monkeypatch: pytest.MonkeyPatch
) -> None:
    real, calls = _counters.store_stats, []

    def failing_once(st: Store, **kw: Any) -> dict[str, Any]:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("a bug")
        return real(st, **kw)

    monkeypatch.setattr(_counters, "store_stats", failing_once)
    frozen = types.SimpleNamespace(monotonic=lambda: 0.0, time=time.time)
    monkeypatch.setattr(_counters, "time", frozen)  # a count takes no time: no pause
    monkeypatch.setattr(_counters, "EVERY", 0.0)  # (so a count may start again at once)
    monkeypatch.setattr(_counters, "FIRST_WAIT", 5.0)
    console = make_console()
    status, _, html = request(console, "GET", "/api/stats")
    assert status == 503
    assert "RuntimeError: a bug" in html  # the thread died: "still being counted" for ever
    status, _, _ = request(console, "GET", "/api/stats")
    assert status == 200


def test_the_agents_page_does_not_wait_for_a_count(
    make_console: Callable[..., Console], slow_count: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    started, _ = slow_count
    monkeypatch.setattr(_counters, "FIRST_WAIT", 30.0)  # (the pytest timeout comes first)
    console = make_console()
    in_thread(lambda: request(console, "GET", "/api/stats"))  # the page's counters ask
    assert started.wait(10)  # the first count reads the store
    answer: list[Any] = []
    done = in_thread(lambda: answer.append(request(console, "GET", "/agents")))
    assert done.wait(5)  # it waited for the whole count before (and failed after 60 s)
    status, _, html = answer[0]
    assert status == 200
    assert "<td>shop</td><td>order@1</td>" in html


@pytest.fixture
def broken_schedule(store: Path) -> Path:
    """The store with schedules "a-broken", whose record does not decode, and "z-weekly"."""
    from herder.store import Put, Transition, schedule_key

    with Runtime(store, default_retry=FAST, clock=FakeClock(start=1_700_000_000.0)) as rt:
        rt.add_agent("shop", Shop)
        rt.add_workflow(ORDER)
        rt.schedule("a-broken", "order", every=86400.0)
        rt.schedule("z-weekly", "order", every=7 * 86400.0)
    with Store(store) as s:
        put = Put("schedules", schedule_key("a-broken"), b"\xc1")
        s.writer.submit(Transition(ops=(put,))).result(timeout=10)
    return store


def test_a_damaged_schedule_is_named_and_the_agents_page_still_shows(
    broken_schedule: Path, make_console: Callable[..., Console]
) -> None:
    status, _, html = request(make_console(), "GET", "/agents")
    assert status == 200  # 503 "A record is damaged" for the whole page before
    assert "<td>shop</td><td>order@1</td>" in html
    assert "<td>z-weekly</td>" in html
    assert "skipped: corrupt record in database &#x27;schedules&#x27;" in html


def test_the_agents_page_lists_the_schedules_a_page_at_a_time(
    store: Path, make_console: Callable[..., Console], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The agents page listed every schedule, where the other lists are paged: 10,000
    # schedules made a page of 1.3 MB, rendered in 0.39 s. A page by name, and a link on.
    monkeypatch.setattr(views, "SCHEDULES_PAGE", 3)
    with Runtime(store, default_retry=FAST, clock=FakeClock(start=1_700_000_000.0)) as rt:
        rt.add_agent("shop", Shop)
        rt.add_workflow(ORDER)
        for i in range(7):
            rt.schedule(f"s{i}", "order", every=86400.0)
    console = make_console()
    listed: list[list[str]] = []
    path: str | None = "/agents"
    while path is not None:
        status, _, html = request(console, "GET", path)
        assert status == 200
        assert "<td>shop</td><td>order@1</td>" in html  # (the agents on every page)
        listed.append(re.findall(r"<tr><td>(s\d)</td><td>order</td>", html))
        assert f"{len(listed[-1])} of 7 schedules, by name." in html
        found = re.search(r'id="more-schedules" href="([^"]+)"', html)
        path = None if found is None else unescape(found.group(1))
    assert listed == [["s0", "s1", "s2"], ["s3", "s4", "s5"], ["s6"]]
    status, _, html = request(console, "GET", "/agents?schedules=nothex")
    assert status == 400
    assert "is not one this console gave out" in html


def test_herder_schedules_names_a_damaged_schedule_and_lists_the_others(
    broken_schedule: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import io

    from herder.runtime._cli import main

    out = io.StringIO()
    assert main(["schedules", "--store", str(broken_schedule)], out) == 0  # 1 before
    assert "z-weekly" in out.getvalue()
    assert "skipped: corrupt record in database 'schedules'" in capsys.readouterr().err


def test_a_store_that_cannot_be_opened_is_not_called_a_missing_one(
    store: Path, make_console: Callable[..., Console]
) -> None:
    # Every store error got "Check the --store path: a runtime creates the store when it
    # first opens it", here for a path that is right: this process has the store open.
    # (A Runtime opened before the console is refused at once: test_ui_history.)
    console = make_console()
    with Runtime(store, default_retry=FAST, clock=FakeClock(start=1_700_000_000.0)):
        status, _, html = request(console, "GET", "/")
    assert status == 503
    assert "already open in this process" in html
    assert "--store path" not in html


def test_the_counters_answer_while_the_first_count_of_a_big_store_runs(
    make_console: Callable[..., Console], slow_count: Any
) -> None:
    # Each poll (the page asks every 2 s, not waiting for the last answer) waited up to
    # 60 s for the first count: a browser's six connections to the console were soon all
    # held, and its pages stopped loading until the count ended.
    # The workflows by state, which the store's writer keeps, are there already.
    started, release = slow_count
    console = make_console()
    answers: list[Any] = []
    done = in_thread(lambda: answers.append(request(console, "GET", "/api/stats")))
    assert started.wait(10)
    assert done.wait(10)
    status, _, body = answers[0]
    first = json.loads(body)
    assert (status, first["counting"], "retries" in first) == (200, True, False)
    assert first["workflows"]["NEEDS_ATTENTION"] == 1 == first["workflows"]["SUCCEEDED"]
    release.set()
    assert console.views._counters._counted.wait(10)
    status, _, body = request(console, "GET", "/api/stats")
    assert json.loads(body)["workflows"]["NEEDS_ATTENTION"] == 1
    assert "counting" not in json.loads(body)


def test_the_first_answer_shows_the_kept_workflows_without_waiting_for_the_count(
    make_console: Callable[..., Console], slow_count: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A page opened on a big store showed "counting…" for the first FIRST_WAIT (2 s):
    # its first poll waited that long for the first count before it answered with the
    # workflows by state, which the store's writer keeps and one read gives.
    monkeypatch.setattr(_counters, "FIRST_WAIT", 30.0)  # (the pytest timeout comes first)
    started, _ = slow_count
    console = make_console()
    answers: list[Any] = []
    done = in_thread(lambda: answers.append(request(console, "GET", "/api/stats")))
    assert done.wait(5)
    assert started.is_set()
    first = json.loads(answers[0][2])
    assert (first["counting"], first["workflows"]["SUCCEEDED"]) == (True, 1)


def forget_counts(path: Path) -> None:
    """Remove the counts by state the writer keeps, as on a store no herder that keeps
    them has held."""
    with Store(path) as s:
        txn = s._env.begin(write=True)  # type: ignore[union-attr]
        txn.delete(RECENT_COUNTS, db=s._handles["meta"])
        txn.commit()


def test_the_counters_say_counting_while_the_first_count_runs_if_no_counts_are_kept(
    store: Path, make_console: Callable[..., Console], slow_count: Any
) -> None:
    started, release = slow_count
    forget_counts(store)
    console = make_console()
    answers: list[Any] = []
    done = in_thread(lambda: answers.append(request(console, "GET", "/api/stats")))
    assert started.wait(10)
    assert done.wait(10)
    status, _, body = answers[0]
    assert (status, json.loads(body)) == (200, {"counting": True})
    release.set()
    assert console.views._counters._counted.wait(10)
    status, _, body = request(console, "GET", "/api/stats")
    assert json.loads(body)["workflows"]["NEEDS_ATTENTION"] == 1


def test_the_workflow_counters_are_as_of_each_poll_not_of_the_last_count(
    store: Path, make_console: Callable[..., Console], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The counters showed the workflows as the last count found them: on a million
    # workflows a count takes a minute and the next one starts ten minutes after it, so
    # a workflow parked or finished that long ago still showed as before.
    ticks = iter(range(1_000, 2_000))  # (seconds: each reading of the time a later one)
    frozen = types.SimpleNamespace(monotonic=lambda: 0.0, time=lambda: float(next(ticks)))
    monkeypatch.setattr(_counters, "time", frozen)  # no count is due after the first
    console = make_console()
    first = json.loads(request(console, "GET", "/api/stats")[2])
    assert first["workflows"] == {
        **dict.fromkeys(map(str, WorkflowState), 0),
        "SUCCEEDED": 1,
        "NEEDS_ATTENTION": 1,
    }
    with console.views._gate.exclusive(), Store(store) as s:  # a runtime abandons "stuck"
        found = s.get_workflow("stuck")
        assert found is not None
        moved = dataclasses.replace(found, state=WorkflowState.ABANDONED)
        put = Put("workflows", workflow_key("stuck"), encode(moved.to_stored()))
        s.writer.submit(Transition(ops=(put,))).result(timeout=10)
    answer = json.loads(request(console, "GET", "/api/stats")[2])
    assert (answer["workflows"]["NEEDS_ATTENTION"], answer["workflows"]["ABANDONED"]) == (0, 1)
    assert "counting" not in answer
    assert "retries" in answer  # (the count's, as it was)
    # Each says when it was read: the count's time is not the poll's (the page's "as of"
    # said the poll's for the retries and timers too, counted minutes before).
    assert answer["at"] == first["at"] < first["workflows_at"] < answer["workflows_at"]


def test_the_counters_say_a_runtime_stopped_at_the_next_poll_not_the_next_count(
    store: Path, make_console: Callable[..., Console], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Whether a runtime holds the store was probed with each count only: on a big store,
    # one count a minute long is followed by ten minutes without one, and the page said
    # "runtime running" for all that time after the runtime had died.
    import fcntl
    import os

    from herder.store import _locktable

    frozen = types.SimpleNamespace(monotonic=lambda: 0.0, time=time.time)
    monkeypatch.setattr(_counters, "time", frozen)  # no count is due after the first
    monkeypatch.setattr(_locktable, "_pause", lambda seconds: None, raising=False)
    fd = os.open(store / _locktable.LOCK_FILE, os.O_RDONLY)  # as a runtime holds it
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        console = make_console()
        assert json.loads(request(console, "GET", "/api/stats")[2])["running"] is True
    finally:
        os.close(fd)  # the runtime is gone
    assert json.loads(request(console, "GET", "/api/stats")[2])["running"] is False


@pytest.mark.parametrize("name", ["Order", "order@1"])
def test_a_name_filter_no_workflow_has_says_which_names_there_are(
    console: Console, name: str
) -> None:
    # It said "No workflow matches." and, on a big store, offered to look 5,000 further
    # back, page after page, for a name that no workflow of the store can have (a typo,
    # or the name with the @version the list shows).
    status, _, html = request(console, "GET", "/?" + urlencode({"name": name}))
    assert status == 200
    assert f"No workflow definition in this store is named {escape(repr(name))}" in html
    assert "the names are: order." in html
    status, _, html = request(console, "GET", "/?name=order")
    assert "No workflow definition" not in html


def test_a_damaged_definition_is_named_on_the_agents_page(
    store: Path, make_console: Callable[..., Console]
) -> None:
    # It was left out without a word: the agents its steps use lost "order@1" from
    # their users, or vanished from the page, and nothing said why.
    from herder.store import Put, Transition, definition_key

    with Store(store) as s:
        put = Put("definitions", definition_key("order", 1), b"\xc1")
        s.writer.submit(Transition(ops=(put,))).result(timeout=10)
    status, _, html = request(make_console(), "GET", "/agents")
    assert status == 200
    assert "skipped: corrupt record in database &#x27;definitions&#x27;" in html


def test_an_action_says_queued_as_soon_as_the_runtime_lets_go_of_the_store(
    make_console: Callable[..., Console], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Whether a runtime holds the store was asked once, before the wait: a runtime that
    # stopped meanwhile (a deploy) left the operator waiting the whole wait, then told
    # "it is applied when the runtime gets to it" by a runtime that was gone.
    from herder.runtime.ui import _views

    held = iter([True])  # held when the command is sent, gone right after
    monkeypatch.setattr(_views, "is_held", lambda path: next(held, False))
    console = make_console(wait=30.0)
    headers = {"Cookie": sign_in(console), "Origin": console.origin}
    answers: list[Any] = []
    done = in_thread(
        lambda: answers.append(
            request(console, "POST", "/act", body=form(console), headers=headers)
        )
    )
    assert done.wait(10)  # 30 s before
    status, _, html = answers[0]
    assert status == 200
    assert "is queued: no runtime holds the store" in html


BIDI = "\u202egpj.exe"  # reverses the rest of its line when shown as it is


class Liar(Agent):
    """Each text it hands back to be shown carries :data:`BIDI`."""

    def pay(self, ctx: StepContext) -> dict[str, str]:
        return {"note": f"paid{BIDI}"}

    def ship(self, ctx: StepContext) -> None:
        raise Permanent(f"out of stock{BIDI}\nsecond line{BIDI}")

    def refund(self, ctx: StepContext) -> None:
        raise Permanent(f"refunds are down{BIDI}")


def test_user_text_in_the_consoles_cells_shows_as_what_it_is(tmp_path: Path) -> None:
    # Ids were written as `herder ls` prints them; an action's error (the workflow list's
    # and the inbox's error cells, the steps table, the Errors list, the history, the
    # timeline's tooltips), a result and a step name were only HTML-escaped: a bidi
    # override in them reversed the rest of their cell.
    path = tmp_path / "store"
    lying = (
        Workflow("lying")
        .step(f"pay{BIDI}", agent="liar", action="pay", compensate="refund")
        .step("ship", agent="liar", action="ship", after=[f"pay{BIDI}"])
    )
    with Runtime(path, default_retry=FAST, clock=FakeClock(start=1_700_000_000.0)) as rt:
        rt.add_agent("liar", Liar)
        rt.add_workflow(lying)
        rt._wait_final(rt.start("lying", {"to": f"home{BIDI}"}, workflow_id="w").id, 10)
    with signed_in(path) as (console, headers):
        pages = {
            p: request(console, "GET", p, headers=headers)[2]
            for p in ("/", "/inbox", "/workflow?id=w", "/agents")
        }
    for name, html in pages.items():  # (a form's hidden value and a mark's data go as they are)
        seen = re.sub(r'<input type=hidden [^>]*>| data-step="[^"]*"', "", html)
        assert "\u202e" not in seen, name
    shown = escape(printable(f"refunds are down{BIDI}"))
    assert shown in pages["/"]
    assert shown in pages["/inbox"]
    workflow = pages["/workflow?id=w"]
    assert escape(printable(f"second line{BIDI}")) in workflow  # (its line kept)
    assert escape(printable(f"refunds are down{BIDI}")) in workflow
    assert escape(printable(f"pay{BIDI}")) in workflow


class Undo(Agent):
    """Undoes every step but those named in ``broken`` (set by the test)."""

    broken: frozenset[str] = frozenset()

    def do(self, ctx: StepContext) -> None:
        if ctx.step == "c":
            raise Permanent("c cannot")

    def undo(self, ctx: StepContext) -> None:
        if ctx.step in Undo.broken:
            raise RuntimeError(f"the undo of {ctx.step} is down")


ABC = (
    Workflow("abc")
    .step("a", agent="u", action="do", compensate="undo")
    .step("b", agent="u", action="do", compensate="undo", after=["a"])
    .step("c", agent="u", action="do", after=["b"])
)


def test_a_skip_from_a_page_read_before_the_workflow_moved_on_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The page was read while the undo of 'b' had failed; another operator's retry got
    # past 'b' and the workflow parked on the undo of 'a'. The skip the page sent named
    # no step, so the runtime took the one waiting then: 'a' was marked undone (and the
    # workflow COMPENSATED) though nothing had undone it.
    path = tmp_path / "store"

    def runtime() -> Runtime:  # (the real clock: its sweep finds the queued command)
        rt = Runtime(path, default_retry=FAST, sweep_interval=0.05)
        rt.add_agent("u", Undo)
        rt.add_workflow(ABC)
        return rt

    monkeypatch.setattr(Undo, "broken", frozenset({"b"}))
    with runtime() as rt:
        record, _ = rt._wait_final(rt.start("abc", {}, workflow_id="w").id, 10)
        assert record.state is WorkflowState.NEEDS_ATTENTION
    with signed_in(path) as (console, headers):
        _, _, page = request(console, "GET", "/workflow?id=w", headers=headers)
    monkeypatch.setattr(Undo, "broken", frozenset({"a"}))
    with runtime() as rt:  # another operator: 'b' is undone, the undo of 'a' fails
        rt.retry("w", who="bob", why="the undo of b is back")
        wait_until(rt, lambda: rt.status("w").state is WorkflowState.NEEDS_ATTENTION, 10)
        assert [(i.step, i.step_state) for i in rt.inbox()] == [("a", StepState.COMPENSATING)]
    with signed_in(path) as (console, headers):
        target, fields = posted(page, "skip", who="ada", why="undid b by hand")
        status, _, html = request(console, "POST", target, body=fields, headers=headers)
        assert status == 200, html
        assert "command #1 is queued: no runtime holds the store" in html
    with runtime() as rt:  # the runtime applies what the page sent
        outcome = wait_outcome(path, 1, timeout=10)
        assert outcome is not None
        assert outcome["state"] == "FAILED", outcome
        skip = [e for e in rt.history("w") if e["kind"] == "operator"][-1]
        assert (skip["action"], skip["step"]) == ("skip", "b")
        assert "refused" in skip
        status = rt.status("w")
    assert status.state is WorkflowState.NEEDS_ATTENTION  # COMPENSATED before, 'a' not undone
    assert status.steps["a"].state is StepState.COMPENSATING


def test_an_action_from_a_page_that_showed_another_state_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The inbox was read while 'w' was parked; another operator retried it and it
    # compensates again (the undo of 'b' waits to be tried again). The abandon the page
    # offered for a parked workflow was queued, and would have stopped that
    # compensation half way: the page had not shown it compensating.
    path, clock = tmp_path / "store", FakeClock(start=1_700_000_000.0)
    slow = RetryPolicy(max_attempts=3, initial_interval=3600.0, max_interval=3600.0, jitter=0.0)
    abc = (
        Workflow("abc")
        .step("a", agent="u", action="do", compensate="undo")
        .step("b", agent="u", action="do", compensate="undo", after=["a"], compensate_retry=slow)
        .step("c", agent="u", action="do", after=["b"])
    )

    def runtime() -> Runtime:
        rt = Runtime(path, default_retry=FAST, clock=clock)
        rt.add_agent("u", Undo)
        rt.add_workflow(abc)
        return rt

    monkeypatch.setattr(Undo, "broken", frozenset({"b"}))
    with runtime() as rt:
        handle = rt.start("abc", {}, workflow_id="w")
        wait_until(rt, lambda: rt.status("w").steps["b"].compensation_attempts == 1, 10)
        advance(rt, clock, 3 * 3600.0)  # (its two retries)
        record, _ = rt._wait_final(handle.id, 10)
        assert record.state is WorkflowState.NEEDS_ATTENTION
    with signed_in(path) as (console, headers):
        _, _, inbox = request(console, "GET", "/inbox", headers=headers)
    with runtime() as rt:  # another operator: retry; the undo of 'b' fails and waits
        rt.retry("w", who="bob", why="the hotel is back")
        wait_until(rt, lambda: rt.status("w").steps["b"].compensation_attempts == 1, 10)
        assert rt.status("w").state is WorkflowState.COMPENSATING
    with signed_in(path) as (console, headers):
        target, fields = posted(inbox, "abandon", who="ada", why="give up")
        status, _, html = request(console, "POST", target, body=fields, headers=headers)
        assert status == 409, html  # 200 "command #1 is queued" before
        assert "is COMPENSATING now, not NEEDS_ATTENTION as the page" in html
        # the engine's refusal (one rule, one wording), not a copy of its own
        said = stale_refusal(
            "w", WorkflowState.COMPENSATING, "NEEDS_ATTENTION", "abandon", seen=views._SEEN
        )
        assert said is not None
        assert escape(said) in html
        with console.gate.read() as st:
            assert pending_commands(st) == []
        fields.pop("state")  # a script's form, which names no state: taken as it comes
        status, _, html = request(console, "POST", target, body=fields, headers=headers)
        assert "command #1 is queued" in html


def test_a_workflows_page_lists_the_commands_queued_for_it(
    make_console: Callable[..., Console], monkeypatch: pytest.MonkeyPatch
) -> None:
    # No page said a command was waiting for a runtime: an operator back at the page
    # (or another one) saw the workflow parked as before, and sent another decision.
    from herder.runtime.ui import _workflow_page

    console = make_console()
    headers = {"Cookie": sign_in(console), "Origin": console.origin}
    why = "<script>alert(1)</script>"
    for action in ("retry", "abandon"):
        fields = form(console, action=action, why=why)
        _, _, html = request(console, "POST", "/act", body=fields, headers=headers)
        assert "is queued: no runtime holds the store" in html
    _, _, html = request(console, "GET", "/workflow?id=stuck")
    queued = re.search(r'<div class="warn" id="queued">(.*?)</div>', html, re.S)
    assert queued is not None  # (no such note before)
    assert re.findall(r"<li>(#\d \w+) by ada, ", queued.group(1)) == ["#1 retry", "#2 abandon"]
    assert escape(why) in queued.group(1)
    _, _, html = request(console, "GET", "/inbox")  # the row of 'stuck' says so too
    assert re.search(r'<p class="warn queued">queued, not applied yet: #1 retry by ada, ', html)
    assert "and 1 more; an action sent now comes after</p>" in html
    long = form(console, action="skip", step="s" * 5000, why="w" * 5000)
    request(console, "POST", "/act", body=long, headers=headers)
    _, _, html = request(console, "GET", "/workflow?id=stuck")
    assert "s" * 101 not in html  # a crafted step, or a long why, is cut
    assert "w" * 301 not in html
    assert "(5,000 characters; herder show ID, once it is applied, prints it all)" in html
    _, _, html = request(console, "GET", "/workflow?id=done")
    assert 'id="queued"' not in html  # (none for it)
    monkeypatch.setattr(_workflow_page, "QUEUED_LOOK", 1)  # more queued than it looks at
    _, _, html = request(console, "GET", "/workflow?id=done")
    assert "More than 1 operator commands are queued" in html
