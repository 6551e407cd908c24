"""The public surface is what was meant (as httpx's and trio's export tests check).

Users import from ``herder.runtime`` and, to test their workflows, from
``herder.runtime.testing``; everything else is internal and may change. A name added to
or dropped from either ``__all__`` must be a decision, made here too.
"""

from __future__ import annotations

import importlib
from types import ModuleType

import pytest

RUNTIME = {
    "Adaptive", "Agent", "AnyOf", "CircuitBreaker", "EncodeError", "HerderError",
    "InvalidDefinition",
    "InvalidInput", "InvalidState", "LeaseLost", "NotActive", "Permanent", "RateLimit",
    "RetryPolicy", "Runtime", "RuntimeClosed", "RuntimeConfig", "SchemaTooNew", "State",
    "StepContext",
    "StepState", "StepStatus", "StoreCorrupt",
    "StoreError", "StoreLocked", "UnknownName", "UnknownWorkflow", "Workflow",
    "WorkflowConflict", "WorkflowFailed", "WorkflowHandle", "WorkflowStatus",
    # outcomes: unknown outcomes, async completion, the operator's inbox
    "CompletionRefused", "InboxItem", "ProbeResult",
    # what an action raises to have its instance rebuilt (supervision.md, asyncio.md)
    "InstanceCrash",
    # periodic schedules: rt.schedule() and rt.schedules() return it
    "ScheduleStatus",
    # agents on a Ray cluster: rt.add_agent(..., host=RayHost(...)) (imports no Ray itself)
    "RayHost",
    # raised by public calls: start() on a refused commit, prometheus_collector()
    "MissingExtra", "StoreIOError",
    # every other HerderError a caller can meet (stats() after stop: StoreClosed)
    "ConditionFailed", "RestartIntensityExceeded", "StoreClosed", "SupervisorStartError",
    "UserCodeFailed",
    # the name help(rt.list) and WorkflowStatus.state show (State is the same class)
    "WorkflowState",
    # a wait that ran out of time (also a TimeoutError): start(), result(), stop(), ...
    "TimedOut",
    # run_forever() called off the main thread, a blocking result() on the actions' loop
    "WrongThread",
}  # fmt: skip

TESTING = {
    "EffectLedger", "FakeClock", "FaultSchedule", "InstanceCrash", "SimReport",
    "advance", "check_store", "crash_instance", "crash_scheduler", "fail_first", "fail_permanently",
    "hang_until", "settle", "simulate", "simulate_exact", "store_of",
    "wait_until",
}  # fmt: skip


@pytest.mark.parametrize(
    ("module", "expected"),
    [("herder.runtime", RUNTIME), ("herder.runtime.testing", TESTING)],
)
def test_the_public_modules_export_exactly_the_contract(module: str, expected: set[str]) -> None:
    api = importlib.import_module(module)
    assert set(api.__all__) == expected
    assert len(api.__all__) == len(expected), "a name is listed twice"
    assert api.__all__ == sorted(api.__all__), f"{module}.__all__ is kept sorted"
    for name in api.__all__:
        assert getattr(api, name).__doc__, f"{module}.{name} needs a docstring"


def test_herder_runtime_offers_no_public_name_that_all_does_not_list() -> None:
    # A helper imported into the package namespace would otherwise look public.
    api = importlib.import_module("herder.runtime")
    public = {
        name
        for name, value in vars(api).items()
        if not name.startswith("_") and not isinstance(value, ModuleType)
    }
    assert public == set(api.__all__)
