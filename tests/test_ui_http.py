"""The console's HTTP edges: bodies and lengths, idle and vanishing clients, hosts,
origins, cookies, tokens, odd ids and methods (the review of ``herder ui``)."""

from __future__ import annotations

import contextlib
import fcntl
import http.client
import logging
import os
import re
import shutil
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from _http_kit import request

from herder.runtime import Agent, Permanent, RetryPolicy, Runtime, StepContext, Workflow
from herder.runtime.testing import FakeClock
from herder.runtime.ui import Console, _guard
from herder.runtime.ui._server import MAX_BODY
from herder.store import InvalidInput
from herder.store._commands import pending_commands
from herder.store._locktable import COMPACTING, LOCK_FILE

pytestmark = pytest.mark.timeout(60)

TOKEN = "s3cret"
FAST = RetryPolicy(max_attempts=1, initial_interval=0.0, jitter=0.0)


class Shop(Agent):
    def buy(self, ctx: StepContext) -> dict[str, Any]:
        if ctx.input.get("sold_out") and ctx.step == "ship":
            raise Permanent("out of stock")
        return {}

    def refund(self, ctx: StepContext) -> None:
        if ctx.input.get("refunds_down"):
            raise Permanent("refunds are down")


ORDER = (
    Workflow("order")
    .step("pay", agent="shop", action="buy", compensate="refund")
    .step("ship", agent="shop", action="buy", after=["pay"])
)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Workflow "done" succeeded; "stuck" waits in NEEDS_ATTENTION."""
    path = tmp_path_factory.mktemp("http") / "store"
    with Runtime(path, default_retry=FAST, clock=FakeClock(start=1_700_000_000.0)) as rt:
        rt.add_agent("shop", Shop)
        rt.add_workflow(ORDER)
        rt._wait_final(rt.start("order", {}, workflow_id="done").id, 10)
        stuck = {"sold_out": 1, "refunds_down": 1}
        rt._wait_final(rt.start("order", stuck, workflow_id="stuck").id, 10)
    return path


@pytest.fixture
def store(built: Path, tmp_path: Path) -> Path:
    """A copy of the built store, for the tests that may write a command."""
    copy = tmp_path / "store"
    shutil.copytree(built, copy)
    return copy


@pytest.fixture
def make_console(store: Path) -> Iterator[Callable[..., Console]]:
    """Start consoles over the copied store; every one is shut down after the test."""
    started: list[Console] = []

    def make(**options: Any) -> Console:
        console = Console(str(store), **{"port": 0, "token": TOKEN, "wait": 0.5, **options})
        console.start()
        started.append(console)
        return console

    yield make
    for console in started:
        console.shutdown()


@pytest.fixture
def console(make_console: Callable[..., Console]) -> Console:
    return make_console()


def raw(console: Console, data: bytes) -> bytes:
    """Send ``data`` and read until the console closes the connection (the client never
    closes its side: a console waiting for more would time the read out)."""
    with socket.create_connection(("127.0.0.1", console.port), timeout=10) as sock:
        sock.sendall(data)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def sign_in(console: Console, token: str = TOKEN) -> str:
    """The ``Cookie`` header value the console sets for its token."""
    status, headers, _ = request(console, "GET", "/?" + urlencode({"token": token}))
    assert status == 303
    return headers["Set-Cookie"].split(";")[0]


@contextlib.contextmanager
def signed_in(path: Path) -> Iterator[tuple[Console, dict[str, str]]]:
    """A console over the store at ``path``, started, and the headers of a signed-in
    operator's browser on it; shut down on leaving."""
    console = Console(str(path), port=0, token=TOKEN, wait=0.5)
    console.start()
    try:
        yield console, {"Cookie": sign_in(console), "Origin": console.origin}
    finally:
        console.shutdown()


