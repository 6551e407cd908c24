"""The child side of supervision: :class:`SupervisedActor` and the start handshake.

A supervised child reports its own death to the supervisor that started it as an ordinary
message (like Thespian's ``ChildActorExited``), sent from the last lines of its thread, so
the supervisor never polls. The parent is captured in ``__init__``: pykka constructs the
actor object on the caller's thread, and the supervisor sets a thread-local start context
around every ``ChildSpec.start`` call.

pykka 4.x hook semantics this relies on (``pykka/_actor.py``): the thread runs
``_actor_loop_setup`` (``on_start``), ``_actor_loop_running`` and
``_actor_loop_teardown``; every unhandled exception — in ``on_start``, a ``tell`` handler,
``on_stop`` or ``on_failure`` — goes through ``_handle_failure``; an ``on_start`` failure
calls neither ``on_stop`` nor ``on_failure``. Wrapping those three internals (rather than
the public hooks) means subclasses override ``on_start``/``on_stop``/``on_failure`` freely,
with or without calling ``super()``.
"""

from __future__ import annotations

import queue
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import pykka

from herder.actors._errors import SupervisorStartError
from herder.store import explain, get_logger, safe_repr

_log = get_logger("herder.supervision")
_local = threading.local()


class _Birth:
    """Released by the child's thread once ``on_start`` returned (``error`` None) or raised.

    A latch on one plain lock, held from construction until the child releases it: no
    Condition, so constructing, releasing and waiting cost a fraction of an Event's.
    Waiters re-release it, so any number of waits (a nested ``start_supervisor`` and the
    enclosing start both wait for the same birth) all succeed once it is released.
    """

    __slots__ = ("_latch", "error")

    def __init__(self) -> None:
        self._latch = threading.Lock()
        self._latch.acquire()
        self.error: BaseException | None = None

    def set(self) -> None:
        """Called once, by the child's thread."""
        self._latch.release()

    def wait(self, timeout: float) -> bool:
        """Whether the child finished ``on_start`` (either way) within ``timeout`` s."""
        if not self._latch.acquire(timeout=timeout):
            return False
        self._latch.release()
        return True


@dataclass(slots=True)
class _StartContext:
    """What a SupervisedActor constructed on this thread learns about its parent."""

    parent: pykka.ActorRef[Any] | None
    child_id: str
    births: dict[str, _Birth] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class _ChildExit:
    """A child's last message to its parent; ``reason`` None means a normal stop."""

    urn: str
    child_id: str
    reason: BaseException | None


