"""The thread host's agent instance: one pykka actor running one agent object, serving
one attempt at a time through the shared :func:`~herder.actors._action.run_attempt`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from herder.actors._action import run_attempt
from herder.actors._agent import Agent
from herder.actors._host import InstanceCrash
from herder.actors._messages import InstanceEvent, Outcome, Run
from herder.actors._supervised import SupervisedActor
from herder.actors._supervision_specs import ChildEventKind
from herder.store import UserCodeFailed, contain, explain


class AgentInstance(SupervisedActor):
    """One pykka actor running one agent object; serves one attempt at a time."""

    use_daemon_thread = True
    reported_failures = (InstanceCrash, UserCodeFailed)  # (logged as on the pool host)

    def __init__(
        self,
        agent: str,
        instance: str,
        factory: Callable[[], Agent],
        reply: Callable[[Outcome], None],
        max_result_bytes: int,
        *,
        events: Callable[[InstanceEvent], None] = lambda _event: None,
    ) -> None:
        super().__init__()
        self._agent_name = agent
        self._instance = instance
        self._factory = factory
        self._reply = reply
        self._events = events
        self._max_result_bytes = max_result_bytes
        self._agent: Any = None

    def on_start(self) -> None:
        """Build the agent object; a failing factory is a crash at start-up (reported as
        :class:`UserCodeFailed`, so the supervisor never touches the user's exception)."""
        super().on_start()
        self._agent = contain(self._factory)

    def on_receive(self, message: Any) -> Any:
        """Run one attempt and report its outcome (an InstanceCrash crashes this actor)."""
        if isinstance(message, Run):
            outcome = run_attempt(
                self._agent, self._agent_name, self._instance, message, self._max_result_bytes
            )
            self._reply(outcome)
            return None
        return super().on_receive(message)

    def on_orphaned_exit(self, reason: BaseException | None) -> None:
        """Its supervisor went while it ran (its thread abandoned): a crash of its attempt
        is reported here, as no supervisor is left to (a normal end answered already)."""
        if reason is not None:
            crashed, why = ChildEventKind.CRASHED, explain(reason)
            self._events(InstanceEvent(self._agent_name, self._instance, crashed, None, why))
