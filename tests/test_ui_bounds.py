"""What one request may cost the console (``herder ui``): the inbox reads the parked
workflows only, a request must arrive whole within the idle timeout, a client gone at
any point is quiet, and a --host it cannot bind is named as the problem."""

from __future__ import annotations

import errno
import io
import socket
import struct
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lmdb
import pytest
import test_ui_http
from _http_kit import request
from test_ui import ids_listed
from test_ui_http import FAST, ORDER, TOKEN, Shop, handled, sign_in

from herder.runtime import Runtime
from herder.runtime.testing import FakeClock
from herder.runtime.ui import Console
from herder.store import Delete, Put, Store, StoreCorrupt, Transition, step_key, workflow_key

pytestmark = pytest.mark.timeout(60)

# the HTTP tests' fixtures: the built store ("done" succeeded, "stuck" parked), a copy
built, store = test_ui_http.built, test_ui_http.store
make_console, console = test_ui_http.make_console, test_ui_http.console


# -- the inbox reads the parked workflows, not the store -------------------------------


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """300 finished workflows and one parked one ("stuck")."""
    path = tmp_path_factory.mktemp("big") / "store"
    with Runtime(path, default_retry=FAST, clock=FakeClock(start=1_700_000_000.0)) as rt:
        rt.add_agent("shop", Shop)
        rt.add_workflow(ORDER)
        handles = rt.start_many(
            [{"workflow": "order", "input": {}, "workflow_id": f"w-{i}"} for i in range(300)]
        )
        for h in handles:
            rt._wait_final(h.id, 30)
        stuck = {"sold_out": 1, "refunds_down": 1}
        rt._wait_final(rt.start("order", stuck, workflow_id="stuck").id, 10)
    return path


