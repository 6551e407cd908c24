"""Which member of a step's group (``AnyOf``) runs its next attempt.

A step may name several agents able to do it (``StepSpec.members``, in order of
preference). Each attempt records the member it went to as the step record's
``extra["agent"]``. The rule:

- a probe of an unknown outcome and the re-run of an attempt orphaned by a crash go to
  the member the last forward attempt went to: the effect to ask about or finish is
  there;
- a compensation goes to the member whose attempt set the step's undo mark
  (``done_token``, :func:`undo_member`): the last attempt that may have taken effect.
  That is the last attempt's member unless the attempts after it never ran (their
  instance was not built) or answered Permanent: those mark nothing, and the member of
  the mark is kept (``MARK_KEY``) when they go to another;
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

from herder.store import MARK_KEY, StepRecord, StepSpec, StepState, marked_member

_STAYS = (StepState.UNKNOWN, StepState.DISPATCHED)
"""A probe, and an attempt orphaned by a crash (run again to learn or finish its effect,
which may have happened), stay with the member that has the effect."""

MEMBER_KEY = "agent"
"""The key of a step record's ``extra`` that names the member its last attempt went to.
Beside it, ``MARK_KEY`` (herder.store) names the member of the step's undo mark when
that is another one."""


def member_used(st: StepRecord) -> str | None:
    """The member the step's last forward attempt went to (None: none yet, or no group)."""
    agent = st.extra.get(MEMBER_KEY)
    return agent if isinstance(agent, str) else None


def undo_member(st: StepRecord) -> str | None:
    """The member whose attempt set the step's undo mark (``done_token``), where its
    compensation goes: the one ``MARK_KEY`` names while it holds (``marked_member``),
    else the member of the last attempt."""
    return marked_member(st) or member_used(st)


def moved_mark(old: StepRecord, new: StepRecord) -> StepRecord:
    """``new`` (``old`` with its undo mark moved to a later token, not set by an attempt
    of its own) with ``MARK_KEY`` following the mark, if it held."""
    marked = marked_member(old) if MARK_KEY in old.extra else None
    if marked is None or new.done_token == old.done_token:
        return new
    return new.evolve(extra={**new.extra, MARK_KEY: [marked, new.done_token]})


def agent_for(spec: StepSpec, st: StepRecord) -> str:
    """The agent the step's current attempt runs on: its member (a compensation's: the
    member it undoes, :func:`undo_member`), else its agent."""
    if not spec.members:
        return spec.agent
    used = undo_member(st) if st.state.is_compensation else member_used(st)
    return spec.agent if used is None else used


def next_member(
    spec: StepSpec, st: StepRecord, *, compensating: bool, healthy: Callable[[str], bool]
) -> str:
    """The agent that runs the step's next attempt (see the module docstring)."""
    if not spec.members:
        return spec.agent
    used = undo_member(st) if compensating else member_used(st)
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
    forward attempt; ``st`` itself otherwise. A step marked to be undone keeps the member
    of its mark (``MARK_KEY``): this attempt marks the step only if it may take effect."""
    if not spec.members or compensating or member_used(st) == agent:
        return st
    extra = {**st.extra, MEMBER_KEY: agent}
    marked = undo_member(st) if st.done_token is not None else None
    if marked is not None:
        extra[MARK_KEY] = [marked, st.done_token]
    return st.evolve(extra=extra)
