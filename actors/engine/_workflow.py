"""One workflow's rules: what runs next, when it finishes, what compensation undoes.

A running workflow runs every PENDING step whose dependencies (``after=``) have all
succeeded, each once its wait is over (a delayed start or its ``delay``, recorded the
first time so it survives restarts), and succeeds when every step has. A compensating
workflow waits while anything of it is busy (:data:`~._states.BUSY`), then undoes the
step that completed last among those that may have taken effect and have a
compensation (:func:`~._states.to_undo`), one at a time in reverse completion order
(``done_token``), and ends COMPENSATED, or CANCELLED if it was cancelled.

- :func:`advance` — the decision, as an :class:`Advance`;
- :func:`waits_for` — the dependencies a step still waits for (a step may leave PENDING
  only once there are none: the run (through its memo), a skip and ``herder check``
  ask it);
- :func:`dependents` — which steps name each step in ``after=`` (what its success may
  free: ``advance`` after a success looks at those only, so advancing a workflow of N
  steps costs O(N) in all, not O(N) per step);
- :func:`when_compensating` — what beginning compensation does to one step: a pending
  retry, or an operator's retry not run again, is given up (it may have taken effect,
  so it is undone too), a delayed start loses its timer.

Imports: herder.store records and this package's tables; time and tokens are arguments.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, MutableMapping
from dataclasses import dataclass

from herder.actors.engine._states import BUSY, to_undo
from herder.actors.engine._step import ms, retry_mark, stopped
from herder.actors.engine._undo import UndoOrder
from herder.store import Plan, StepRecord, StepSpec, StepState, WorkflowState


@dataclass(slots=True, unsafe_hash=True)  # made per step: not frozen, 4x cheaper to build
class Advance:
    """What a workflow does next (every field empty: nothing, until news arrives)."""

    run: tuple[str, ...] = ()  # forward steps to queue now, in plan order
    wait: tuple[str, ...] = ()  # PENDING steps whose delay begins now (record it)
    undo: str | None = None  # the step to compensate next
    finish: WorkflowState | None = None  # the final state it reached


_NOTHING = Advance()
_SUCCEEDED = Advance(finish=WorkflowState.SUCCEEDED)  # (shared, as _NOTHING: nobody changes one)


def advance(
    state: WorkflowState,
    plan: Plan,
    steps: Mapping[str, StepRecord],
    specs: Mapping[str, StepSpec],
    queued: Collection[str],
    *,
    cancelled: bool,
    now: float,
    freed: tuple[StepSpec, ...] | None = None,
    marks: MutableMapping[str, int] | None = None,
    undo: UndoOrder | None = None,
) -> Advance:
    """What the workflow in ``state`` does next, given its ``steps`` (and those already
    ``queued``, which are not queued again).

    ``freed``: only these steps can have become ready (the :func:`dependents` of a
    step that just succeeded, in plan order; None: any). ``marks`` is the run's memo of
    where each step's dependencies were found unfinished (and ``""``: where the plan's
    first unfinished step was), so that a step after many others, or a long plan, is
    not rescanned whole on every success; ``undo``, a compensating run's order kept as
    its steps change, spares it two passes over every step per undo. The answer is the
    same without either."""
    if state is WorkflowState.RUNNING:
        return _forward(plan, steps, queued, now, freed=freed, marks=marks)
    if state is not WorkflowState.COMPENSATING:
        return _NOTHING
    if undo is not None:
        if undo.busy:
            return _NOTHING
        name = undo.next(steps, specs)
    elif any(s.state in BUSY for s in steps.values()):
        return _NOTHING
    else:
        last = [s for s in steps.values() if to_undo(s) and specs[s.name].compensate]
        name = max(last, key=lambda s: s.done_token or 0).name if last else None
    if name is not None:
        return Advance(undo=name)
    return Advance(finish=WorkflowState.CANCELLED if cancelled else WorkflowState.COMPENSATED)


def _forward(
    plan: Plan,
    steps: Mapping[str, StepRecord],
    queued: Collection[str],
    now: float,
    *,
    freed: tuple[StepSpec, ...] | None,
    marks: MutableMapping[str, int] | None,
) -> Advance:
    succeeded, pending = StepState.SUCCEEDED, StepState.PENDING
    run: list[str] = []
    wait: list[str] = []
    all_done = freed is None  # (a whole scan finds it out on the way)
    for spec in plan.steps if freed is None else freed:
        st = steps[spec.name]
        if st.state is succeeded:
            continue
        all_done = False
        if st.state is not pending or spec.name in queued or _waits(spec, steps, marks):
            continue
        if st.retry_at is not None:
            if ms(st.retry_at) <= ms(now):  # its wait is over (timers are whole ms)
                run.append(spec.name)
        elif spec.delay is not None:
            wait.append(spec.name)
        else:
            run.append(spec.name)
    if run or wait:
        return Advance(run=tuple(run), wait=tuple(wait))
    if all_done or (freed is not None and _all_succeeded(plan, steps, marks)):
        return _SUCCEEDED
    return _NOTHING


def _all_succeeded(
    plan: Plan, steps: Mapping[str, StepRecord], marks: MutableMapping[str, int] | None
) -> bool:
    """Whether every step has succeeded: scanned on from the first unfinished step
    found last time (``marks[""]``; None: no memo), and, once the end is reached from
    there, checked whole."""
    succeeded, specs = StepState.SUCCEEDED, plan.steps
    start = i = 0 if marks is None else marks.get("", 0)
    n = len(specs)
    while i < n and steps[specs[i].name].state is succeeded:
        i += 1
    if marks is not None:
        marks[""] = i
    if i < n:
        return False
    return not start or all(steps[s.name].state is succeeded for s in specs)


def _waits(
    spec: StepSpec, steps: Mapping[str, StepRecord], marks: MutableMapping[str, int] | None
) -> bool:
    """Whether :func:`waits_for` has anything for ``spec``: scanned on from the
    dependency found unfinished last time (``marks[spec.name]``; None: no memo), and,
    once the end is reached from there, checked whole."""
    if marks is None:  # (a few steps: no memo)
        return bool(waits_for(spec, steps))
    after, succeeded = spec.after, StepState.SUCCEEDED
    start = i = marks.get(spec.name, 0)
    n = len(after)
    while i < n:
        st = steps.get(after[i])
        if st is None or st.state is not succeeded:
            marks[spec.name] = i
            return True
        i += 1
    marks[spec.name] = i
    return bool(start) and bool(waits_for(spec, steps))


Dependents = dict[str, tuple[StepSpec, ...]]
"""Each step's dependents by its name (:func:`dependents`)."""


