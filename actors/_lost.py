"""Attempts lost with an agent's instances, as the engine hears of them.

A host answers an :class:`~herder.actors._messages.InstanceEvent` with the tokens of the
attempts lost with it (``AgentHost.on_event``); :func:`lost_attempts` turns them into the
engine's :class:`~herder.actors.engine.AttemptLost` events, alike for every host: an
attempt whose action crashed its instance (``InstanceCrash``, a failing factory), or
whose worker died, failed, and its step is charged for it.

When no instance of an agent could be started (``AgentUnavailable``), :func:`next_job`
says which waiting job pays an attempt for it.
"""

from __future__ import annotations

from herder.actors._messages import InstanceEvent
from herder.actors._queue import JobQueue
from herder.actors.engine import AttemptLost, Engine, Job, unqueue


def lost_attempts(event: InstanceEvent, lost: list[int]) -> list[AttemptLost]:
    """What the engine hears of the attempts ``lost`` with ``event`` (the module docstring)."""
    crashed = f"agent instance crashed: {event.reason}"
    return [AttemptLost(token, crashed) for token in lost]


def next_job(engine: Engine, queue: JobQueue[Job] | None) -> Job | None:
    """An instance of an agent failed to start: the first job waiting for it in ``queue``
    pays an attempt (None: none does; one reserved ahead may): an agent that never
    starts holds no work."""
    while queue:
        job = queue.pop()
        run = engine.runs.get(job.workflow_id)
        if run is not None:
            valid = engine.job_valid(run, job)
            unqueue(run, job)
            if valid:
                return job
    return None
