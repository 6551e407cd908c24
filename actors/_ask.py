"""Calling methods on actors by message, with a timeout and without proxies."""

from __future__ import annotations

import sys
from concurrent.futures import Future
from typing import Any

import pykka
from pykka._envelope import Envelope  # the only way to give an ask our own reply future
from pykka.messages import ProxyCall

from herder.store import TimedOut


def call(ref: pykka.ActorRef, method: str, *args: Any, timeout: float = 10.0) -> Any:
    """Call ``method`` on the actor behind ``ref`` and wait up to ``timeout`` seconds.

    Exceptions raised by the method come back to the caller; the actor lives on. No
    answer in time: :class:`TimedOut` (a ``TimeoutError``, not pykka's ``Timeout``, which
    is neither that nor a ``HerderError``).
    """
    try:
        return ref.ask(ProxyCall(attr_path=(method,), args=args, kwargs={}), timeout=timeout)
    except pykka.Timeout:
        raise TimedOut(
            f"the runtime's {ref.actor_class.__name__} did not answer {method}() within "
            f"{timeout} s: it is overloaded or stuck (see the log); whether it did it is "
            "unknown: look before calling again, or raise Runtime(ask_timeout=)"
        ) from None


def call_later(ref: pykka.ActorRef, method: str, *args: Any) -> None:
    """Call ``method`` without waiting.

    Sent as an ask whose future is dropped, not as a tell: an exception in a told
    message would crash the actor, in an asked one it stays in the future.
    """
    ref.ask(ProxyCall(attr_path=(method,), args=args, kwargs={}), block=False)


def call_future(ref: pykka.ActorRef, method: str, *args: Any) -> Future[Any]:
    """Call ``method`` without waiting; the answer (or exception) resolves the returned
    ``concurrent.futures.Future``, on the actor's thread.

    Unlike a pykka future, it runs callbacks, so ``asyncio.wrap_future`` can await it
    without a thread (pykka's ``Future.__await__`` blocks the event loop in ``get()``).
    """
    answer: Future[Any] = Future()
    if not ref.is_alive():
        answer.set_exception(pykka.ActorDeadError(f"{ref} not found"))
        return answer
    call = ProxyCall(attr_path=(method,), args=args, kwargs={})
    ref.actor_inbox.put(Envelope(call, reply_to=_Forward(answer)))
    return answer


class _Forward(pykka.ThreadingFuture[Any]):
    """A reply future that hands the answer on to a ``concurrent.futures.Future``."""

    def __init__(self, target: Future[Any]) -> None:
        super().__init__()
        self._target = target

    def set(self, value: Any | None = None) -> None:
        super().set(value)
        if self._target.set_running_or_notify_cancel():  # False once the caller gave up
            self._target.set_result(value)

    def set_exception(self, exc_info: Any = None) -> None:
        exc_info = exc_info or sys.exc_info()
        super().set_exception(exc_info)
        if self._target.set_running_or_notify_cancel():
            self._target.set_exception(exc_info[1])
