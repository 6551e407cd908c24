"""Subprocess side of the tracing crash test: a traced daemon killed mid-workflow.

    trace_child.py STORE SPANS

Runs ``Runtime(STORE, tracer_provider=...)`` whose spans are written, as each ends, one
JSON line each to SPANS. Starts workflow ``w`` (``pay`` then ``ship``): ``pay`` succeeds,
``ship`` hangs. Prints ``ready`` once ``ship`` runs (``pay``'s span is on disk by then),
then waits to be SIGKILLed.
"""

from __future__ import annotations

import json
import sys
import threading
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

from herder.runtime import Agent, Runtime, StepContext, Workflow

FLOW = (
    Workflow("flow")
    .step("pay", agent="a", action="run")
    .step("ship", agent="a", action="run", after=["pay"])
)
running = threading.Event()


class FileExporter(SpanExporter):
    def __init__(self, path: str) -> None:
        self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - lives with the process

    def export(self, spans: Any) -> SpanExportResult:
        for span in spans:
            self._file.write(json.dumps(as_dict(span)) + "\n")
        self._file.flush()
        return SpanExportResult.SUCCESS


def as_dict(span: ReadableSpan) -> dict[str, Any]:
    ctx = span.get_span_context()
    assert ctx is not None
    return {
        "name": span.name,
        "trace_id": ctx.trace_id,
        "span_id": ctx.span_id,
        "parent": span.parent.span_id if span.parent else None,
        "attributes": dict(span.attributes or {}),
    }


class Worker(Agent):
    def run(self, ctx: StepContext) -> str:
        if ctx.step == "ship":
            running.set()
            threading.Event().wait()  # hangs until the process is killed
        return ctx.step


def main(store: str, spans: str) -> None:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(FileExporter(spans)))
    rt = Runtime(store, tracer_provider=provider)
    rt.add_agent("a", Worker)
    rt.add_workflow(FLOW)
    rt.start("flow", {}, workflow_id="w")
    running.wait(30)
    print("ready", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
