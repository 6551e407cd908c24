"""The seeded fault schedule and the workload both simulations run (``_sim``, the
threaded one, and ``_model_sim``, the exact one).

:class:`FaultSchedule` decides every fault from the seed alone: the fault an attempt meets
is a pure function of ``(seed, workflow id, step, attempt, compensating)``; store commits,
crashes, restarts and operator actions fall on seeded rounds or commits.
:func:`definition` is the workflow every seed starts a few of.
"""

from __future__ import annotations

import functools
import random
from dataclasses import dataclass

from herder.runtime._workflow import Workflow
from herder.store import InvalidInput, RetryPolicy, real_number

TIMEOUT = 5.0  # each step's timeout, in fake seconds
ROUND = 6.0  # fake seconds per round: past a timeout and a retry's backoff
MAX_ROUNDS = 40
CONCURRENCY = 2  # instances per agent

RETRY = RetryPolicy(max_attempts=8, initial_interval=1.0, backoff_coefficient=1.0, jitter=0.0)
"""Transient faults hit attempts 1-2 and store faults cost at most 2 more: 8 always suffice."""

KINDS = ("raise", "lost", "hang", "crash")


@functools.lru_cache(maxsize=4096)
def _draw(key: str) -> float:
    # random.Random(str) hashes the string with SHA-512: stable across processes.
    return random.Random(key).random()


