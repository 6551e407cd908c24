"""Starting children: start_child waits for on_start within start_timeout; start_children
starts a batch in order, all or nothing."""

from __future__ import annotations

import threading
import time
from typing import Any

import pykka
import pytest
from _supervision_kit import WAIT, Events, call, children_of, spec

from herder.actors import (
    ChildSpec,
    Strategy,
    SupervisedActor,
    SupervisorStartError,
    start_supervisor,
)
from herder.store import InvalidInput


class Slow(SupervisedActor):
    """An actor whose on_start blocks until ``gate`` is set."""

    def __init__(self, gate: threading.Event, entered: threading.Event) -> None:
        super().__init__()
        self.gate = gate
        self.entered = entered

    def on_start(self) -> None:
        self.entered.set()
        self.gate.wait()

    def on_receive(self, message: Any) -> Any:
        return "pong"


def test_start_child_returns_only_after_on_start_finished() -> None:
    gate, entered = threading.Event(), threading.Event()
    sup = start_supervisor("s", Strategy.SIMPLE_ONE_FOR_ONE)
    future = sup.proxy().start_child(ChildSpec("slow", lambda: Slow.start(gate, entered)))
    assert entered.wait(WAIT)
    with pytest.raises(pykka.Timeout):
        future.get(timeout=0.2)
    gate.set()
    ref = future.get(timeout=WAIT)
    assert ref.ask("ping", timeout=WAIT) == "pong"


def test_a_child_stuck_in_on_start_fails_the_start_after_start_timeout() -> None:
    gate, entered = threading.Event(), threading.Event()
    sup = start_supervisor("s", Strategy.SIMPLE_ONE_FOR_ONE, start_timeout=0.2)
    began = time.monotonic()
    with pytest.raises(SupervisorStartError, match=r"'slow'.*on_start within 0.2 s"):
        call(sup, "start_child", ChildSpec("slow", lambda: Slow.start(gate, entered)))
    assert time.monotonic() - began < WAIT
    assert call(sup, "count_children") == 0
    call(sup, "start_child", spec("w"))  # the supervisor serves calls again
    gate.set()


def test_start_children_starts_in_order_after_the_existing_ones() -> None:
    log: list[tuple[str, str]] = []
    events = Events()
    sup = start_supervisor("pool", Strategy.SIMPLE_ONE_FOR_ONE, listener=events)
    call(sup, "start_child", spec("w0", log))
    refs = call(sup, "start_children", [spec(f"w{i}", log) for i in (1, 2, 3)])
    assert log == [("start", f"w{i}") for i in range(4)]
    assert [c.id for c in call(sup, "which_children")] == ["w0", "w1", "w2", "w3"]
    assert [r.actor_urn for r in refs] == [
        children_of(sup)[f"w{i}"].ref.actor_urn for i in (1, 2, 3)
    ]
    assert [(e.kind, e.child_id) for e in events.drain()] == [
        ("started", f"w{i}") for i in range(4)
    ]
    assert call(sup, "start_children", []) == []


def test_children_started_together_are_supervised_like_any_other() -> None:
    events = Events()
    sup = start_supervisor("pool", Strategy.SIMPLE_ONE_FOR_ONE, listener=events)
    refs = call(sup, "start_children", [spec("a"), spec("b")])
    refs[1].tell("crash")
    new = events.wait("restarted", "b").ref
    assert new is not None
    assert new.ask("ping", timeout=WAIT) == "pong"
    assert refs[0].ask("ping", timeout=WAIT) == "pong"
    assert children_of(sup)["b"].restarts == 1


def test_start_children_is_all_or_nothing_when_a_start_fails() -> None:
    log: list[tuple[str, str]] = []
    sup = start_supervisor("pool", Strategy.SIMPLE_ONE_FOR_ONE)
    call(sup, "start_child", spec("old", log))
    batch = [spec("a", log), spec("b", log), spec("c", log, fail_start=True), spec("d", log)]
    with pytest.raises(SupervisorStartError, match=r"'c'.*refuses to start"):
        call(sup, "start_children", batch)
    assert log == [
        ("start", "old"),
        ("start", "a"),
        ("start", "b"),
        ("stop", "b"),
        ("stop", "a"),
    ]
    assert [c.id for c in call(sup, "which_children")] == ["old"]
    assert len(pykka.ActorRegistry.get_all()) == 2  # the supervisor and "old"
    call(sup, "start_children", [spec("a"), spec("b")])  # the ids are free again


@pytest.mark.parametrize(
    ("specs", "message"),
    [
        ([spec("x"), spec("old")], "already has a child with id 'old'"),
        ([spec("x"), spec("x")], "duplicate child id 'x'"),
        ([spec("x"), "y"], "takes ChildSpec values, got 'y'"),
        ("xy", "takes a sequence of ChildSpec"),
    ],
)
def test_start_children_checks_every_spec_before_starting_any(specs: Any, message: str) -> None:
    log: list[tuple[str, str]] = []
    sup = start_supervisor("pool", Strategy.SIMPLE_ONE_FOR_ONE)
    call(sup, "start_child", spec("old", log))
    with pytest.raises(InvalidInput, match=message):
        call(sup, "start_children", specs)
    assert log == [("start", "old")]
    assert [c.id for c in call(sup, "which_children")] == ["old"]