def count_decoded(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """The keys of the workflow records decoded from now on (by the store's reads)."""
    from herder.store import _reads

    decoded: list[bytes] = []
    real = _reads.decode

    def counting(raw: Any, *args: Any, **kw: Any) -> Any:
        if kw.get("db") == "workflows":
            decoded.append(kw.get("key", b""))
        return real(raw, *args, **kw)

    monkeypatch.setattr(_reads, "decode", counting)
    return decoded


@pytest.mark.timeout(120)
def test_the_inbox_decodes_only_the_parked_workflows(
    big: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GET /inbox (no token needed) decoded every workflow record of the store to learn
    # its state, in the request thread and holding the gate's read side (an operator's
    # action waited for it); the `recent` index already holds each workflow's state.
    console = Console(str(big), port=0, token=TOKEN)
    console.start()
    try:
        request(console, "GET", "/inbox")  # warm up (opens the store)
        decoded = count_decoded(monkeypatch)
        status, _, html = request(console, "GET", "/inbox")
        assert status == 200
        assert "stuck" in html
        assert decoded == [b"stuck"], f"GET /inbox decoded {len(decoded)} workflow records"
    finally:
        console.shutdown()


def damage(path: Path, workflow_id: str) -> None:
    """Overwrite a workflow's record with bytes that do not decode (through the writer,
    which indexes it as unreadable)."""
    with Store(path) as s:
        put = Put("workflows", workflow_key(workflow_id), b"\xc1")
        s.writer.submit(Transition(ops=(put,))).result(timeout=10)


def parked(path: Path) -> tuple[list[str], list[StoreCorrupt]]:
    """The inbox of the store at ``path`` (as ``herder inbox`` reads it) and what it named."""
    from herder.runtime._inbox import inbox_items

    corrupt: list[StoreCorrupt] = []
    with Store(path, readonly=True) as s:
        return [item.id for item in inbox_items(s, corrupt=corrupt)], corrupt


def test_a_damaged_record_is_named_and_the_parked_ones_still_listed(store: Path) -> None:
    damage(store, "done")
    ids, corrupt = parked(store)
    assert ids == ["stuck"]
    assert [c.key for c in corrupt] == [b"done"]


def test_a_store_without_the_index_falls_back_to_reading_every_record(
    store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    damage(store, "done")
    env = lmdb.open(str(store), max_dbs=32, subdir=True)
    try:  # as a store written before the recent index, never opened by a writer since
        with env.begin(write=True, db=env.open_db(b"meta")) as txn:
            assert txn.delete(b"recent_index")
    finally:
        env.close()
    decoded = count_decoded(monkeypatch)
    ids, corrupt = parked(store)
    assert ids == ["stuck"]
    assert [c.key for c in corrupt] == [b"done"]
    assert sorted(decoded) == [b"done", b"stuck"]  # the full read: every record
    console = Console(str(store), port=0, token=TOKEN)  # its inbox names it too
    console.start()
    try:
        status, _, html = request(console, "GET", "/inbox")
    finally:
        console.shutdown()
    assert status == 200
    assert ids_listed(html) == ["stuck"]
    assert "skipped: corrupt record in database &#x27;workflows&#x27; at key b&#x27;done" in html


def test_the_inbox_shows_the_oldest_parked_workflows_a_page_at_a_time(
    store: Path, make_console: Callable[..., Console], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every parked workflow made one page: 100,000 parked (an outage) took 7 s and 110 MB
    # of HTML, a page no browser shows, when the operator most needs the inbox.
    from herder.runtime.ui import _views
    from herder.store import WorkflowRecord, WorkflowState, encode

    with Store(store) as s:  # five more parked, newer than "stuck"
        ops = tuple(
            Put("workflows", workflow_key(f"p-{i}"), encode(record.to_stored()))
            for i in range(5)
            for record in [
                WorkflowRecord(
                    f"p-{i}", "order", 1, {}, WorkflowState.NEEDS_ATTENTION, 2e9, 2e9 + i
                )
            ]
        )
        s.writer.submit(Transition(ops=ops)).result(timeout=10)
    assert len(parked(store)[0]) == 6  # `herder inbox` and rt.inbox() give every one
    monkeypatch.setattr(_views, "INBOX_PAGE", 3, raising=False)
    console = make_console()
    request(console, "GET", "/inbox")  # warm up (opens the store)
    decoded = count_decoded(monkeypatch)
    status, _, html = request(console, "GET", "/inbox")
    assert status == 200
    assert ids_listed(html) == ["stuck", "p-0", "p-1"]  # the oldest first
    assert "The 3 oldest of the 6 waiting for an operator" in html
    assert 'href="/?state=NEEDS_ATTENTION"' in html  # the rest: a page at a time
    assert len(decoded) == 3


def test_a_name_filter_decodes_no_input_of_the_workflows_it_passes_over(
    store: Path, make_console: Callable[..., Console], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A name filter examines up to 5,000 records a page and decoded each whole, its
    # input included: 1.5 s a page where inputs were some tens of KB (27 ms documented).
    import msgpack

    from herder.store import WorkflowRecord, WorkflowState, encode

    blob = "x" * 20_000
    with Store(store) as s:
        ops = tuple(
            Put("workflows", workflow_key(f"big-{i}"), encode(record.to_dict()))
            for i in range(40)
            for record in [
                WorkflowRecord(
                    f"big-{i}", "bulk", 1, {"blob": blob}, WorkflowState.SUCCEEDED, 2e9, 2e9 + i
                )
            ]
        )
        s.writer.submit(Transition(ops=ops)).result(timeout=10)
    console = make_console()
    request(console, "GET", "/")  # warm up (opens the store)
    decoded: list[int] = []
    real = msgpack.unpackb

    def counting(data: Any, *args: Any, **kw: Any) -> Any:
        decoded.append(len(data))
        return real(data, *args, **kw)

    monkeypatch.setattr(msgpack, "unpackb", counting)
    status, _, html = request(console, "GET", "/?name=order")
    assert status == 200
    assert ids_listed(html) == ["stuck", "done"]  # past the 40 bulk ones, newer
    big = [n for n in decoded if n > len(blob)]
    assert big == [], f"a name filter decoded {len(big)} records with their inputs"


# -- a request must arrive whole within the idle timeout -------------------------------


def trickle(console: Console, head: bytes) -> tuple[int, int]:
    """Send ``head``, then a byte each 0.2 s, up to 30 of them: (how many were sent
    with the connection still open, the status a request then gets)."""
    # The connections before (a sign-in) gone from the console too: their clients closed
    # them, the console's threads may not have seen it yet (max_connections=1).
    assert console.server.slots.acquire(timeout=10)
    console.server.slots.release()
    sock = socket.create_connection(("127.0.0.1", console.port), timeout=10)
    try:
        sock.sendall(head)
        sock.settimeout(0.2)  # (the pace of the trickle)
        held = 0
        for _ in range(30):
            try:
                sock.sendall(b"a")
                if sock.recv(1) == b"":  # the console dropped it
                    break
            except TimeoutError:  # still open, nothing answered
                held += 1
            except OSError:
                break
        status, _, _ = request(console, "GET", "/")
        return held, status
    finally:
        sock.close()


@pytest.mark.timeout(30)
def test_a_client_trickling_its_headers_is_dropped_like_a_silent_one(
    make_console: Callable[..., Console],
) -> None:
    # Only each read had a timeout: one byte every 0.2 s (idle timeout 0.3 s) held a
    # thread for ever, and 64 such clients made every other request a 503.
    console = make_console(idle_timeout=0.3, max_connections=1)
    head = f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{console.port}\r\nX-Pad: ".encode()
    held, status = trickle(console, head)
    assert held < 5, f"a trickling client held its connection for {held} bytes"
    assert status == 200


@pytest.mark.timeout(30)
def test_a_client_trickling_its_body_is_dropped_like_a_silent_one(
    make_console: Callable[..., Console],
) -> None:
    # The same, a byte at a time of a (signed-in) POST's 64 KiB body.
    console = make_console(idle_timeout=0.3, max_connections=1)
    head = (
        f"POST /act HTTP/1.1\r\nHost: 127.0.0.1:{console.port}\r\nCookie: {sign_in(console)}"
        "\r\nContent-Length: 60000\r\n\r\nid="
    ).encode()
    held, status = trickle(console, head)
    assert held < 5, f"a trickling client held its connection for {held} bytes"
    assert status == 200


# -- a client gone at any point is quiet -----------------------------------------------


@pytest.mark.timeout(30)
def test_a_client_that_resets_mid_headers_leaves_no_traceback(
    console: Console, capsys: pytest.CaptureFixture[str]
) -> None:
    # The headers are read by http.server before the console's own code: a reset there
    # reached socketserver's handle_error, which printed a traceback on stderr (any
    # client could fill the log). The body and the answer were already quiet.
    done = handled(console)
    sock = socket.create_connection(("127.0.0.1", console.port), timeout=10)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.sendall(f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{console.port}\r\n".encode())
    sock.settimeout(0.2)
    with pytest.raises(TimeoutError):
        sock.recv(1)  # no answer: the console waits for the next header line
    sock.close()  # a reset (SO_LINGER 0)
    assert done.wait(10)
    err = capsys.readouterr().err
    assert "Traceback" not in err, err


# -- what cannot be bound is named -----------------------------------------------------


@pytest.mark.timeout(30)
def test_a_host_that_cannot_be_bound_is_named_not_the_port(
    store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # "[Errno 99] Cannot assign requested address; try another --port", for port 0
    # (any free port): no other port could help, the host is not this machine's.
    from herder.runtime._cli import main

    argv = ["ui", "--store", str(store), "--host", "192.0.2.1", "--port", "0"]
    assert main(argv, io.StringIO()) == 1
    err = capsys.readouterr().err
    assert "another --port" not in err
    assert "--host is not an address of this machine" in err


@pytest.mark.timeout(30)
def test_a_port_in_use_says_to_try_another_port(
    store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from herder.runtime._cli import main

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        argv = ["ui", "--store", str(store), "--port", str(port)]
        assert main(argv, io.StringIO()) == 1
    err = capsys.readouterr().err
    assert f"[Errno {errno.EADDRINUSE}]" in err
    assert "the port is taken by another program: try another --port" in err


@pytest.mark.parametrize("limit", [None, 50])  # (read whole, and through the index)
def test_the_inbox_reads_a_parked_record_and_its_steps_in_one_snapshot(
    store: Path, monkeypatch: pytest.MonkeyPatch, limit: int | None
) -> None:
    """A parked workflow's record and its steps were two reads: a purge landing between
    them (or an operator's retry) listed it with no stuck step and no error of it
    (``herder inbox``, the console's inbox)."""
    from herder.runtime._inbox import inbox_items

    with Store(store) as s:
        [before] = inbox_items(s, limit=limit)
        assert before.step is not None
        real = s.steps_of

        def purged_first(workflow_id: str) -> Any:
            keys = [step_key(workflow_id, st.name) for st in real(workflow_id)]
            purge = Transition(ops=tuple(Delete("steps", key) for key in keys))
            writer = threading.Thread(target=lambda: s.writer.submit(purge).result(10))
            writer.start()  # (another thread: this one may be inside a read snapshot)
            writer.join()
            return real(workflow_id)

        monkeypatch.setattr(s, "steps_of", purged_first)
        assert inbox_items(s, limit=limit) == [before]


@pytest.mark.parametrize("limit", [200, None])  # (the console's page; herder inbox, rt.inbox())
@pytest.mark.parametrize("parked", [0, 1, 2])
def test_the_inbox_reads_the_index_only_up_to_the_last_parked_workflow(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, parked: int, limit: int | None
) -> None:
    # Finding the oldest parked workflows read the whole `recent` index, however few
    # there were and wherever they lay: 1.15 s per view of the inbox on a million
    # workflows, each time, with none parked too. The writer's kept counts say how many
    # the index lists. `herder inbox` and rt.inbox() (every parked one) still read it
    # whole: 27 ms on 100,000 finished workflows and none parked, 0.06 ms bounded.
    from herder.runtime._inbox import inbox_items
    from herder.store import WorkflowRecord, WorkflowState, encode

    def put(wid: str, state: WorkflowState, at: float) -> Put:
        record = WorkflowRecord(wid, "order", 1, {}, state, at, at)
        return Put("workflows", workflow_key(wid), encode(record.to_stored()))

    path = tmp_path / "store"
    with Store(path) as s:
        ops = [put(f"p-{i}", WorkflowState.NEEDS_ATTENTION, 1e9 + i) for i in range(parked)]
        ops += [put(f"w-{i:03}", WorkflowState.SUCCEEDED, 2e9 + i) for i in range(100)]
        s.writer.submit(Transition(ops=tuple(ops))).result(timeout=10)
    monkeypatch.setattr("herder.store._recent.PAGE", 5)  # (1,000 entries a page: 20 pages)
    with Store(path, readonly=True) as s:
        pages: list[str] = []  # (the pages of the index read)
        real = s._read

        def read(fn: Callable[..., Any]) -> Any:
            pages.extend([fn.__qualname__] if fn.__qualname__ == "scan.<locals>.page" else [])
            return real(fn)

        monkeypatch.setattr(s, "_read", read)
        items = inbox_items(s, corrupt=[], limit=limit)
        assert [item.id for item in items] == [f"p-{i}" for i in range(parked)]
        assert len(pages) == (parked > 0), f"{len(pages)} of its 20 pages read"


def test_every_parked_workflow_is_listed_past_a_damaged_key_in_the_index(
    tmp_path: Path,
) -> None:
    # `herder inbox` reads the index only up to the last parked workflow; a damaged key
    # in it may have been a parked one's (whose, is unknown): every record is read then.
    from test_store_edges import _flip_recent_key

    from herder.runtime._inbox import inbox_items
    from herder.store import WorkflowRecord, WorkflowState, encode

    path = tmp_path / "s"
    with Store(path) as s:
        record = WorkflowRecord("wf-p", "flow", 1, None, WorkflowState.NEEDS_ATTENTION, 1, 1)
        put = Put("workflows", workflow_key(record.id), encode(record.to_stored()))
        s.writer.submit(Transition((put,))).result(timeout=10)
    _flip_recent_key(path, 8, 0x80)  # 'w' (0x77) -> 0xf7: not UTF-8
    with Store(path, readonly=True) as s:
        corrupt: list[StoreCorrupt] = []
        assert [item.id for item in inbox_items(s, corrupt=corrupt)] == ["wf-p"]
        assert corrupt == []


def test_the_list_decodes_no_input_and_no_result(
    big: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A row shows a workflow's id, name, state, steps done, times and error, and the list
    # decoded each whole record, input and step results too: a page of 50 workflows with
    # payloads near the 1 MB a value may have took 3.4 to 5.7 s.
    from herder.store import _reads

    decoded: list[str] = []
    real = _reads.decode

    def counting(raw: Any, *args: Any, **kw: Any) -> Any:
        decoded.extend([kw["db"]] if kw.get("db") in {"workflows", "steps"} else [])
        return real(raw, *args, **kw)

    console = Console(str(big), port=0, token=TOKEN)
    console.start()
    try:
        monkeypatch.setattr(_reads, "decode", counting)
        for path in ("/", "/?state=SUCCEEDED", "/?name=order"):
            status, _, html = request(console, "GET", path)
            assert status == 200
            assert len(ids_listed(html)) == 50, path
            assert "2/2" in html, path  # (the steps done: their states are read)
        assert decoded == []
    finally:
        console.shutdown()


def test_a_page_reads_the_input_of_each_row_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A row peeked each field it shows in a pass of its own, and the four after the
    # input (state, created, updated, error) each went past it: a page of 50 workflows
    # whose inputs were lists near the 1 MB a value may have took 0.3 s, 0.09 s in one.
    import types

    from herder.runtime.ui._query import Filters, workflow_page
    from herder.store import WorkflowRecord, WorkflowState, _codec, encode

    blob = [i % 100 for i in range(100_000)]
    path = tmp_path / "store"
    with Store(path) as s:
        ops = tuple(
            Put("workflows", workflow_key(r.id), encode(r.to_stored()))
            for i in range(3)
            for r in [
                WorkflowRecord(f"w-{i}", "bulk", 1, blob, WorkflowState.COMPENSATED, i, i, "e")
            ]
        )
        s.writer.submit(Transition(ops=ops)).result(timeout=10)
    size = len(encode(blob))
    read: list[int] = []

    class Counting(io.BytesIO):
        def read(self, n: int | None = -1) -> bytes:
            data = super().read(n)
            read.append(len(data))
            return data

    monkeypatch.setattr(_codec, "io", types.SimpleNamespace(BytesIO=Counting))
    with Store(path, readonly=True) as s:
        page = workflow_page(s, Filters())
    assert [(r.id, r.state, r.error) for r in page.rows] == [
        (f"w-{i}", WorkflowState.COMPENSATED, "e") for i in (2, 1, 0)
    ]
    assert sum(read) < 3 * size * 1.1, f"{sum(read) / size:.1f} inputs read for 3 rows"


def test_every_parked_workflow_is_listed_though_one_parks_again_while_it_lists(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The index was read a page at a time, each page in a read of its own, from the
    # oldest, up to as many entries as the kept counts said (read before them): a
    # workflow parked meanwhile took the place of one retried and parked again after it,
    # and `herder inbox` left that one out, parked all along but for a moment.
    from herder.runtime._inbox import inbox_items
    from herder.store import WorkflowRecord, WorkflowState, encode

    def parked(wid: str, at: float) -> Put:
        record = WorkflowRecord(wid, "order", 1, {}, WorkflowState.NEEDS_ATTENTION, at, at)
        return Put("workflows", workflow_key(wid), encode(record.to_stored()))

    ids = [f"p-{i:02}" for i in range(12)]
    monkeypatch.setattr("herder.store._recent.PAGE", 5)  # (three pages)
    with Store(tmp_path / "store") as s:
        ops = tuple(parked(wid, 1e9 + i) for i, wid in enumerate(ids))
        s.writer.submit(Transition(ops=ops)).result(timeout=10)
        real, pages = s._read, []

        def read(fn: Callable[..., Any]) -> Any:
            if fn.__qualname__ == "scan.<locals>.page":
                if len(pages) == 1:  # before the second page: "q" parks, p-07 parks again
                    meanwhile = Transition(ops=(parked("q", 2e9), parked("p-07", 3e9)))
                    writes = threading.Thread(target=lambda: s.writer.submit(meanwhile).result(10))
                    writes.start()  # (a thread of its own: not the reader's)
                    writes.join(10)
                pages.append(fn.__qualname__)
            return real(fn)

        monkeypatch.setattr(s, "_read", read)
        listed = [item.id for item in inbox_items(s, corrupt=[])]
    assert len(pages) == 3  # (the hook saw the index read)
    assert sorted(listed) == ids, f"{sorted(set(ids) - set(listed))} left out"
