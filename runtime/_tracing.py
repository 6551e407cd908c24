"""OpenTelemetry spans for workflows and attempts (the optional ``herder[otel]`` extra).

:func:`tracing_for` returns None unless ``opentelemetry`` is installed *and* a tracer
provider is configured (passed as ``Runtime(tracer_provider=...)`` or set globally);
then nothing below runs at all, and workflow records are written exactly as without it.

When tracing is on:

- ``rt.start`` opens a span ``workflow <name>`` and stores its W3C ``traceparent`` in
  the workflow record (``WorkflowRecord.trace``): a new trace, linked to the caller's span
  if any. It ends when the workflow ends (or parks in NEEDS_ATTENTION) in the same
  process. A workflow that ends in a later process
  (after a crash or a restart) ends there as a span ``workflow <name>`` whose parent is
  the stored context: every span of one workflow shares one trace, whichever process
  made it.
- Each attempt (forward, compensation or probe) is a span ``<agent>.<action>``, a child
  of the workflow's stored context, with the workflow id, step, agent, action, attempt,
  fencing token, outcome and error type. It wraps the action's call on the agent
  instance (the runtime wraps each agent factory), and ``ctx.trace_context`` is then the
  attempt span's ``traceparent``, for the agent to pass to its remote calls.

The tracer and its processors are the application's code: whatever they raise is logged
and the work goes on untraced (a start is still written, an attempt's outcome is the
action's, a waiter still hears of the end).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import inspect
import threading
from collections.abc import Callable
from typing import Any

from herder.actors import Agent, Permanent, StepContext
from herder.store import (
    InvalidInput,
    WorkflowRecord,
    WorkflowState,
    describe,
    exception_name,
    get_logger,
    type_name,
)

_PREFIX = "herder."
_log = get_logger("herder.tracing")


def tracing_for(provider: Any = None) -> Tracing | None:
    """Tracing through ``provider`` (default: the global one), or None when there is no
    OpenTelemetry or no provider configured (tracing then costs nothing)."""
    try:
        from opentelemetry import trace
    except ImportError:
        return None
    given = provider is not None
    if provider is None:
        provider = trace.get_tracer_provider()
        if isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider):
            return None
    try:
        tracer = provider.get_tracer("herder")
    except Exception as exc:  # the provider is the user's: anything may come out of it
        if given:
            raise InvalidInput(
                f"tracer_provider gave no tracer: {describe(exc)}; pass an OpenTelemetry "
                "TracerProvider (opentelemetry.sdk.trace.TracerProvider), or None"
            ) from None
        _log.error("the global tracer provider gave no tracer (%s): no tracing", describe(exc))
        return None
    return Tracing(tracer)


class Tracing:
    """The spans of one runtime."""

    def __init__(self, tracer: Any) -> None:
        from opentelemetry import context, trace
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self._trace = trace
        self._tracer = tracer
        self._propagator = TraceContextTextMapPropagator()
        self._root = context.Context()  # (no current span: a workflow's opens a new trace)
        # traceparent -> the workflow's span, while it runs here (not by id: a start
        # racing an existing id opens a span too, then discards it).
        self._open: dict[str, Any] = {}
        self._lock = threading.Lock()

    def start_workflow(self, name: str, workflow_id: str, now: float) -> str | None:
        """Open a new workflow's span; return its ``traceparent`` for the record (None:
        the tracer failed, the workflow starts untraced)."""
        try:
            # A trace of its own, as the caller's (a web request's, an attempt's that
            # starts it) ends long before the workflow does; linked to it, if any.
            caller = self._trace.get_current_span().get_span_context()
            span = self._tracer.start_span(
                f"workflow {name}",
                context=self._root,
                links=[self._trace.Link(caller)] if caller.is_valid else (),
                start_time=_ns(now),
                attributes={
                    _PREFIX + "workflow.id": workflow_id,
                    _PREFIX + "workflow.name": name,
                },
            )
            traceparent = self._traceparent(self._trace.set_span_in_context(span))
        except Exception:
            _log.exception("the tracer failed to open workflow %s's span", workflow_id)
            return None
        if traceparent is None:  # (a non-recording span)
            return None
        with self._lock:
            self._open[traceparent] = span
        return traceparent

    def discard(self, traceparent: str) -> None:
        """The start was not written (the id existed): end its span, marked so."""
        with self._lock:
            span = self._open.pop(traceparent, None)
        if span is not None:
            try:
                span.set_attribute(_PREFIX + "workflow.existed", True)
                span.end()
            except Exception:
                _log.exception("the tracer failed to end a discarded workflow span")

    def ended(self, record: WorkflowRecord, now: float) -> None:
        """The workflow ended (or parked for an operator): end its span."""
        try:
            self._end(record, now)
        except Exception:
            _log.exception("the tracer failed to end workflow %s's span", record.id)

    def _end(self, record: WorkflowRecord, now: float) -> None:
        with self._lock:
            span = None if record.trace is None else self._open.pop(record.trace, None)
        if span is None:  # started by an earlier process: a span joining its trace
            span = self._tracer.start_span(
                f"workflow {record.name}",
                context=self._context(record.trace),
                start_time=_ns(record.created),
                attributes={
                    _PREFIX + "workflow.id": record.id,
                    _PREFIX + "workflow.name": record.name,
                    _PREFIX + "workflow.resumed": True,
                },
            )
        span.set_attribute(_PREFIX + "workflow.version", record.version)
        span.set_attribute(_PREFIX + "workflow.state", str(record.state))
        if record.state is not WorkflowState.SUCCEEDED:
            span.set_status(self._trace.Status(self._trace.StatusCode.ERROR, record.error))
        span.end(end_time=_ns(now))

    def wrap_factory(self, agent: str, factory: Callable[[], Agent]) -> Callable[[], Agent]:
        """``factory``, building agents whose every action runs inside an attempt span."""
        return _TracedFactory(self, agent, factory)

    def run_attempt(self, agent: str, action: str, method: Callable[..., Any], ctx: Any) -> Any:
        """Call ``method(ctx)`` inside the attempt's span; the result or exception passes."""
        if not isinstance(ctx, StepContext):
            return method(ctx)
        attributes = {
            _PREFIX + "workflow.id": ctx.workflow_id,
            _PREFIX + "step": ctx.step,
            _PREFIX + "agent": agent,
            _PREFIX + "action": action,
            _PREFIX + "attempt": ctx.attempt,
            _PREFIX + "token": ctx.token,
            _PREFIX + "compensating": ctx.compensating,
        }
        opened = span = None
        try:
            opened = self._tracer.start_as_current_span(
                f"{agent}.{action}",
                context=self._context(ctx.trace_context),
                attributes=attributes,
                record_exception=False,
                set_status_on_exception=False,
            )
            span = opened.__enter__()
            inner = dataclasses.replace(ctx, trace_context=self._traceparent(None))
        except Exception:
            _log.exception("the tracer failed to open an attempt span; the action runs untraced")
            if span is not None:  # (entered: its context must not stay on this thread)
                self._close(opened, lambda: None)
            return method(ctx)
        try:
            result = method(inner)
        except BaseException as exc:  # recorded, then passed on to the agent host as is
            self._close(opened, functools.partial(self._failed, span, exc), exc)
            raise
        if inspect.iscoroutine(result) and _on_a_loop():  # async def: the span lasts
            return self._awaited(opened, span, inner, result)  # while the host awaits it
        self._succeeded(opened, span, inner, result)
        return result

    async def _awaited(self, opened: Any, span: Any, inner: StepContext, coroutine: Any) -> Any:
        """Await an async action's ``coroutine`` in its span (in the attempt's task: the
        span stays current while the action runs, and ends with its outcome)."""
        try:
            result = await coroutine
        except BaseException as exc:  # a CancelledError (a timeout) too
            self._close(opened, functools.partial(self._failed, span, exc), exc)
            raise
        self._succeeded(opened, span, inner, result)
        return result

    def _succeeded(self, opened: Any, span: Any, inner: StepContext, result: Any) -> None:
        later = result is inner.complete_later()
        self._close(
            opened,
            lambda: span.set_attribute(_PREFIX + "outcome", "later" if later else "succeeded"),
        )

    def _close(
        self, opened: Any, mark: Callable[[], None], exc: BaseException | None = None
    ) -> None:
        """Mark and end an attempt's span; what the tracer raises is logged, and the
        attempt's outcome stays the action's."""
        try:
            mark()
            if exc is None:
                opened.__exit__(None, None, None)
            else:
                opened.__exit__(type(exc), exc, exc.__traceback__)
        except BaseException as error:
            if error is not exc:
                _log.exception("the tracer failed to end an attempt span")

    def _failed(self, span: Any, exc: BaseException) -> None:
        """Mark an attempt's span failed. The exception is user code's: only its type and
        :func:`describe` (which survives any ``__str__``) are read, never its traceback."""
        permanent = isinstance(exc, Permanent)
        span.set_attribute(_PREFIX + "outcome", "permanent" if permanent else "failed")
        span.set_attribute("error.type", exception_name(type(exc)))
        message = describe(exc)
        span.add_event(
            "exception", {"exception.type": exception_name(type(exc)), "exception.message": message}
        )
        span.set_status(self._trace.Status(self._trace.StatusCode.ERROR, message[:200]))

    def _context(self, traceparent: str | None) -> Any:
        if not traceparent:
            return None
        return self._propagator.extract({"traceparent": traceparent})

    def _traceparent(self, context: Any) -> str | None:
        carrier: dict[str, str] = {}
        self._propagator.inject(carrier, context=context)
        return carrier.get("traceparent")


