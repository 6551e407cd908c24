"""``herder check``'s history checks: every value of the ``history`` database is an event
of a workflow that exists.

The value must be an event by :func:`~herder.store.as_event`'s rule, the one by which
``read_history`` (``herder show``, ``rt.history``, the console) lists a value as
``damaged``: a record that decodes (its CRC is fine) but is of another type, a map of
no known kind or without its kind's fields, or an array of no event's layout. The key
must be a history key (workflow id, NUL, 8-byte sequence) of a stored workflow: a purge
(``store/_retention.py``) deletes a workflow with all its history in one transaction
and nothing else deletes workflows, so no history outlives its workflow. A workflow
whose record is unreadable still exists: its history is not reported for that.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable

from herder.store import event_flaw, history_owner

NOT_A_KEY = (
    "not a history key (a workflow id, NUL, an 8-byte sequence): no workflow's history "
    "lists it, and herder never writes one; restore a backup if the store was edited"
)


def check_history(
    entries: Iterable[tuple[bytes, bytes]],
    ids: Collection[bytes],
    problem: Callable[[str, bytes, str], None],
    load: Callable[[bytes, bytes], tuple[object] | None],
) -> None:
    """Report each ``(key, raw)`` of ``entries`` (the history database) that is not an
    event of a workflow whose key is in ``ids``; ``load`` decodes one value, as a
    1-tuple, or reports it corrupt and gives None."""
    for key, raw in entries:
        owner = history_owner(key)
        if owner is None:
            problem("history", key, NOT_A_KEY)
            continue
        wid = owner.decode("utf-8", "replace")
        if owner not in ids:
            problem(
                "history",
                key,
                f"event of workflow {wid!r}, which does not exist (a purge deletes a "
                "workflow with its history, and an event written while it did, such as a "
                "refused command's, with its next batch or at its stop: a runtime killed "
                f"before that leaves it): a workflow started as {wid!r} would list it as its own; "
                "start none with that id, or restore a backup",
            )
        decoded = load(key, raw)
        flaw = None if decoded is None else event_flaw(decoded[0])
        if flaw is not None:
            problem(
                "history",
                key,
                f"not a history event: {flaw}. `herder show {wid}` lists it as damaged "
                "and the workflow runs on; restore a backup if that event matters",
            )
