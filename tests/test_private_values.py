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
