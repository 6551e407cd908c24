"""Attempts lost with an agent's instances, as the engine hears of them.

A host answers an :class:`~herder.actors._messages.InstanceEvent` with the tokens of the
attempts lost with it (``AgentHost.on_event``); :func:`lost_attempts` turns them into the
engine's :class:`~herder.actors.engine.AttemptLost` events, alike for every host:

- an attempt whose own action crashed its instance (``InstanceCrash``, a failing
  factory), or whose worker died, failed: its step is charged for it;
- one its host let go of because it gave up on the agent's instances (a
  :class:`~herder.actors._host.GivenUp` token: their restart intensity was exceeded by
  other attempts' crashes) did not: it is ``given_up``, and the engine runs it again
  without charging its step (``GIVEN_UP_ERROR``, actors/engine/_retry.py). Its error
  names the give-up, should it be recorded (its workflow compensates meanwhile).

An attempt not started yet when its agent is removed, or added again (moved to another
host, or on the pool host: it would have run as registered before), is given up the same
way (:func:`given_up`).

When no instance of an agent could be started (``AgentUnavailable``), :func:`next_job`
says which waiting job pays an attempt for it.
"""

from __future__ import annotations

from herder.actors._host import AgentHost, GivenUp
from herder.actors._messages import InstanceEvent
from herder.actors._queue import JobQueue
from herder.actors.engine import AttemptLost, Engine, Job, unqueue


def lost_attempts(event: InstanceEvent, lost: list[int]) -> list[AttemptLost]:
    """What the engine hears of the attempts ``lost`` with ``event`` (the module docstring)."""
    crashed = f"agent instance crashed: {event.reason}"
    given_up = (
        f"restart intensity of agent {event.agent!r} exceeded: its instances were given up"
        " on while this attempt ran"
    )
    return [
        AttemptLost(int(token), given_up, given_up=True)
        if isinstance(token, GivenUp)
        else AttemptLost(token, crashed, unbuilt=event.unbuilt)
        for token in lost
    ]


def given_up(
    engine: Engine, host: AgentHost, lost: list[int] | None, now: float, *, how: str
) -> list[AttemptLost]:
    """The attempts (``lost``) that their agent's host gave up before they started (it was
    removed, or added again: ``how``): their slots free, each runs again later
    without charging its step."""
    attempts = list(filter(None, map(engine.inflight.get, lost or ())))
    for attempt in attempts:
        host.release(attempt.agent, attempt.instance, attempt.token, now)
    return [
        AttemptLost(a.token, f"agent {a.agent!r} was {how} before it started", given_up=True)
        for a in attempts
    ]


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
