"""What the engine makes once per plan, and the in-memory run of a workflow built from it.

:class:`Shapes` keeps, per workflow definition, its steps by name and their
:func:`~._workflow.dependents`, made again if a definition is replaced under its
version (allowed while no workflow of it has started durably), and builds a
:class:`~._runs.WorkflowRun`: the engine's ``load`` and the operator's reload of a
parked workflow both use it, so a run is the same whoever builds it.

Imports: herder.store and this package only.
"""

from __future__ import annotations

import dataclasses

from herder.actors.engine._results import ResultLog
from herder.actors.engine._runs import WorkflowRun
from herder.actors.engine._workflow import WIDE, Dependents, dependents
from herder.store import Plan, StepRecord, StepSpec, WorkflowRecord


class Shapes:
    """Per plan (by name and version, checked against the plan object): its steps by
    name and their dependents."""

    def __init__(self) -> None:
        self._shapes: dict[tuple[str, int], tuple[Plan, dict[str, StepSpec], Dependents]] = {}

    def run(self, record: WorkflowRecord, plan: Plan, steps: list[StepRecord]) -> WorkflowRun:
        """The run of ``record`` in memory, of ``steps`` (one per step of ``plan``). A
        plan of more than WIDE steps gets the memo that spares its Scheduler a pass over
        every step (``_workflow.advance``) and keeps its results (``_results.py``)."""
        _, specs, deps = self._shape(plan)
        run = WorkflowRun(record, plan, {s.name: s for s in steps}, _routed(specs, record))
        run.dependents = deps
        if len(plan.steps) > WIDE:
            run.marks = {}
            run.results = ResultLog.of(run.steps)
        return run

    def _shape(self, plan: Plan) -> tuple[Plan, dict[str, StepSpec], Dependents]:
        shape = self._shapes.get((plan.name, plan.version))
        if shape is None or shape[0] is not plan:
            by_name = {spec.name: spec for spec in plan.steps}
            shape = self._shapes[plan.name, plan.version] = (plan, by_name, dependents(plan))
        return shape


def _routed(specs: dict[str, StepSpec], record: WorkflowRecord) -> dict[str, StepSpec]:
    """The plan's steps by name (shared by its runs), with the agents the workflow
    resolved at its start (``record.agents``, runtime/_routing.py) in place of their
    templates: everything downstream dispatches to ``spec.agent``."""
    if record.agents:
        specs = dict(specs)
        for step, agent in record.agents.items():
            if step in specs:
                specs[step] = dataclasses.replace(specs[step], agent=agent)
    return specs
