"""Starting workflows on a :class:`Runtime` (a base class of it): ``start``, and the
parts ``start_async`` is made of too (``_checked``, ``_submit_start``, ``_landed``);
``start_many`` is ``_start_many``, built on the same checks (``_prepare``).

A start is checked first (``_prepare``: nothing is written), takes a slot under
``max_active_workflows`` (``_capacity``), and is one compare-and-set transaction that
creates the workflow only if its id is free (``_starts.creation``): idempotent per id
inside the write transaction; the caller returns once it is durable. A start whose id
was free a moment ago (made here, or claimed alone: ``_claims``) is admitted to the
Scheduler as that transaction is queued, so that the workflow's first DISPATCHED goes
into the same commit, or the next (one commit less per workflow, which shows at 1 and 16
in flight: benchmarks/ANALYSIS.md); if it fails, the writer writes none of the
Scheduler's batches behind it (fail-stop) and the Scheduler forgets the workflow
(``_starts.Landing.admit_early``). ``Landing`` admits it (again) on the writer's thread
once durable only if it was not admitted early, or the Scheduler may have let it go
since (``actors/_messages.py``, ``EarlyStart``): in the normal case a start costs the
Scheduler one message."""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
import threading
import time
from typing import TYPE_CHECKING, Any

from herder.actors import InvalidDefinition, UnknownName, WorkflowConflict
from herder.runtime._claims import left
from herder.runtime._deadlines import deadline_at
from herder.runtime._handle import WorkflowHandle
from herder.runtime._part import whole as _runtime
from herder.runtime._routing import check_registered, resolve_agents
from herder.runtime._start_many import StartingMany
from herder.runtime._starts import (
    Landing,
    NewStart,
    creation,
    existing_workflow,
    same_record,
    submit_creations,
    taken_by,
)
from herder.runtime._timing import begin_at, check_priority
from herder.runtime._waits import seconds
from herder.runtime._workflow import Workflow
from herder.store import (
    ConditionFailed,
    InvalidInput,
    Put,
    StepRecord,
    WorkflowRecord,
    get_logger,
    normalize,
    validate_id,
)

if TYPE_CHECKING:
    from herder.runtime._capacity import QueuedStart
    from herder.runtime._runtime import Runtime

_log = get_logger("herder.runtime")

_wall = time.time  # the clock of the ids' leading milliseconds (a test replaces it)


class _Ids:
    """Workflow ids in the UUID version 7 layout (RFC 9562), as 32 hex digits: the wall
    clock's milliseconds, then 74 random bits. Ids made close in time sort close
    together, so a commit's workflow, step and history keys share a few pages of each
    database: with uuid4 ids each workflow of a commit dirtied pages of its own, and the
    store writer wrote 1,144 KB and made 236 write calls per commit instead of ~200 KB
    and ~33 (9,000 workflows, 256 in flight), at twice its CPU. The random bits come
    256 ids to one ``os.urandom`` read: each read releases the GIL, and on an event loop
    beside busy runtime threads getting it back cost ~0.5 ms per start (issue 16). A
    forked child drops the parent's unused bytes."""

    _BATCH = 256
    _RANDOM = 10  # bytes per id

    def __init__(self) -> None:
        self._pool, self._used = b"", 0
        self._guard = threading.Lock()
        os.register_at_fork(after_in_child=self._forget)

    def _forget(self) -> None:
        self._pool, self._used = b"", 0

    def new(self) -> str:
        with self._guard:
            if self._used >= len(self._pool):
                self._pool, self._used = os.urandom(self._RANDOM * self._BATCH), 0
            random = self._pool[self._used : self._used + self._RANDOM]
            self._used += self._RANDOM
        raw = bytearray(int(_wall() * 1000).to_bytes(6, "big") + random)
        raw[6] = 0x70 | raw[6] & 0x0F  # version 7
        raw[8] = 0x80 | raw[8] & 0x3F  # the RFC 4122 variant
        return raw.hex()


_new_id = _Ids().new