def form(console: Console, **fields: str) -> dict[str, str]:
    base = {"csrf": console.csrf, "id": "stuck", "action": "retry", "who": "ada", "why": "x"}
    return base | fields


# -- bodies, lengths and idle clients --------------------------------------------------


@pytest.mark.parametrize(
    ("length", "status"),
    [("-1", 400), ("+5", 400), ("abc", 400), (None, 411), (str(MAX_BODY + 1), 413)],
)
def test_a_post_without_a_usable_length_is_refused_before_its_body_is_read(
    console: Console, length: str | None, status: int
) -> None:
    head = (
        f"POST /act HTTP/1.1\r\nHost: 127.0.0.1:{console.port}\r\nCookie: {sign_in(console)}\r\n"
        + ("" if length is None else f"Content-Length: {length}\r\n")
        + "\r\n"
    )
    answer = raw(console, head.encode() + b"id=stuck")  # Content-Length -1 read to EOF before
    assert status_of(answer) == status
    assert b"Nothing was changed" in answer


def test_a_post_that_is_not_signed_in_is_refused_before_its_body_is_read(
    console: Console,
) -> None:
    head = f"POST /act HTTP/1.1\r\nHost: 127.0.0.1:{console.port}\r\nContent-Length: 1000\r\n\r\n"
    answer = raw(console, head.encode())  # the 1000 bytes never come
    assert status_of(answer) == 403
    assert b"not signed in" in answer


def test_a_silent_client_is_dropped_after_the_idle_timeout(
    make_console: Callable[..., Console],
) -> None:
    console = make_console(idle_timeout=0.2)
    assert raw(console, b"GET / HTTP/1.1\r\n") == b""  # closed without an answer
    status, _, _ = request(console, "GET", "/")
    assert status == 200  # and it serves on
    assert Console.__init__.__kwdefaults__["idle_timeout"] == 30.0


