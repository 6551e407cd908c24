"""The results an attempt is given: those of its workflow's succeeded steps, by name, in
the order they succeeded (``StepContext.results``).

A small plan's are gathered for each attempt (:func:`gathered`). A wide plan's run keeps
them in a :class:`ResultLog` as its steps change, so that each attempt's view is taken
in O(1) instead of an O(N) copy per attempt: with 20,000 steps those copies, and the
garbage collector walking them while they were young, were half the run's time.

Imports: herder.store only.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from herder.store import StepRecord


def gathered(steps: Mapping[str, StepRecord]) -> dict[str, Any]:
    """The results of the succeeded ``steps`` by name, in the order they succeeded (by
    the token each success drew, so a run read back lists them as before)."""
    kept, last, ordered = {}, 0, True
    for st in steps.values():  # (one loop: a comprehension is a call in 3.11)
        if st.succeeded:
            kept[st.name] = st.result
            done = st.done_token or 0
            if done < last:
                ordered = False
            last = done
    if not ordered:  # (branches that ended out of plan order)
        ended = sorted((steps[name] for name in kept), key=_succeeded_order)
        kept = {st.name: st.result for st in ended}
    return kept


def _succeeded_order(st: StepRecord) -> int:
    return st.done_token or 0


class ResultLog:
    """A wide run's results in the order its steps succeeded; a view of it is its first
    ``len(log)`` entries, read on an action's thread while the engine goes on.

    Only ever appended to: a step that stops having succeeded (an operator's reset, a
    compensation) or succeeds again with another result makes a new log, so what a view
    of an older log reads never changes. Appends keep every earlier position (``index``).
    """

    __slots__ = ("index", "names", "values")

    def __init__(self, pairs: Iterable[tuple[str, Any]] = ()) -> None:
        self.names: list[str] = []
        self.values: list[Any] = []
        self.index: dict[str, int] = {}
        for name, value in pairs:
            self._append(name, value)

    @classmethod
    def of(cls, steps: Mapping[str, StepRecord]) -> ResultLog:
        """The log of a run's ``steps`` as loaded."""
        return cls(gathered(steps).items())

    def __len__(self) -> int:
        return len(self.names)

    def added(self, name: str, value: Any) -> ResultLog:
        """The log with step ``name`` succeeded with ``value``: this one, appended to; a
        new one if the step was in it with another value (it keeps its place)."""
        at = self.index.get(name)
        if at is None:
            self._append(name, value)
            return self
        if self.values[at] is value:
            return self
        return ResultLog(
            (n, value if n == name else v) for n, v in zip(self.names, self.values, strict=True)
        )

    def without(self, name: str) -> ResultLog:
        """The log without step ``name``: a new one if it was in it."""
        if name not in self.index:
            return self
        return ResultLog((n, v) for n, v in zip(self.names, self.values, strict=True) if n != name)

    def _append(self, name: str, value: Any) -> None:
        # (values and names first: a position in index is always there to read)
        self.values.append(value)
        self.names.append(name)
        self.index[name] = len(self.names) - 1
