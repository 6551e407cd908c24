"""What the engine keeps per plan and per run to stay O(N) for a workflow of N steps
(``Engine.shapes``: steps by name and their dependents; ``WorkflowRun.results``), and
that keeping it changes nothing a user sees: a definition replaced under its version
is followed, and ``ctx.results`` lists the same order after a reload."""

from __future__ import annotations

import itertools
from types import SimpleNamespace
from typing import Any

from herder.actors._engine import results_of
from herder.actors.engine import WIDE, Answered, Defaults, Engine, Enqueue, Reserved, Resumed
from herder.actors.engine._decision import Decision
from herder.store import Plan, StepSpec, WorkflowRecord, WorkflowState


def _HALF() -> float:
    return 0.5


def _engine(plans: dict[tuple[str, int], Plan]) -> Engine:
    tokens = itertools.count(1)
    return Engine(
        Defaults(),
        plans,
        lambda: next(tokens),
        has_probe=lambda *_: False,
        lease=SimpleNamespace(incarnation=0, taken_from=None),
    )


def _record(wid: str, name: str = "p") -> WorkflowRecord:
    return WorkflowRecord(wid, name, 1, {}, state=WorkflowState.RUNNING)


class _Driver:
    """Runs what the engine queues on one instance, answering as told."""

    def __init__(self, engine: Engine, wid: str) -> None:
        self.engine, self.wid, self.live, self._tokens = engine, wid, {}, itertools.count(100)
        self.seen: dict[str, list[str]] = {}  # step -> the results its attempt would be given

    def dispatch(self, decision: Decision) -> None:
        run = self.engine.runs[self.wid]
        for action in [a for a in decision.now if isinstance(a, Enqueue)]:
            run.queued.discard(action.job.step)
            token = next(self._tokens)
            self.engine.reserve(Reserved(action.job, action.agent, "i", token), now=2.0)
            self.engine.take()
            self.seen[action.job.step] = list(results_of(run))  # (as prepare gives them)
            self.live[action.job.step] = token

    def answer(self, step: str, result: Any = None) -> None:
        token = self.live.pop(step)
        answered = Answered(token, ok=True, result=result)
        self.dispatch(self.engine.handle(answered, now=3.0, rand=_HALF))


def test_a_definition_replaced_under_its_version_runs_by_its_own_dependencies() -> None:
    """add_workflow may replace a plan whose workflows never started durably; the
    engine had already made the old one's dependents (a start admitted early whose
    creation failed): the new plan's own are used, or ``c`` would never run."""
    old = Plan("p", 1, (
        StepSpec("a", agent="svc", action="x"),
        StepSpec("b", agent="svc", action="x", after=("a",)),
        StepSpec("c", agent="svc", action="x"),
    ))  # fmt: skip
    new = Plan("p", 1, (
        StepSpec("a", agent="svc", action="x"),
        StepSpec("b", agent="svc", action="x"),
        StepSpec("c", agent="svc", action="x", after=("a",)),
    ))  # fmt: skip
    plans = {("p", 1): old}
    engine = _engine(plans)
    engine.load(_record("w0"), [])
    engine.forget("w0")
    plans["p", 1] = new
    engine.load(_record("w1"), [])
    driver = _Driver(engine, "w1")
    driver.dispatch(engine.handle(Resumed("w1"), now=1.0, rand=_HALF))
    assert sorted(driver.live) == ["a", "b"]
    driver.answer("b")
    driver.answer("a")
    assert "c" in driver.live


def test_results_are_listed_in_the_order_their_steps_succeeded_also_after_a_reload() -> None:
    plan = Plan("p", 1, (
        StepSpec("a", agent="svc", action="x"),
        StepSpec("b", agent="svc", action="x", after=("a",)),
        StepSpec("c", agent="svc", action="x", after=("a",)),
        StepSpec("d", agent="svc", action="x", after=("b", "c")),
    ))  # fmt: skip
    engine = _engine({("p", 1): plan})
    engine.load(_record("w1"), [])
    driver = _Driver(engine, "w1")
    driver.dispatch(engine.handle(Resumed("w1"), now=1.0, rand=_HALF))
    for step in ("a", "c", "b"):  # c before b: not plan order
        driver.answer(step, result=step)
    assert driver.seen["d"] == ["a", "c", "b"]
    steps = list(engine.runs["w1"].steps.values())
    engine.forget("w1")  # read back, as after a restart
    engine.load(_record("w1"), steps)
    again = _Driver(engine, "w1")
    again.dispatch(engine.handle(Resumed("w1", recovered=True), now=4.0, rand=_HALF))
    assert again.seen["d"] == ["a", "c", "b"]


def test_a_small_waiting_workflow_keeps_no_memo_and_no_results_a_wide_one_keeps_both() -> None:
    """What spares the Scheduler a pass over every step costs memory each waiting run
    holds (+390 B for a two-step reminder waiting a day, +16%); below WIDE steps the
    pass is cheaper, and results are gathered afresh for each attempt, in the same order."""
    small = Plan("small", 1, (
        StepSpec("a", agent="svc", action="x"),
        StepSpec("b", agent="svc", action="x", after=("a",)),
        StepSpec("c", agent="svc", action="x", after=("b",)),
    ))  # fmt: skip
    fan = tuple(StepSpec(f"s{i}", agent="svc", action="x", after=("a",)) for i in range(WIDE))
    wide = Plan("wide", 1, (StepSpec("a", agent="svc", action="x"), *fan))
    engine = _engine({("small", 1): small, ("wide", 1): wide})
    for wid, name in (("w-small", "small"), ("w-wide", "wide")):
        engine.load(_record(wid, name), [])
        driver = _Driver(engine, wid)
        driver.dispatch(engine.handle(Resumed(wid), now=1.0, rand=_HALF))
        driver.answer("a", result=1)
        assert driver.seen["s0" if name == "wide" else "b"] == ["a"]
    small_run, wide_run = engine.runs["w-small"], engine.runs["w-wide"]
    assert (small_run.marks, small_run.results) == (None, None)
    assert wide_run.marks is not None
    assert wide_run.results is not None
    assert results_of(wide_run) == {"a": 1}
