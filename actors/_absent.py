"""Workflows out of memory: the unfinished ones the Scheduler holds no run of, and why.

:class:`Absent` keeps the lists :class:`~herder.actors._recovery.Recovery` and
:class:`~herder.actors._reload.Reloads` fill and empty: workflows awaiting their
definition, workflows parked after a failed commit (until a backoff ends), the ids
recovery took over from the store (a late ``Admit`` of them is stale), and the records
recovery skipped as corrupt. From them it answers whether a workflow's timers are still
wanted, and the stats. It holds data only (no store, no messages), on the Scheduler's
thread.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any

from herder.actors.engine import WorkflowRun
from herder.store import StoreCorrupt, WorkflowRecord, get_logger

_log = get_logger("herder.scheduler")


class Absent:
    """The unfinished workflows not in memory; see the module docstring."""

    def __init__(self, runs: Mapping[str, WorkflowRun]) -> None:
        self._runs = runs  # the engine's: the workflows in memory
        # Recovered workflows awaiting their definition, by definition (ordered sets).
        self._awaiting: dict[tuple[str, int], dict[str, None]] = {}
        self.parked: set[str] = set()  # forgotten after a failed commit, reloaded later
        # Unfinished ids recovery took over: a late Admit of one is stale. The Scheduler
        # lets an id go once its workflow's end is durable (a new one may reuse it then).
        self.recovered: set[str] = set()
        self.dormant: set[str] = set()  # out of memory until a timer (_dormancy.py)
        self._corrupt: dict[str, str] = {}  # "db:key" -> why, for records recovery skipped
        # Until recovery's last chunk, any workflow not in memory may be one recovery has
        # not reached yet: its timers are wanted (a WAITING step has no other wake-up).
        self.recovering = True

    def await_definition(self, record: WorkflowRecord, *, warn: bool = True) -> None:
        """Park a workflow until its definition is registered; warn once per definition
        (a restart may park 100k workflows, and stats() shows the count). Recovery passes
        ``warn=False`` and logs one summary line per definition when it is done."""
        waiting = self._awaiting.setdefault((record.name, record.version), {})
        if not waiting and warn:
            _log.warning(
                "workflow %s (and any others of it) awaits definition %s version %d; "
                "register it to resume",
                record.id,
                record.name,
                record.version,
            )
        waiting[record.id] = None

    def defined(self, key: tuple[str, int], count: int) -> list[str]:
        """Take up to ``count`` of the workflows awaiting definition ``key`` off the list."""
        waiting = self._awaiting.get(key, {})
        chunk = list(itertools.islice(waiting, count))
        for workflow_id in chunk:
            del waiting[workflow_id]
        if not waiting:
            self._awaiting.pop(key, None)
        return chunk

    def awaits(self, key: tuple[str, int]) -> bool:
        """Whether workflows await definition ``key``."""
        return key in self._awaiting

    def log_awaiting(self) -> None:
        """Recovery is done: one line per definition that workflows still await."""
        for (name, version), waiting in self._awaiting.items():
            _log.warning(
                "%d unfinished workflows (e.g. %s): each awaits definition %s version %d; "
                "register it (and its agents) to resume them, best in Runtime(path, setup=...)",
                len(waiting),
                next(iter(waiting)),
                name,
                version,
            )

    def release(self, record: WorkflowRecord) -> str:
        """Take a workflow off the lists of those to be read back later, and keep a late
        ``Admit`` of it from running stale records; returns which list it was on
        ("awaiting" its definition, "parked" after a failed commit, "dormant" out of memory
        until a timer, or "")."""
        if record.id in self.dormant:  # (its creation had settled: no Admit can follow)
            self.dormant.discard(record.id)
            return "dormant"
        self.recovered.add(record.id)
        if record.id in self.parked:
            self.parked.discard(record.id)
            return "parked"
        key = (record.name, record.version)
        waiting = self._awaiting.get(key)
        if waiting is None or record.id not in waiting:
            return ""
        del waiting[record.id]
        if not waiting:
            del self._awaiting[key]
        return "awaiting"

    def wanted(self, workflow_id: str) -> bool:
        """Whether the workflow's timers are still wanted: it is in memory, awaits its
        definition, is parked after a failed commit, waits out of memory for a timer, or
        recovery may not have reached it yet (it is still reading the store, a chunk per
        message)."""
        return (
            self.recovering
            or workflow_id in self._runs
            or workflow_id in self.parked
            or workflow_id in self.dormant
            or any(workflow_id in ids for ids in self._awaiting.values())
        )

    def note_corrupt(self, exc: StoreCorrupt) -> None:
        """A record could not be read: its workflow stays where it is (logged, in stats)."""
        _log.error("%s; the workflow it belongs to stays where it is", exc)
        self._corrupt[f"{exc.db}:{exc.key!r}"] = exc.reason

    def stats(self) -> dict[str, Any]:
        """Workflows awaiting their definition, out of memory until a timer, and records
        recovery skipped as corrupt."""
        return {
            "dormant_workflows": len(self.dormant),
            "awaiting_definition": {
                f"{name}@{version}": len(ids) for (name, version), ids in self._awaiting.items()
            },
            "corrupt": dict(self._corrupt),
        }