class Starting(StartingMany):
    """``start``, and ``start_many`` (:class:`StartingMany`)."""

    def start(
        self,
        workflow: str | Workflow,
        input: Any = None,
        *,
        workflow_id: str | None = None,
        timeout: float | None = None,
        priority: int = 0,
        start_at: datetime.datetime | None = None,
        delay: float | None = None,
        deadline: float | datetime.datetime | None = None,
    ) -> WorkflowHandle:
        """Start a workflow; it is durable when this returns.

        ``workflow`` is a name (its highest registered version runs) or a registered
        :class:`Workflow` (that version runs).

        Idempotent on ``workflow_id``: the same id with the same input returns a handle to
        the existing workflow; with different input it raises :class:`WorkflowConflict`.
        (While the store keeps it: once ``retention`` deleted it, the id starts anew.)
        Without one, the workflow gets a fresh id: a time-ordered UUID (version 7) as 32
        hex digits. Ids you choose are best made time-ordered too (a counter, a time
        prefix): the store then writes the keys of workflows started together into the
        same pages, where random ids cost each commit about six times the bytes.
        Blocks while ``max_active_workflows`` are unfinished, or while another start of
        the same id is being decided (up to ``timeout`` seconds in all, then
        :class:`TimedOut`, a ``TimeoutError``; nothing is written then).

        ``priority`` (default 0; higher first) orders its steps against other work
        waiting for the same agent; waiting raises it (see ``priority_aging``).
        ``start_at`` (a datetime: an aware one, or a naive one read as this process's
        local time) or ``delay`` (seconds) holds its first steps until then; the wait is
        a timer in the store and survives restarts.
        ``deadline`` (seconds from now, or an aware datetime; default: the definition's
        ``Workflow(deadline=)``) is when it must have ended: past it no new attempt
        starts, running attempts are superseded and the workflow is compensated, also
        when it passed while no process ran (docs/workflows.md).
        """
        rt: Runtime = self  # type: ignore[assignment]  # a base of Runtime only (no cast call)
        return rt._start(
            workflow,
            input,
            workflow_id=workflow_id,
            timeout=seconds(timeout),
            priority=priority,
            start_at=start_at,
            delay=delay,
            deadline=deadline,
        )

    def _start(
        self,
        workflow: str | Workflow,
        input: Any,
        *,
        workflow_id: str | None,
        timeout: float | None,
        also: tuple[Put, ...] = (),
        **when: Any,
    ) -> WorkflowHandle:
        """:meth:`start`; ``also`` is written in the transaction that creates the
        workflow, and only if it does (a schedule's cursor, see ``_firing``). Plain
        calls, no shared generator with ``start_async`` (``_async``): each costs the
        caller CPU on every start, and both faces are made of the same parts."""
        rt: Runtime = self  # type: ignore[assignment]
        rt._check_active()
        clock = rt._ctx.clock.time()
        new = rt._prepare(workflow, input, workflow_id=workflow_id, now=clock, **when)
        now: float | None = clock
        wid, began, claim = new.workflow_id, time.monotonic(), None
        if workflow_id is not None:  # (its wait is bounded by the caller's timeout too)
            on_loop = rt._ctx.event_loop.runs_here()  # (a wait there holds up async actions)
            claim = rt._claims.claim(wid, timeout, rt._ask_timeout, "start()", passing=on_loop)
        try:
            if (repeated := rt._repeated(new, workflow_id)) is not None:
                return repeated
            if not rt._take_capacity_now(1):
                fresh, mine, claim = workflow_id is None, claim, None  # (_queue_start's now)
                queued = rt._queue_start(new, also, left(timeout, began), mine, fresh)
                if queued is not None:  # created by the thread that handed it a slot
                    return rt._landed(new, queued.error)
                claim = mine  # a slot was free after all: the claim is back with us
                now = None  # created after the wait, not before
            early = workflow_id is None or rt._claims.sole(claim)  # (see _submit_start)
            landing = rt._submit_start(new, also, now, claim=claim, early=early)
            claim = None  # the landing ends it once the commit is decided
            return rt._landed(new, landing.wait(rt._ask_timeout))
        finally:
            rt._claims.give_back(wid, claim)  # (runtime/_claims.py)

    def _checked(
        self, workflow: str | Workflow, input: Any, workflow_id: str | None, when: dict[str, Any]
    ) -> tuple[NewStart, float | None]:
        """One start's checks (:meth:`_prepare`: nothing written) and their engine time."""
        rt = _runtime(self)
        rt._check_active()
        now = rt._ctx.clock.time()
        return rt._prepare(workflow, input, workflow_id=workflow_id, now=now, **when), now

    def _repeated(self, new: NewStart, workflow_id: str | None) -> WorkflowHandle | None:
        """Before a start takes a slot: the handle of the workflow with the caller's id (or
        its conflict; a repeated start neither waits nor writes), or None: an id made here,
        or free (``Store.surely_new`` knows most without a read). Only a start that went
        past its claim (``_claims``) can take it after this read: neither goes early."""
        rt: Runtime = self  # type: ignore[assignment]
        if workflow_id is None:
            return None
        record = existing_workflow(rt, new.workflow_id)  # (a stop may have shut the store)
        return None if record is None else rt._same_start(record, new)

    def _submit_start(
        self,
        new: NewStart,
        also: tuple[Put, ...],
        now: float | None,
        loop: asyncio.AbstractEventLoop | None = None,
        *,
        handed: QueuedStart | None = None,
        claim: threading.Lock | None = None,
        early: bool = True,
    ) -> Landing:
        """Queue the transition creating ``new`` (its capacity is taken: it is given back
        here if queueing fails, else by the :class:`Landing` or the final listener), and
        if ``early`` admit it at once (:meth:`Landing.admit_early`): only an id no other
        creation can take first (made here, or claimed alone: runtime/_claims.py), as an
        early one that fails halts the Scheduler's writes. ``handed``: the queued start
        (runtime/_capacity.py) whose caller waits on its ``decided`` lock, released once
        the commit is; its ``landing`` is set before the creation is queued (the commit
        may wake the caller before this returns); ``claim``: the id's, ended then too."""
        rt: Runtime = self  # type: ignore[assignment]
        try:
            key = (new.plan.name, new.plan.version)
            mark = key not in rt._started  # (its definition's first start here)
            record, steps, transition = rt._creation(new, also, mark=mark, now=now)
            decided = None if handed is None else handed.decided
            landing = Landing(rt, record, steps, key, loop, decided=decided, claim=claim)
            if handed is not None:
                handed.landing = landing
            submit_creations(rt, (transition,), landing, (new.plan,), halts=early)
        except BaseException:
            rt._release_capacity()
            raise
        if early:
            landing.admit_early()
        return landing

    def _landed(self, new: NewStart, error: BaseException | None) -> WorkflowHandle:
        """The handle of a start whose commit was decided with ``error`` (None: created);
        an id that was taken gives the existing workflow's handle, or a conflict."""
        rt: Runtime = self  # type: ignore[assignment]
        wid = new.workflow_id
        if isinstance(error, ConditionFailed):
            return rt._same_start(taken_by(rt._store, new), new)
        if error is not None:
            raise error
        if _log.isEnabledFor(logging.INFO):  # (its extra= map, built on every start)
            _log.info(
                "workflow %s started (%s@%d)",
                wid,
                new.plan.name,
                new.plan.version,
                extra={"workflow_id": wid, "workflow": new.plan.name},
            )
        return WorkflowHandle(rt, wid)

    def _prepare(
        self,
        workflow: str | Workflow,
        input: Any = None,
        *,
        workflow_id: str | None = None,
        priority: int = 0,
        start_at: datetime.datetime | None = None,
        delay: float | None = None,
        deadline: float | datetime.datetime | None = None,
        now: float,
        wall: float | None = None,
    ) -> NewStart:
        """Check one start's arguments (nothing is written): see :meth:`start`.

        ``now`` is the engine's time and ``wall`` the wall clock's at the same instant
        (read here, only if a datetime needs it, when not given).

        A definition without agent templates needs the same agents for every start:
        once they were found registered, they are looked at again only after the next
        ``add_agent``/``remove_agent`` (its version is read before the look, so one
        that raced it is looked at again too)."""
        rt: Runtime = self  # type: ignore[assignment]
        if isinstance(workflow, Workflow):  # that version, not the latest of its name
            name = workflow.name
            plan = rt._ctx.plans.get((name, workflow.version))
            if plan is None and name in rt._latest:
                versions = sorted(v for n, v in rt._ctx.plans if n == name)
                raise UnknownName(
                    f"workflow {name!r} version {workflow.version} is not registered "
                    f"(registered versions: {', '.join(map(str, versions))}); call "
                    "add_workflow with it first, or start it by name for the latest"
                )
            if plan is not None and workflow.compile() != plan:  # (~4 us, by object only)
                raise InvalidDefinition(
                    f"workflow {name!r} version {workflow.version} is not the definition "
                    "registered under that name and version (its steps differ); register "
                    "it with add_workflow (under a new version once any has started), or "
                    "start the registered one by name"
                )
        else:
            name = workflow
            plan = rt._latest.get(name) if isinstance(name, str) else None
        if plan is None:
            known = ", ".join(sorted(rt._latest)) or "none"
            raise UnknownName(
                f"no workflow named {name!r} is registered (registered: {known}); "
                "call add_workflow first"
            )
        wid = _new_id() if workflow_id is None else validate_id(workflow_id)
        if priority != 0 or type(priority) is not int:  # (0: the default, nothing to check)
            priority = check_priority(priority)
        begin = ends = None
        given = deadline is not None  # (else the definition's default, if it has one)
        if deadline is None:
            deadline = plan.deadline
        if start_at is not None or delay is not None or deadline is not None:
            if wall is None and (start_at is not None or isinstance(deadline, datetime.datetime)):
                wall = rt._clock.time()
            begin = begin_at(now, start_at, delay, wall=wall)
            ends = None if deadline is None else deadline_at(now, deadline, wall=wall)
            if given and begin is not None and ends is not None and ends <= begin:
                raise InvalidInput(
                    f"its deadline (in {ends - now:g} s) comes before its delayed start (in "
                    f"{begin - now:g} s): it would end COMPENSATED before its first step ran; "
                    "give a later deadline (it counts from this call, not from the start)"
                )
        normalized = normalize(input, limit=rt._max_input_bytes, what="workflow input")
        version = rt._agents_version
        seen = rt._agents_seen.get(id(plan))
        if seen is not None and seen[0] is plan and seen[1] == version:
            return NewStart(plan, wid, normalized, priority, begin, {}, ends)
        agents = resolve_agents(plan, normalized, rt._routers, limit=rt._ask_timeout)
        check_registered(plan, agents, rt._ctx.agents, rt._actions)
        if not agents:  # no templated step: the same agents for every start
            rt._agents_seen[id(plan)] = (plan, version)
        return NewStart(plan, wid, normalized, priority, begin, agents, ends)

    def _creation(
        self,
        new: NewStart,
        also: tuple[Put, ...] = (),
        *,
        mark: bool | None = None,
        now: float | None = None,
    ) -> tuple[WorkflowRecord, list[StepRecord], Any]:
        """The new workflow's records and transition; ``mark`` (default: unless this
        runtime marked it already) adds its definition's started mark; ``now`` defaults
        to the engine's clock."""
        rt: Runtime = self  # type: ignore[assignment]
        if mark is None:
            mark = (new.plan.name, new.plan.version) not in rt._started
        if now is None:
            now = rt._ctx.clock.time()
        return creation(
            new,
            now,
            rt._ctx.next_token(),
            mark_started=mark,
            also=also,
            trace=None
            if rt._tracing is None
            else rt._tracing.start_workflow(new.plan.name, new.workflow_id, now),
        )

    def _same_start(self, existing: WorkflowRecord, new: NewStart) -> WorkflowHandle:
        """The existing workflow's handle if ``new`` asks for the same, else a conflict."""
        rt = _runtime(self)
        if not same_record(existing, new):
            what = (
                "different input"
                if existing.name == new.plan.name
                else f"another workflow (you asked for {new.plan.name!r})"
            )
            raise WorkflowConflict(
                f"workflow id {existing.id!r} was already started as {existing.name!r} with "
                f"{what}; use a new id, or the same workflow and input to get the existing "
                "handle"
            )
        return WorkflowHandle(rt, existing.id)

    def _id_taken(self, record: WorkflowRecord) -> None:
        """A start was not written (its id was taken): give its capacity back and drop
        its span."""
        rt = _runtime(self)
        rt._release_capacity()
        if rt._tracing is not None and record.trace is not None:
            rt._tracing.discard(record.trace)