class _TracedFactory(functools.partial[Agent]):
    """An agent factory whose agents trace their actions. A ``functools.partial`` of the
    wrapped factory, so ``agent_class_of`` still sees the Agent class through it (the
    Scheduler finds the class's ``probe_<action>`` there)."""

    _tracing: Tracing
    _agent: str

    def __new__(cls, tracing: Tracing, agent: str, func: Callable[[], Agent]) -> _TracedFactory:
        self = super().__new__(cls, func)
        self._tracing, self._agent = tracing, agent
        return self

    def __call__(self) -> Any:
        built = self.func()
        if inspect.iscoroutine(built):  # an async def factory: its host awaits this
            return self._traced(built)
        return self._wrap(built)

    async def _traced(self, building: Any) -> Agent:
        return self._wrap(await building)

    def _wrap(self, built: Any) -> Any:
        """``built``, whose actions run in attempt spans: a stand-in named as its class,
        so that an error naming the class its factory made names the agent's; None as it
        is (the host's error then says the factory returned nothing)."""
        if built is None:
            return None
        return _wrapper_named(type_name(type(built)))(self._tracing, self._agent, built)


class _TracedAgent(Agent):
    """Stands in for an agent object: its actions run inside attempt spans."""

    def __init__(self, tracing: Tracing, agent: str, inner: Any) -> None:
        self._tracing = tracing
        self._agent = agent
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._inner, name)
        if name.startswith("_") or not callable(value):
            return value

        def traced(*args: Any, **kwargs: Any) -> Any:
            if len(args) != 1 or kwargs:  # not an attempt: health(), say
                return value(*args, **kwargs)
            return self._tracing.run_attempt(self._agent, name, value, args[0])

        return traced


@functools.lru_cache(maxsize=256)
def _wrapper_named(name: str) -> type[_TracedAgent]:
    """A :class:`_TracedAgent` class called ``name`` (cached by name: no hash or equality
    of the user's class is run)."""
    return type(name, (_TracedAgent,), {})


def _on_a_loop() -> bool:
    """True on an event loop's thread (the asyncio host awaits what an action returns; a
    thread host refuses a coroutine unstarted, so its span ends at once)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _ns(seconds: float) -> int:
    return int(seconds * 1_000_000_000)