@dataclass(frozen=True)
class FaultSchedule:
    """Which fault each attempt meets, decided by the seed alone.

    ``rate`` is the chance an attempt numbered up to ``transient_attempts`` meets one of
    :data:`KINDS`; ``permanent_rate`` the chance a (forward) step fails permanently at
    every attempt; ``store_rate`` the chance a store commit fails, at most
    ``max_store_faults`` times per run; ``health_rate`` the chance one of an agent's first
    ``health_checks`` health checks fails (the threaded simulation: its work then waits
    until a check passes).
    """

    seed: int
    rate: float = 0.3
    transient_attempts: int = 2
    permanent_rate: float = 0.08
    store_rate: float = 0.04
    max_store_faults: int = 2
    health_rate: float = 0.2
    health_checks: int = 4

    def __post_init__(self) -> None:
        if not _is_int(self.seed) or not -(2**63) <= self.seed < 2**64:  # (stored: msgpack)
            raise InvalidInput(
                f"seed must be an int from -2**63 to 2**64 - 1, got {self.seed!r}: one seed "
                "gives one history (int(os.environ[...]) for one from the environment)"
            )
        for name in ("rate", "permanent_rate", "store_rate", "health_rate"):
            value = getattr(self, name)
            number = real_number(value)
            if number is None or not 0 <= number <= 1:
                raise InvalidInput(f"{name} must be a chance from 0 to 1, got {value!r}")
        for name in ("max_store_faults", "health_checks"):
            value = getattr(self, name)
            if not _is_int(value) or value < 0:
                raise InvalidInput(f"{name} must be an int >= 0, got {value!r}")
        # The workload retries a step RETRY.max_attempts times: transient faults at every
        # one would fail steps the expectations count on succeeding (false alarms).
        top = RETRY.max_attempts - 1
        if not _is_int(self.transient_attempts) or not 0 <= self.transient_attempts <= top:
            raise InvalidInput(
                f"transient_attempts must be an int from 0 to {top} (the workload tries a "
                f"step {top + 1} times), got {self.transient_attempts!r}"
            )

    def _draw(self, *parts: object) -> float:
        return _draw("/".join(map(str, (self.seed, *parts))))

    def attempt_fault(
        self, workflow_id: str, step: str, attempt: int, compensating: bool
    ) -> str | None:
        """The fault of one attempt: None, ``"permanent"`` or one of :data:`KINDS`."""
        if not compensating and self.permanent(workflow_id, step):
            return "permanent"
        if attempt > self.transient_attempts:
            return None
        r = self._draw("attempt", workflow_id, step, attempt, compensating)
        if r >= self.rate:
            return None
        return KINDS[int(r / self.rate * len(KINDS))]

    def permanent(self, workflow_id: str, step: str) -> bool:
        """True if every forward attempt of this step fails permanently."""
        return self._draw("permanent", workflow_id, step) < self.permanent_rate

    def health_fault(self, agent: str, check: int) -> bool:
        """True if the ``check``-th health check of ``agent`` (counted from 1 across
        restarts) fails; none after the first ``health_checks``, so every agent heals."""
        if check > self.health_checks:
            return False
        return self._draw("health", agent, check) < self.health_rate

    def store_fault(self, commit: int) -> bool:
        """True if the ``commit``-th store commit (counted from 1) is to fail."""
        return self._draw("store", commit) < self.store_rate

    def workflows(self) -> int:
        """How many workflows the run starts (2-4)."""
        return 2 + int(self._draw("workflows") * 3)

    def scheduler_crash_at(self) -> int | None:
        """The round at which the Scheduler actor crashes (the tree restarts it), or None
        (three seeds in four)."""
        if self._draw("scheduler") < 3 / 4:
            return None
        return int(self._draw("scheduler-round") * 3)

    def restart_at(self) -> int | None:
        """The round at which the runtime is stopped and opened again, or None (2/3)."""
        if self._draw("restart") < 2 / 3:
            return None
        return int(self._draw("restart-round") * 3)

    def process_crash_step(self) -> int | None:
        """The delivery (counted from 1) at which the exact simulation's process dies
        mid-round, or None (two seeds in three)."""
        if self._draw("process") < 2 / 3:
            return None
        return 1 + int(self._draw("process-step") * 150)

    def scheduler_crash_step(self) -> int | None:
        """The delivery (counted from 1) at which the exact simulation crashes its
        Scheduler mid-round, or None (three seeds in four)."""
        if self._draw("scheduler-step") < 3 / 4:
            return None
        return 1 + int(self._draw("scheduler-step-at") * 150)

    def registers_late(self) -> bool:
        """True if a process the exact simulation opens again registers its agents and
        definition only after its recovery ran (one seed in three): what it recovered
        awaits its definition meanwhile."""
        return self._draw("late") < 1 / 3

    def passivates(self) -> bool:
        """True for one seed in three: the runtime passivates (``passivate_after``), so
        workflows whose steps all wait on timers leave memory and come back by their
        timers or an operator's action."""
        return self._draw("passivate") < 1 / 3

    def pause_schedule_at(self) -> int | None:
        """The round at which the run's schedule is paused, or None: no schedule (3/4)."""
        if self._draw("schedule") < 3 / 4:
            return None
        return 1 + int(self._draw("schedule-round") * 3)

    def abandon_at(self) -> tuple[int, int] | None:
        """(round, workflow index) of an abandon request, or None (three seeds in four)."""
        if self._draw("abandon") < 3 / 4:
            return None
        return int(self._draw("abandon-round") * 3), int(self._draw("abandon-which") * 2)

    def queued_at_restart(self) -> tuple[str, int] | None:
        """(action, workflow index) of a cancel or abandon queued through the CLI's channel
        while the runtime is down for its restart, or None (half of the seeds)."""
        if self._draw("queued") < 0.5:
            return None
        action = "cancel" if self._draw("queued-action") < 0.5 else "abandon"
        return action, int(self._draw("queued-which") * 2)

    def command_at(self) -> tuple[int, str, int] | None:
        """(delivery, action, workflow index) of a cancel or abandon sent through the CLI's
        channel while the process runs (a sweep hands it over right away), or None (half
        of the seeds). The exact simulation sends it at that delivery, the threaded one
        in round delivery mod 3."""
        if self._draw("command") < 0.5:
            return None
        action = "cancel" if self._draw("command-action") < 0.5 else "abandon"
        step = 1 + int(self._draw("command-step") * 150)
        return step, action, int(self._draw("command-which") * 2)

    def wall_step_at(self) -> tuple[int, float] | None:
        """(round, seconds) of a wall-clock step of an hour either way, or None (2/3)."""
        if self._draw("wall") < 2 / 3:
            return None
        sign = 1.0 if self._draw("wall-sign") < 0.5 else -1.0
        return int(self._draw("wall-round") * 3), sign * 3600.0

    def cancel_at(self) -> tuple[int, int] | None:
        """(round, workflow index) of a cancel request, or None (half of the seeds)."""
        if self._draw("cancel") < 0.5:
            return None
        return int(self._draw("cancel-round") * 3), int(self._draw("cancel-which") * 2)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def definition() -> Workflow:
    """a, then b and c in parallel, then d; c has no compensation."""
    step = functools.partial(Workflow.step, action="do", timeout=TIMEOUT, retry=RETRY)
    wf = Workflow("sim", version=1)
    wf = step(wf, "a", agent="alpha", compensate="undo")
    wf = step(wf, "b", agent="beta", compensate="undo", after=["a"])
    wf = step(wf, "c", agent="alpha", after=["a"])
    return step(wf, "d", agent="beta", compensate="undo", after=["b", "c"])
