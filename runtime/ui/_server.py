"""The console's HTTP side: routing, and where each request's checks are applied.

Built on the standard library's ``ThreadingHTTPServer``: a local tool serving a handful
of people needs no framework, and the core install stays three packages.

Security, in one place:

- It binds to 127.0.0.1 unless told otherwise, and refuses requests whose ``Host`` is
  not one of its names (a DNS-rebinding page cannot read it; :mod:`._guard` says which).
- Reading needs nothing. Acting (an operator command) needs the token: opening
  ``/?token=...`` (the URL printed at start) sets an ``HttpOnly``, ``SameSite=Strict``
  cookie holding a random session value, nothing derived from the token (:mod:`._guard`);
  a POST must carry a live session's cookie, a CSRF field (an HMAC of the token) that
  only the console's own pages contain, and, when the browser sends one, an ``Origin``
  equal to the console's as the request addressed it.
- A POST's body is read after its cookie is checked, and only when its length is known
  and at most :data:`MAX_BODY`; a request that has not arrived whole (line, headers and
  body) within :data:`IDLE_TIMEOUT` of the wait for it starting is dropped, trickled in
  or silent, and at most :data:`MAX_CONNECTIONS` are served at once (each holds a thread): one more
  takes the place of an idle one (no byte of a request come), else is answered 503.
- Every page forbids framing and inline script (``Content-Security-Policy``).
- Store values are escaped by ``_pages``; errors become pages, never tracebacks.

The store is shared by the request threads through :class:`._gate.StoreGate`.
"""

from __future__ import annotations

import http.server
import io
import json
import secrets
import threading
import time
from collections.abc import Iterable
from importlib import resources
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from herder.runtime._console import json_safe
from herder.runtime.ui import _views
from herder.runtime.ui._gate import StoreGate
from herder.runtime.ui._guard import Guard, check_token, host_name, is_loopback
from herder.runtime.ui._pages import error_page
from herder.runtime.ui._sockets import Server, Server6
from herder.store import (
    MAX_SECONDS,
    HerderError,
    InvalidInput,
    StoreCorrupt,
    StoreLocked,
    get_logger,
    opened,
    real_number,
)

_log = get_logger("herder.ui")

MAX_BODY = 64 * 1024
"""Bytes a POST's body may have (a console form is a few hundred)."""
IDLE_TIMEOUT = 30.0
"""Seconds a request may take to arrive whole (its line, headers and body, from the wait
for it: after the connection is accepted or the previous answer is sent), on the
monotonic clock, before the console drops the connection: an idle or trickling client
does not hold a thread."""
MAX_CONNECTIONS = 64
"""Connections served at once (a thread each); the idle timeout bounds how long a silent
one holds its thread, this how many threads clients can hold. One more closes the one
that has waited longest for a request of which nothing has come, or is answered 503."""
_STATIC = {"console.css": "text/css", "console.js": "text/javascript"}
_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",  # (no-referrer made forms send Origin: null)
    "Cache-Control": "no-store",
}
_GONE = (BrokenPipeError, ConnectionResetError, TimeoutError)
"""The client closed the connection, or went silent past the idle timeout."""


class Console:
    """``herder ui``: the web console of one store, read from a process of its own.

    It opens the store read-only, and LMDB allows one environment per store per process:
    it cannot serve a store that a Runtime of this process has open (:class:`StoreLocked`
    at once; run ``herder ui`` beside it instead, in its own process), and a Runtime of
    this process cannot open the store while the console has it open."""

    def __init__(
        self,
        store: str,
        *,
        host: str = "127.0.0.1",
        port: int = 8700,
        token: str | None = None,
        wait: float = 15.0,
        idle_timeout: float = IDLE_TIMEOUT,
        max_connections: int = MAX_CONNECTIONS,
        allow_hosts: Iterable[str] = (),
    ) -> None:
        _check_settings(wait, idle_timeout, max_connections)  # (before anything is bound)
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise InvalidInput(f"Console's port must be an int from 0 to 65535, got {port!r}")
        if not isinstance(token, str | None):
            raise InvalidInput(f"Console's token must be a str, got {type(token).__name__}")
        if isinstance(allow_hosts, str):  # (its letters were allowed, one by one)
            raise InvalidInput(f"give allow_hosts a list of names: [{allow_hosts!r}]")
        _not_open_here(store)
        self.gate = StoreGate(store)
        self.token = check_token(token) if token else secrets.token_urlsafe(24)
        allowed = [host_name(name) for name in allow_hosts]
        self.wait = wait  # seconds an operator command may take before "queued" is shown
        self.idle_timeout = idle_timeout
        self.views = _views.Views(self)
        server = Server6 if ":" in host else Server  # an IPv6 address: its own family
        self.server = server((host, port), _Handler)
        self.server.console = self
        self.server.slots = threading.BoundedSemaphore(max_connections)
        self.host = host
        self.port = self.server.server_address[1]
        try:
            self.guard = Guard(self.token, host, self.port, allowed)
        except BaseException:  # a --host that is not a host name (InvalidInput)
            self.server.server_close()
            raise
        self.csrf = self.guard.csrf
        self._served = False  # (shutdown waits for a serve_forever only if one was started)
        shown = f"[{host}]" if ":" in host else host or "0.0.0.0"  # ("": http://:8700/)
        self.origin = f"http://{shown}:{self.port}"

    @property
    def exposed(self) -> bool:
        """True unless bound to a loopback address: other machines may reach it."""
        return not is_loopback(self.host)

    @property
    def url(self) -> str:
        """The URL to open, with the token that lets its holder act."""
        return f"{self.origin}/?{urlencode({'token': self.token})}"

    def serve_forever(self) -> None:
        """Serve until :meth:`shutdown` is called from another thread (or Ctrl-C)."""
        self._served = True
        self.server.serve_forever(poll_interval=0.25)

    def start(self) -> threading.Thread:
        """Serve on a daemon thread (for tests, and embedding in a process that has no
        Runtime open on the store: see the class's docstring)."""
        self._served = True  # (before the thread runs: a shutdown at once waits for it)
        thread = threading.Thread(target=self.serve_forever, name="herder-ui", daemon=True)
        thread.start()
        return thread

    def shutdown(self) -> None:
        """Stop serving and close the store (at once if it never served)."""
        if self._served:  # (socketserver's shutdown waits for ever for one that never ran)
            self.server.shutdown()
        self.server.server_close()
        self.gate.close()


