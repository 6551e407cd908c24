"""The web console over HTTP: pages, filters, paging, escaping, the token and CSRF."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from _http_kit import request

from herder.runtime import Agent, Permanent, RetryPolicy, Runtime, StepContext, Workflow
from herder.runtime.testing import FakeClock
from herder.runtime.ui import Console
from herder.runtime.ui._query import Filters, workflow_page
from herder.store import Store
from herder.store._commands import pending_commands
from herder.store._records import WorkflowState

HOSTILE = '<img src=x onerror="alert(1)">'
FAST = RetryPolicy(max_attempts=2, initial_interval=0.0, jitter=0.0)


class Shop(Agent):
    def buy(self, ctx: StepContext) -> dict[str, Any]:
        if ctx.input.get("sold_out") and ctx.step == "ship":
            raise Permanent(f"out of stock: {HOSTILE}")
        return {"item": ctx.step, "note": ctx.input.get("note")}

    def refund(self, ctx: StepContext) -> None:
        if ctx.input.get("refunds_down"):
            raise Permanent("refunds are down")


ORDER = (
    Workflow("order")
    .step("pay", agent="shop", action="buy", compensate="refund")
    .step("ship", agent="shop", action="buy", after=["pay"])
)
GIFT = Workflow("gift").step("wrap", agent="shop", action="buy")


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """o-0 .. o-9 one second apart (o-3 compensated, o-6 stuck), g-0 a gift, then the
    hostile one: newest last."""
    path = tmp_path_factory.mktemp("ui") / "store"
    clock = FakeClock(start=1_700_000_000.0)
    with Runtime(path, default_retry=FAST, clock=clock) as rt:
        rt.add_agent("shop", Shop)
        rt.add_workflow(ORDER)
        rt.add_workflow(GIFT)
        for i in range(10):
            data = (
                {"sold_out": 1} if i == 3 else {"sold_out": 1, "refunds_down": 1} if i == 6 else {}
            )
            rt._wait_final(rt.start("order", data, workflow_id=f"o-{i}").id, 10)
            clock.advance(1.0)
        rt._wait_final(rt.start("gift", {}, workflow_id="g-0").id, 10)
        clock.advance(1.0)
        rt._wait_final(rt.start("order", {"note": HOSTILE}, workflow_id=HOSTILE).id, 10)
        rt.schedule("weekly-gift", "gift", every=7 * 86400.0)  # its first slot is days away
    return path


@pytest.fixture
def console(store: Path) -> Iterator[Console]:
    console = Console(str(store), port=0, token="s3cret", wait=0.5)
    console.start()
    try:
        yield console
    finally:
        console.shutdown()


def signed_in(console: Console) -> dict[str, str]:
    status, headers, _ = request(console, "GET", "/?token=s3cret")
    assert status == 303
    cookie = headers["Set-Cookie"]
    assert "HttpOnly" in cookie
    assert "SameSite=Strict" in cookie
    return {"Cookie": cookie.split(";")[0]}


def ids_listed(html: str) -> list[str]:
    return re.findall(r'<tr><td><a href="/workflow\?id=[^"]*">([^<]*)</a>', html)


def test_the_list_shows_the_newest_workflow_first(console: Console) -> None:
    status, headers, html = request(console, "GET", "/")
    assert status == 200
    listed = ids_listed(html)
    assert listed[:3] == ["&lt;img src=x onerror=&quot;alert(1)&quot;&gt;", "g-0", "o-9"]
    assert listed[-1] == "o-0"
    assert "default-src 'none'" in headers["Content-Security-Policy"]
    assert headers["X-Frame-Options"] == "DENY"


def test_filters_narrow_the_list_by_state_name_and_time(console: Console) -> None:
    _, _, html = request(console, "GET", "/?state=NEEDS_ATTENTION")
    assert ids_listed(html) == ["o-6"]
    _, _, html = request(console, "GET", "/?name=gift")
    assert ids_listed(html) == ["g-0"]
    _, _, html = request(console, "GET", "/?state=COMPENSATED&name=order")
    assert ids_listed(html) == ["o-3"]
    # o-i was created at 1_700_000_000 + i (local time in the form, as a browser sends it)
    import datetime

    def local(t: float) -> str:
        return datetime.datetime.fromtimestamp(t).isoformat(timespec="seconds")

    query = urlencode({"since": local(1_700_000_002), "until": local(1_700_000_005)})
    _, _, html = request(console, "GET", "/?" + query)
    assert ids_listed(html) == ["o-4", "o-3", "o-2"]


def test_a_bad_filter_is_a_clear_page_not_a_traceback(console: Console) -> None:
    status, _, html = request(console, "GET", "/?state=BOGUS")
    assert status == 400
    assert "unknown state" in html
    status, _, html = request(console, "GET", "/?cursor=zz")
    assert status == 400
    assert "Traceback" not in html


def test_paging_goes_back_in_time_without_repeating_or_skipping(store: Path) -> None:
    with Store(store, readonly=True) as st:
        seen: list[str] = []
        cursor = None
        while True:
            page = workflow_page(st, Filters(), cursor, size=4)
            seen += [s.id for s in page.rows]
            cursor = page.next_cursor
            if cursor is None:
                break
        assert seen == [HOSTILE, "g-0", *(f"o-{i}" for i in range(9, -1, -1))]


def test_a_page_examines_at_most_its_budget_and_offers_to_go_on(store: Path) -> None:
    with Store(store, readonly=True) as st:
        rare = Filters(state=WorkflowState.NEEDS_ATTENTION)
        first = workflow_page(st, rare, None, size=10, budget=3)
        assert (first.rows, first.examined, first.budget_spent) == ([], 3, True)
        assert first.next_cursor is not None
        found: list[str] = []
        cursor: str | None = first.next_cursor
        pages = 1
        while cursor is not None:
            page = workflow_page(st, rare, cursor, size=10, budget=3)
            assert page.examined <= 3
            found += [s.id for s in page.rows]
            cursor, pages = page.next_cursor, pages + 1
        assert found == ["o-6"]
        assert pages == 4  # 12 entries, 3 at a time


def test_the_older_link_carries_the_filters_and_the_cursor(store: Path) -> None:
    console = Console(str(store), port=0, token="t")
    console.start()
    try:
        import herder.runtime.ui._query as query

        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(query.workflow_page, "__kwdefaults__", {"size": 2, "budget": 5000})
            _, _, html = request(console, "GET", "/?name=order")
            link = re.search(r'id="older" href="([^"]+)"', html)
            assert link is not None
            href = link.group(1).replace("&amp;", "&")
            assert "name=order" in href
            _, _, html = request(console, "GET", href)
            assert ids_listed(html) == ["o-8", "o-7"]  # the hostile one and o-9 came first
    finally:
        console.shutdown()


def test_a_workflow_page_shows_steps_timeline_errors_and_history(console: Console) -> None:
    status, _, html = request(console, "GET", "/workflow?id=o-3")
    assert status == 200
    assert '<svg class="timeline"' in html
    assert re.search(r'<rect class="seg ok" data-step="pay"', html)  # pay succeeded
    assert re.search(r'<rect class="seg failed" data-step="ship"', html)  # ship failed
    assert re.search(r'<rect class="seg undone" data-step="pay"', html)  # then undone
    assert "out of stock: &lt;img src=x" in html  # the stored error, escaped
    tracebacks = re.findall(
        r'<details class="tb"><summary>traceback</summary><pre>(.*?)</pre>', html, re.S
    )
    assert any("in buy" in tb for tb in tracebacks)  # the failed attempt's stored traceback
    assert 'id="history"' in html
    assert "COMPENSATING -&gt; COMPENSATED" in html


def test_every_value_from_the_store_is_escaped(console: Console) -> None:
    for path in ("/", "/workflow?" + urlencode({"id": HOSTILE}), "/workflow?id=o-3"):
        _, _, html = request(console, "GET", path)
        assert "<img" not in html, path
        assert "onerror=&quot;alert(1)&quot;" in html or "alert(1)" not in html


def test_an_unknown_workflow_is_a_404_page(console: Console) -> None:
    status, _, html = request(console, "GET", "/workflow?id=nope")
    assert status == 404
    assert "No workflow with id" in html


def test_a_missing_store_gives_a_clear_page(tmp_path: Path) -> None:
    console = Console(str(tmp_path / "nothing-here"), port=0, token="t")
    console.start()
    try:
        for path in ("/", "/inbox", "/api/stats"):
            status, _, html = request(console, "GET", path)
            assert status == 503, path
            assert "The store cannot be read" in html
            assert "Traceback" not in html
    finally:
        console.shutdown()


def test_a_damaged_record_is_named_without_the_advice_for_a_missing_store(
    tmp_path: Path,
) -> None:
    # The page said "Check the --store path: a runtime creates the store when it first
    # opens it", the advice for a store that is not there, for one damaged step record.
    import lmdb

    from herder.store._keys import step_key

    path = tmp_path / "store"
    with Runtime(path, default_retry=FAST, clock=FakeClock()) as rt:
        rt.add_agent("shop", Shop)
        rt.add_workflow(ORDER)
        rt.start("order", {}, workflow_id="o-1").result(timeout=10)
    env = lmdb.open(str(path), max_dbs=16)
    with env.begin(write=True) as txn:
        txn.put(step_key("o-1", "pay"), b"\xc1", db=env.open_db(b"steps", txn=txn))
    env.close()
    console = Console(str(path), port=0, token="t")
    console.start()
    try:
        status, _, html = request(console, "GET", "/workflow?id=o-1")
        assert status == 503
        assert "A record is damaged" in html
        assert "creates the store" not in html
    finally:
        console.shutdown()


def test_a_wrong_token_is_refused_and_the_right_one_signs_in(console: Console) -> None:
    status, headers, _ = request(console, "GET", "/?token=guess")
    assert status == 403
    assert "Set-Cookie" not in headers
    _, _, html = request(console, "GET", "/inbox", headers=signed_in(console))
    assert 'name=csrf value="' + console.csrf + '"' in html
    _, _, html = request(console, "GET", "/inbox")
    assert console.csrf not in html
    assert "Read-only" in html


def form(console: Console, **fields: str) -> dict[str, str]:
    return {"csrf": console.csrf, "id": "o-6", "action": "retry", "who": "ada", "why": "x"} | fields


@pytest.mark.parametrize(
    ("with_cookie", "fields", "extra", "status", "says"),
    [
        (False, {}, {}, 403, "not signed in"),
        (True, {"csrf": "forged"}, {}, 403, "CSRF"),
        (True, {}, {"Origin": "http://evil.example"}, 403, "cross-site"),
        (True, {}, {"Host": "evil.example:80"}, 421, "does not serve"),
    ],
)
def test_actions_need_the_token_cookie_the_csrf_field_and_a_same_origin(  # noqa: PLR0917
    console: Console,
    store: Path,
    with_cookie: bool,
    fields: dict[str, str],
    extra: dict[str, str],
    status: int,
    says: str,
) -> None:
    headers = {**(signed_in(console) if with_cookie else {}), **extra}
    got, _, html = request(console, "POST", "/act", body=form(console, **fields), headers=headers)
    assert (got, says in html) == (status, True)
    with Store(store, readonly=True) as st:
        assert pending_commands(st) == []  # nothing was sent


def test_a_signed_in_action_without_a_runtime_is_queued_on_the_channel(
    tmp_path: Path, store: Path
) -> None:
    import shutil

    copy = tmp_path / "store"
    shutil.copytree(store, copy)
    console = Console(str(copy), port=0, token="s3cret")
    console.start()
    try:
        headers = {**signed_in(console), "Origin": console.origin}
        status, _, html = request(
            console, "POST", "/act", body=form(console, why="try again"), headers=headers
        )
        assert status == 200
        assert "is queued: no runtime holds the store" in html
        assert '<span class="mode rw">operator</span>' in html  # signed in, not read-only
        status, _, html = request(
            console, "POST", "/act", body=form(console, why=" "), headers=headers
        )
        assert status == 400
        assert "say who acts and why" in html
        assert "complete the form" in html  # not "fix the address"
        _, _, html = request(console, "GET", "/workflow?id=o-6")  # the store reads again
        assert "o-6" in html
    finally:
        console.shutdown()
    with Store(copy, readonly=True) as st:
        (command,) = pending_commands(st)
    assert (command["action"], command["workflow_id"]) == ("retry", "o-6")
    assert (command["who"], command["why"]) == ("ada", "try again")


def test_live_counters_are_the_stats_numbers(console: Console) -> None:
    import json

    status, headers, body = request(console, "GET", "/api/stats")
    assert status == 200
    assert headers["Content-Type"] == "application/json"
    stats = json.loads(body)
    assert stats["workflows"]["SUCCEEDED"] == 10
    assert stats["workflows"]["NEEDS_ATTENTION"] == 1
    assert stats["running"] is False


def test_agents_page_names_each_agent_its_users_and_the_schedules(console: Console) -> None:
    _, _, html = request(console, "GET", "/agents")
    assert re.search(r"<td>shop</td><td>gift@1, order@1</td>", html)
    assert re.search(r'id="schedules".*<td>weekly-gift</td><td>gift</td>', html)


def test_cli_ui_refuses_a_port_in_use(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import io

    from herder.runtime._cli import main

    console = Console(str(store), port=0, token="t")
    try:
        code = main(["ui", "--store", str(store), "--port", str(console.port)], io.StringIO())
    finally:
        console.server.server_close()
    assert code == 1
    assert "cannot listen" in capsys.readouterr().err


@pytest.mark.parametrize("port", ["99999", "-1", "http"])
def test_cli_ui_refuses_what_is_not_a_port_as_a_usage_error(
    store: Path, port: str, capsys: pytest.CaptureFixture[str]
) -> None:
    import io

    from herder.runtime._cli import main

    with pytest.raises(SystemExit) as exited:  # argparse's usage error (OverflowError before)
        main(["ui", "--store", str(store), "--port", port], io.StringIO())
    assert exited.value.code == 2
    assert "is not a port: use 0..65535" in capsys.readouterr().err


def test_a_store_older_than_the_index_says_so(tmp_path: Path, store: Path) -> None:
    import shutil

    import lmdb

    copy = tmp_path / "old"
    shutil.copytree(store, copy)
    env = lmdb.open(str(copy), max_dbs=32, subdir=True)
    try:  # as a store written before the recent index, never opened by a writer since
        with env.begin(write=True, db=env.open_db(b"meta")) as txn:
            assert txn.delete(b"recent_index")
    finally:
        env.close()
    console = Console(str(copy), port=0, token="t")
    console.start()
    try:
        status, _, html = request(console, "GET", "/")
    finally:
        console.shutdown()
    assert status == 200
    assert "written before the index of recent workflows" in html
    assert ids_listed(html) == []


def test_counters_never_make_a_request_wait_and_back_off_on_a_slow_count(
    monkeypatch: pytest.MonkeyPatch, store: Path
) -> None:
    import threading
    import types

    from herder.runtime.ui import _counters
    from herder.runtime.ui._gate import StoreGate

    clock = types.SimpleNamespace(now=0.0)
    monkeypatch.setattr(
        _counters, "time", types.SimpleNamespace(monotonic=lambda: clock.now, time=lambda: 0.0)
    )
    release = threading.Event()
    calls: list[int] = []

    def fake_stats(st: Store, **_: Any) -> dict[str, Any]:
        calls.append(1)
        if len(calls) == 2:
            release.wait(10)  # a count that takes a while
        if len(calls) == 3:
            clock.now += 5.0  # a count that takes 5 s
        return {"n": len(calls)}

    monkeypatch.setattr(_counters, "store_stats", fake_stats)
    gate = StoreGate(str(store))
    counters = _counters.Counters(gate)
    try:
        assert counters.get()["n"] == 1  # the first request waits for the first count
        clock.now = 1.0
        assert (counters.get()["n"], len(calls)) == (1, 1)  # not due: no new count
        clock.now = 2.0
        assert counters.get()["n"] == 1  # due: a count starts, the answer does not wait
        release.set()
        counters._counted.wait(10)
        assert counters.get()["n"] == 2
        clock.now = 4.0
        counters.get()  # count 3 starts at 4 and ends at 9 (5 s)
        counters._counted.wait(10)
        clock.now = 58.0
        assert (counters.get()["n"], len(calls)) == (3, 3)  # not before 9 + 10 x 5
        clock.now = 59.0
        counters.get()
        counters._counted.wait(10)
        assert len(calls) == 4
    finally:
        gate.close()


def test_a_big_input_or_result_is_clipped_on_its_page() -> None:
    # Shown whole, eight 16 MiB results made a page of hundreds of MB.
    from herder.runtime.ui._pages import SHOWN, pretty

    rows = [{"n": i} for i in range(5000)]
    shown = pretty(rows)
    assert len(shown) < SHOWN + 100
    assert shown.endswith("characters; herder show ID --json prints it all)")
    assert pretty({"item": "pay"}) == '{\n  "item": "pay"\n}'


def test_a_time_that_is_no_date_is_shown_as_seconds(tmp_path: Path) -> None:
    # A runtime's clock may be far off (a custom Clock): its records' times are no dates,
    # and the list and the workflow's page raised OverflowError formatting them.
    path = tmp_path / "store"
    with Runtime(path, default_retry=FAST, clock=FakeClock(start=1e12)) as rt:
        rt.add_agent("shop", Shop)
        rt.add_workflow(ORDER)
        rt.start("order", {}, workflow_id="o-far").result(timeout=10)
    console = Console(str(path), port=0, token="t")
    console.start()
    try:
        for page in ("/", "/workflow?id=o-far"):
            status, _, html = request(console, "GET", page)
            assert status == 200, page
            assert "o-far" in html
            assert "1000000000000.000 s" in html
    finally:
        console.shutdown()


def test_a_workflow_that_moves_on_while_its_page_is_read_is_not_listed_in_its_old_state(
    tmp_path: Path, store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The index said NEEDS_ATTENTION and the record, read a moment later, ABANDONED: the
    # row showed ABANDONED in a list filtered to NEEDS_ATTENTION (2 % of the rows of a
    # filtered page of a busy store).
    import shutil

    from herder.store import Put, Transition, encode, workflow_key

    copy = tmp_path / "store"
    shutil.copytree(store, copy)
    with Store(copy) as st:
        real = st.view

        def then_moved_on(fn: Any) -> Any:
            chunk = real(fn)
            record = st.get_workflow("o-6")
            assert record is not None
            moved = record.evolve(state=WorkflowState.ABANDONED, updated=record.updated + 60)
            put = Put("workflows", workflow_key("o-6"), encode(moved.to_stored()))
            st.writer.submit(Transition(ops=(put,))).result(timeout=10)
            return chunk

        monkeypatch.setattr(st, "view", then_moved_on)
        page = workflow_page(st, Filters(state=WorkflowState.NEEDS_ATTENTION))
    assert [(s.id, s.state) for s in page.rows] == []


@pytest.mark.parametrize("filters", [Filters(), Filters(name="order")])
def test_a_damaged_index_key_is_named_and_the_list_goes_on(
    tmp_path: Path, store: Path, filters: Filters
) -> None:
    # herder ls passes over an index key of no index key's shape; the console's list
    # was a 500 (struct.error) for one too short, and a 503 "the store cannot be read"
    # (MDB_BAD_VALSIZE: the empty id it looked up) with a name filter.
    import shutil

    import lmdb

    copy = tmp_path / "store"
    shutil.copytree(store, copy)
    env = lmdb.open(str(copy), max_dbs=32, subdir=True)
    try:
        with env.begin(write=True, db=env.open_db(b"recent")) as txn:
            txn.put(b"\xff\xff", b"?")  # too short, and the newest
            txn.put(b"\x00" * 8 + b"\xff", b"?")  # an id that is not UTF-8, the oldest
    finally:
        env.close()
    with Store(copy, readonly=True) as st:
        page = workflow_page(st, filters, size=100)
    every = [HOSTILE, *([] if filters.name else ["g-0"]), *(f"o-{i}" for i in range(9, -1, -1))]
    assert [s.id for s in page.rows] == every
    assert sorted(c.key for c in page.corrupt) == [b"\x00" * 8 + b"\xff", b"\xff\xff"]
