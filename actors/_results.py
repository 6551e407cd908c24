"""``StepContext.results`` as the runtime builds it (:class:`Results`)."""

from __future__ import annotations

from collections.abc import ItemsView, Iterator, KeysView, ValuesView
from typing import Any

from herder.actors.engine import ResultLog
from herder.store import private_copy


class Results(dict[str, Any]):
    """A dict of the results of the steps that had succeeded when the attempt was
    recorded, each copied for the action when it first reads it (changing it changes
    neither the result kept nor what another attempt sees). An attempt pays only for the
    results it reads, on its own thread: copying every earlier result for every attempt,
    on the Scheduler's thread, made each step of a long workflow with structured results
    slower than the last, and stalled every other workflow meanwhile.

    It holds the results as kept; every way a dict hands a value out is routed through
    :meth:`__getitem__` (its copy), so ``json.dumps``, ``dict(...)``, ``{**...}``,
    ``.copy()``, ``|``, ``.values()``, pickling and returning it as a result behave as
    for a plain dict of copies. A value the action stores in it stays its own object.

    A wide workflow's attempt gets a view of its run's :class:`ResultLog` instead
    (:meth:`viewing`): one step's result is read from the log, and the dict is filled
    from it, on the action's thread, only when more is asked of it (its length, its
    keys, a change).
    """

    __slots__ = ("_log", "_own", "_upto")

    def __init__(self, kept: dict[str, Any]) -> None:
        super().__init__(kept)
        self._own: dict[str, Any] = {}  # what the action was handed, or stored, by name
        self._log: ResultLog | None = None  # until filled: the first _upto of it
        self._upto = 0

    @classmethod
    def viewing(cls, log: ResultLog) -> Results:
        """The results in ``log`` now (its first ``len(log)``), taken in O(1)."""
        view = cls.__new__(cls)
        view._own, view._log, view._upto = {}, log, len(log)
        return view

    def _fill(self) -> None:
        log = self._log
        if log is not None:
            names, values = log.names[: self._upto], log.values[: self._upto]
            dict.update(self, zip(names, values, strict=True))  # (not __setitem__)
            self._log = None

    def kept(self) -> dict[str, Any]:
        """The results as kept (not copies): for handing them to another process."""
        self._fill()
        return dict(dict.items(self))

    def _kept(self, step: str) -> Any:
        log = self._log
        if log is None:
            return dict.__getitem__(self, step)
        at = log.index.get(step)
        if at is None or at >= self._upto:
            raise KeyError(step)
        return log.values[at]

    def __getitem__(self, step: str) -> Any:
        own = self._own
        if step not in own:
            own[step] = private_copy(self._kept(step))  # (KeyError if absent)
        return own[step]

    def __contains__(self, step: object) -> bool:
        log = self._log
        if log is None:
            return dict.__contains__(self, step)
        at = log.index.get(step)  # type: ignore[call-overload]  # (TypeError as dict's)
        return at is not None and at < self._upto

    def __len__(self) -> int:
        return dict.__len__(self) if self._log is None else self._upto

    def __setitem__(self, step: str, value: Any) -> None:
        self._fill()
        dict.__setitem__(self, step, value)
        self._own[step] = value

    def __delitem__(self, step: str) -> None:
        self._fill()
        dict.__delitem__(self, step)
        self._own.pop(step, None)

    def __iter__(self) -> Iterator[str]:  # (defined: dict(), {**}, update() then read items)
        self._fill()
        return dict.__iter__(self)

    def __reversed__(self) -> Iterator[str]:
        self._fill()
        return dict.__reversed__(self)

    def __eq__(self, other: object) -> bool:
        self._fill()
        if isinstance(other, Results):
            other._fill()
        return dict.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        return not self == other

    __hash__ = None  # (as dict's)

    def get(self, step: str, default: Any = None) -> Any:
        return self[step] if step in self else default  # noqa: SIM401 (this is get)

    def keys(self) -> KeysView[str]:  # type: ignore[override]
        self._fill()
        return dict.keys(self)

    def values(self) -> ValuesView[Any]:  # type: ignore[override]
        return ValuesView(self)

    def items(self) -> ItemsView[str, Any]:  # type: ignore[override]
        return ItemsView(self)

    def copy(self) -> dict[str, Any]:
        return {step: self[step] for step in self}

    def __or__(self, other: Any) -> dict[str, Any]:  # type: ignore[override]
        return {**self, **other} if isinstance(other, dict) else NotImplemented

    def __ror__(self, other: Any) -> dict[str, Any]:  # type: ignore[override]
        return {**other, **self} if isinstance(other, dict) else NotImplemented

    def __ior__(self, other: Any) -> Results:  # type: ignore[override]
        self.update(other)
        return self

    def update(self, *args: Any, **kwargs: Any) -> None:
        for step, value in dict(*args, **kwargs).items():
            self[step] = value

    def setdefault(self, step: str, default: Any = None) -> Any:
        if step not in self:
            self[step] = default
        return self[step]

    def pop(self, step: str, *default: Any) -> Any:
        if step not in self:
            if default:
                return default[0]
            raise KeyError(step)
        value = self[step]
        del self[step]
        return value

    def popitem(self) -> tuple[str, Any]:
        if not self:
            raise KeyError("popitem(): results are empty")
        step = next(reversed(self))
        return step, self.pop(step)

    def clear(self) -> None:
        self._log = None
        dict.clear(self)
        self._own.clear()

    def __reduce__(self) -> tuple[Any, ...]:  # (copy.copy, deepcopy: a dict of copies)
        return (dict, (self.copy(),))

    def __repr__(self) -> str:
        return repr(self.copy())
