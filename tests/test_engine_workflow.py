"""A workflow's rules (``herder.actors.engine._workflow``), as tables with no runtime.

A three-step plan, ``a`` then ``b`` and ``c`` after it (``c`` with a delay): each row
gives the steps' states and says what runs, waits, is undone or how the workflow ends.
"""

from __future__ import annotations

import itertools
import random

import pytest

from herder.actors.engine._undo import UndoOrder
from herder.actors.engine._workflow import Advance, advance, dependents, when_compensating
from herder.store import Plan, StepRecord, StepSpec, StepState, WorkflowState

S = StepState
W = WorkflowState
SPECS = (
    StepSpec("a", agent="svc", action="do", compensate="undo"),
    StepSpec("b", agent="svc", action="do", compensate="undo", after=("a",)),
    StepSpec("c", agent="svc", action="do", after=("a",), delay=5.0),
)
PLAN = Plan("flow", 1, SPECS)
BY_NAME = {spec.name: spec for spec in SPECS}
NOW = 100.0


def _steps(**states: StepState | tuple[StepState, dict[str, object]]) -> dict[str, StepRecord]:
    steps = {}
    for name in "abc":
        given = states.get(name, S.PENDING)
        state, extra = given if isinstance(given, tuple) else (given, {})
        steps[name] = StepRecord("w", name, state=state).evolve(**extra)
    return steps


def _advance(
    state: WorkflowState,
    steps: dict[str, StepRecord],
    queued: tuple[str, ...] = (),
    *,
    cancelled: bool = False,
) -> Advance:
    return advance(state, PLAN, steps, BY_NAME, queued, cancelled=cancelled, now=NOW)


@pytest.mark.parametrize(
    ("steps", "queued", "expected"),
    [
        (_steps(), (), Advance(run=("a",))),
        (_steps(), ("a",), Advance()),  # queued already: not again
        (_steps(a=S.DISPATCHED), (), Advance()),  # dependents wait for it
        (_steps(a=S.SUCCEEDED), (), Advance(run=("b",), wait=("c",))),  # c's delay begins
        (_steps(a=S.SUCCEEDED, c=(S.PENDING, {"retry_at": NOW + 1})), (), Advance(run=("b",))),
        (_steps(a=S.SUCCEEDED, c=(S.PENDING, {"retry_at": NOW})), ("b",), Advance(run=("c",))),
        # a delayed start: the first step waits for its time too
        (_steps(a=(S.PENDING, {"retry_at": NOW + 0.0005})), (), Advance(run=("a",))),  # same ms
        (_steps(a=S.SUCCEEDED, b=S.SUCCEEDED, c=S.SUCCEEDED), (), Advance(finish=W.SUCCEEDED)),
        (_steps(a=S.SUCCEEDED, b=S.RETRY_WAIT, c=S.SUCCEEDED), (), Advance()),
    ],
)
def test_a_running_workflow_runs_each_step_once_its_dependencies_succeeded(
    steps: dict[str, StepRecord], queued: tuple[str, ...], expected: Advance
) -> None:
    assert _advance(W.RUNNING, steps, queued) == expected


def _done(state: StepState, done_token: int | None) -> tuple[StepState, dict[str, object]]:
    return state, {"done_token": done_token}


@pytest.mark.parametrize(
    ("steps", "cancelled", "expected"),
    [
        # undone in reverse completion order: b completed last
        (_steps(a=_done(S.SUCCEEDED, 1), b=_done(S.SUCCEEDED, 2)), False, Advance(undo="b")),
        (_steps(a=_done(S.SUCCEEDED, 3), b=_done(S.SUCCEEDED, 2)), False, Advance(undo="a")),
        # a failure that may have taken effect is undone; a Permanent one is not
        (_steps(a=_done(S.SUCCEEDED, 1), b=_done(S.FAILED, 2)), False, Advance(undo="b")),
        (_steps(a=_done(S.SUCCEEDED, 1), b=_done(S.FAILED, None)), False, Advance(undo="a")),
        # c has no compensation: nothing to undo, whatever it did
        (_steps(a=_done(S.COMPENSATED, 1), c=_done(S.SUCCEEDED, 2)), False,
         Advance(finish=W.COMPENSATED)),
        (_steps(a=_done(S.COMPENSATED, 1)), True, Advance(finish=W.CANCELLED)),
        # anything busy holds the next undo back
        (_steps(a=_done(S.SUCCEEDED, 1), b=S.DISPATCHED), False, Advance()),
        (_steps(a=_done(S.SUCCEEDED, 1), b=S.UNKNOWN), False, Advance()),
        (_steps(a=_done(S.COMPENSATING, 1)), False, Advance()),
    ],
)  # fmt: skip
def test_a_compensating_workflow_undoes_what_took_effect_last_first(
    steps: dict[str, StepRecord], cancelled: bool, expected: Advance
) -> None:
    assert _advance(W.COMPENSATING, steps, cancelled=cancelled) == expected


