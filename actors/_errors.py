"""Errors raised by the actors layer (the engine and the supervision tree).

::

    HerderError (herder.store)
    ├── InvalidInput
    │   ├── InvalidDefinition       a workflow definition that cannot run (cycle, dangling dep)
    │   └── UnknownName             a workflow, agent or action name nobody registered
    ├── WorkflowConflict            same workflow id started again with different input
    ├── UnknownWorkflow (KeyError)  no workflow with that id in the store
    ├── InvalidState                the operation does not apply in the workflow's state
    │   └── CompletionRefused       complete_step/fail_step for an attempt no longer current
    ├── RuntimeClosed               the runtime is stopped or stopping
    ├── NotActive                   a standby runtime was asked to do what only the active one does
    ├── SupervisorStartError        a supervisor or one of its children failed to start
    └── RestartIntensityExceeded    a supervisor restarted too often and gave up

:class:`Permanent` is not an error of herder's: user actions raise it to say "this will
never succeed", so it derives from :class:`Exception`, not :class:`HerderError`.
"""

from __future__ import annotations

from herder.store import HerderError, InvalidInput


class SupervisorStartError(HerderError):
    """A supervisor, or a child it tried to start, did not finish starting.

    Raised by ``start_supervisor`` (after stopping whatever it had started) and by a
    supervisor's ``start_child``/``restart_child``. The child's own exception, if any, is
    the ``__cause__``, however deep in a tree of supervisors the child was (the message
    names every level).
    """


ROOT = "herder"
"""The name of the root of a runtime's supervision tree (``_tree.start_tree``)."""


class RestartIntensityExceeded(HerderError):
    """More than ``max_restarts`` restarts happened within ``period`` seconds.

    The supervisor named ``supervisor`` stopped all its children and exited abnormally
    with this error; ``child_id`` is the child whose exit caused the last restart.
    """

    def __init__(self, supervisor: str, child_id: str, restarts: int, period: float) -> None:
        self.supervisor = supervisor
        self.child_id = child_id
        self.restarts = restarts
        self.period = period
        if supervisor.startswith("agent:") and not supervisor.startswith("agent:*"):
            advice = (  # (an agent's instances: the one intensity a user sets)
                "fix what crashes its instances (its factory, or an action raising "
                "InstanceCrash) or allow more with Runtime(agent_restarts=(max_restarts, period))"
            )
        elif supervisor == ROOT:  # (the runtime's own actors: no setting allows more)
            advice = (
                "the runtime's own actors kept crashing (see the errors logged before): it "
                "stops, and its workflows are durable: they go on once a Runtime opens the "
                "store again"
            )
        else:
            advice = "fix the crashing child or raise max_restarts/period"
        super().__init__(
            f"supervisor {supervisor!r} gave up: {restarts} restarts within {period} s "
            f"(last caused by child {child_id!r}); {advice}"
        )


class Permanent(Exception):
    """Raised by an action to fail its step without retrying.

    It also tells herder the action took no effect, so the step is not compensated; a step
    that failed any other way (a lost answer, a timeout) may have, and is undone.
    """


class InvalidDefinition(InvalidInput):
    """A workflow definition is malformed: duplicate steps, a cycle, an unknown dependency."""


class UnknownName(InvalidInput):
    """A workflow, agent or action name that nothing registered."""


class WorkflowConflict(HerderError):
    """A workflow id was started again with different input (or a different workflow)."""


class UnknownWorkflow(HerderError, KeyError):
    """No workflow with the given id exists in the store."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown workflow"


class InvalidState(HerderError):
    """The operation does not apply to the workflow in its current state."""


class CompletionRefused(InvalidState):
    """A ``complete_step``/``fail_step`` named an attempt that is no longer the step's
    current one (it failed or timed out and was retried, or the step or workflow already
    finished). Nothing was recorded."""


class RuntimeClosed(HerderError):
    """The runtime is stopped or stopping; it accepts no new work."""


class WrongThread(HerderError, RuntimeError):
    """A call made on a thread that cannot serve it: ``run_forever()`` off the main thread
    (Python delivers signals only there), or a blocking ``result()`` on the thread of the
    event loop the runtime's ``async def`` actions run on (the workflow's own steps may
    need that loop: await ``result_async()``), or a ``start()`` there that must wait for
    room under ``max_active_workflows``. Nothing was done."""


class NotActive(HerderError):
    """This runtime is a standby: it serves ``status``/``list`` until it takes the lease.

    Start, cancel and retry workflows on the active runtime, or wait for this one to take
    over (``rt.wait_active()``). Also raised, recording nothing, while the supervision tree
    replaces a Scheduler that crashed: call again in a moment.
    """
