"""One HTTP request to a test's console (``herder ui``): the helper the console tests share."""

from __future__ import annotations

import http.client
from typing import Protocol
from urllib.parse import urlencode


class _Serving(Protocol):
    port: int


def request(
    console: _Serving,
    method: str,
    path: str,
    *,
    body: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], str]:
    """Status, headers and text of one request (a form-encoded ``body`` if given)."""
    conn = http.client.HTTPConnection("127.0.0.1", console.port, timeout=10)
    data = None if body is None else urlencode(body)
    sent = {"Content-Type": "application/x-www-form-urlencoded", **(headers or {})}
    try:
        conn.request(method, path, body=data, headers=sent)
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read().decode()
    finally:
        conn.close()
