"""The schedule methods of :class:`Runtime` (a base class of it): ``rt.schedule()``,
pause, resume, delete, ``rt.schedules()``. The schedules themselves are data
(``_schedules``), fired by one thread (``_firing``); see docs/scheduling.md.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar, cast

from herder.actors import NotActive, UnknownName
from herder.runtime._routing import check_registered, resolve_agents
from herder.runtime._schedule_status import ScheduleStatus, schedule_statuses
from herder.runtime._schedules import jitter_past_deadline, new_schedule
from herder.runtime._starts import stopped
from herder.runtime._workflow import Workflow
from herder.store import InvalidInput, LeaseLost, StoreClosed, normalize, validate_name

if TYPE_CHECKING:
    from herder.runtime._firing import Firer
    from herder.runtime._runtime import Runtime


def _runtime(mixin: object) -> Runtime:
    return cast("Runtime", mixin)  # a base of Runtime only


_T = TypeVar("_T")


def _changing(mixin: object, change: Callable[[], _T]) -> _T:
    """``change()``, a change of a schedule: a stop or handoff that overtook its checks
    (the store closed, or the lease released) raises RuntimeClosed, as stop() promises,
    not StoreClosed or LeaseLost."""
    try:
        return change()
    except (StoreClosed, LeaseLost) as exc:
        error = stopped(_runtime(mixin), exc, "the schedule was not changed")
        raise error  # noqa: B904 (stopped() sets its cause: "from exc" made exc its own)


def _active_firer(mixin: object) -> Firer:
    rt = _runtime(mixin)
    rt._check_active()  # a standby fires nothing and changes no schedule
    # Becoming active starts the actors (which _check_active sees), recovers, then makes
    # the firer, all under _promotion: wait for it, as schedule() does.
    with rt._promotion:
        firer = rt._firer
    if firer is None:  # (becoming active failed before it made one)
        rt._check_active()
        raise NotActive("this runtime did not become active; wait_active() first")
    return firer


class ScheduleMethods:
    """Periodic schedules on a :class:`Runtime`."""

    def schedule(
        self,
        name: str,
        workflow: str,
        *,
        cron: str | None = None,
        every: float | None = None,
        input: Any = None,
        overlap: str = "skip",
        catch_up: str = "latest",
        jitter: float = 0.0,
        timezone: str = "UTC",
    ) -> ScheduleStatus:
        """Start ``workflow`` with ``input`` periodically, durably; return its status.

        ``cron`` (a cron expression read in ``timezone``; needs the ``cron`` extra) or
        ``every`` (seconds; slots are multiples of it since the epoch). Each slot starts
        workflow ``"<name>@<slot in UTC>"`` exactly once, across crashes and handoffs.
        ``overlap``: while the previous firing's workflow runs, a slot is passed over
        (``"skip"``), waits for it (``"queue"``) or fires anyway (``"allow"``).
        ``catch_up``: of the slots that fell due while nothing ran, fire the newest
        (``"latest"``), every one (``"all"``) or only an on-time one (``"none"``).
        ``jitter``: delay each firing's first steps by up to that many seconds. The first
        slot is the first one after this call; calling it again with the same settings
        changes nothing, with new settings keeps the slots already handled (new slots,
        from a changed ``every``, ``cron`` or ``timezone``, begin after the call).

        Callable in ``setup`` (a daemon's app factory) and on a standby too: the schedule
        is checked at once, stored when the runtime becomes active as the last such call
        for its name declared it (a new schedule's first slot is then the first one
        after that), and the status returned is the one declared (``schedules()`` shows
        the stored one).
        """
        rt = _runtime(self)
        rt._check_open()
        if isinstance(workflow, Workflow):  # (start() takes one: that version, not by name)
            raise InvalidInput(
                f"schedule {name!r}: give the workflow by its name, {workflow.name!r}: each "
                "slot starts the latest version registered under that name"
            )
        plan = rt._latest.get(workflow) if isinstance(workflow, str) else None
        if plan is None:
            raise UnknownName(f"no workflow named {workflow!r} is registered; add_workflow it")
        normalized = normalize(input, limit=rt._max_input_bytes, what="schedule input")
        agents = resolve_agents(plan, normalized, rt._routers, limit=rt._ask_timeout)
        check_registered(plan, agents, rt._ctx.agents, rt._actions)
        record = new_schedule(
            name,
            workflow,
            rt._clock.time(),
            input=normalized,
            cron=cron,
            every=every,
            overlap=overlap,
            catch_up=catch_up,
            jitter=jitter,
            timezone=timezone,
        )
        if (problem := jitter_past_deadline(record, plan)) is not None:
            raise InvalidInput(
                f"{problem}; give a jitter up to the deadline, or the workflow a later one"
            )
        with rt._promotion:
            if rt._firer is None:  # in setup, or a standby: defined once it is active
                rt._declared[record.name] = record  # (the settings it is to have)
                return ScheduleStatus.of(record)
            firer = rt._firer
        return ScheduleStatus.of(_changing(self, lambda: firer.define(record)))

    def pause_schedule(self, name: str) -> None:
        """Fire nothing for schedule ``name`` until :meth:`resume_schedule`."""
        validate_name("schedule", name, lookup=True)
        _changing(self, lambda: _active_firer(self).pause(name, True))

    def resume_schedule(self, name: str) -> None:
        """Fire schedule ``name`` again from its next slot (slots while paused are passed)."""
        validate_name("schedule", name, lookup=True)
        _changing(self, lambda: _active_firer(self).pause(name, False))

    def delete_schedule(self, name: str) -> None:
        """Delete schedule ``name``; the workflows it started are left alone."""
        validate_name("schedule", name, lookup=True)
        _changing(self, lambda: _active_firer(self).delete(name))

    def schedules(self) -> list[ScheduleStatus]:
        """Every stored schedule with its next firing, by name."""
        rt = _runtime(self)
        return schedule_statuses(rt._store)

    def _fire_now(self) -> None:
        """Fire the schedules' due slots now and wait for it (testing aid)."""
        _active_firer(self).fire_due()

    def _next_slots(self) -> dict[str, float]:
        """Each schedule's ``next_at`` by name, from what the firer keeps (testing aid:
        ``schedules()`` decodes and looks up every one, 0.4 s an advance() stop for 5,000)."""
        return _active_firer(self).next_slots()
