"""Attempts the engine stopped counting while they still run on an instance, watched
until their deadline.

A Fence that does not replace the instance (the workflow ended or was abandoned, was
parked, gave up its orphans, or the step was completed from outside) leaves the attempt
running: a well-behaved action sees ``ctx.superseded`` and returns, and its answer,
stale as it is, frees the instance. One that hangs would hold the instance for good: no
timer of the engine watches it any more. So the Dispatcher watches it here, and once its
deadline has passed (looked at on each Tick) an instance still running it is replaced,
as a timed-out hung attempt's is. So is the slot held for an attempt a crashed Scheduler
left running (actors/_carried.py).
"""

from __future__ import annotations

from herder.actors._host import AgentHost

CAP = 65536
"""Attempts watched at most (beyond it the longest watched is dropped)."""


class Loose:
    """The Dispatcher's watch over fenced attempts still running; see the module doc."""

    __slots__ = ("watched",)

    def __init__(self) -> None:
        self.watched: dict[int, tuple[str, float]] = {}  # token -> (agent, deadline)

    def watch(self, agent: str, token: int, deadline: float) -> None:
        """Attempt ``token`` of ``agent`` runs on, fenced; it lapses at ``deadline``."""
        if len(self.watched) >= CAP:
            del self.watched[next(iter(self.watched))]
        self.watched[token] = (agent, deadline)

    def reap(self, host: AgentHost, now: float) -> set[str]:
        """Replace the instances still running a watched attempt whose deadline has passed
        (those past it are watched no more); the agents of those replaced."""
        due = [(token, agent) for token, (agent, at) in self.watched.items() if at <= now]
        replaced: set[str] = set()
        for token, agent in due:
            del self.watched[token]
            if token in host.busy_tokens(agent):
                host.replace_token(agent, token)
                replaced.add(agent)
        return replaced
