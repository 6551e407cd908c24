"""User code gets its own copies of the workflow's input and of earlier results: changing
them changes neither the stored workflow nor what another step, attempt or router sees."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from herder.runtime import Agent, Runtime, StepContext, Workflow

pytestmark = pytest.mark.timeout(60)
WAIT = 10.0
INPUT = {"x": "orig", "nested": {"list": [1, {"deep": "v"}]}}


class Meddler(Agent):
    seen: list[dict[str, Any]]

    def __init__(self) -> None:
        self.seen = Meddler.seen

    def meddle(self, ctx: StepContext) -> Any:
        self.seen.append({"input": _copy(ctx.input), "results": _copy(dict(ctx.results))})
        ctx.input["x"] = "changed"
        ctx.input["nested"]["list"][1]["deep"] = "changed"
        ctx.input["nested"]["list"].append("more")
        for result in ctx.results.values():
            result["mine"].append("changed")
        if ctx.attempt == 1 and ctx.step == "second":
            raise RuntimeError("retry me")  # its next attempt must see what this one saw
        return {"mine": [ctx.step]}


def _copy(value: Any) -> Any:
    import copy

    return copy.deepcopy(value)


def route(input: Any) -> str:
    input["x"] = "routed"
    input["nested"]["list"].clear()
    return "m"


@pytest.fixture
def rt(tmp_path: Path) -> Iterator[Runtime]:
    Meddler.seen = []
    with Runtime(tmp_path / "s") as runtime:
        runtime.add_agent("m", Meddler)
        runtime.add_router("r", route)
        runtime.add_workflow(
            Workflow("w")
            .step("first", agent="{@r}", action="meddle")
            .step("second", agent="m", action="meddle", after=["first"])
            .step("third", agent="m", action="meddle", after=["second"])
        )
        yield runtime


def test_changes_user_code_makes_to_its_values_stay_its_own(rt: Runtime, tmp_path: Path) -> None:
    rt.start("w", _copy(INPUT), workflow_id="w1").result(timeout=WAIT)
    assert [seen["input"] for seen in Meddler.seen] == [INPUT] * 4  # first, second x2, third
    assert [seen["results"] for seen in Meddler.seen] == [
        {},
        {"first": {"mine": ["first"]}},
        {"first": {"mine": ["first"]}},
        {"first": {"mine": ["first"]}, "second": {"mine": ["second"]}},
    ]
    status = rt.status("w1")
    assert status.input == INPUT
    assert status.results["first"] == {"mine": ["first"]}
    rt.stop()
    with Runtime(tmp_path / "s") as again:
        assert again.status("w1").input == INPUT


class Reader(Agent):
    def step(self, ctx: StepContext) -> Any:
        if ctx.step == "s5":
            assert "s1" in ctx.results
            assert len(ctx.results) == 4
            assert sorted(ctx.results) == ["s1", "s2", "s3", "s4"]
            return {"read": ctx.results["s2"]["rows"][-1]}  # the one result it reads
        return {"rows": [{"n": i, "step": ctx.step} for i in range(50)]}


def test_an_attempt_copies_only_the_results_it_reads_and_never_on_the_scheduler(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every earlier result was copied for every attempt on the Scheduler's thread: each
    # step of a long workflow with structured results cost more than the last (O(n^2)),
    # and every other workflow stalled meanwhile.
    import threading

    import herder.actors._agent as agent_module
    import herder.actors._engine as engine_module
    import herder.actors._results as results_module

    copied: list[str] = []

    def counting(copy: Any) -> Any:
        def private_copy(value: Any) -> Any:
            copied.append(threading.current_thread().name)
            return copy(value)

        return private_copy

    for module in (agent_module, engine_module, results_module):
        if hasattr(module, "private_copy"):
            monkeypatch.setattr(module, "private_copy", counting(module.private_copy))
    flow = Workflow("long")
    for i in range(1, 6):
        flow = flow.step(f"s{i}", agent="r", action="step", after=[f"s{i - 1}"] if i > 1 else [])
    with Runtime(tmp_path / "s") as rt:
        rt.add_agent("r", Reader)
        rt.add_workflow(flow)
        result = rt.start("long", {"k": 1}, workflow_id="w").result(timeout=WAIT)
    assert result["s5"] == {"read": {"n": 49, "step": "s2"}}
    assert not [name for name in copied if name.startswith("Scheduler")], copied
    assert len(copied) == 5 + 1  # each attempt's input, and the one result read


def _gathered(kept: dict[str, Any]) -> Any:
    from herder.actors._results import Results

    return Results(dict(kept))


def _viewed(kept: dict[str, Any]) -> Any:  # (a wide workflow's: a view of its log)
    from herder.actors._results import Results
    from herder.actors.engine import ResultLog

    log = ResultLog(kept.items())
    view = Results.viewing(log)
    log.added("later", {"n": 0})  # (a step that succeeded after the view was taken)
    return view


@pytest.mark.parametrize("make", [_gathered, _viewed])
def test_results_behave_as_a_plain_dict_of_copies(make: Any) -> None:
    # A Mapping that was not a dict broke ordinary user code: json.dumps, .copy(), |,
    # and returning ctx.results (the step failed for good as unstorable).
    import copy
    import json
    import pickle

    from herder.store import normalize

    kept = {"a": {"rows": [1, 2]}, "b": [{"x": 1}]}
    results = make(kept)
    assert isinstance(results, dict)
    assert results == kept
    assert json.loads(json.dumps(results)) == kept
    assert normalize(results) == kept  # (what returning it as a result stores)
    handed = [
        results["a"],
        results.get("a"),
        next(iter(results.values())),
        dict(results.items())["a"],
        results.copy()["a"],
        dict(results)["a"],
        {**results}["a"],
        (results | {})["a"],
        ({} | results)["a"],
        copy.copy(results)["a"],
        copy.deepcopy(results)["a"],
        pickle.loads(pickle.dumps(results))["a"],
        results.setdefault("a"),
    ]
    for value in handed:
        value["rows"].append("changed")
    results.pop("b")[0]["x"] = "changed"  # (b is handed out as a copy too)
    assert kept == {"a": {"rows": [1, 2]}, "b": [{"x": 1}]}  # nothing kept was touched
    assert "b" not in results
    assert results.get("b", 7) == 7
    results["mine"] = mine = {"n": 1}
    assert results["mine"] is mine  # what the action stores stays its own object
    results.update(also=[1])
    assert sorted(results) == ["a", "also", "mine"]
    assert repr(results).startswith("{'a': {'rows': [1, 2, 'changed'")
