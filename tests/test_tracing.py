"""OpenTelemetry spans (herder[otel]): one per workflow and per attempt, one trace per
workflow across a crash, ``ctx.trace_context``, and nothing at all without a provider."""

from __future__ import annotations

import asyncio
import json
import pathlib
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from herder.runtime import (
    Agent,
    Permanent,
    ProbeResult,
    RetryPolicy,
    Runtime,
    StepContext,
    Workflow,
)
from herder.runtime._tracing import tracing_for
from herder.runtime.testing import FakeClock, advance
from herder.store import Store

sdk = pytest.importorskip("opentelemetry.sdk.trace", reason="opentelemetry-sdk not installed")
from opentelemetry import trace  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (  # noqa: E402
    InMemorySpanExporter,
)

CHILD = pathlib.Path(__file__).with_name("trace_child.py")
FAST = RetryPolicy(max_attempts=3, initial_interval=0.0, jitter=0.0)
seen_contexts: list[str | None] = []


class Shop(Agent):
    def buy(self, ctx: StepContext) -> str:
        seen_contexts.append(ctx.trace_context)
        if ctx.step == "pay" and ctx.attempt == 1:
            raise ConnectionError("bank timed out")
        if ctx.step == "ship" and ctx.input.get("no_ship"):
            raise Permanent("nothing to ship")
        return ctx.step

    def refund(self, ctx: StepContext) -> None:
        return None


ORDER = (
    Workflow("order")
    .step("pay", agent="shop", action="buy", compensate="refund", retry=FAST)
    .step("ship", agent="shop", action="buy", after=["pay"], retry=FAST)
)
FLOW = (
    Workflow("flow")
    .step("pay", agent="a", action="run")
    .step("ship", agent="a", action="run", after=["pay"])
)


