"""The app a standby runs in ``tests/test_standby_definitions.py`` (``herder run --standby
--app redefine_app:build``): it registers workflow ``w`` version 1 with the step ``fixed``
where the active runtime registered it with the step ``typo``. Each action it runs
prints ``ran <workflow id> <step>``."""

from __future__ import annotations

from _child_kit import say

from herder.runtime import Agent, Runtime, StepContext, Workflow

FIXED = Workflow("w", version=1).step("fixed", agent="svc", action="work")


class Service(Agent):
    def work(self, ctx: StepContext) -> str:
        say(f"ran {ctx.workflow_id} {ctx.step}")
        return ctx.step


def build(rt: Runtime) -> None:
    rt.add_agent("svc", Service)
    rt.add_workflow(FIXED)
