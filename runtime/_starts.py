"""Creating workflows: a validated :class:`NewStart` and the one store transition that
creates it (``Runtime.start``), or many of them in one group commit
(``Runtime.start_many``)."""

from __future__ import annotations

import asyncio
import functools
import itertools
import math
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from herder.actors import InvalidDefinition, RuntimeClosed, WorkflowConflict
from herder.runtime._timing import new_workflow
from herder.runtime._waits import OneShot
from herder.store import (
    Expect,
    InvalidInput,
    LeaseLost,
    Plan,
    Put,
    StepRecord,
    Store,
    StoreClosed,
    TimedOut,
    Transition,
    WorkflowRecord,
    WorkflowState,
    decode,
    encode,
    history_key,
    history_put,
    started_key,
)

if TYPE_CHECKING:
    from herder.runtime._runtime import Runtime


@dataclass(slots=True)
class NewStart:
    """One workflow to create, checked: its plan, id, normalized input and timing.

    Not frozen: ``start_many`` makes thousands, and a frozen dataclass's ``__init__``
    costs several times as much (nothing changes one once made)."""

    plan: Plan
    workflow_id: str
    input: Any
    priority: int
    begin: float | None
    agents: dict[str, str]  # step -> agent resolved from a template (runtime/_routing.py)
    deadline: float | None = None  # the clock time it must end by (runtime/_deadlines.py)


def creation(
    new: NewStart,
    now: float,
    token: int,
    *,
    mark_started: bool,
    also: tuple[Put, ...] = (),
    trace: str | None = None,
) -> tuple[WorkflowRecord, list[StepRecord], Transition]:
    """The new workflow's records and the transition that creates them if its id is free.

    ``mark_started`` adds the definition's started mark (after which the definition may
    not change under its version); ``also`` is written in the same transaction, and only
    if it applies (a schedule's cursor); ``trace`` is the workflow span's traceparent
    (runtime/_tracing.py), kept in the record.
    """
    record, steps, ops = new_workflow(
        new.plan,
        new.workflow_id,
        new.input,
        now,
        priority=new.priority,
        begin=new.begin,
        agents=new.agents,
        trace=trace,
        deadline=new.deadline,
    )
    ops.append(Put("history", history_key(new.workflow_id, token), _created_event(now)))
    ops += also
    if mark_started:
        ops.append(_mark_put(new.plan.name, new.plan.version))
    free = Expect("workflows", ops[0].key, exists=False)  # new_workflow's record put
    return record, steps, Transition(ops=tuple(ops), expect=(free,))


def submit_creations(
    rt: Runtime, group: tuple[Transition, ...] | list[Transition], callback: Any,
    plans: Iterable[Plan], *, halts: bool = False,
) -> None:  # fmt: skip
    """Queue ``group``, creations made with ``plans``, under ``rt._defining`` if one is first
    started here or was replaced since (a start of the new one may have written the mark):
    a replacing ``add_workflow`` comes before (this one is refused) or after (refused itself)."""
    try:
        writer = rt._store.writer
    except StoreClosed as exc:  # (closed by a stop since the start's checks)
        raise stopped(rt, exc)  # noqa: B904 (stopped() sets its cause; not exc's own)
    checked = [p for p in plans if (key := (p.name, p.version)) not in rt._started
               or rt._ctx.plans.get(key) is not p]  # fmt: skip
    if not checked:  # (every start but the first few of each definition)
        writer.submit_many(group, callback, halts=halts)
        return
    with rt._defining:
        for plan in checked:
            key = (plan.name, plan.version)  # (and one add_workflow is storing: its own)
            for current in (rt._ctx.plans.get(key), rt._storing.get(key)):
                if current is not None and current is not plan and current != plan:
                    raise InvalidDefinition(
                        f"workflow {plan.name!r} version {plan.version} was registered again "
                        "with other steps while this start was being made; nothing was "
                        "started: start it again (it runs the definition registered now)"
                    )
        writer.submit_many(group, callback, halts=halts)


def stopped(rt: Runtime, error: BaseException, what: str = "nothing was started") -> BaseException:
    """``error``, or :class:`RuntimeClosed` saying ``what`` (as stop() promises) if a stop or
    a handoff begun since the checks released the lease (LeaseLost) or closed the store."""
    if isinstance(error, LeaseLost | StoreClosed) and (rt._closed or rt._draining):
        closed = RuntimeClosed(f"the runtime is stopping (stop() was called): {what}")
        closed.__cause__ = error
        return closed
    return error


def started_mark(name: str, version: int) -> Transition:
    """The definition's started mark: once written, the definition may not change under
    its version (``add_workflow``)."""
    return Transition(ops=(_mark_put(name, version),))


def _mark_put(name: str, version: int) -> Put:
    return Put("meta", started_key(name, version), _ONE)


_ONE = encode(1)


@functools.lru_cache(maxsize=1)
def _created_event(now: float) -> bytes:
    """The stored history event of a workflow created (RUNNING) at ``now``: ``history_put``'s
    value, of neither id nor sequence (a batch encodes it once), from its compact array."""
    return encode([_CREATED[0], now, *_CREATED[2:]])