WIDE = 32
"""A run of a plan with more steps keeps what spares its Scheduler a pass over every step
(``marks``, its results): below it, the pass costs less than the memory held."""


def dependents(plan: Plan) -> Dependents:
    """Each step's dependents: the steps that name it in ``after=``, in plan order."""
    found: dict[str, list[StepSpec]] = {spec.name: [] for spec in plan.steps}
    for spec in plan.steps:
        for dep in spec.after:
            found[dep].append(spec)
    return {name: tuple(specs) for name, specs in found.items()}


def waits_for(spec: StepSpec, steps: Mapping[str, StepRecord]) -> list[str]:
    """The steps ``spec`` runs after that have not succeeded (a step without a record is
    PENDING), in the order it names them: while there are any it stays PENDING."""
    succeeded = StepState.SUCCEEDED
    waiting: list[str] = []
    for dep in spec.after:  # (a loop, not a comprehension: it runs every step)
        st = steps.get(dep)
        if st is None or st.state is not succeeded:
            waiting.append(dep)
    return waiting


def when_compensating(
    st: StepRecord, *, tokens: Callable[[], int], now: float
) -> StepRecord | None:
    """The step once its workflow begins compensating, or None if that changes nothing."""
    if st.state is StepState.RETRY_WAIT:
        token = tokens()
        return st.evolve(
            state=StepState.FAILED,
            error=f"{st.error}; not retried: workflow is compensating",
            retry_at=None,
            timer_ms=None,
            token=token,
            # Its failed attempt may have taken effect: undone in that attempt's completion
            # order (failed() marked it so; a record without the mark, now), unless it
            # never ran (its instance never started).
            done_token=retry_mark(st, token),
            updated=now,
        )
    if st.state is StepState.PENDING and st.done_token is not None:
        # Retried by an operator (restarted) and not run again: the attempt it stopped at
        # may have taken effect, so it is undone, in that attempt's completion order.
        return stopped(
            st,
            state=StepState.FAILED,
            error="retried, not run again: workflow is compensating",
            token=tokens(),
            updated=now,
        )
    if st.state is StepState.PENDING and st.timer_ms is not None:
        # A delayed step that will now never run: its wait ends with the workflow.
        return st.evolve(retry_at=None, timer_ms=None, token=tokens(), updated=now)
    return None