@pytest.mark.parametrize("state", [W.SUCCEEDED, W.COMPENSATED, W.NEEDS_ATTENTION, W.ABANDONED])
def test_a_finished_or_parked_workflow_does_nothing(state: WorkflowState) -> None:
    assert _advance(state, _steps()) == Advance()


def test_beginning_compensation_gives_up_pending_retries_and_delayed_starts() -> None:
    tokens = itertools.count(10).__next__
    retry = StepRecord("w", "a", state=S.RETRY_WAIT, error="boom", retry_at=5.0, timer_ms=5000)
    given_up = when_compensating(retry, tokens=tokens, now=NOW)
    assert given_up is not None
    assert (given_up.state, given_up.token, given_up.done_token) == (S.FAILED, 10, 10)
    assert (given_up.timer_ms, given_up.retry_at) == (None, None)
    assert given_up.error == "boom; not retried: workflow is compensating"
    delayed = StepRecord("w", "c", retry_at=5.0, timer_ms=5000)
    cleared = when_compensating(delayed, tokens=tokens, now=NOW)
    assert cleared is not None
    assert (cleared.state, cleared.token, cleared.timer_ms) == (S.PENDING, 11, None)
    retried = StepRecord("w", "d", token=3, done_token=2)  # an operator's retry, not run
    undone = when_compensating(retried, tokens=tokens, now=NOW)
    assert undone is not None
    assert (undone.state, undone.token, undone.done_token) == (S.FAILED, 12, 2)
    for untouched in (StepRecord("w", "b"), StepRecord("w", "b", state=S.SUCCEEDED)):
        assert when_compensating(untouched, tokens=tokens, now=NOW) is None


# -- advance at scale: the dependents of a success, and the memo ------------------------

JOIN = (
    StepSpec("a", agent="svc", action="do"),
    StepSpec("b", agent="svc", action="do", after=("a",)),
    StepSpec("c", agent="svc", action="do", after=("a",), delay=5.0),
    StepSpec("d", agent="svc", action="do", after=("a", "b", "c")),
)
JOIN_PLAN = Plan("join", 1, JOIN)
JOIN_SPECS = {spec.name: spec for spec in JOIN}
SOME = (S.PENDING, S.DISPATCHED, S.SUCCEEDED, S.RETRY_WAIT)


def _random_steps(rand: random.Random) -> dict[str, StepRecord]:
    return {s.name: StepRecord("w", s.name, state=rand.choice(SOME)) for s in JOIN}


def test_the_memo_never_changes_what_a_workflow_does() -> None:
    """``marks`` remembers where a scan stopped; a step that stops having succeeded
    (against the rules, but the memo must not rely on them) is still seen."""
    rand = random.Random(7)
    for _ in range(3000):
        marks: dict[str, int] = {}
        for _ in range(4):
            steps = _random_steps(rand)
            fresh = advance(W.RUNNING, JOIN_PLAN, steps, JOIN_SPECS, (), cancelled=False, now=NOW)
            kept = advance(
                W.RUNNING, JOIN_PLAN, steps, JOIN_SPECS, (), cancelled=False, now=NOW, marks=marks
            )
            assert kept == fresh, (steps, marks)


