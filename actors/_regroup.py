"""Group (``AnyOf``) steps move off a member that is not well, on the Scheduler's thread.

When an agent's health changes or a breaker opens or closes, the :class:`Dispatcher`
calls :func:`move_off_unwell`: each queued job of a group step waiting for a member that
is not well goes to the member the rule (``engine/_members.py``) names now, when that
one is well, keeping its priority and order. Nothing durable changes: the member is
recorded when the attempt is dispatched.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from herder.actors._host import AgentHost
from herder.actors._queue import JobQueue
from herder.actors.engine import Engine, Job, next_member


def move_off_unwell(
    engine: Engine,
    host: AgentHost,
    agents: Iterable[str],
    *,
    well: Callable[[str], bool],
    queue: Callable[[str], JobQueue[Job]],
    touch: Callable[[str], None],
) -> None:
    """Move the queued jobs of group steps off the ``agents`` that are not ``well`` (see
    the module docstring); ``queue`` gives a member's queue (made if it has none) and
    ``touch`` has a member that received jobs pumped."""
    for agent in sorted(agents):
        source = host.queue(agent)
        if not source or well(agent):
            continue
        targets: dict[int, str] = {}
        for job in source:
            run = engine.runs.get(job.workflow_id)
            if run is None or not engine.job_valid(run, job):
                continue  # the pump drops it
            spec, st = run.specs[job.step], run.steps[job.step]
            member = next_member(spec, st, compensating=job.compensating, healthy=well)
            if member != agent and well(member):
                targets[id(job)] = member
        for member in sorted(set(targets.values())):
            queue(member).take(source, _bound_for(targets, member))
            touch(member)


class Groups:
    """The agents the engine weighed for group steps' attempts (``engine.healthy``): the
    only ones a group step's job can be queued on to move, so a change of health looks at
    their queues alone. (A scan of every agent per change cost the Scheduler seconds when
    thousands of per-device agents turned unhealthy together: one scan per verdict.)"""

    def __init__(self, well: Callable[[str], bool]) -> None:
        self._well = well
        self.members: set[str] = set()  # (a name removed and forgotten stays: no queue)

    def well(self, agent: str) -> bool:
        """Whether member ``agent`` takes new work, noting it as a member."""
        self.members.add(agent)
        return self._well(agent)


def _bound_for(targets: dict[int, str], member: str) -> Callable[[Job], bool]:
    """Whether a job is one of ``targets`` (by identity) bound for ``member``."""
    return lambda job: targets.get(id(job)) == member
