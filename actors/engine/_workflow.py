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
  only once there are none: the run, a skip and ``herder check`` ask it);
- :func:`when_compensating` — what beginning compensation does to one step: a pending
  retry is given up (it may have taken effect, so it is undone too), a delayed start
  loses its timer.

Imports: herder.store records and this package's tables; time and tokens are arguments.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass

from herder.actors.engine._states import BUSY, to_undo
from herder.actors.engine._step import ms
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
) -> Advance:
    """What the workflow in ``state`` does next, given its ``steps`` (and those already
    ``queued``, which are not queued again)."""
    if state is WorkflowState.RUNNING:
        return _forward(plan, steps, queued, now)
    if state is not WorkflowState.COMPENSATING:
        return _NOTHING
    if any(s.state in BUSY for s in steps.values()):
        return _NOTHING
    undo = [s for s in steps.values() if to_undo(s) and specs[s.name].compensate]
    if undo:
        return Advance(undo=max(undo, key=lambda s: s.done_token or 0).name)
    return Advance(finish=WorkflowState.CANCELLED if cancelled else WorkflowState.COMPENSATED)


def _forward(
    plan: Plan, steps: Mapping[str, StepRecord], queued: Collection[str], now: float
) -> Advance:
    succeeded, pending = StepState.SUCCEEDED, StepState.PENDING
    run: list[str] = []
    wait: list[str] = []
    all_done = True
    for spec in plan.steps:
        st = steps[spec.name]
        if st.state is succeeded:
            continue
        all_done = False
        if st.state is not pending or spec.name in queued or waits_for(spec, steps):
            continue
        if st.retry_at is not None:
            if ms(st.retry_at) <= ms(now):  # its wait is over (timers are whole ms)
                run.append(spec.name)
        elif spec.delay is not None:
            wait.append(spec.name)
        else:
            run.append(spec.name)
    if all_done:
        return _SUCCEEDED
    return Advance(run=tuple(run), wait=tuple(wait)) if run or wait else _NOTHING


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
            done_token=token,  # its failed attempt may have taken effect
            updated=now,
        )
    if st.state is StepState.PENDING and st.timer_ms is not None:
        # A delayed step that will now never run: its wait ends with the workflow.
        return st.evolve(retry_at=None, timer_ms=None, token=tokens(), updated=now)
    return None