class SupervisedActor(pykka.ThreadingActor):
    """Base class for every actor a herder supervisor starts. Runs on a daemon thread.

    Its death reaches the supervisor that started it as a message: an exception escaping
    a ``tell`` handler, ``on_start``, ``on_stop`` or ``on_failure`` is a crash; a plain
    ``stop()`` is a normal exit. Override ``on_start``/``on_stop``/``on_failure`` as with
    any pykka actor (calling ``super()`` is harmless but not required), and call
    ``super().__init__()`` from ``__init__`` as pykka requires. Constructed outside a
    supervisor it behaves as a plain daemon-thread pykka actor.
    """

    use_daemon_thread = True

    reported_failures: tuple[type[BaseException], ...] = ()
    """Failures whoever started the actor reports itself (the crash of an agent instance,
    told to its Scheduler as the attempt's failure): pykka does not log them too."""

    @staticmethod
    def _create_actor_inbox() -> Any:
        # A SimpleQueue has no Condition: put + get cost about a tenth of queue.Queue's,
        # which every tell of the hot path pays (pykka only needs put, get and empty).
        return queue.SimpleQueue()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._herder_birth = _Birth()
        self._herder_failure: BaseException | None = None
        ctx: _StartContext | None = getattr(_local, "ctx", None)
        self._herder_parent = None if ctx is None else ctx.parent
        self._herder_child_id = "" if ctx is None else ctx.child_id
        if ctx is not None:
            ctx.births[self.actor_urn] = self._herder_birth

    def _actor_loop(self) -> None:
        try:
            super()._actor_loop()
        finally:
            self._herder_report_exit()

    def _actor_loop_setup(self) -> None:
        try:
            self.on_start()
        except BaseException as exc:  # pykka would let a BaseException end the thread unreported
            self._handle_failure(*sys.exc_info())
            self._herder_birth.error = exc
        finally:
            self._herder_birth.set()

    def _handle_failure(
        self,
        exception_type: type[BaseException] | None,
        exception_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._herder_failure is None and exception_value is not None:
            self._herder_failure = exception_value
        if isinstance(exception_value, self.reported_failures):
            # Kept without its frames, which hold this actor (and its agent object): in a
            # cycle with them, they went only when the garbage collector ran, on any thread.
            exception_value.with_traceback(None)
            # What pykka does after its "Unhandled exception" traceback, without it.
            pykka.ActorRegistry.unregister(self.actor_ref)
            self.actor_stopped.set()
            return
        super()._handle_failure(exception_type, exception_value, traceback)

    def _herder_report_exit(self) -> None:
        parent = self._herder_parent
        if parent is None:
            return
        try:
            parent.tell(_ChildExit(self.actor_urn, self._herder_child_id, self._herder_failure))
        except pykka.ActorDeadError:
            # The supervisor is gone (it is stopping us, or it died); nobody is left to act.
            _log.debug("%s exited after its supervisor %s", self, parent)
            try:
                self.on_orphaned_exit(self._herder_failure)
            except Exception:
                _log.exception("%s: on_orphaned_exit failed", self)

    def on_orphaned_exit(self, reason: BaseException | None) -> None:
        """Hook: this actor ended (``reason`` None: stopped normally) after its supervisor
        had gone, so no supervisor hears of it."""


def _await_birth(
    ctx: _StartContext, ref: object, child_id: str, timeout: float
) -> pykka.ActorRef[Any]:
    """Wait until the child returned by a start function finished ``on_start``."""
    urn = getattr(ref, "actor_urn", None)
    birth = ctx.births.get(urn) if isinstance(urn, str) else None
    if birth is None or not isinstance(ref, pykka.ActorRef):
        raise SupervisorStartError(
            f"the start function of child {child_id!r} returned {ref!r}; it must construct a "
            "SupervisedActor on the calling thread (SomeActor.start() or start_supervisor()) "
            "and return its ref"
        )
    if not birth.wait(timeout):
        ref.stop(block=False)
        raise SupervisorStartError(
            f"child {child_id!r} did not finish on_start within {timeout} s; it was told to stop"
        )
    if birth.error is not None:
        # The cause is the child's own exception, however deep the supervisor that failed.
        cause = birth.error
        if isinstance(cause, SupervisorStartError):
            cause = cause.__cause__  # type: ignore[assignment]
        raise SupervisorStartError(
            f"child {child_id!r} failed to start: {explain(birth.error)}"
        ) from cause
    return ref


def _start_confirmed(
    start: Callable[[], Any],
    *,
    parent: pykka.ActorRef[Any] | None,
    child_id: str,
    timeout: float,
) -> pykka.ActorRef[Any]:
    """Call ``start`` with a fresh start context and wait for the child's ``on_start``."""
    ctx = _StartContext(parent, child_id)
    previous = getattr(_local, "ctx", None)
    _local.ctx = ctx
    try:
        ref = start()
    except SupervisorStartError:
        raise
    except Exception as exc:
        raise SupervisorStartError(
            f"the start function of child {child_id!r} raised {safe_repr(exc)}"
        ) from exc
    finally:
        _local.ctx = previous
    return _await_birth(ctx, ref, child_id, timeout)


def _current_context() -> _StartContext | None:
    """The start context of the supervisor call running on this thread, if any."""
    ctx: _StartContext | None = getattr(_local, "ctx", None)
    return ctx
