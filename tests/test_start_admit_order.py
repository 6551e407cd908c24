"""A start admitted early (``Landing.admit_early``, on the caller's thread) reaches the
Scheduler before what follows it for the same start (the Admit once durable, or the
Unadmit of a creation that failed), whoever of the caller and the writer's call
(``Landing.__call__``) tells that, and whatever the two threads do.

The Scheduler takes an early Admit that comes after those as new: it ran again, from its
first step, a workflow that had already ended, or ran one that was never created (the
threaded simulation, with the caller held for up to 10 ms between its turn and telling
the early Admit, left steps DISPATCHED in SUCCEEDED and COMPENSATED workflows). Here the
writer's call comes exactly in that gap: while the early Admit is being told.
"""

from __future__ import annotations

import threading
from types import SimpleNamespace
from typing import Any

import pytest

from herder.runtime._starts import Landing
from herder.store import StoreIOError

pytestmark = pytest.mark.timeout(60)
WAIT = 30.0


class _Told:
    """What ``Landing`` needs of the runtime; it records what the Scheduler is told."""

    def __init__(self) -> None:
        self.told: list[str] = []
        self._started: set[tuple[str, int]] = set()
        self._ctx = SimpleNamespace(early_epoch=0)
        self.on_early = lambda: None

    def _admit(self, starts: list[Any], *, early: object = None) -> None:
        if early is not None:
            self.on_early()  # (the writer's call comes now)
        self.told.append("admit" if early is None else "admit early")

    def _unadmit(self, record: Any) -> None:
        self.told.append("unadmit")

    def _id_taken(self, record: Any) -> None:
        pass


# What follows an early Admit once the commit is decided, whichever of the caller and the
# writer comes last: (the commit's error, the Scheduler let go of an early start meanwhile,
# what is told after the early Admit).
FOLLOWS = pytest.mark.parametrize(
    ("error", "let_go", "then"),
    [
        (None, False, []),  # the Scheduler still has it: nothing follows
        (None, True, ["admit"]),  # it let go of an early start meanwhile: admitted again
        (StoreIOError("disk full"), False, ["unadmit"]),
    ],
)


@FOLLOWS
def test_what_follows_an_early_admit_is_told_after_it_when_the_writer_calls_meanwhile(
    error: BaseException | None, let_go: bool, then: list[str]
) -> None:
    rt = _Told()
    landing = Landing(rt, record=object(), steps=[], key=("w", 1))  # type: ignore[arg-type]

    def writer_calls_now() -> None:
        if let_go:
            rt._ctx.early_epoch += 1
        writer = threading.Thread(target=landing, args=([error],), name="writer")
        writer.start()
        writer.join(WAIT)
        assert not writer.is_alive()

    rt.on_early = writer_calls_now
    landing.admit_early()
    assert rt.told == ["admit early", *then]
    assert landing.wait(0) is error
    assert landing.settled is (error is None and not let_go)


@FOLLOWS
def test_what_follows_an_early_admit_is_told_by_the_writers_call_after_it(
    error: BaseException | None, let_go: bool, then: list[str]
) -> None:
    rt = _Told()
    landing = Landing(rt, record=object(), steps=[], key=("w", 1))  # type: ignore[arg-type]
    landing.admit_early()
    rt._ctx.early_epoch += let_go
    landing([error])
    assert rt.told == ["admit early", *then]


@pytest.mark.parametrize(("error", "told"), [(None, ["admit"]), (StoreIOError("full"), [])])
def test_a_start_that_landed_before_its_early_admit_is_told_once_by_the_writers_call(
    error: BaseException | None, told: list[str]
) -> None:
    rt = _Told()
    landing = Landing(rt, record=object(), steps=[], key=("w", 1))  # type: ignore[arg-type]
    landing([error])
    landing.admit_early()
    assert rt.told == told
