"""Who may act: what the console's token becomes in the browser.

The token itself only travels in the URL printed at start (``/?token=...``). Signing in
with it sets a cookie that holds an HMAC of the token, never the token: a cookie set by
a page on ``127.0.0.1`` is sent to every port of that address (browsers do not keep
cookies apart by port), so another local HTTP service receives it. Its name carries the
console's port (``herder_ui_8700``), so a second console on another port keeps its own
cookie instead of overwriting this one. The forms carry another HMAC of the token, the
CSRF field, which only the console's own pages contain.

Derived values are hex, so any token (spaces, ``;``, ``€``) makes a well-formed header.
"""

from __future__ import annotations

import hashlib
import hmac

from herder.store import InvalidInput

COOKIE_MAX_AGE = 12 * 3600
"""Seconds a sign-in lasts in the browser; after that the printed URL signs in again."""


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
    """The token's checks: the sign-in URL, the cookie and the CSRF field."""

    def __init__(self, token: str, port: int) -> None:
        self._token = check_token(token).encode("utf-8")
        self.csrf = _derive(token, b"herder-ui-csrf")
        self.cookie_name = f"herder_ui_{port}"
        self._cookie_value = _derive(token, b"herder-ui-cookie")

    def token_matches(self, given: str) -> bool:
        """True if ``given`` (from the sign-in URL) is the token."""
        return hmac.compare_digest(given.encode("utf-8", "replace"), self._token)

    def set_cookie(self) -> str:
        """The ``Set-Cookie`` value that signs a browser in."""
        return (
            f"{self.cookie_name}={self._cookie_value}; Path=/; Max-Age={COOKIE_MAX_AGE}; "
            "HttpOnly; SameSite=Strict"
        )

    def signed_in(self, cookies: dict[str, str]) -> bool:
        """True if the request's cookies hold this console's sign-in."""
        given = cookies.get(self.cookie_name, "")
        return hmac.compare_digest(given.encode("utf-8", "replace"), self._cookie_value.encode())

    def csrf_matches(self, given: str) -> bool:
        """True if a form's CSRF field is this console's."""
        return hmac.compare_digest(given.encode("utf-8", "replace"), self.csrf.encode())