def test_after_a_success_its_dependents_are_all_that_can_have_become_ready() -> None:
    """From a settled workflow (whatever could run is queued), one step succeeding
    frees the same steps whether only its dependents or all steps are looked at."""
    rand, freed_by = random.Random(11), dependents(JOIN_PLAN)
    compared = 0
    for _ in range(3000):
        steps = _random_steps(rand)
        busy = [name for name, st in steps.items() if st.state is S.DISPATCHED]
        if not busy:
            continue
        settled = advance(W.RUNNING, JOIN_PLAN, steps, JOIN_SPECS, (), cancelled=False, now=NOW)
        queued = settled.run
        for name in settled.wait:  # (its delay recorded, as the engine does)
            steps[name] = steps[name].evolve(retry_at=NOW + 5)
        done = rand.choice(busy)
        steps[done] = steps[done].evolve(state=S.SUCCEEDED)
        whole = advance(W.RUNNING, JOIN_PLAN, steps, JOIN_SPECS, queued, cancelled=False, now=NOW)
        only = advance(
            W.RUNNING,
            JOIN_PLAN,
            steps,
            JOIN_SPECS,
            queued,
            cancelled=False,
            now=NOW,
            freed=freed_by[done],
            marks={},
        )
        assert only == whole, (steps, queued, done)
        compared += 1
    assert compared > 1000


class _Counted(dict[str, StepRecord]):
    """A workflow's steps that count how often one is looked up."""

    looked = 0

    def __getitem__(self, name: str) -> StepRecord:
        _Counted.looked += 1
        return dict.__getitem__(self, name)

    def get(self, name: str, default: StepRecord | None = None) -> StepRecord | None:  # type: ignore[override]
        _Counted.looked += 1
        return dict.get(self, name, default)


def test_a_fan_out_of_n_steps_costs_order_n_lookups_in_all() -> None:
    """A root, N steps after it and a join after all of them: running it to the end
    looks steps up O(N) times in all (it was O(N) per success: minutes at 20,000)."""
    n = 2000
    specs = (
        StepSpec("root", agent="svc", action="do"),
        *(StepSpec(f"s{i}", agent="svc", action="do", after=("root",)) for i in range(n)),
        StepSpec("join", agent="svc", action="do", after=tuple(f"s{i}" for i in range(n))),
    )
    plan = Plan("fan", 1, specs)
    by_name, freed_by, marks = {s.name: s for s in specs}, dependents(plan), {}
    steps = _Counted({s.name: StepRecord("w", s.name) for s in specs})

    def succeed(name: str) -> Advance:
        dict.__setitem__(steps, name, StepRecord("w", name, state=S.SUCCEEDED))
        return advance(
            W.RUNNING,
            plan,
            steps,
            by_name,
            (),
            cancelled=False,
            now=NOW,
            freed=freed_by[name],
            marks=marks,
        )

    _Counted.looked = 0
    assert succeed("root").run == tuple(f"s{i}" for i in range(n))
    for i in range(n):  # (in order: a scan from the first would pass all before it)
        assert succeed(f"s{i}").run == (("join",) if i == n - 1 else ())
    assert succeed("join") == Advance(finish=W.SUCCEEDED)
    assert _Counted.looked < 12 * n


# -- compensation at scale: the undo order a wide run keeps --------------------------

UNDO = tuple(
    StepSpec(f"u{i}", agent="svc", action="do", compensate="undo" if i % 3 else None)
    for i in range(6)
)
UNDO_PLAN = Plan("undo", 1, UNDO)
UNDO_SPECS = {spec.name: spec for spec in UNDO}


def test_the_undo_order_never_changes_what_a_compensating_workflow_does() -> None:
    """A wide run keeps its steps to undo in order as they change (``_undo.UndoOrder``)
    instead of scanning every step per undo; whatever the steps do (also against the
    rules: a step undone that succeeds again, equal or missing ``done_token``s), the
    next undo, the wait for busy steps and the end are the scan's."""
    rand = random.Random(5)
    for _ in range(300):
        steps = {s.name: StepRecord("w", s.name, state=rand.choice(list(S))) for s in UNDO}
        order = UndoOrder(steps)
        for _ in range(30):
            name = rand.choice(UNDO).name
            new = steps[name].evolve(
                state=rand.choice(list(S)), done_token=rand.choice((None, 1, 2, 3, 4))
            )
            order.changed(steps[name], new)
            steps[name] = new
            for cancelled in (False, True):
                kept = advance(
                    W.COMPENSATING,
                    UNDO_PLAN,
                    steps,
                    UNDO_SPECS,
                    (),
                    cancelled=cancelled,
                    now=NOW,
                    undo=order,
                )
                fresh = advance(
                    W.COMPENSATING,
                    UNDO_PLAN,
                    steps,
                    UNDO_SPECS,
                    (),
                    cancelled=cancelled,
                    now=NOW,
                )
                assert kept == fresh, steps
