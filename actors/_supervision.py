"""Erlang/OTP-style supervisors on pykka.

A supervisor is a :class:`SupervisedActor` that owns an ordered list of children (start
order) and restarts them by the rules of ``_restarts`` (whether, which, how soon, how
often). Children report their own death with a message (see ``_supervised``); the
supervisor never polls and never asks upward. Past the restart intensity it stops its
children (reverse start order), calls ``on_fatal`` if given, and exits abnormally with
:class:`RestartIntensityExceeded` — which its own supervisor sees as a crash (escalation).

A group restart (one_for_all: every child; rest_for_one: the dead child and those after
it) stops the group's other children in reverse start order, forgets the temporary ones
and starts every other child of the group in start order, whether it was running or not
(one stopped by ``terminate_child``, a transient one that exited normally), as OTP does.
A failed restart never blocks the loop: it counts against the intensity and the
supervisor sends itself a "try again" message (after the backoff delay, if configured)
that restarts the failed child's group anew: under one_for_all the children that had
restarted meanwhile are stopped again and all start in order, so none runs alone while
a sibling is down.
The only blocking waits are a child's ``on_start`` (up to ``start_timeout``) and a child's
graceful stop (up to its ``ChildSpec.shutdown``; then it is abandoned).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import pykka

from herder.actors._child_stop import stop_children
from herder.actors._clock import Clock
from herder.actors._errors import RestartIntensityExceeded, SupervisorStartError
from herder.actors._restarts import Child, Intensity, forgotten, restart_group, restarted
from herder.actors._supervised import (
    SupervisedActor,
    _ChildExit,
    _start_confirmed,
)
from herder.actors._supervision_specs import (
    Backoff,
    ChildEvent,
    ChildEventKind,
    ChildInfo,
    ChildSpec,
    Restart,
    Strategy,
    check_new_specs,
)
from herder.store import InvalidInput, get_logger

_log = get_logger("herder.supervision")

Listener = Callable[[ChildEvent], None]


@dataclass(frozen=True, slots=True)
class _Retry:
    """Self-message: start the children still waiting for restart ``token``."""

    token: int


class _Supervisor(SupervisedActor):
    """The supervisor actor; use :func:`start_supervisor` and call it through its ref."""

    reported_failures = (RestartIntensityExceeded,)  # (its give-up logs it: _give_up)

    def __init__(
        self,
        *,
        name: str,
        strategy: Strategy,
        children: Sequence[ChildSpec],
        max_restarts: int,
        period: float,
        backoff: Backoff | None,
        clock: Clock,
        listener: Listener | None,
        on_fatal: Callable[[BaseException], None] | None,
        start_timeout: float,
    ) -> None:
        super().__init__()
        self._name = name
        self._strategy = strategy
        self._children: dict[str, Child] = {spec.id: Child(spec) for spec in children}
        self._clock = clock
        self._listener = listener
        self._on_fatal = on_fatal
        self._start_timeout = start_timeout
        self._intensity = Intensity(max_restarts, period, backoff, clock)

    def __str__(self) -> str:
        return f"supervisor {self._name!r} ({self.actor_urn})"

    # -- pykka hooks ------------------------------------------------------------------

    def on_start(self) -> None:
        """Start the initial children in order; on a failure stop them and raise."""
        for child in self._children.values():
            try:
                child.ref = self._start(child.spec)
            except SupervisorStartError as exc:
                self._stop_children(reversed(self._children.values()))
                raise SupervisorStartError(
                    f"supervisor {self._name!r} could not start child {child.spec.id!r}: {exc}"
                ) from exc.__cause__
            self._emit(child.spec.id, ChildEventKind.STARTED, child.ref, None)

    def on_stop(self) -> None:
        """Stop every child in reverse start order before this supervisor ends."""
        self._stop_children(reversed(self._children.values()))

    def on_failure(self, *exc_info: Any) -> None:
        """A bug in the supervisor itself: do not leave its children orphaned, and tell
        ``on_fatal`` (a root's: nobody above hears of it) as a give-up does."""
        self._stop_children(reversed(self._children.values()))
        self._fatal(exc_info[1])

    def on_receive(self, message: Any) -> Any:
        """Handle a child's exit report and the supervisor's own retry timers."""
        if isinstance(message, _ChildExit):
            self._on_child_exit(message)
            return None
        if isinstance(message, _Retry):
            self._restart_pending(message.token)
            return None
        return super().on_receive(message)

    # -- the API called through the ref ----------------------------------------------

    def which_children(self) -> list[ChildInfo]:
        """Every child in start order."""
        return [
            ChildInfo(
                id=c.spec.id,
                ref=c.ref,
                restart=c.spec.restart,
                restarts=c.restarts,
                alive=c.ref is not None and c.ref.is_alive(),
            )
            for c in self._children.values()
        ]

    def count_children(self) -> int:
        """How many child specs this supervisor holds (running or not)."""
        return len(self._children)

    def start_child(self, spec: ChildSpec) -> pykka.ActorRef[Any]:
        """Start a new child after the existing ones and return its ref."""
        self._check_new([spec], "start_child")
        return self._add_child(spec)

    def start_children(self, specs: Sequence[ChildSpec]) -> list[pykka.ActorRef[Any]]:
        """Start new children after the existing ones, in order, and return their refs.

        The same as one ``start_child`` per spec (each child finishes ``on_start`` before
        the next one is started, each within ``start_timeout``), in one message instead
        of one round trip per child. All or nothing: every spec is checked before the
        first start, and if a start fails the children this call started are stopped in
        reverse order and forgotten, and the :class:`SupervisorStartError` is raised.
        While it runs the supervisor handles no other message, as with the same number
        of ``start_child`` calls queued back to back.
        """
        if isinstance(specs, str | bytes) or not isinstance(specs, Sequence):
            raise InvalidInput(f"start_children takes a sequence of ChildSpec, got {specs!r}")
        self._check_new(specs, "start_children")
        refs: list[pykka.ActorRef[Any]] = []
        for spec in specs:
            try:
                refs.append(self._add_child(spec))
            except SupervisorStartError:
                started = [self._children[s.id] for s in specs[: len(refs)]]
                self._stop_children(reversed(started), in_order=True)  # undo: reverse order
                for child in started:
                    self._children.pop(child.spec.id, None)
                raise
        return refs

    def terminate_child(self, child_id: str) -> None:
        """Stop a child without restarting it; the spec stays for ``restart_child``
        (except in a simple_one_for_one pool and for temporary children)."""
        child = self._get(child_id)
        self._stop_children([child])
        if forgotten(child.spec.restart, self._strategy):
            del self._children[child_id]

    def restart_child(self, child_id: str, stuck: bool = False) -> pykka.ActorRef[Any]:
        """Replace a child now: stop it (abandoning it after its shutdown timeout, even if
        its thread is blocked forever; at once if the caller knows it is ``stuck``) and
        start a fresh instance. Not counted against the restart intensity unless the
        start fails (then it is retried like any failed restart and the error is raised)."""
        child = self._get(child_id)
        self._stop_children([child], wait=not stuck)
        try:
            ref = self._start(child.spec)
        except SupervisorStartError as exc:
            self._emit(child_id, ChildEventKind.CRASHED, None, exc)
            if not self._count_restart(child_id):
                self._retry_later([child])
            raise
        child.ref = ref
        child.restarts += 1
        self._emit(child_id, ChildEventKind.RESTARTED, ref, None)
        return ref

    def delete_child(self, child_id: str) -> None:
        """Stop the child if it runs and forget its spec."""
        child = self._get(child_id)
        self._stop_children([child])
        del self._children[child_id]

    def _check_new(self, specs: Sequence[ChildSpec], method: str) -> None:
        """Refuse anything but ChildSpec values with ids new to this supervisor."""
        check_new_specs(specs, method, taken=self._children, owner=f"supervisor {self._name!r}")

    def _add_child(self, spec: ChildSpec) -> pykka.ActorRef[Any]:
        try:
            ref = self._start(spec)
        except BaseException as exc:
            # Reported to the listener as well, so a caller that does not wait for the
            # answer (an asynchronous start) still learns of the failure.
            self._emit(spec.id, ChildEventKind.CRASHED, None, exc)
            raise
        self._children[spec.id] = Child(spec, ref)
        self._emit(spec.id, ChildEventKind.STARTED, ref, None)
        return ref

    # -- restarts ---------------------------------------------------------------------

    def _on_child_exit(self, message: _ChildExit) -> None:
        child = self._children.get(message.child_id)
        if child is None or child.ref is None or child.ref.actor_urn != message.urn:
            _log.debug("%s: ignoring exit of a replaced instance of %r", self, message.child_id)
            return
        ref, child.ref = child.ref, None
        crashed = message.reason is not None
        self._emit(
            child.spec.id,
            ChildEventKind.CRASHED if crashed else ChildEventKind.EXITED,
            ref,
            message.reason,
        )
        if not restarted(child.spec.restart, crashed=crashed):
            if forgotten(child.spec.restart, self._strategy):
                del self._children[child.spec.id]
            return
        if not self._count_restart(child.spec.id):
            self._restart(child, at_once=True)

    def _restart(self, child: Child, *, at_once: bool) -> None:
        """Restart ``child``'s group, as OTP's ``restart/2``: stop the others (reverse
        start order), forget the temporary ones, and start the rest in start order after
        the backoff delay - at once if ``at_once`` and there is none, else from a fresh
        message so that the loop serves others first."""
        group = restart_group(self._strategy, list(self._children.values()), child)
        siblings = [c for c in reversed(group) if c is not child]
        self._stop_children(siblings)
        for sibling in siblings:
            if sibling.spec.restart is Restart.TEMPORARY:
                del self._children[sibling.spec.id]
                group.remove(sibling)
        token = self._intensity.pend(group)
        delay = self._intensity.delay()
        if at_once and delay <= 0:
            self._restart_pending(token)
        else:
            self._schedule(token, delay)

    def _restart_pending(self, token: int) -> None:
        for child in [c for c in self._children.values() if c.pending == token]:
            try:
                ref = self._start(child.spec)
            except SupervisorStartError as exc:
                _log.warning("%s: restart of child %r failed: %s", self, child.spec.id, exc)
                self._emit(child.spec.id, ChildEventKind.CRASHED, None, exc)
                if not self._count_restart(child.spec.id):
                    # The failed child's group again, as OTP retries it: under one_for_all
                    # the children that did restart are stopped and all start in order.
                    self._restart(child, at_once=False)
                return
            child.pending = None
            child.ref = ref
            child.restarts += 1
            self._emit(child.spec.id, ChildEventKind.RESTARTED, ref, None)

    def _retry_later(self, children: list[Child]) -> None:
        """Try the start again from a fresh message, so the loop keeps serving others."""
        self._schedule(self._intensity.pend(children), self._intensity.delay())

    def _schedule(self, token: int, delay: float) -> None:
        if delay <= 0:
            self._tell_self(_Retry(token))
        else:
            self._clock.call_later(delay, lambda: self._tell_self(_Retry(token)))

    def _tell_self(self, message: object) -> None:
        try:
            self.actor_ref.tell(message)
        except pykka.ActorDeadError:
            _log.debug("%s: stopped before its retry timer fired", self)

    def _count_restart(self, child_id: str) -> bool:
        """Record one restart; give up (and return True) if the intensity is exceeded."""
        exc = self._intensity.exceeded(self._name, child_id)
        if exc is not None:
            self._give_up(exc)
        return exc is not None

    def _give_up(self, exc: RestartIntensityExceeded) -> None:
        _log.error("%s", exc)
        self._stop_children(reversed(self._children.values()))
        # Stop this actor as pykka does for an unhandled exception: the loop ends after
        # the current message, later asks fail with ActorDeadError, and the exit report
        # tells our own supervisor that we crashed with ``exc``. Done before on_fatal so
        # that whoever on_fatal wakes up already finds this supervisor dead.
        self._handle_failure(type(exc), exc, None)
        self._fatal(exc)

    def _fatal(self, exc: BaseException) -> None:
        if self._on_fatal is not None:
            try:
                self._on_fatal(exc)
            except Exception:
                _log.exception("%s: on_fatal callback failed", self)

    # -- starting and stopping children -------------------------------------------------

    def _start(self, spec: ChildSpec) -> pykka.ActorRef[Any]:
        return _start_confirmed(
            spec.start, parent=self.actor_ref, child_id=spec.id, timeout=self._start_timeout
        )

    def _stop_children(
        self, children: Iterable[Child], *, in_order: bool = False, wait: bool = True
    ) -> None:
        """Stop children in the given order, each within its shutdown timeout (not waited
        for unless ``wait``: abandoned at once).

        A simple_one_for_one pool is stopped in parallel (all stop messages first), as
        OTP does, unless ``in_order``; other strategies stop one child at a time.
        """
        parallel = self._strategy is Strategy.SIMPLE_ONE_FOR_ONE and not in_order
        stop_children(children, parallel=parallel, emit=self._emit, supervisor=self, wait=wait)

    def _get(self, child_id: str) -> Child:
        try:
            return self._children[child_id]
        except KeyError:
            raise InvalidInput(
                f"supervisor {self._name!r} has no child with id {child_id!r}"
            ) from None

    def _emit(
        self,
        child_id: str,
        kind: ChildEventKind,
        ref: pykka.ActorRef[Any] | None,
        reason: BaseException | None,
    ) -> None:
        if self._listener is None:
            return
        try:
            self._listener(ChildEvent(self._name, child_id, kind, ref, reason))
        except Exception:
            _log.exception("%s: listener failed on %s event of %r", self, kind, child_id)
