"""Which member of a step's group (``AnyOf``) runs its next attempt.

A step may name several agents able to do it (``StepSpec.members``, in order of
preference). Each attempt records the member it went to as the step record's
``extra["agent"]``. The rule:

- a compensation, a probe of an unknown outcome and the re-run of an attempt orphaned by
  a crash go to the member that did the work (the one the last forward attempt went
  to): the effect to undo, ask about or finish is there;
- a forward attempt goes to a healthy member, the first in order; after an attempt that
  did not succeed (a failure, a timeout, an attempt lost to a crash) another healthy
  member is preferred: the next after the last one tried, round the group;
- when no member is healthy, the rule still names one (the same preference), and the
  work waits in its queue as behind an open breaker.

The rule is asked when a job is queued, and again for the jobs queued on a member whose
health changed (``actors/_dispatch.py`` moves those the rule now sends to a healthy
member); the member is recorded only when the attempt is dispatched.

A step with one agent is untouched: its agent is ``spec.agent`` always.
"""

from __future__ import annotations

from collections.abc import Callable

from herder.store import StepRecord, StepSpec, StepState

_STAYS = (StepState.UNKNOWN, StepState.DISPATCHED)
"""A probe, and an attempt orphaned by a crash (run again to learn or finish its effect,
which may have happened), stay with the member that has the effect."""

MEMBER_KEY = "agent"
"""The key of a step record's ``extra`` that names the member its last attempt went to."""


def member_used(st: StepRecord) -> str | None:
    """The member the step's last forward attempt went to (None: none yet, or no group)."""
    agent = st.extra.get(MEMBER_KEY)
    return agent if isinstance(agent, str) else None


def agent_for(spec: StepSpec, st: StepRecord) -> str:
    """The agent the step's current attempt runs on: its member, else its agent."""
    used = member_used(st) if spec.members else None
    return spec.agent if used is None else used


def next_member(
    spec: StepSpec, st: StepRecord, *, compensating: bool, healthy: Callable[[str], bool]
) -> str:
    """The agent that runs the step's next attempt (see the module docstring)."""
    if not spec.members:
        return spec.agent
    used = member_used(st)
    if used is not None and used not in spec.members:
        used = None  # a member dropped by a new version: choose afresh
    if used is not None and (compensating or st.state in _STAYS):
        return used
    well = [m for m in spec.members if healthy(m)] or list(spec.members)
    if used is None or st.attempt == 0 or len(well) == 1:
        return well[0]
    # The last attempt did not succeed (a forward step is dispatched again only then):
    # the next member after it, round the group, healthy ones only.
    order = spec.members.index(used)
    for shift in range(1, len(spec.members) + 1):
        member = spec.members[(order + shift) % len(spec.members)]
        if member in well:
            return member
    return well[0]  # (unreachable: ``well`` is never empty)


def with_member(spec: StepSpec, st: StepRecord, agent: str, *, compensating: bool) -> StepRecord:
    """``st`` (just dispatched to ``agent``) with the member recorded, for a group step's
    forward attempt; ``st`` itself otherwise."""
    if not spec.members or compensating or member_used(st) == agent:
        return st
    return st.evolve(extra={**st.extra, MEMBER_KEY: agent})
