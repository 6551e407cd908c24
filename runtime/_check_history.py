"""``herder check``'s history checks: every value of the ``history`` database is an event
of a workflow that exists, and each workflow's history ends where its records are.

The value must be an event by :func:`~herder.store.as_event`'s rule, the one by which
``read_history`` (``herder show``, ``rt.history``, the console) lists a value as
``damaged``: a record that decodes (its CRC is fine) but is of another type, a map of
no known kind or without its kind's fields, or an array of no event's layout. The key
must be a history key (workflow id, NUL, 8-byte sequence) of a stored workflow: a purge
(``store/_retention.py``) deletes a workflow with all its history in one transaction
and nothing else deletes workflows, so no history outlives its workflow. A workflow
whose record is unreadable still exists: its history is not reported for that.

Every transition is stored with its event, in one transaction, so a workflow's history
ends where its records are: its last workflow event enters the workflow's state, and
each step's last event the step's (a step with none is PENDING), and each event starts
where the one before it of the same workflow or step ended (a step's first from PENDING,
a workflow's from none). A record ahead of its history, or an event that does not follow
on, had a transition stored without its event.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Any

from herder.store import (
    StepState,
    WorkflowState,
    as_event,
    event_flaw,
    history_owner,
    step_key,
)

NOT_A_KEY = (
    "not a history key (a workflow id, NUL, an 8-byte sequence): no workflow's history "
    "lists it, and herder never writes one; restore a backup if the store was edited"
)


UNTOLD = (
    "a transition was stored without its event (herder writes both in one transaction), "
    "so `herder show {wid}` and the console tell another story; the workflow runs by its "
    "records: restore a backup if its history matters"
)

States = tuple[WorkflowState, Mapping[str, StepState]]
"""A readable workflow's state and those of its readable step records, by name."""


class HistoryCheck:
    """The ``history`` database's ``(key, raw)`` ``entries``, read in key order beside the
    workflows (their keys sort alike): :meth:`upto` each workflow's key in order, then
    :meth:`rest`, so one workflow's history is held at a time. ``ids`` holds the key of
    every workflow seen so far; ``load`` decodes one value, as a 1-tuple, or reports it
    corrupt and gives None."""

    def __init__(
        self,
        entries: Iterable[tuple[bytes, bytes]],
        ids: Collection[bytes],
        problem: Callable[[str, bytes, str], None],
        load: Callable[[bytes, bytes], tuple[object] | None],
    ) -> None:
        self._entries = iter(entries)
        self._next = next(self._entries, None)
        self._ids = ids
        self._problem = problem
        self._load = load

    def upto(self, wkey: bytes, states: States | None) -> None:
        """Check the entries up to the history of workflow ``wkey`` and that history,
        which must end in ``states`` (None: its records are unreadable)."""
        last: dict[str | None, object] = {}  # step (None: the workflow) -> the state entered
        gaps: list[tuple[bytes, str | None, object, object]] = []  # (key, step, before, "from")
        end = wkey + b"\x01"  # (its events' keys are wkey, NUL, a sequence)
        whole = True
        while self._next is not None and self._next[0] < end:
            key, raw = self._next
            self._next = next(self._entries, None)
            owner, event = self._event(key, raw)
            if owner != wkey:
                continue
            if event is None:
                whole = False  # (its story is cut: where it ends is not known)
                continue
            if event["kind"] == "workflow":
                which = None
            elif event["kind"] == "step" and isinstance(event["step"], str):
                which = event["step"]
            else:
                continue  # (a probe's or an operator's; a foreign map naming no step)
            before = last.get(which, None if which is None else StepState.PENDING)
            if event["from"] != before:
                gaps.append((key, which, before, event["from"]))
            last[which] = event["to"]
        if not whole:
            return
        untold = UNTOLD.format(wid=wkey.decode("utf-8", "replace"))
        for key, which, before, start in gaps:
            subject = "the workflow" if which is None else f"step {which!r}"
            was = "had no state" if before is None else f"was {before}"
            why = f"goes from {start}, but {subject} {was} before it: {untold}"
            self._problem("history", key, why)
        if states is not None:
            _check_ends(wkey, *states, last, self._problem)

    def rest(self) -> None:
        """Check the entries after the last workflow's history."""
        while self._next is not None:
            key, raw = self._next
            self._next = next(self._entries, None)
            self._event(key, raw)

    def _event(self, key: bytes, raw: bytes) -> tuple[bytes | None, dict[str, Any] | None]:
        """The workflow key ``key`` names and the event ``raw`` is (None if either is
        not one), reported when it is not an event of a workflow that exists."""
        problem = self._problem
        owner = history_owner(key)
        if owner is None:
            problem("history", key, NOT_A_KEY)
            return None, None
        wid = owner.decode("utf-8", "replace")
        if owner not in self._ids:
            problem(
                "history",
                key,
                f"event of workflow {wid!r}, which does not exist (a purge deletes a "
                "workflow with its history, and an event written while it did, such as a "
                "refused command's, with its next batch or at its stop: a runtime killed "
                f"before that leaves it): a workflow started as {wid!r} would list it as its own; "
                "start none with that id, or restore a backup",
            )
        decoded = self._load(key, raw)
        event = None if decoded is None else as_event(decoded[0])
        if event is None and decoded is not None:
            problem(
                "history",
                key,
                f"not a history event: {event_flaw(decoded[0])}. `herder show {wid}` lists "
                "it as damaged and the workflow runs on; restore a backup if that event matters",
            )
        return owner, event


def _check_ends(
    wkey: bytes,
    state: WorkflowState,
    steps: Mapping[str, StepState],
    last: Mapping[str | None, object],
    problem: Callable[[str, bytes, str], None],
) -> None:
    """Report the workflow ``wkey`` or a step of it whose state is not the one its
    history's last event (in ``last``, by step; None: the workflow's) enters."""
    wid = wkey.decode("utf-8", "replace")
    untold = UNTOLD.format(wid=wid)
    told = last.get(None)
    if told != state:
        problem("workflows", wkey, f"{state}, but {_ends(told)}: {untold}")
    for name, st in steps.items():
        told = last.get(name, StepState.PENDING if st is StepState.PENDING else None)
        if told != st:
            problem("steps", step_key(wid, name), f"{st}, but {_ends(told)}: {untold}")


def _ends(told: object) -> str:
    if told is None:
        return "its history has no event of it"
    return f"the last event of its history has it {told}"
