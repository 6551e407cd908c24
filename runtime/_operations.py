"""Operator actions and asynchronous completion on a :class:`Runtime` (a base class of
it): cancel, retry, skip, compensate, abandon, ``complete_step`` and ``fail_step``. Each
is checked here, sent to the Scheduler as plain data, and durable when the call returns.
"""

from __future__ import annotations

import contextlib
import time
from concurrent.futures import Future
from dataclasses import replace
from typing import Any

import pykka

from herder.actors import (
    Complete,
    NotActive,
    Operate,
    Permanent,
    RuntimeClosed,
    call,
    parse_task_token,
)
from herder.runtime._part import whole as _runtime
from herder.store import (
    HerderError,
    InvalidInput,
    TimedOut,
    bounded_text,
    describe,
    error_types,
    normalize,
    safe_repr,
    safe_str,
)


class Operations:
    """What an operator (or an action's out-of-band completion) does to a workflow."""

    def cancel(self, workflow_id: str, *, who: str | None = None, why: str | None = None) -> None:
        """Stop dispatching and compensate completed steps; the workflow ends CANCELLED."""
        rt = _runtime(self)
        rt._operate(Operate("cancel", workflow_id, who=who, why=why))

    def retry(self, workflow_id: str, *, who: str | None = None, why: str | None = None) -> None:
        """Resume a NEEDS_ATTENTION workflow: the failed compensation, else the failed step."""
        rt = _runtime(self)
        rt._operate(Operate("retry", workflow_id, who=who, why=why))

    def skip(
        self,
        workflow_id: str,
        step: str | None = None,
        result: Any = None,
        *,
        who: str | None = None,
        why: str | None = None,
    ) -> None:
        """Mark a step done by hand and let the workflow go on.

        ``step`` defaults to the step that needs attention. A step whose compensation
        failed becomes COMPENSATED (it takes no ``result``) and the remaining
        compensations run; any other unfinished step (in a running or parked workflow)
        becomes SUCCEEDED with ``result`` (its running attempt, if any, is fenced out)
        and its dependents run.
        """
        rt = _runtime(self)
        rt._operate(Operate("skip", workflow_id, step, result, who=who, why=why))

    def compensate(
        self, workflow_id: str, *, who: str | None = None, why: str | None = None
    ) -> None:
        """Undo the completed steps of a running or parked workflow; it ends COMPENSATED
        (CANCELLED if a cancel had turned it back before it parked).

        Steps whose outcome is unknown or awaited are given up (not undone): skip them
        first if they did take effect.
        """
        rt = _runtime(self)
        rt._operate(Operate("compensate", workflow_id, who=who, why=why))

    def abandon(self, workflow_id: str, *, who: str | None = None, why: str | None = None) -> None:
        """Give up on a workflow: it ends ABANDONED, nothing more runs and nothing is undone."""
        rt = _runtime(self)
        rt._operate(Operate("abandon", workflow_id, who=who, why=why))

    def complete_step(self, task_token: str, result: Any = None) -> None:
        """Complete a step whose action returned ``ctx.complete_later()``; durable on return.

        Callable from any thread. Raises :class:`CompletionRefused` if the attempt the
        token names is no longer current (timed out and retried, or the step finished;
        also once retention or ``herder purge`` deleted its workflow).
        """
        rt = _runtime(self)
        rt._ask_durable("complete", rt._completion(task_token, result))

    def _completion(self, task_token: str, result: Any) -> Complete:
        rt = _runtime(self)
        wf, step, token = parse_task_token(task_token)
        result = normalize(result, limit=rt._config.max_result_bytes, what="step result")
        return Complete(wf, step, token, ok=True, result=result)

    def fail_step(
        self, task_token: str, error: str | BaseException, *, permanent: bool = False
    ) -> None:
        """Fail a step whose action returned ``ctx.complete_later()``; durable on return.

        ``error`` is the reason as a str, or an exception (its type is matched against
        the step's ``non_retryable``); anything else is refused with ``InvalidInput``.
        The step is retried under its policy unless ``permanent`` (or ``error``'s type is
        non-retryable). Refusals as for :meth:`complete_step`.
        """
        rt = _runtime(self)
        rt._ask_durable("complete", rt._failure(task_token, error, permanent=permanent))

    def _failure(self, task_token: str, error: str | BaseException, *, permanent: bool) -> Complete:
        if isinstance(error, type) and issubclass(error, BaseException):
            name = safe_str(error, lambda kind: kind.__name__)
            raise InvalidInput(  # (recorded as its repr, matching no non_retryable type)
                f"fail_step's error must be a str or an exception, got the class {name}: "
                f"pass an instance, {name}('why')"
            )
        if not isinstance(error, str | BaseException):
            raise InvalidInput(  # (recorded as its str: 42, None, a dict said nothing)
                f"fail_step's error must be a str or an exception, got "
                f"{type(error).__name__} {safe_repr(error):.60}: pass the reason as a str"
            )
        wf, step, token = parse_task_token(task_token)
        if isinstance(error, BaseException):
            text, types = describe(error), error_types(error)
            permanent = permanent or isinstance(error, Permanent)
        else:
            text, types = bounded_text(safe_str(error)), ()
        return Complete(
            wf, step, token, ok=False, error=text, error_types=types, permanent=permanent
        )

    def _operate(self, op: Operate) -> None:
        rt = _runtime(self)
        rt._ask_durable("operate", rt._operation(op))

    def _operation(self, op: Operate) -> Operate:
        """``op`` checked, as plain data (nothing is written)."""
        rt = _runtime(self)
        rt._check_active()
        op.check()
        # Plain data only reaches the Scheduler: a user object's methods must not run there.
        return replace(
            op,
            result=normalize(op.result, what="result"),  # its size is checked with the step
            who=normalize(op.who),
            why=normalize(op.why),
        )

    def _ask_durable(self, method: str, msg: Operate | Complete) -> None:
        """Ask the Scheduler to record ``msg``; return once that is durable."""
        rt = _runtime(self)
        rt._check_active()
        try:
            done: Future[None] = rt._ask_scheduler(method, msg)
        except TimedOut:
            raise unrecorded(msg, rt._ask_timeout) from None
        try:
            done.result(timeout=rt._ask_timeout)
        except TimeoutError:
            raise unrecorded(msg, rt._ask_timeout) from None

    def _ask_scheduler(self, method: str, *args: Any) -> Any:
        """``method`` of the Scheduler called with ``args`` (within ``ask_timeout``); a dead
        one: what :meth:`_scheduler_gone` says."""
        rt = _runtime(self)
        try:
            return call(rt._scheduler, method, *args, timeout=rt._ask_timeout)
        except pykka.ActorDeadError:  # it failed or stops, or the tree replaces a crashed one
            raise rt._scheduler_gone() from None

    def _recovered(self, root: pykka.ActorRef) -> None:
        """Return once the Scheduler has run the first part of its recovery (within
        ``ask_timeout``). One that crashed meanwhile (a bug a stored workflow trips) is
        replaced by the tree (``root``): the new one's recovery is waited for, or
        :class:`RuntimeClosed` says the tree gave up restarting it."""
        rt = _runtime(self)
        deadline = time.monotonic() + rt._ask_timeout
        scheduler = rt._scheduler
        while True:
            try:
                call(scheduler, "sync", timeout=max(0.0, deadline - time.monotonic()))
                return
            except pykka.ActorDeadError:
                scheduler = self._successor(scheduler, max(0.0, deadline - time.monotonic()))
            # The root restarts its children within one message: once it answers, the new
            # Scheduler's start, which asks for its recovery, is over (the sync comes next).
            with contextlib.suppress(pykka.ActorDeadError):  # (gave up: the sync says so)
                call(root, "count_children", timeout=max(0.0, deadline - time.monotonic()))

    def _successor(self, crashed: pykka.ActorRef, timeout: float) -> pykka.ActorRef:
        """The Scheduler the tree starts in place of ``crashed``, once it runs (within
        ``timeout`` s); :class:`RuntimeClosed` if the runtime stops or fails meanwhile (its
        tree gave up restarting it), :class:`TimedOut` at the timeout."""
        rt = _runtime(self)
        ctx, started = rt._ctx, rt._ctx.started

        def woken() -> None:  # (the runtime stopped or failed: no Scheduler may come)
            with started:
                started.notify_all()

        rt._wake.subscribe(woken)
        try:
            with started:
                started.wait_for(lambda: ctx.scheduler is not crashed or rt._wake.is_set(), timeout)
        finally:
            rt._wake.unsubscribe(woken)
        rt._check_open()
        successor = ctx.scheduler
        if successor is crashed or successor is None:
            raise TimedOut(
                f"the runtime's Scheduler crashed (see the log) and no new one started within "
                f"{timeout:.3g} s"
            )
        return successor

    def _scheduler_gone(self) -> HerderError:
        """What a call that found the Scheduler dead raises: :class:`RuntimeClosed`, saying
        why, once the runtime stopped or failed; else :class:`NotActive`: the supervision
        tree is replacing a Scheduler that crashed (it first stops the agents, which may
        take their whole shutdown), and the call recorded nothing."""
        try:
            _runtime(self)._check_open()
        except RuntimeClosed as exc:
            return exc
        return NotActive(
            "the runtime's Scheduler crashed and its supervision tree is starting a new "
            "one; nothing was recorded: call again in a moment"
        )


def unrecorded(msg: Operate | Complete, timeout: float) -> TimedOut:
    """An operator action or completion the Scheduler did not record in time."""
    what = f"the {msg.action}" if isinstance(msg, Operate) else f"the completion of {msg.step!r}"
    return TimedOut(
        f"the runtime did not record {what} of workflow {msg.workflow_id!r} within {timeout} s "
        "(ask_timeout; it is overloaded, or its disk is slow); it may still be: look at the "
        "workflow's status before calling again"
    )
