"""Who the console answers and who may act: the Host and Origin checks, and what the
token becomes in the browser.

A page on another site can make its own name resolve to this machine (DNS rebinding)
and then read the console as if it were that site: the ``Host`` header then carries the
attacker's name. So the console answers only host names it knows, with its own port:

- bound to one address: that address, and for a loopback one ``127.0.0.1``,
  ``localhost`` and ``[::1]``;
- bound to every address (``0.0.0.0``): any IP address (a rebinding page is reached by
  a name, never by an address) and ``localhost``;
- in both cases, the names the operator allows (``herder ui --allow-host NAME``).

A POST whose browser sends an ``Origin`` must come from the console as the request
addressed it: ``http://`` and the request's own ``Host``. ``Origin: null`` (what a
browser sends for an opaque or privacy-stripped origin) is refused; the console's pages
send ``Referrer-Policy: same-origin``, so their own forms carry their real origin.

The token itself only travels in the URL printed at start (``/?token=...``). Signing in
with it sets a cookie that holds a random session value of this sign-in, never the token
nor anything derived from it: a cookie set by a page on ``127.0.0.1`` is sent to every
port of that address (browsers do not keep cookies apart by port), so another local HTTP
service receives it, and what it receives signs in only until the session ends
(:data:`COOKIE_MAX_AGE`, checked here, or the console's restart). Its name carries the
console's port (``herder_ui_8700``), so a second console on another port keeps its own
cookie instead of overwriting this one. The forms carry an HMAC of the token, the CSRF
field, which only the console's own pages (to a signed-in browser) contain.

Derived values are hex, so any token (spaces, ``;``, ``€``) makes a well-formed header.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
import threading
import time
from collections.abc import Iterable
from urllib.parse import urlsplit

from herder.store import InvalidInput

COOKIE_MAX_AGE = 12 * 3600
"""Seconds a sign-in lasts (its cookie's Max-Age, and checked by the console); after that
the printed URL signs in again."""
MAX_SESSIONS = 256
"""Sign-ins kept at once; the oldest goes first (a browser signs in again with the URL)."""
ALL_ADDRESSES = ("0.0.0.0", "", "::")
"""``--host`` values that bind every address of the machine (``::``: IPv6, and IPv4 too
where the system maps it, as Linux does by default)."""
_LOOPBACK = ("127.0.0.1", "localhost", "::1")


def host_name(text: str) -> str:
    """A host name or address as the console compares them: lower case, no trailing dot,
    an IP address in its canonical form. :class:`InvalidInput` if ``text`` is not one."""
    name = text.strip().lower().removesuffix(".")
    try:
        return str(ipaddress.ip_address(name))
    except ValueError:
        pass
    labels = name.split(".")
    if not name or len(name) > 253 or not all(_label(x) for x in labels):
        raise InvalidInput(
            f"{text!r} is not a host name: give a name such as console.example.org "
            "(letters, digits, '-' and '.') or an IP address, without a port"
        )
    return name


def _label(label: str) -> bool:
    return 0 < len(label) <= 63 and label.isascii() and label.replace("-", "").isalnum()


def split_host(value: str | None) -> tuple[str, int] | None:
    """(name, port) of a ``Host`` header (``name``, ``name:port``, ``[v6]:port``; port 80
    when none is given), the name as :func:`host_name` gives it; None if it is not one."""
    if not value:
        return None
    if value.startswith("["):  # an IPv6 address
        name, bracket, rest = value[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            return None
        port = rest[1:]
        if ":" not in name:
            return None
    else:
        name, _, port = value.partition(":")
    if port and not (port.isascii() and port.isdigit() and int(port) <= 65535):
        return None
    try:
        return host_name(name), int(port or 80)
    except ValueError:
        return None


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def is_loopback(host: str) -> bool:
    """True if ``--host`` binds a loopback address (only this machine can connect)."""
    try:
        return host.lower() == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_token(token: str) -> str:
    """``token`` if it can be printed in a URL and compared (it is UTF-8 text)."""
    try:
        token.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInput(
            "the console's token is not UTF-8 text (HERDER_UI_TOKEN holds bytes that are "
            "not): choose another token, or leave it unset for a random one"
        ) from None
    return token


def _derive(token: str, label: bytes) -> str:
    return hmac.new(token.encode("utf-8"), label, hashlib.sha256).hexdigest()


class Guard:
    """The checks of one console: its host names, its origin, and its token's sign-in URL,
    cookie and CSRF field."""

    def __init__(self, token: str, host: str, port: int, allow_hosts: Iterable[str] = ()) -> None:
        self.port = port
        self.binds_all = host in ALL_ADDRESSES
        names = {host_name(h) for h in allow_hosts}
        if not self.binds_all:
            names |= {host_name(h) for h in (host, *(_LOOPBACK if is_loopback(host) else ()))}
        self._names = frozenset(names)
        self._token = check_token(token).encode("utf-8")
        self.csrf = _derive(token, b"herder-ui-csrf")
        self.cookie_name = f"herder_ui_{port}"
        self._sessions: dict[str, float] = {}  # session value -> when it ends (monotonic)
        self._guard = threading.Lock()  # (requests are served on threads of their own)

    def host_allowed(self, header: str | None) -> bool:
        """True for a ``Host`` header naming this console (see the module's docstring)."""
        found = split_host(header)
        if found is None or found[1] != self.port:
            return False
        name = found[0]
        return name in self._names or (self.binds_all and (name == "localhost" or _is_ip(name)))

    def origin_allowed(self, origin: str | None, host: str | None) -> bool:
        """True when the browser sent no ``Origin`` or the one of the console as ``host``
        (the request's accepted ``Host`` header) names it; never for ``null``."""
        if origin is None:
            return True  # not a browser, or an old one: the cookie and CSRF field guard
        parts = urlsplit(origin)
        return (
            parts.scheme == "http"
            and not parts.path
            and self.host_allowed(parts.netloc)
            and split_host(parts.netloc) == split_host(host)
        )

    def token_matches(self, given: str) -> bool:
        """True if ``given`` (from the sign-in URL) is the token."""
        return hmac.compare_digest(given.encode("utf-8", "replace"), self._token)

    def set_cookie(self) -> str:
        """The ``Set-Cookie`` value that signs a browser in: a new session."""
        value, now = secrets.token_hex(32), time.monotonic()
        with self._guard:
            sessions = self._sessions
            for old in [v for v, ends in sessions.items() if ends <= now]:
                del sessions[old]
            while len(sessions) >= MAX_SESSIONS:
                del sessions[next(iter(sessions))]  # the oldest
            sessions[value] = now + COOKIE_MAX_AGE
        return (
            f"{self.cookie_name}={value}; Path=/; Max-Age={COOKIE_MAX_AGE}; "
            "HttpOnly; SameSite=Strict"
        )

    def signed_in(self, cookies: dict[str, str]) -> bool:
        """True if the request's cookies hold a session of this console that has not
        ended (a random value: comparing it leaks nothing of the token)."""
        given = cookies.get(self.cookie_name)
        with self._guard:
            ends = None if given is None else self._sessions.get(given)
        return ends is not None and time.monotonic() < ends

    def csrf_matches(self, given: str) -> bool:
        """True if a form's CSRF field is this console's."""
        return hmac.compare_digest(given.encode("utf-8", "replace"), self.csrf.encode())
