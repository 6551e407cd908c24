"""Errors raised by the actors layer.

::

    HerderError (herder.store)
    ├── SupervisorStartError        a supervisor or one of its children failed to start
    └── RestartIntensityExceeded    a supervisor restarted too often and gave up

Both are operational errors: something a child did at run time, not a programmer error
in the arguments (those are refused with :class:`herder.store.InvalidInput`).
"""

from __future__ import annotations

from herder.store._errors import HerderError


class SupervisorStartError(HerderError):
    """A supervisor, or a child it tried to start, did not finish starting.

    Raised by ``start_supervisor`` (after stopping whatever it had started) and by a
    supervisor's ``start_child``/``restart_child``. The child's own exception, if any, is
    the ``__cause__``.
    """


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
        super().__init__(
            f"supervisor {supervisor!r} gave up: {restarts} restarts within {period} s "
            f"(last caused by child {child_id!r}); fix the crashing child or raise "
            "max_restarts/period"
        )
