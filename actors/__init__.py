"""herder.actors — every actor, and the supervision tree they live in.

What lives here: the injectable :class:`Clock` (``_clock``), the generic Erlang/OTP-style
supervision tree (``_supervision_specs`` for specs and reports, ``_supervised`` for the
child side, ``_supervision`` for the supervisor) and, later, the Scheduler, the agent host
and the watchdog Supervisor. The supervision tree knows nothing about workflows.

Imports: herder.store only (the ``HerderError`` root, records), never herder.runtime.
Everything public here is re-exported upward by herder.runtime where users need it.
"""

from herder.actors._clock import Clock, FakeClock, SystemClock, TimerHandle
from herder.actors._errors import RestartIntensityExceeded, SupervisorStartError
from herder.actors._supervised import SupervisedActor
from herder.actors._supervision import start_supervisor
from herder.actors._supervision_specs import (
    Backoff,
    ChildEvent,
    ChildInfo,
    ChildSpec,
    Restart,
    Strategy,
)

__all__ = [
    "Backoff",
    "ChildEvent",
    "ChildInfo",
    "ChildSpec",
    "Clock",
    "FakeClock",
    "Restart",
    "RestartIntensityExceeded",
    "Strategy",
    "SupervisedActor",
    "SupervisorStartError",
    "SystemClock",
    "TimerHandle",
    "start_supervisor",
]
