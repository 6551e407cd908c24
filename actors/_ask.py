"""Calling methods on actors by message, with a timeout and without proxies."""

from __future__ import annotations

from typing import Any

import pykka
from pykka.messages import ProxyCall


def call(ref: pykka.ActorRef, method: str, *args: Any, timeout: float = 10.0) -> Any:
    """Call ``method`` on the actor behind ``ref`` and wait up to ``timeout`` seconds.

    Exceptions raised by the method come back to the caller; the actor lives on.
    """
    return ref.ask(ProxyCall(attr_path=(method,), args=args, kwargs={}), timeout=timeout)


def call_later(ref: pykka.ActorRef, method: str, *args: Any) -> None:
    """Call ``method`` without waiting.

    Sent as an ask whose future is dropped, not as a tell: an exception in a told
    message would crash the actor, in an asked one it stays in the future.
    """
    ref.ask(ProxyCall(attr_path=(method,), args=args, kwargs={}), block=False)
