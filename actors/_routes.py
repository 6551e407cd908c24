"""Routes: each agent name's queue, host and lane for the Dispatcher, and the names no
longer served, kept while something of them is left and then forgotten.

A route (:data:`Route`) is looked up once per pump, not per job: the agent's queue (its
host's :class:`~herder.actors._queue.JobQueue`), the host that serves it (``routed``: a
router's placement) and its reserve-ahead lane. It is cached until the name is added or
removed again.

``remove_agent`` stops serving a name and its queued work waits until it is added again
(docs/agents.md); a job queued for a name not added yet makes a queue for it the same
way (``unregistered``). While something of such a name is left (a queued job, an attempt
reserved ahead in its lane or ready deque, an instance busy, restarting or in the pool
host's line, an attempt the engine still holds) every layer keeps its records of it.
Once nothing is, all of them go: its route, the Dispatcher's room marks, its lane, and
the host's record with the factory and whatever that captured (``forget``). So names
added and removed (one per device, say) cost nothing once they drained, and
``stats()["agents"]`` lists them no more. A name is
looked at when it is removed and again at each Tick (the Dispatcher's ``passivate``)
until it is forgotten; one added again meanwhile is served, and forgotten no more.
Everything here runs on the Scheduler's thread.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from herder.actors._ahead import Lane, Lanes
from herder.actors._host import AgentHost, forget, routed
from herder.actors._queue import JobQueue
from herder.actors._wiring import unregistered
from herder.actors.engine import Engine, Job, unqueue
from herder.store import get_logger

_log = get_logger("herder.scheduler")

Route = tuple[JobQueue[Job], AgentHost, Lane | None]
"""An agent's queue, the host it runs on (``routed``) and its reserve-ahead lane."""


class Routes:
    """The Dispatcher's routes and its names not served; see the module docstring."""

    host: AgentHost  # the agent host (attached when the Scheduler starts)

    def __init__(self, engine: Engine, lanes: Lanes, dropped: Callable[[str], None]) -> None:
        self._engine = engine
        self._lanes = lanes
        self._dropped = dropped  # told each name forgotten: the Dispatcher drops its marks
        self.routes: dict[str, Route] = {}  # per agent, looked up once per pump (per add)
        self.unserved: dict[str, None] = {}  # names with a queue that are not registered

    def route(self, agent: str, *, add: bool = False) -> Route | None:
        """``agent``'s queue, the host it runs on and its lane; None if it has no queue
        (``add``: it is not registered (yet), and a job will wait in a queue made for it)."""
        route = self.routes.get(agent)
        if route is None:
            host = self.host
            queue = host.queue(agent)
            if queue is None and add:
                host.add(agent, unregistered(agent), 0)
                self.unserved[agent] = None
                queue = host.queue(agent)
                # (start() refuses such a name: this is recovered or retried work, of an
                # agent renamed or dropped since, which would otherwise wait in silence)
                _log.warning(
                    "steps wait for agent %r, which is not registered: register it "
                    "with add_agent(%r, ...) to run them, best in Runtime(path, "
                    "setup=...); an agent renamed keeps its old name until its work ended",
                    agent,
                    agent,
                )
            if queue is None:
                return None
            route = self.routes[agent] = (queue, routed(host, agent), self._lanes.get(agent))
        return route

    def added(self, name: str) -> None:
        """``name`` was added (again): it may run on another host now, and is served."""
        self.routes.pop(name, None)
        self.unserved.pop(name, None)

    def removed(self, name: str) -> None:
        """``name`` was removed: forgotten now if nothing of it is left, else later."""
        self.routes.pop(name, None)
        self.unserved[name] = None
        self.sweep([name])

    def sweep(self, names: Iterable[str] | None = None) -> None:
        """Forget those of ``names`` (by default: every name not served) of which nothing
        is left; first nothing is reserved ahead for them any more (``Lanes.stop``)."""
        names = list(self.unserved if names is None else names)
        if not names:
            return  # (each Tick: no scan of every attempt in flight for nothing)
        # An attempt the engine holds for a name (reserved, or sent before its instance
        # went with the remove) still needs its lane: its commit's effect reaches it.
        held = {attempt.agent for attempt in self._engine.inflight.values()}
        for name in names:
            stopped = self._lanes.stop(name)
            if stopped and name not in held and self._drained(name) and forget(self.host, name):
                del self.unserved[name]
                self.routes.pop(name, None)
                self._lanes.drop(name)
                self._dropped(name)

    def _drained(self, name: str) -> bool:
        """Whether ``name``'s queue is empty once the jobs at its head that may no longer
        run (their workflow ended, say) are dropped, as the pump drops them."""
        queue, engine = self.host.queue(name), self._engine
        while queue:
            job = queue.heap[0][2]
            run = engine.runs.get(job.workflow_id)
            if run is not None and engine.job_valid(run, job):
                return False
            queue.pop()
            if run is not None:
                unqueue(run, job)
        return True
