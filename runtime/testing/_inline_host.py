"""InlineHost: an agent host that runs attempts on its driver's thread, when told to.

The ``MockTransport`` of agent hosts. The Scheduler drives it through the same
:class:`~herder.actors.AgentHost` protocol as the pykka hosts; what differs is where an
attempt runs: :meth:`send` only files it in :attr:`InlineHost.pending`, and the driver
(the exact simulation) picks when each runs with :meth:`run`, on its own thread, through
the attempt runner every host shares (``run_attempt``). So the order in which attempts
run and answer is the driver's choice, not a thread scheduler's, and a held attempt is
a hang that answers late.

Instances are slots with a busy token; an instance replaced while its attempt hangs
keeps its agent object for that attempt (as an abandoned thread would), and a fresh slot
takes its place. An action raising ``InstanceCrash`` (or a factory that fails) reports
the instance crashed, and the crash report hands back the attempt lost with it.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from herder.actors import (
    Agent,
    ChildEventKind,
    InstanceCrash,
    InstanceEvent,
    JobQueue,
    Run,
    run_attempt,
)
from herder.store import UserCodeFailed, contain


@dataclass(slots=True)
class _Slot:
    busy_token: int | None = None
    agent: Any = None  # the agent object, built by its first attempt
    idle_since: float = 0.0


@dataclass(slots=True)
class _Agent:
    factory: Callable[[], Agent]
    concurrency: int
    queue: JobQueue[Any]
    slots: dict[str, _Slot] = field(default_factory=dict)
    ids: itertools.count[int] = field(default_factory=itertools.count)


@dataclass(slots=True)
class Sent:
    """An attempt the Scheduler sent, waiting for its driver to run it."""

    agent: str
    instance: str
    run: Run
    slot: _Slot
    factory: Callable[[], Agent]
    held: bool = False  # its driver held it back once (a hang), and let it go since


class InlineHost:
    """The :class:`~herder.actors.AgentHost` of the exact simulation (module docstring)."""

    def __init__(
        self,
        reply: Callable[[Any], None],
        *,
        max_result_bytes: int,
        queue_aging: float,
    ) -> None:
        self._reply = reply
        self._max_result_bytes = max_result_bytes
        self._aging = queue_aging
        self._agents: dict[str, _Agent] = {}
        self.pending: list[Sent] = []

    # -- the driver's side -------------------------------------------------------------

    def run(self, sent: Sent) -> None:
        """Run one attempt now, on this thread, and tell the Scheduler how it ended."""
        run, slot = sent.run, sent.slot
        if slot.agent is None:
            try:
                slot.agent = contain(sent.factory)
            except UserCodeFailed as failed:
                why = f"agent {sent.agent!r} could not start: {failed.error}"
                self._crashed(sent, why, unbuilt=True)
                return
        try:
            outcome = run_attempt(
                slot.agent, sent.agent, sent.instance, run, self._max_result_bytes
            )
        except InstanceCrash as crash:
            self._crashed(sent, str(crash))
            return
        self._reply(outcome)

    def _crashed(self, sent: Sent, reason: str, *, unbuilt: bool = False) -> None:
        slot = sent.slot
        slot.agent = None  # a crashed instance is rebuilt by its next attempt
        kind = ChildEventKind.CRASHED
        self._reply(InstanceEvent(sent.agent, sent.instance, kind, None, reason, unbuilt))

    # -- AgentHost ---------------------------------------------------------------------

    def add(self, name: str, factory: Callable[[], Agent], concurrency: int) -> None:
        agent = self._agents.get(name)
        if agent is None:
            self._agents[name] = _Agent(factory, concurrency, JobQueue(self._aging))
            return
        agent.factory, agent.concurrency = factory, concurrency
        agent.slots = {i: s for i, s in agent.slots.items() if s.busy_token is not None}

    def remove(self, name: str) -> None:
        agent = self._agents.get(name)
        if agent is not None:
            agent.concurrency = 0
            agent.slots = {i: s for i, s in agent.slots.items() if s.busy_token is not None}

    def queue(self, name: str) -> JobQueue[Any] | None:
        agent = self._agents.get(name)
        return None if agent is None else agent.queue

    def acquire(self, name: str, token: int, backlog: int = 1) -> str | None:
        agent = self._agents[name]
        free = next((i for i, s in agent.slots.items() if s.busy_token is None), None)
        if free is None:
            if len(agent.slots) >= agent.concurrency:
                return None
            free = f"{name}#{next(agent.ids)}"
            agent.slots[free] = _Slot()
        agent.slots[free].busy_token = token
        return free

    def send(self, name: str, instance_id: str, run: Run) -> bool:
        agent = self._agents.get(name)
        slot = None if agent is None else agent.slots.get(instance_id)
        if agent is None or slot is None or slot.busy_token != run.token:
            return False
        self.pending.append(Sent(name, instance_id, run, slot, agent.factory))
        return True

    def release(self, name: str, instance_id: str, token: int | None, now: float) -> bool:
        agent = self._agents.get(name)
        slot = None if agent is None else agent.slots.get(instance_id)
        if agent is None or slot is None or slot.busy_token is None:
            return False
        if token is not None and slot.busy_token != token:
            return False
        slot.busy_token, slot.idle_since = None, now
        if len(agent.slots) > agent.concurrency:
            del agent.slots[instance_id]  # removed or shrunk meanwhile
        return True

    def busy_tokens(self, name: str) -> list[int]:
        agent = self._agents.get(name)
        slots = {} if agent is None else agent.slots
        return [s.busy_token for s in slots.values() if s.busy_token is not None]

    def replace_token(self, name: str, token: int) -> None:
        agent = self._agents.get(name)
        for instance_id, slot in ({} if agent is None else agent.slots).items():
            if slot.busy_token == token:
                self.replace(name, instance_id)
                return

    def replace(self, name: str, instance_id: str) -> None:
        """Give up on the instance's attempt: its slot is free again at once, and the
        attempt, when it runs, runs on the old agent object (its answer is stale)."""
        agent = self._agents.get(name)
        if agent is not None and agent.slots.pop(instance_id, None) is not None:
            started = ChildEventKind.STARTED  # the Scheduler pumps the agent again
            self._reply(InstanceEvent(name, f"{name}#{next(agent.ids)}", started))

    def on_event(self, event: InstanceEvent, now: float) -> list[int]:
        agent = self._agents.get(event.agent)
        if agent is None or event.instance is None or event.kind is not ChildEventKind.CRASHED:
            return []
        slot = agent.slots.pop(event.instance, None)
        return [] if slot is None or slot.busy_token is None else [slot.busy_token]

    def passivate(self, idle_before: float, limit: int = 256) -> int:
        dropped = 0
        for agent in self._agents.values():
            for instance_id, slot in list(agent.slots.items()):
                if dropped < limit and slot.busy_token is None and slot.idle_since <= idle_before:
                    del agent.slots[instance_id]
                    dropped += 1
        return dropped

    def stats(self) -> dict[str, dict[str, int]]:
        return {
            name: {
                "instances": len(agent.slots),
                "busy": sum(1 for s in agent.slots.values() if s.busy_token is not None),
                "queued": len(agent.queue),
            }
            for name, agent in self._agents.items()
        }

    def host_stats(self) -> dict[str, int]:
        """Attempts sent and not yet run."""
        return {"pending": len(self.pending)}
