"""Test actors and an event recorder for the supervision tests."""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pykka

from herder.actors import ChildEvent, ChildSpec, Restart, SupervisedActor

WAIT = 5.0  # seconds any single wait may take before the test fails


class Worker(SupervisedActor):
    """Records its life in ``log``; ``"crash"`` escapes a tell handler, ``"ping"`` answers."""

    def __init__(
        self,
        name: str,
        log: list[tuple[str, str]] | None = None,
        *,
        fail_start: bool = False,
        gate: threading.Event | None = None,
        entered: threading.Event | None = None,
        threads: dict[str, threading.Thread] | None = None,
    ) -> None:
        super().__init__()
        self.name = name
        self.log = log
        self.fail_start = fail_start
        self.gate = gate
        self.entered = entered
        self.threads = threads

    def on_start(self) -> None:
        if self.threads is not None:
            self.threads[self.actor_urn] = threading.current_thread()
        if self.fail_start:
            raise RuntimeError(f"{self.name} refuses to start")
        if self.log is not None:
            self.log.append(("start", self.name))

    def on_stop(self) -> None:
        if self.log is not None:
            self.log.append(("stop", self.name))

    def on_receive(self, message: Any) -> Any:
        if message == "crash":
            raise RuntimeError(f"{self.name} crashed on purpose")
        if message == "block":
            assert self.gate is not None
            assert self.entered is not None
            self.entered.set()
            self.gate.wait()
            return None
        return "pong"


def spec(
    child_id: str,
    log: list[tuple[str, str]] | None = None,
    restart: Restart = Restart.PERMANENT,
    shutdown: float = 5.0,
    **kwargs: Any,
) -> ChildSpec:
    """A ChildSpec that starts a Worker named after the child."""
    return ChildSpec(
        child_id, lambda: Worker.start(child_id, log, **kwargs), restart=restart, shutdown=shutdown
    )


class Events:
    """A listener that queues every ChildEvent; tests wait on it, never sleep."""

    def __init__(self) -> None:
        self.queue: queue.Queue[ChildEvent] = queue.Queue()
        self.seen: list[ChildEvent] = []

    def __call__(self, event: ChildEvent) -> None:
        self.queue.put(event)

    def wait(
        self, kind: str, child_id: str | None = None, supervisor: str | None = None
    ) -> ChildEvent:
        """Return the next event of ``kind`` (and child/supervisor if given)."""
        while True:
            event = self.queue.get(timeout=WAIT)
            self.seen.append(event)
            if (
                event.kind == kind
                and child_id in (None, event.child_id)
                and supervisor in (None, event.supervisor)
            ):
                return event

    def drain(self) -> list[ChildEvent]:
        """Everything still queued, without waiting."""
        rest: list[ChildEvent] = []
        while True:
            try:
                rest.append(self.queue.get_nowait())
            except queue.Empty:
                self.seen.extend(rest)
                return rest


def children_of(sup: pykka.ActorRef[Any]) -> dict[str, Any]:
    """which_children() as a dict id -> ChildInfo."""
    infos = sup.proxy().which_children().get(timeout=WAIT)
    return {info.id: info for info in infos}


def call(sup: pykka.ActorRef[Any], method: str, *args: Any) -> Any:
    """Call a supervisor method through its proxy, with a timeout."""
    fn: Callable[..., Any] = getattr(sup.proxy(), method)
    return fn(*args).get(timeout=WAIT)


class Abandoned:
    """Set once the Scheduler has handled the news that a supervisor abandoned the thread
    of an instance of agent ``agent`` (its ABANDONED event; not the news that the agent's
    own supervisor was abandoned, which may come first): what the host counts and
    keeps of that thread is in place, whatever its attempt answers next. (Watching the
    supervisor's log line raced: the event is told after it, and the attempt's answer,
    once the test let it go, could reach the Scheduler first.)"""

    def __init__(self, agent: str) -> None:
        self.agent = agent
        self.seen = threading.Event()

    @classmethod
    @contextlib.contextmanager
    def watch(cls, agent: str) -> Iterator[Abandoned]:
        from herder.actors._dispatch import Dispatcher
        from herder.actors._supervision_specs import ChildEventKind

        handler = cls(agent)
        original = Dispatcher.instance_event

        def instance_event(self: Dispatcher, msg: Any) -> Any:
            out = original(self, msg)
            instance = msg.kind is ChildEventKind.ABANDONED and msg.instance is not None
            if instance and msg.agent == handler.agent:  # (not its supervisor's own)
                handler.seen.set()
            return out

        Dispatcher.instance_event = instance_event  # type: ignore[method-assign]
        try:
            yield handler
        finally:
            Dispatcher.instance_event = original  # type: ignore[method-assign]