def test_connections_past_the_limit_are_answered_busy_until_one_ends(
    make_console: Callable[..., Console],
) -> None:
    console = make_console(max_connections=2)
    slots, freed = console.server.slots, threading.Event()
    release = slots.release

    def released(n: int = 1) -> None:
        release(n)
        freed.set()

    slots.release = released  # type: ignore[method-assign]
    # Accepted in order: the two connections hold both slots before the third. Their
    # requests have begun (an idle connection would give its slot up: the next test).
    held = [socket.create_connection(("127.0.0.1", console.port), timeout=10) for _ in range(2)]
    for sock in held:
        sock.sendall(b"GET / HTTP/1.1\r\n")
    try:
        answer = raw(console, f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{console.port}\r\n\r\n".encode())
        assert status_of(answer) == 503
        assert b"try again" in answer
        held.pop().close()
        assert freed.wait(10)  # its thread ended and gave its slot back
        status, _, _ = request(console, "GET", "/")
        assert status == 200
    finally:
        for sock in held:
            sock.close()
    assert Console.__init__.__kwdefaults__["max_connections"] == 64


def test_idle_connections_give_their_slots_to_new_ones(
    make_console: Callable[..., Console],
) -> None:
    # One client's idle connections (64 opened, nothing sent; or keep-alive ones between
    # requests) held every slot, and every other request, the operator's too, got 503.
    console = make_console(max_connections=2)
    held = [socket.create_connection(("127.0.0.1", console.port), timeout=10) for _ in range(2)]
    held[1].sendall(b"GET / HTTP/1.1\r\n")  # (a request begun: it keeps its slot)
    try:
        status, _, _ = request(console, "GET", "/")
        assert status == 200
        assert held[0].recv(1) == b""  # the idle one was closed, its slot given
        held[1].sendall(f"Host: 127.0.0.1:{console.port}\r\n\r\n".encode())
        assert held[1].recv(12) == b"HTTP/1.0 200"
    finally:
        for sock in held:
            sock.close()


def test_a_burst_of_connections_waits_to_be_accepted_not_in_syn_retries(store: Path) -> None:
    # The listen queue held 5 connections (socketserver's default): the kernel dropped
    # the SYNs of a burst beyond them, and their clients retried after 1, 3, 7, 15 s...
    # (of 300 at once, half waited over 30 s), instead of being served or told 503.
    console = Console(str(store), port=0, token=TOKEN)  # listening, not yet accepting
    socks: list[socket.socket] = []
    try:
        for _ in range(80):  # (connected by the kernel, queued until accepted)
            socks.append(socket.create_connection(("127.0.0.1", console.port), timeout=5))
            socks[-1].sendall(f"GET / HTTP/1.0\r\nHost: 127.0.0.1:{console.port}\r\n\r\n".encode())
        console.start()
        for sock in socks:
            sock.settimeout(20)
            assert sock.makefile("rb").readline()[:12] in {b"HTTP/1.0 200", b"HTTP/1.0 503"}
    finally:
        for sock in socks:
            sock.close()
        console.shutdown()


def handled(console: Console) -> threading.Event:
    """Set once the console has finished with a connection (answered, failed or dropped)."""
    done = threading.Event()
    shutdown_request = console.server.shutdown_request

    def finished(request: Any) -> None:
        shutdown_request(request)
        done.set()

    console.server.shutdown_request = finished  # type: ignore[method-assign]
    return done


def complaints(caplog: pytest.LogCaptureFixture) -> list[str]:
    """What the console logged above debug level."""
    ui = [r for r in caplog.records if r.name == "herder.ui"]
    return [r.getMessage() for r in ui if r.levelno > logging.DEBUG]


def test_a_client_that_leaves_mid_request_leaves_no_traceback(
    console: Console, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    entered, left = threading.Event(), threading.Event()
    page = console.views.page

    def slow_page(*args: Any) -> tuple[int, str]:
        entered.set()
        left.wait(10)  # until the client is gone
        status, html = page(*args)
        return status, html + " " * (4 << 20)  # more than the socket buffers hold

    console.views.page = slow_page  # type: ignore[method-assign]
    done = handled(console)
    sock = socket.create_connection(("127.0.0.1", console.port), timeout=10)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.sendall(f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{console.port}\r\n\r\n".encode())
    assert entered.wait(10)
    sock.close()  # a reset: the console's write fails with a broken pipe or a reset
    left.set()
    assert done.wait(10)
    assert complaints(caplog) == []
    assert capsys.readouterr().err == ""  # socketserver printed a second traceback before


def test_a_body_that_stops_coming_is_dropped_quietly(
    make_console: Callable[..., Console], caplog: pytest.LogCaptureFixture
) -> None:
    console = make_console(idle_timeout=0.2)
    done = handled(console)
    head = (
        f"POST /act HTTP/1.1\r\nHost: 127.0.0.1:{console.port}\r\nCookie: {sign_in(console)}\r\n"
        "Content-Length: 100\r\n\r\nid="
    )
    assert raw(console, head.encode()) == b""  # a 500 "The console failed" page before
    assert done.wait(10)
    assert complaints(caplog) == []


# -- ids no workflow can have ----------------------------------------------------------


@pytest.mark.parametrize("workflow_id", ["", "x" * 600, "a\x00b"])
def test_an_id_no_workflow_can_have_is_not_found_rather_than_a_store_failure(
    console: Console, workflow_id: str
) -> None:
    status, _, html = request(console, "GET", "/workflow?" + urlencode({"id": workflow_id}))
    assert status == 404  # 503 "The store cannot be read ... Check the --store path" before
    assert "is not a valid workflow id" in html
    headers = {"Cookie": sign_in(console)}
    status, _, html = request(
        console, "POST", "/act", body=form(console, id=workflow_id), headers=headers
    )
    assert status == 400
    assert "is not a valid workflow id" in html
    assert "nothing was changed" in html


# -- actions ---------------------------------------------------------------------------


@pytest.mark.parametrize("action", ["retry", "cancel"])
def test_an_action_on_a_finished_workflow_is_refused_and_nothing_is_queued(
    console: Console, action: str
) -> None:
    headers = {"Cookie": sign_in(console)}
    status, _, html = request(
        console, "POST", "/act", body=form(console, id="done", action=action), headers=headers
    )
    assert status == 409  # 200 "command #1 is queued" before, which the next runtime refused
    assert "is SUCCEEDED, and no operator action applies" in html
    assert "nothing was queued" in html
    with console.gate.read() as st:
        assert pending_commands(st) == []


@pytest.mark.parametrize(
    ("fields", "status", "said"),
    [
        ({"action": "cancel"}, 409, "cancel does not apply to a parked workflow"),
        ({"who": "w" * 201}, 400, "the limit is 200"),
    ],
)
def test_an_action_the_cli_refuses_is_refused_here_too_and_nothing_is_queued(
    console: Console, fields: dict[str, str], status: int, said: str
) -> None:
    """With no runtime holding the store, these were queued ("the next one to open it
    applies it"), and the next runtime refused them without telling anyone."""
    headers = {"Cookie": sign_in(console)}
    got, _, html = request(console, "POST", "/act", body=form(console, **fields), headers=headers)
    assert (got, said in html) == (status, True), html
    with console.gate.read() as st:
        assert pending_commands(st) == []


def test_an_action_the_console_cannot_write_says_it_was_not_sent(
    console: Console, store: Path
) -> None:
    # "The store cannot be read ... This page works again as soon as the store can be
    # read" before, on a store every page read (a console's user who may not write the
    # store was told the same).
    # A `herder compact` runs: its mark, and the store's flock, which it holds throughout.
    (store / COMPACTING).write_text(str(os.getpid()))
    held = os.open(store / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        headers = {"Cookie": sign_in(console)}
        status, _, html = request(console, "POST", "/act", body=form(console), headers=headers)
    finally:
        os.close(held)
    assert status == 503
    assert "not sent: " in html
    assert "is being compacted" in html
    assert "nothing was queued" in html
    assert "cannot be read" not in html
    with console.gate.read() as st:
        assert pending_commands(st) == []


def test_an_action_on_a_workflow_no_longer_there_is_refused_as_such(console: Console) -> None:
    # A purge deleted it while its page was open: "Bad request ... complete the form and
    # send it again" before, which sent the same form to the same answer.
    headers = {"Cookie": sign_in(console)}
    fields = form(console, id="purged", state="NEEDS_ATTENTION")
    status, _, html = request(console, "POST", "/act", body=fields, headers=headers)
    assert status == 404
    assert "refused: no workflow with id &#x27;purged&#x27; is in the store" in html
    assert "nothing was queued" in html
    assert "complete the form" not in html
    with console.gate.read() as st:
        assert pending_commands(st) == []


def test_a_parked_workflow_is_offered_only_the_actions_that_apply(console: Console) -> None:
    headers = {"Cookie": sign_in(console)}
    for path in ("/inbox", "/workflow?id=stuck"):
        _, _, html = request(console, "GET", path, headers=headers)
        assert 'value="retry"' in html
        assert 'value="cancel"' not in html


@pytest.mark.parametrize(
    ("setting", "said"),
    [
        ({"idle_timeout": 0}, "idle_timeout must be a number of seconds > 0"),
        ({"idle_timeout": float("nan")}, "idle_timeout must be"),
        ({"wait": float("nan")}, "wait must be a number of seconds >= 0"),
        ({"wait": -1}, "wait must be"),
        ({"wait": "15"}, "wait must be"),
        ({"max_connections": 0}, "max_connections must be 1 or more"),
        ({"max_connections": -1}, "max_connections must be 1 or more"),
        ({"max_connections": 1.5}, "max_connections must be an int"),
        ({"port": 70000}, "port must be an int from 0 to 65535"),  # (OverflowError)
        ({"port": True}, "port must be"),  # (bound port 1)
        ({"port": "8700"}, "port must be"),  # (TypeError)
        ({"token": 123}, "token must be a str, got int"),  # (AttributeError)
        ({"allow_hosts": "box"}, "give allow_hosts a list of names"),  # (b, o and x)
    ],
)
def test_a_console_setting_it_cannot_serve_with_is_refused(
    store: Path, setting: dict[str, Any], said: str
) -> None:
    # Taken as given (or failed as no HerderError) before: every connection dropped
    # (idle_timeout 0 or NaN: with a traceback each), an action's request held for ever
    # (wait NaN), every connection answered 503 (max_connections 0), or a bare
    # ValueError with the port left bound.
    with pytest.raises(InvalidInput, match=said):
        Console(str(store), **{"port": 0, "token": TOKEN, **setting})
    console = Console(str(store), port=0, token=TOKEN, wait=0, max_connections=1)
    console.shutdown()  # (the limits themselves are fine)


# -- the token and its cookie ----------------------------------------------------------

SET_COOKIE = re.compile(
    r"herder_ui_(\d+)=([0-9a-f]{64}); Path=/; Max-Age=\d+; HttpOnly; SameSite=Strict"
)


def test_the_cookie_is_named_for_the_port_and_holds_no_token(console: Console) -> None:
    _, headers, _ = request(console, "GET", "/?token=" + TOKEN)
    found = SET_COOKIE.fullmatch(headers["Set-Cookie"])
    assert found is not None, headers["Set-Cookie"]  # "herder_ui=s3cret; ..." before
    assert int(found.group(1)) == console.port
    assert TOKEN not in headers["Set-Cookie"]
    _, _, html = request(console, "GET", "/inbox", headers={"Cookie": f"herder_ui={TOKEN}"})
    assert "Read-only" in html  # the old cookie, the raw token, signs nobody in


def test_each_sign_in_is_a_session_of_its_own_that_ends(
    console: Console, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cookie was a fixed HMAC of the token: whoever got it once (another local
    service: browsers send 127.0.0.1's cookies to every port) was signed in for as long
    as the token lived, and to every console with that token."""
    first, second = sign_in(console), sign_in(console)
    assert first != second  # random per sign-in: nothing of the token
    for cookie in (first, second):
        _, _, html = request(console, "GET", "/inbox", headers={"Cookie": cookie})
        assert f'name=csrf value="{console.csrf}"' in html
    monkeypatch.setattr(_guard, "COOKIE_MAX_AGE", 0)  # a session that has ended at once
    ended = sign_in(console)
    _, _, html = request(console, "GET", "/inbox", headers={"Cookie": ended})
    assert "Read-only" in html


def test_two_consoles_on_one_host_keep_their_own_sign_in(
    make_console: Callable[..., Console], built: Path
) -> None:
    first = make_console()
    second = Console(str(built), port=0, token="other")  # (its own store: one per process)
    second.start()
    try:
        jar = dict(sign_in(c, t).split("=", 1) for c, t in ((first, TOKEN), (second, "other")))
        assert len(jar) == 2  # the second sign-in overwrote the first before
        cookie = {"Cookie": "; ".join(f"{k}={v}" for k, v in jar.items())}
        for console in (first, second):
            _, _, html = request(console, "GET", "/inbox", headers=cookie)
            assert f'name=csrf value="{console.csrf}"' in html  # signed in to both
    finally:
        second.shutdown()


@pytest.mark.parametrize("token", ["t€k", "a; b=c d", '"\\,x\t'])
def test_any_token_signs_in_with_one_well_formed_answer(
    make_console: Callable[..., Console], token: str
) -> None:
    console = make_console(token=token)
    path = "/inbox?" + urlencode({"token": token})
    answer = raw(console, f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{console.port}\r\n\r\n".encode())
    assert answer.count(b"HTTP/1.") == 1  # a 500 after a half-sent 303 before, for t€k
    assert status_of(answer) == 303
    cookie = re.search(rb"\r\nSet-Cookie: ([^\r]*)\r\n", answer)
    assert cookie is not None
    assert SET_COOKIE.fullmatch(cookie.group(1).decode())
    _, _, html = request(console, "GET", "/inbox", headers={"Cookie": sign_in(console, token)})
    assert f'name=csrf value="{console.csrf}"' in html


@pytest.mark.parametrize("path", ["/\\evil.example/", "/\\/evil.example/", "//\\evil.example/"])
def test_the_sign_in_redirects_to_the_console_only(console: Console, path: str) -> None:
    answer = raw(
        console,
        f"GET {path}?token={TOKEN}&state=RUNNING HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{console.port}\r\n\r\n".encode(),
    )
    assert status_of(answer) == 303
    location = re.search(rb"\r\nLocation: ([^\r]*)\r\n", answer)
    assert location is not None
    # "/\\evil.example/" before, which a browser follows to http://evil.example/
    assert location.group(1) == b"/evil.example/?state=RUNNING"


def test_a_token_that_is_not_text_is_refused_at_start(
    store: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import io

    from herder.runtime._cli import main

    monkeypatch.setenv("HERDER_UI_TOKEN", "t\udcff")  # a byte that is not UTF-8
    assert main(["ui", "--store", str(store), "--port", "0"], io.StringIO()) == 1
    assert "token is not UTF-8 text" in capsys.readouterr().err


# -- hosts and origins -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "status"),
    [
        ("rebind.attacker.example:{port}", 421),  # every name was served before
        ("console.example.evil:{port}", 421),
        ("10.1.2.3:{port}", 200),
        ("[fe80::1]:{port}", 200),
        ("localhost:{port}", 200),
        ("Console.Example.:{port}", 200),  # the allowed name, in any case, fully qualified
        ("10.1.2.3:1", 421),
        ("10.1.2.3:{port}:{port}", 421),
    ],
)
def test_bound_to_every_address_it_answers_addresses_localhost_and_allowed_names(
    make_console: Callable[..., Console], host: str, status: int
) -> None:
    console = make_console(host="0.0.0.0", allow_hosts=["console.example"])
    got, _, html = request(console, "GET", "/", headers={"Host": host.format(port=console.port)})
    assert got == status
    if status == 421:
        assert "--allow-host NAME" in html


def _get_over(address: str, port: int) -> int:
    conn = http.client.HTTPConnection(address, port, timeout=10)
    try:
        conn.request("GET", "/")
        return conn.getresponse().status
    finally:
        conn.close()


def test_bound_to_every_address_as_an_empty_host_it_prints_a_url_to_open(store: Path) -> None:
    console = Console(str(store), host="", port=0, token=TOKEN)
    try:
        assert console.url.startswith(f"http://0.0.0.0:{console.port}/?")  # "http://:PORT/"
    finally:
        console.shutdown()


@pytest.mark.skipif(not socket.has_ipv6, reason="this Python has no IPv6")
@pytest.mark.parametrize("address", ["::1", "::"])
def test_an_ipv6_address_is_bound_as_one(
    make_console: Callable[..., Console], address: str
) -> None:
    """``--host ::1`` and ``--host ::`` were bound as IPv4 addresses, and failed."""
    console = make_console(host=address)
    assert console.url.startswith(f"http://[{address}]:{console.port}/?token=")
    assert console.guard.binds_all == (address == "::")
    assert _get_over("::1", console.port) == 200


def test_bound_to_every_address_an_action_comes_from_the_host_it_addressed(
    make_console: Callable[..., Console],
) -> None:
    console = make_console(host="0.0.0.0")
    host = f"10.1.2.3:{console.port}"
    headers = {"Host": host, "Cookie": sign_in(console)}
    for origin, status in [
        ("http://evil.example", 403),  # accepted before
        (f"http://127.0.0.1:{console.port}", 403),  # another of its hosts, not this one
        (f"http://{host}", 400),  # through: "unknown action"
    ]:
        got, _, html = request(
            console,
            "POST",
            "/act",
            body=form(console, action="nope"),
            headers=headers | {"Origin": origin},
        )
        assert got == status, origin
    assert "unknown action" in html


@pytest.mark.parametrize(
    ("host", "origin", "status"),
    [
        ("127.0.0.1:{port}", "null", 403),  # accepted before
        ("localhost:{port}", "http://localhost:{port}", 400),  # refused before
        ("[::1]:{port}", "http://[::1]:{port}", 400),
        ("127.0.0.1:{port}", "http://localhost:{port}", 403),
        ("127.0.0.1:{port}", "http://127.0.0.1:1", 403),
        ("127.0.0.1:{port}", "https://127.0.0.1:{port}", 403),
    ],
)
def test_an_action_comes_from_the_console_as_it_was_addressed(
    console: Console, host: str, origin: str, status: int
) -> None:
    port = console.port
    headers = {"Host": host.format(port=port), "Origin": origin.format(port=port)}
    headers["Cookie"] = sign_in(console)
    got, _, html = request(
        console, "POST", "/act", body=form(console, action="nope"), headers=headers
    )
    assert got == status
    assert ("unknown action" if status == 400 else "cross-site request") in html


def test_pages_send_their_origin_with_their_own_forms(console: Console) -> None:
    _, headers, _ = request(console, "GET", "/inbox")
    assert headers["Referrer-Policy"] == "same-origin"  # no-referrer made it Origin: null


def test_cli_ui_on_every_address_serves_allowed_names_and_warns(store: Path) -> None:
    import subprocess
    import sys

    argv = ["--host", "0.0.0.0", "--port", "0", "--allow-host", "box.example"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "herder.runtime", "ui", "--store", str(store), *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "HERDER_UI_TOKEN": TOKEN},
    )
    try:
        assert proc.stdout is not None
        proc.stdout.readline()  # "serving store ..."
        url = proc.stdout.readline().split()[-1]  # "open http://0.0.0.0:PORT/?token=..."
        port = int(url.split(":")[2].split("/")[0])
        for host, status in [("box.example", 200), ("other.example", 421)]:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            conn.request("GET", "/", headers={"Host": f"{host}:{port}"})
            assert conn.getresponse().status == status, host
            conn.close()
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert "reachable from other machines" in err


def test_cli_ui_refuses_an_allowed_host_that_is_not_a_name(
    store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import io

    from herder.runtime._cli import main

    with pytest.raises(SystemExit) as exited:
        main(["ui", "--store", str(store), "--allow-host", "box.example:80"], io.StringIO())
    assert exited.value.code == 2
    assert "is not a host name" in capsys.readouterr().err


# -- methods and filters ---------------------------------------------------------------


@pytest.mark.parametrize("path", ["/", "/inbox", "/workflow?id=stuck", "/static/console.css"])
def test_head_answers_as_get_without_the_body(console: Console, path: str) -> None:
    _, got, body = request(console, "GET", path)
    status, headers, nothing = request(console, "HEAD", path)
    assert status == 200  # 501 before
    assert nothing == ""
    assert (headers["Content-Type"], headers["Content-Length"]) == (
        got["Content-Type"],
        str(len(body.encode())),
    )


def test_a_date_out_of_range_is_named_so(console: Console) -> None:
    status, _, html = request(console, "GET", "/?since=0001-01-01T00:00")
    assert status == 400
    assert "is out of range" in html  # "is not a date and time" before
    status, _, html = request(console, "GET", "/?since=yesterday")
    assert "is not a date and time" in html