_CREATED: list[Any] = decode(
    history_put(
        "", 0, {"kind": "workflow", "t": 0.0, "from": None, "to": WorkflowState.RUNNING.value}
    ).value,
    db="history",
    key=b"created",
)
"""A created event's stored array, ``[kind, t, from, to, error]``: its time is replaced."""


START_ARGS = frozenset(
    {"workflow", "input", "workflow_id", "priority", "start_at", "delay", "deadline"}
)
"""The keys an item of ``start_many`` may hold: ``start()``'s arguments."""


def start_items(starts: object) -> list[Any]:
    """``start_many``'s items as a list (each checked by :func:`start_args`)."""
    if isinstance(starts, str | bytes | Mapping) or not isinstance(starts, Iterable):
        raise InvalidInput(
            "start_many takes an iterable of mappings, each of start()'s arguments "
            f"({{'workflow': ..., 'input': ...}}), got {starts!r:.80}"
        )
    return list(starts)


def start_args(index: int, item: object) -> Mapping[str, Any]:
    """One ``start_many`` item, checked, as keyword arguments for ``Runtime._prepare``."""
    # (a dict first: isinstance against the Mapping ABC costs a call of its own per item)
    if (type(item) is not dict and not isinstance(item, Mapping)) or "workflow" not in item:
        raise InvalidInput(
            f"start_many item {index} must be a mapping with a 'workflow' key and any of "
            f"start()'s other arguments, got {item!r:.80}"
        )
    if not item.keys() <= START_ARGS:
        unknown = set(item) - START_ARGS
        raise InvalidInput(
            f"start_many item {index} has unknown keys {sorted(map(str, unknown))}; use "
            f"{', '.join(sorted(START_ARGS))}"
        )
    return item  # the others default as in start()


def same_start(a: NewStart, b: NewStart) -> bool:
    """Whether two starts of one id ask for the same workflow (so both get its handle)."""
    return a.plan.name == b.plan.name and _same_input(a.input, b.input)


def existing_workflow(rt: Runtime, workflow_id: str) -> WorkflowRecord | None:
    """The workflow a start's id names already, or None: no read for an id the store knows
    is free (``Store.surely_new``); a stop since the checks shut the store: RuntimeClosed."""
    store = rt._store
    try:
        return None if store.surely_new(workflow_id) else store.get_workflow(workflow_id)
    except StoreClosed as exc:
        raise stopped(rt, exc)  # noqa: B904 (stopped() sets its cause; not exc's own)


def taken_by(store: Store, new: NewStart) -> WorkflowRecord:
    """The workflow that took ``new``'s id as its creation committed (ConditionFailed);
    :class:`WorkflowConflict` if it was deleted since (retention, a purge): no handle of
    it can be had, and starting it anew is the caller's choice, not this start's."""
    raced = store.get_workflow(new.workflow_id)
    if raced is None:
        raise WorkflowConflict(
            f"workflow id {new.workflow_id!r} was taken by another start as this one "
            "committed, and that workflow was deleted (retention or herder purge) before "
            "it could be read; nothing was started: start it again to run it anew"
        )
    return raced


def same_record(existing: WorkflowRecord, new: NewStart) -> bool:
    """Whether an existing workflow is what ``new`` would have created."""
    return existing.name == new.plan.name and _same_input(existing.input, new.input)


def _same_input(a: Any, b: Any) -> bool:
    """Equal as stored: ``==``, except where the store keeps a difference (True, 1
    and 1.0 are three inputs; a tuple is the list it is stored as; NaN is itself).
    Keys are str (the store refuses others), in any order."""
    if isinstance(a, dict):
        if not isinstance(b, dict) or len(a) != len(b):
            return False
        return a.keys() == b.keys() and all(_same_input(v, b[k]) for k, v in a.items())
    if isinstance(a, list | tuple):
        return (
            isinstance(b, list | tuple)
            and len(a) == len(b)
            and all(_same_input(x, y) for x, y in zip(a, b, strict=True))
        )
    kind = _number_kind(a)
    if kind or _number_kind(b):
        return kind == _number_kind(b) and (
            a == b or (kind == "float" and math.isnan(a) and math.isnan(b))
        )
    return bool(a == b) or encode(a) == encode(b)


def _number_kind(value: Any) -> str:
    """Which of the store's three number types ``value`` is ('' for none)."""
    if isinstance(value, bool):
        return "bool"
    return "int" if isinstance(value, int) else "float" if isinstance(value, float) else ""