def provider() -> tuple[Any, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    tracer_provider = sdk.TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    return tracer_provider, exporter


def ids(traceparent: str | None) -> tuple[int, int]:
    """(trace id, parent span id) of a W3C traceparent."""
    assert traceparent is not None
    version, trace_id, span_id, _flags = traceparent.split("-")
    assert version == "00"
    return int(trace_id, 16), int(span_id, 16)


def test_a_workflow_and_each_attempt_are_spans_of_one_trace(tmp_path: Path) -> None:
    tracer_provider, exporter = provider()
    seen_contexts.clear()
    with Runtime(tmp_path / "s", tracer_provider=tracer_provider) as rt:
        rt.add_agent("shop", Shop)
        rt.add_workflow(ORDER)
        rt.start("order", {}, workflow_id="o-1").result(timeout=10)
        record = rt._store.get_workflow("o-1")
    spans = exporter.get_finished_spans()
    (workflow,) = [s for s in spans if s.name == "workflow order"]
    attempts = [s for s in spans if s.name == "shop.buy"]
    trace_id = workflow.context.trace_id
    assert {s.context.trace_id for s in spans} == {trace_id}
    assert all(s.parent.span_id == workflow.context.span_id for s in attempts)
    assert record is not None
    assert ids(record.trace) == (trace_id, workflow.context.span_id)
    got = [
        (
            s.attributes["herder.step"],
            s.attributes["herder.attempt"],
            s.attributes["herder.outcome"],
            s.attributes.get("error.type"),
        )
        for s in attempts
    ]
    assert got == [
        ("pay", 1, "failed", "builtins.ConnectionError"),
        ("pay", 2, "succeeded", None),
        ("ship", 1, "succeeded", None),
    ]
    first = attempts[0].attributes
    assert (first["herder.workflow.id"], first["herder.agent"], first["herder.action"]) == (
        "o-1",
        "shop",
        "buy",
    )
    assert first["herder.token"] > 0
    assert workflow.attributes["herder.workflow.state"] == "SUCCEEDED"
    # ctx.trace_context is the attempt's own span, for the agent's remote calls
    assert [ids(c) for c in seen_contexts] == [(trace_id, s.context.span_id) for s in attempts]


def test_a_failed_workflow_marks_its_span_and_its_compensations(tmp_path: Path) -> None:
    tracer_provider, exporter = provider()
    with Runtime(tmp_path / "s", tracer_provider=tracer_provider) as rt:
        rt.add_agent("shop", Shop)
        rt.add_workflow(ORDER)
        with pytest.raises(Exception, match="COMPENSATED"):
            rt.start("order", {"no_ship": 1}, workflow_id="o-2").result(timeout=10)
    spans = {
        (s.name, s.attributes.get("herder.step"), s.attributes.get("herder.attempt")): s
        for s in exporter.get_finished_spans()
    }
    ship = spans[("shop.buy", "ship", 1)]
    assert ship.attributes["herder.outcome"] == "permanent"
    assert ship.status.status_code.name == "ERROR"
    refund = spans[("shop.refund", "pay", 1)]
    assert refund.attributes["herder.compensating"] is True
    workflow = spans[("workflow order", None, None)]
    assert workflow.attributes["herder.workflow.state"] == "COMPENSATED"
    assert workflow.status.status_code.name == "ERROR"


def test_a_workflow_started_inside_a_span_opens_its_own_trace_linked_to_it(
    tmp_path: Path,
) -> None:
    """rt.start() in a web request's span (or in an attempt's) made the workflow's span a
    child of that span: the request's trace, long ended, took in hours of workflow; the
    docs say a workflow's span has no parent (a new trace)."""
    tracer_provider, exporter = provider()
    with Runtime(tmp_path / "s", tracer_provider=tracer_provider) as rt:
        rt.add_agent("shop", Shop)
        rt.add_workflow(ORDER)
        with tracer_provider.get_tracer("app").start_as_current_span("request") as request:
            handle = rt.start("order", {}, workflow_id="o-4")
        handle.result(timeout=10)
    (workflow,) = [s for s in exporter.get_finished_spans() if s.name == "workflow order"]
    caller = request.get_span_context()
    assert workflow.parent is None
    assert workflow.context.trace_id != caller.trace_id
    assert [link.context.span_id for link in workflow.links] == [caller.span_id]


def test_attempts_after_a_crash_join_the_trace_the_record_carries(tmp_path: Path) -> None:
    store, lines = tmp_path / "s", tmp_path / "spans.jsonl"
    proc = subprocess.Popen(
        [sys.executable, str(CHILD), str(store), str(lines)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready", proc.stderr and proc.stderr.read()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    before = [json.loads(line) for line in lines.read_text().splitlines()]
    (pay,) = [s for s in before if s["attributes"].get("herder.step") == "pay"]
    with Store(store, readonly=True) as st:
        record = st.get_workflow("w")
    assert record is not None
    trace_id, parent_id = ids(record.trace)
    assert (pay["trace_id"], pay["parent"]) == (trace_id, parent_id)

    class Worker(Agent):
        def run(self, ctx: StepContext) -> str:
            return ctx.step

    tracer_provider, exporter = provider()
    with Runtime(store, tracer_provider=tracer_provider) as rt:
        rt.add_agent("a", Worker)
        rt.add_workflow(FLOW)
        assert rt.handle("w").result(timeout=10) == {"pay": "pay", "ship": "ship"}
    after = exporter.get_finished_spans()
    (ship,) = [s for s in after if s.attributes.get("herder.step") == "ship"]
    (workflow,) = [s for s in after if s.name == "workflow flow"]
    assert ship.attributes["herder.attempt"] == 2  # the killed one was attempt 1
    assert (ship.context.trace_id, ship.parent.span_id) == (trace_id, parent_id)
    assert (workflow.context.trace_id, workflow.parent.span_id) == (trace_id, parent_id)
    assert workflow.attributes["herder.workflow.resumed"] is True


def test_without_a_provider_nothing_is_traced_and_records_carry_no_context(
    tmp_path: Path,
) -> None:
    assert tracing_for() is None  # no global provider was ever set in this process
    seen_contexts.clear()
    with Runtime(tmp_path / "s", default_retry=FAST) as rt:
        rt.add_agent("shop", Shop)
        rt.add_workflow(ORDER)
        rt.start("order", {}, workflow_id="o-3").result(timeout=10)
        assert rt._tracing is None
        assert type(rt._ctx.agents["shop"][0]) is type  # the factory is not wrapped
        raw = rt._store.get("workflows", b"o-3")
    assert "trace" not in raw  # the record is byte for byte what it was before tracing
    assert seen_contexts == [None, None, None]


def test_without_opentelemetry_installed_tracing_is_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry", None)  # import fails
    tracer_provider, _ = provider()
    assert tracing_for(tracer_provider) is None


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("str() of this exception fails")


class Hostile(Agent):
    def run(self, ctx: StepContext) -> None:
        raise Unprintable


def test_a_hostile_exception_is_recorded_without_changing_the_step_error(tmp_path: Path) -> None:
    flow = Workflow("bad").step("go", agent="h", action="run", retry=RetryPolicy(max_attempts=1))
    errors = []
    for traced in (False, True):
        tracer_provider, exporter = provider()
        with Runtime(
            tmp_path / str(traced), tracer_provider=tracer_provider if traced else None
        ) as rt:
            rt.add_agent("h", Hostile)
            rt.add_workflow(flow)
            with pytest.raises(Exception, match="COMPENSATED"):
                rt.start("bad", {}, workflow_id="b").result(timeout=10)
            errors.append(rt.status("b").steps["go"].error)
    assert errors[0] == errors[1]
    assert "unprintable" in (errors[1] or "")
    (span,) = [s for s in exporter.get_finished_spans() if s.name == "h.run"]
    assert span.attributes["error.type"].endswith("Unprintable")
    (event,) = span.events
    assert "unprintable" in event.attributes["exception.message"]


class Raising(sdk.SpanProcessor):  # type: ignore[misc]
    """A span processor (the application's code) that raises where it is told to."""

    def __init__(self, where: str) -> None:
        self.where = where

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        if self.where == "on_start":
            raise RuntimeError("processor on_start")

    def on_end(self, span: Any) -> None:
        if self.where == "on_end":
            raise RuntimeError("processor on_end")


class Counting(Agent):
    calls = 0

    def run(self, ctx: StepContext) -> str:
        Counting.calls += 1
        return ctx.step


@pytest.mark.parametrize("where", ["on_start", "on_end"])
def test_a_tracer_that_raises_changes_nothing_of_the_work(tmp_path: Path, where: str) -> None:
    """A processor raising in on_end made every successful attempt a failure (run again,
    then compensated) and kept the final waiter from hearing; in on_start, start() raised
    and nothing was created."""
    tracer_provider = sdk.TracerProvider()
    tracer_provider.add_span_processor(Raising(where))
    Counting.calls = 0
    with Runtime(tmp_path / "s", tracer_provider=tracer_provider) as rt:
        rt.add_agent("a", Counting)
        rt.add_workflow(FLOW)
        handle = rt.start("flow", {}, workflow_id="f-1")
        assert handle.result(timeout=10) == {"pay": "pay", "ship": "ship"}
        assert rt.status("f-1").state.value == "SUCCEEDED"
    assert Counting.calls == 2  # each step once


class Watched(Agent):
    checks = 0

    def run(self, ctx: StepContext) -> str:
        return ctx.step

    def health(self) -> None:
        Watched.checks += 1


def test_a_traced_agent_with_a_health_check_stays_healthy(tmp_path: Path) -> None:
    """The traced wrapper took health() for an action and called it without its ctx:
    every check failed with a TypeError, so a traced agent was held as unhealthy."""
    tracer_provider, exporter = provider()
    clock = FakeClock()
    Watched.checks = 0
    with Runtime(tmp_path / "s", clock=clock, tracer_provider=tracer_provider) as rt:
        rt.add_agent("a", Watched, health_interval=10.0)
        rt.add_workflow(FLOW)
        advance(rt, clock, 10.0)
        assert rt._ctx.health.checked("a", 1, 10.0)
        resource = rt.stats()["resources"]["a"]
        assert (resource["healthy"], resource["health_error"]) == (True, None)
        assert Watched.checks == 1
        assert rt.start("flow", {}).result(timeout=10) == {"pay": "pay", "ship": "ship"}
    assert not [s for s in exporter.get_finished_spans() if s.name == "a.health"]


class Awaiting(Agent):
    """Async actions: what the span sees must be what the awaited coroutine did."""

    current: list[int] = []

    async def run(self, ctx: StepContext) -> str:
        await asyncio.sleep(0)  # (an await point to keep the span across: no wait)
        Awaiting.current.append(trace.get_current_span().get_span_context().span_id)
        if ctx.step == "pay" and ctx.attempt == 1:
            raise ConnectionError("bank timed out")
        return ctx.step


async def build_awaiting() -> Awaiting:
    return Awaiting()


@pytest.mark.parametrize("factory", [Awaiting, build_awaiting], ids=["class", "async-factory"])
def test_an_async_action_is_traced_over_its_await(tmp_path: Path, factory: Any) -> None:
    """The span of an async def action ended when its coroutine was made, before it ran:
    every attempt was "succeeded" (a failure too), and the action ran outside its span.
    With an async def factory, the traced agent wrapped the unawaited coroutine, and
    every step failed for good: "has no action"."""
    tracer_provider, exporter = provider()
    Awaiting.current = []
    with Runtime(tmp_path / "s", tracer_provider=tracer_provider) as rt:
        rt.add_agent("a", factory, asyncio=True)
        rt.add_workflow(Workflow("flow").step("pay", agent="a", action="run", retry=FAST))
        assert rt.start("flow", {}).result(timeout=10) == {"pay": "pay"}
    attempts = [s for s in exporter.get_finished_spans() if s.name == "a.run"]
    got = [(s.attributes["herder.outcome"], s.attributes.get("error.type")) for s in attempts]
    assert got == [("failed", "builtins.ConnectionError"), ("succeeded", None)]
    assert Awaiting.current == [s.context.span_id for s in attempts]


def test_a_traced_agent_keeps_its_probe_for_a_lapsed_attempt(tmp_path: Path) -> None:
    """The scheduler looked for ``probe_<action>`` on the traced factory, which hid the
    agent's class: under tracing a lapsed attempt was never probed but run again blind."""
    tracer_provider, exporter = provider()
    clock = FakeClock()
    entered, release = threading.Event(), threading.Event()
    probed: list[str] = []

    class Bank(Agent):
        def pay(self, ctx: StepContext) -> str:
            if ctx.attempt > 1:
                return "paid twice"
            entered.set()  # applied, then the reply is lost
            release.wait(10)
            raise ConnectionError("the reply was lost")

        def probe_pay(self, ctx: StepContext) -> ProbeResult:
            probed.append(ctx.idempotency_key)
            return ProbeResult.done("paid")

    flow = Workflow("pay").step("pay", agent="bank", action="pay", timeout=5.0, retry=FAST)
    with Runtime(
        tmp_path / "s", clock=clock, sweep_interval=1.0, tracer_provider=tracer_provider
    ) as rt:
        rt.add_agent("bank", Bank)
        rt.add_workflow(flow)
        handle = rt.start("pay", {}, workflow_id="p")
        try:
            assert entered.wait(10)
            advance(rt, clock, 6.0)
            assert handle.result(timeout=10) == {"pay": "paid"}
        finally:
            release.set()
        assert rt.status("p").steps["pay"].attempt == 1  # never run again
    assert probed == ["p/pay"]
    (probe,) = [s for s in exporter.get_finished_spans() if s.name == "bank.probe_pay"]
    assert probe.attributes["herder.outcome"] == "succeeded"


class BrokenProvider:
    def get_tracer(self, name: str) -> Any:
        raise RuntimeError("collector config unreadable")


def test_a_provider_that_gives_no_tracer_is_refused_or_traces_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Its RuntimeError came out of Runtime() as it was: no HerderError, nothing said of
    # tracer_provider; from the global provider it stopped a runtime tracing was not
    # asked of.
    from herder.runtime import InvalidInput

    with pytest.raises(InvalidInput, match="tracer_provider gave no tracer: RuntimeError"):
        Runtime(tmp_path / "a", tracer_provider=BrokenProvider())
    # The global one is the process's set-up, not this call's: the runtime runs untraced.
    monkeypatch.setattr(trace, "get_tracer_provider", BrokenProvider)
    with Runtime(tmp_path / "c") as rt:
        assert rt._tracing is None
    assert "the global tracer provider gave no tracer" in caplog.text


def forgets_to_return() -> None:
    Shop()  # (no return)


def build_shop() -> Shop:  # (a class the registration cannot see: its actions unchecked)
    return Shop()


def test_a_traced_agents_factory_mistakes_are_named_as_without_tracing(tmp_path: Path) -> None:
    """Under tracing the error named herder's wrapper ("its factory made a
    _TracedAgent"), for an action the agent lacks and for a factory that returned None,
    which lost the hint that it returns nothing."""
    flows = (
        Workflow("none").step("go", agent="none", action="buy"),
        Workflow("typo").step("go", agent="shop", action="by"),
    )
    errors: dict[bool, list[str | None]] = {}
    for traced in (False, True):
        tracer_provider, _ = provider()
        with Runtime(
            tmp_path / str(traced), tracer_provider=tracer_provider if traced else None
        ) as rt:
            rt.add_agent("none", forgets_to_return)
            rt.add_agent("shop", build_shop)
            for flow in flows:
                rt.add_workflow(flow)
                with pytest.raises(Exception, match="COMPENSATED"):
                    rt.start(flow.name, {}, workflow_id=flow.name).result(timeout=10)
            errors[traced] = [rt.status(flow.name).steps["go"].error for flow in flows]
    assert errors[True] == errors[False]
    assert "NoneType: does the factory return the agent it builds?" in (errors[True][0] or "")
    assert "has no action 'by' (its factory made a Shop)" in (errors[True][1] or "")


class _Reenters(sdk.SpanProcessor):
    """A span processor that, as each workflow span ends (on the store's writer thread),
    calls back into the runtime: reads, a start, a cancel and a wait for a result."""

    def __init__(self) -> None:
        self.rt: Runtime | None = None
        self.outcomes: dict[str, str] = {}

    def on_end(self, span: Any) -> None:
        if span.name != "workflow order" or self.outcomes:
            return
        rt = self.rt
        assert rt is not None
        for what, call in (
            ("status", lambda: rt.status("o-1")),
            ("start", lambda: rt.start("order", {}, workflow_id="o-2")),
            ("cancel", lambda: rt.cancel("later")),
            ("result", lambda: rt.handle("later").result(timeout=2.0)),
        ):
            try:
                call()
                self.outcomes[what] = "ok"
            except Exception as exc:
                self.outcomes[what] = type(exc).__name__


@pytest.mark.timeout(60)
def test_a_span_processor_that_waits_for_the_runtime_is_refused_not_stalling_it(
    tmp_path: Path,
) -> None:
    """A span processor runs on the store's writer thread as a workflow ends. A call
    from it that waits for a commit (start, cancel) waited for that very thread: every
    commit of the runtime stalled for ask_timeout (30 s by default), then it raised
    TimedOut (a result() without a timeout: for good). It is refused at once; reads go
    on working."""
    reenters = _Reenters()
    tracer_provider = sdk.TracerProvider()
    tracer_provider.add_span_processor(reenters)
    with Runtime(tmp_path / "s", tracer_provider=tracer_provider, ask_timeout=2) as rt:
        reenters.rt = rt
        rt.add_agent("shop", Shop)
        rt.add_workflow(ORDER)
        rt.start("order", {}, workflow_id="later", delay=3600.0)
        rt.start("order", {}, workflow_id="o-1").result(timeout=10)
        assert reenters.outcomes == {
            "status": "ok",
            "start": "WrongThread",
            "cancel": "WrongThread",
            "result": "WrongThread",
        }
        rt.start("order", {}, workflow_id="o-3").result(timeout=10)  # (no commit stalled)
