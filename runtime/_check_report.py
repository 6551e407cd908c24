"""What ``herder check`` found: a :class:`CheckReport` of what it looked at, each broken
invariant a :class:`Problem` naming its database and key. The checks themselves are
``_check``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, TextIO

from herder.runtime._console import dump_json
from herder.store import printable


@dataclass(frozen=True, slots=True)
class Problem:
    """One broken invariant: where (database and key) and what."""

    db: str
    key: bytes
    message: str

    def to_dict(self) -> dict[str, str]:
        """The problem as JSON-ready data (the key decoded, undecodable bytes escaped)."""
        return {
            "db": self.db,
            "key": self.key.decode("utf-8", "backslashreplace"),
            "problem": self.message,
        }

    def __str__(self) -> str:
        return f"{self.db} {self.key!r}: {self.message}"


LISTED = 1000
"""Problems a report holds; past them it counts (a store damaged throughout has a problem
per record: half a million held 1 GB, and a listing that long is read by no one)."""


@dataclass
class CheckReport:
    """What :func:`check_store` looked at and the problems it found: the first
    :data:`LISTED` of them, and how many more (``more_problems``)."""

    problems: list[Problem] = field(default_factory=list)
    more_problems: int = 0
    workflows: int = 0
    steps: int = 0
    timers: int = 0
    definitions: int = 0
    incarnation: int = 0

    def add(self, problem: Problem) -> None:
        """Note ``problem``: held while fewer than :data:`LISTED` are, else counted."""
        if len(self.problems) < LISTED:
            self.problems.append(problem)
        else:
            self.more_problems += 1

    @property
    def ok(self) -> bool:
        """True when no invariant is broken."""
        return not self.problems

    @property
    def found(self) -> int:
        """How many problems were found, those held and those counted."""
        return len(self.problems) + self.more_problems

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data."""
        return {
            "ok": self.ok,
            "workflows": self.workflows,
            "steps": self.steps,
            "timers": self.timers,
            "definitions": self.definitions,
            "incarnation": self.incarnation,
            "problems": [p.to_dict() for p in self.problems],
            "more_problems": self.more_problems,
        }


def print_report(out: TextIO, report: CheckReport, path: object, *, as_json: bool) -> None:
    """``herder check``'s output: the counts and the problems listed, or ``--json``."""
    if as_json:
        dump_json(out, report.to_dict())
        return
    counts = (
        f"{report.workflows} workflows, {report.steps} steps, {report.timers} timer entries, "
        f"{report.definitions} definitions"
    )
    if report.ok:
        out.write(f"ok: {path}: {counts} checked, no problems\n")
        return
    out.write(f"{report.found} problems in {path} ({counts} checked):\n")
    for problem in report.problems:  # (its message may name an id: any character but NUL)
        out.write(f"  {printable(problem)}\n")
    if report.more_problems:
        out.write(f"  ... and {report.more_problems} more (the first {LISTED} are listed)\n")