class Landing:
    """One ``start()``'s commit, as the store writer reports it (its ``submit_many``
    callback, on the writer thread): admits the workflow once it is durable (unless the
    Scheduler that took it up early still has it: :class:`~herder.actors._messages.EarlyStart`),
    or gives its capacity back when it was not written, and only then wakes the caller. So a caller
    that stopped waiting (a timeout, a cancelled task) still gets its workflow running,
    or its slot back, and nobody else has to decide which.

    The writer calls it exactly once, so a blocking caller waits on a bare lock released
    by that call (no :class:`OneShot`: its first-resolver-wins lock guards against a
    second resolver, and there is none); ``start_async``'s caller awaits a
    :class:`OneShot` of its loop.
    """

    __slots__ = (
        "_claim",
        "_decided",
        "_epoch",
        "_error",
        "_record",
        "_rt",
        "_shot",
        "_steps",
        "_turn",
        "key",
        "settled",
    )

    def __init__(
        self,
        rt: Runtime,
        record: WorkflowRecord,
        steps: list[StepRecord],
        key: tuple[str, int],
        loop: asyncio.AbstractEventLoop | None = None,
        *,
        decided: threading.Lock | None = None,
        claim: threading.Lock | None = None,
    ) -> None:
        self._rt, self._record, self._steps, self.key = rt, record, steps, key
        self._claim = claim  # the id's, ended once the commit is decided (_claims)
        self._error: BaseException | None = None
        self._shot: OneShot[BaseException | None] | None = None
        if decided is not None:  # held by a queued start's caller (runtime/_capacity.py)
            self._decided = decided
        elif loop is None:
            self._decided = threading.Lock()
            self._decided.acquire()  # released by the writer's call
        else:
            self._decided = threading.Lock()
            self._shot = OneShot(loop)
        # admit_early against the writer's call: the first to draw gets 0 (no lock: the
        # counter's __next__ is one C call, atomic)
        self._turn = itertools.count().__next__
        self._epoch = 0  # the Scheduler's early_epoch when it was (actors/_messages.py)
        self.settled = False  # landed, admitted early, and no Admit follows (EarlyStart)

    def admit_early(self) -> None:
        """Admit the workflow while its creation is on its way to disk (queued with
        ``halts``), so that its first DISPATCHED can share that commit: every engine
        batch queues behind the creation, and if the creation fails none of them is
        written (fail-stop) and the Scheduler is told to forget it (``Unadmit``). Not
        once the writer has called: then the call admits it, or it was not created.

        What follows the early Admit (:meth:`_follow`) is told after it, by whichever of
        the two comes last: an Admit or Unadmit that overtook it (the caller held for a
        few ms between its turn and the Admit) had the Scheduler take the early Admit as
        new, and run again a workflow that had ended, or one that was never created."""
        rt = self._rt
        if self._claim is not None:  # its creation is queued: a start may go past the claim
            rt._claims.queued(self._claim)
        self._epoch = rt._ctx.early_epoch  # (read before the Admit goes out)
        if self._turn():  # the writer has called
            return
        rt._admit([(self._record, self._steps)], early=self)
        if self._turn() > 1:  # the writer called while the Admit was being told
            self._follow()

    def __call__(self, results: list[BaseException | None]) -> None:
        rt, error = self._rt, results[0]
        if error is not None:
            error = stopped(rt, error)
        self._error = error  # (before the turn: _follow reads it)
        try:
            turn = self._turn()  # 0: first; 1: admit_early is telling; 2: it has told
            if error is None:
                rt._started.add(self.key)
                if turn == 0:
                    rt._admit([(self._record, self._steps)])
            if turn == 2:
                self._follow()
            if error is not None:
                rt._id_taken(self._record)  # or not written at all: the same for both
        finally:
            if self._claim is not None:
                rt._claims.give_back(self._record.id, self._claim)
            if self._shot is None:
                self._decided.release()
            else:
                self._shot.set(error)

    def _follow(self) -> None:
        """After the early Admit, once the commit is decided: the Scheduler forgets a
        workflow that was not created; one that landed is admitted again unless the
        Scheduler that took it up early has let go of no early start since (a restart, a
        refused first batch, a start it did not take up bump the epoch before the store
        is read): then it still has this one, or has ended it (a cancel), and would
        ignore the Admit."""
        if self._error is not None:
            self._rt._unadmit(self._record)
        elif self._rt._ctx.early_epoch == self._epoch:
            self.settled = True
        else:
            self._rt._admit([(self._record, self._steps)])

    @property
    def error(self) -> BaseException | None:
        """The commit's error (None: durable), once it is decided."""
        return self._error

    def wait(self, timeout: float | None) -> BaseException | None:
        """Block until the commit is decided; its error (None: durable)."""
        if not self._decided.acquire(timeout=-1 if timeout is None else timeout):
            raise undecided(timeout, self._record.id)
        return self._error

    async def wait_async(self, timeout: float | None) -> BaseException | None:
        """As :meth:`wait`, awaited on the loop given at creation."""
        assert self._shot is not None  # made with a loop
        try:
            return await self._shot.wait_async(timeout)
        except TimeoutError:
            raise undecided(timeout, self._record.id) from None


def undecided(timeout: float | None, workflow_id: str) -> TimedOut:
    """A start's error for a commit not decided within ``timeout`` (``ask_timeout``): it
    names the id, which a caller that gave none has no other way to learn."""
    return TimedOut(
        f"the store did not commit the start of workflow {workflow_id!r} within {timeout} s "
        "(ask_timeout); it may still start: starting it again with that workflow_id is safe"
    )