class _Handler(http.server.BaseHTTPRequestHandler):
    server: Server
    server_version = "herder-ui"
    sys_version = ""

    def setup(self) -> None:
        super().setup()
        self.connection.settimeout(self.server.console.idle_timeout)
        self._reader = self.server.reader(self.connection)
        self.rfile = io.BufferedReader(self._reader)

    def handle_one_request(self) -> None:
        """One request, which must arrive whole (its line, headers and body) within the
        idle timeout of the wait for it starting; a client gone at any point is quiet."""
        self._reader.anew()
        try:
            super().handle_one_request()  # (a timeout: logged at debug, connection closed)
        except OSError as exc:  # reset while http.server read the headers, say
            self.close_connection = True
            _log.debug("%s: the client went away (%r)", self.client_address[0], exc)

    def log_message(self, format: str, *args: Any) -> None:
        _log.debug("%s %s", self.address_string(), format % args)

    def do_GET(self) -> None:
        self._serve("GET")

    def do_HEAD(self) -> None:
        self._serve("GET")  # answered as the GET, without its body (see _send)

    def do_POST(self) -> None:
        self._serve("POST")

    def _serve(self, method: str) -> None:
        self._reader.waiting = False  # (a pipelined request, read with the one before)
        try:
            self._route(method)
        except _GONE as exc:  # nobody is left to answer: no traceback, no error page
            self.close_connection = True
            _log.debug("%s %s: the client went away (%s)", method, self.path, exc)

    def _route(self, method: str) -> None:
        console = self.server.console
        if not console.guard.host_allowed(self.headers.get("Host")):
            hint = (
                "Open it by an IP address or as localhost, or start it with --allow-host NAME "
                "to serve that name."
                if console.guard.binds_all
                else f"Open {console.origin}/ instead, or start it with --allow-host NAME."
            )
            self._page(
                421, error_page("Wrong host", "This console does not serve that host name.", hint)
            )
            return
        url = urlsplit(self.path)
        query = dict(parse_qsl(url.query))
        cookies = _cookies(self.headers.get("Cookie", ""))
        try:
            if method == "GET" and "token" in query:
                self._login(console, url.path, query)
            elif method == "GET" and url.path.startswith("/static/"):
                self._static(url.path.removeprefix("/static/"))
            elif method == "GET" and url.path == "/api/stats":
                stats = json_safe(console.views.stats())  # (strict JSON: JSON.parse reads it)
                self._send(
                    200,
                    "application/json",
                    json.dumps(stats, allow_nan=False, default=repr).encode(),
                )
            elif method == "GET":
                csrf = console.csrf if console.guard.signed_in(cookies) else None
                status, html = console.views.page(url.path, query, csrf)
                self._page(status, html)
            elif url.path == "/act":
                self._act(console, cookies, query)
            else:
                self._page(405, error_page("Not allowed", "Only /act takes a POST.", ""))
        except ValueError as exc:  # InvalidInput too: a bad id, filter or form
            hint = (
                "Go back, complete the form and send it again; nothing was changed."
                if method == "POST"
                else "Fix the address and retry."
            )
            self._page(400, error_page("Bad request", str(exc), hint))
        except StoreCorrupt as exc:  # one damaged record: the store itself is readable
            self._page(503, error_page("A record is damaged", f"{console.gate.path}: {exc}", ""))
        except HerderError as exc:  # (its message says what to do: a missing store, the path)
            again = "This page works again as soon as the store can be read."
            self._page(
                503, error_page("The store cannot be read", f"{console.gate.path}: {exc}", again)
            )
        except _GONE:
            raise
        except Exception as exc:
            _log.exception("herder ui: %s %s failed", method, url.path)
            self._page(
                500,
                error_page(
                    "The console failed",
                    f"{type(exc).__name__}: {exc}",
                    "The error is logged; the store is untouched.",
                ),
            )

    def _login(self, console: Console, path: str, query: dict[str, str]) -> None:
        if not console.guard.token_matches(query["token"]):
            self._page(
                403,
                error_page(
                    "Wrong token",
                    "That token is not this console's.",
                    "Use the URL `herder ui` printed when it started.",
                ),
            )
            return
        rest = {k: v for k, v in query.items() if k != "token"}
        # One leading "/": a browser takes "//evil.example" or "/\\evil.example" for
        # another site, and the sign-in would have redirected there.
        here = "/" + path.lstrip("/\\")
        self.send_response(303)
        self.send_header("Set-Cookie", console.guard.set_cookie())
        self.send_header("Location", here + ("?" + urlencode(rest) if rest else ""))
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _act(self, console: Console, cookies: dict[str, str], query: dict[str, str]) -> None:
        origin = self.headers.get("Origin")
        if not console.guard.signed_in(cookies):  # before reading a byte of the body
            self._refuse(403, "not signed in: open the URL with the token `herder ui` printed")
            return
        if not console.guard.origin_allowed(origin, self.headers.get("Host")):
            self._refuse(403, f"cross-site request from {origin}")
            return
        body = self._body()
        if body is None:
            return
        form = query | dict(parse_qsl(body.decode("utf-8", "replace")))  # (the id: query)
        if not console.guard.csrf_matches(form.get("csrf", "")):
            self._refuse(403, "the form is not this console's (CSRF check failed); reload the page")
            return
        status, html = console.views.act(form)
        self._page(status, html)

    def _body(self) -> bytes | None:
        """The POST's body, read only when it says how long it is and that is at most
        :data:`MAX_BODY`; else None, once the refusal is sent."""
        length = self.headers.get("Content-Length")
        if self.headers.get("Transfer-Encoding") or length is None:
            self._refuse(411, "send the form with a Content-Length (no Transfer-Encoding)")
        elif not (length.isascii() and length.isdigit()):
            self._refuse(400, f"Content-Length {length!r} is not a number of bytes")
        elif int(length) > MAX_BODY:
            self._refuse(413, f"the request body is larger than {MAX_BODY} bytes")
        else:
            return self.rfile.read(int(length))
        return None

    def _refuse(self, status: int, message: str) -> None:
        self._page(status, error_page("Refused", message, "Nothing was changed."))

    def _static(self, name: str) -> None:
        if name not in _STATIC:
            self._page(404, error_page("Not found", f"no static file {name!r}", ""))
            return
        body = resources.files("herder.runtime.ui").joinpath("static", name).read_bytes()
        self._send(200, _STATIC[name], body, cache=True)

    def _page(self, status: int, html: str) -> None:
        self._send(status, "text/html; charset=utf-8", html.encode("utf-8"))

    def _send(self, status: int, ctype: str, body: bytes, *, cache: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        if self.command == "POST":  # its body may be left unread: end the connection
            self.send_header("Connection", "close")
        for name, value in _HEADERS.items():
            if not (cache and name == "Cache-Control"):
                self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


def _check_settings(wait: object, idle_timeout: object, max_connections: object) -> None:
    """InvalidInput for a setting no console serves with: an ``idle_timeout`` of 0 or NaN
    dropped every connection, a NaN ``wait`` held an action's request for as long as
    the runtime did not apply it, a ``max_connections`` below 1 refused every one."""
    for name, value, low in (("wait", wait, ">= 0"), ("idle_timeout", idle_timeout, "> 0")):
        number = real_number(value)
        if (
            number is None
            or not (number >= 0 if low == ">= 0" else number > 0)
            or (number > MAX_SECONDS)
        ):
            raise InvalidInput(
                f"Console's {name} must be a number of seconds {low} (at most ten years), "
                f"got {value!r}"
            )
    if isinstance(max_connections, bool) or not isinstance(max_connections, int):
        raise InvalidInput(f"Console's max_connections must be an int, got {max_connections!r}")
    if max_connections < 1:
        raise InvalidInput(f"Console's max_connections must be 1 or more, got {max_connections}")


def _not_open_here(path: str) -> None:
    """StoreLocked if this process has ``path`` open for writing (a Runtime's store): the
    console's read-only store cannot be opened beside it, and every page would fail."""
    store = opened(path)
    if store is not None and not store.readonly:
        raise StoreLocked(
            f"store {path} is open in this process (by a Runtime): the console reads a store "
            f"from a process of its own; run `herder ui --store {path}` beside this one (it "
            "reads while the runtime runs), or start the console once the Runtime stopped"
        )


def _cookies(header: str) -> dict[str, str]:
    out = {}
    for part in header.split(";"):
        name, _, value = part.strip().partition("=")
        if name:
            out[name] = value
    return out


def now() -> float:
    """Wall-clock time (the store's timestamps are wall-clock too)."""
    return time.time()
