"""Group restarts as OTP's supervisor does them (issue 14, defect 8).

- A restart that fails is retried for the failed child's whole group: under one_for_all
  every child is stopped again, including those that had restarted, and all start again
  in order (OTP ``supervisor_SUITE:one_for_all_other_child_fails_restart``); under
  rest_for_one the failed child and those after it.
- A group restart starts every non-temporary child of the group, running or not (one
  stopped with ``terminate_child``, a transient one that exited normally); a running
  temporary sibling is stopped and forgotten.
- ``SupervisorStartError.__cause__`` is the child's own exception, however deep the
  supervisor that started it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import pykka
import pytest
from _supervision_kit import WAIT, Events, Worker, call, children_of

from herder.actors import (
    Backoff,
    ChildSpec,
    FakeClock,
    Restart,
    Strategy,
    SupervisorStartError,
    start_supervisor,
)

Log = list[tuple[str, str]]


class Script:
    """Child specs whose Workers log ``("start"|"stop"|"fail", id)``; the starts numbered
    in ``fails`` (per child, counting from 1) fail in ``on_start``."""

    def __init__(self, fails: dict[str, set[int]] | None = None) -> None:
        self.fails = fails or {}
        self.starts: dict[str, int] = {}
        self.log: Log = []

    def spec(self, child_id: str, restart: Restart = Restart.PERMANENT) -> ChildSpec:
        def start() -> pykka.ActorRef[Any]:
            n = self.starts[child_id] = self.starts.get(child_id, 0) + 1
            fail = n in self.fails.get(child_id, set())
            if fail:
                self.log.append(("fail", child_id))
            return Worker.start(child_id, self.log, fail_start=fail)

        return ChildSpec(child_id, start, restart=restart, shutdown=WAIT)

    def abc(self, **restart: Restart) -> list[ChildSpec]:
        return [self.spec(c, restart.get(c, Restart.PERMANENT)) for c in "abc"]


def steps(text: str) -> Log:
    """``"stop c, start a"`` -> ``[("stop", "c"), ("start", "a")]``."""
    return [(w[0], w[1]) for w in (s.split() for s in text.split(","))]


O4A, R4O, O4O = Strategy.ONE_FOR_ALL, Strategy.REST_FOR_ONE, Strategy.ONE_FOR_ONE

# strategy, the child that crashes, the child whose next start fails once, what follows
FAILED_RESTARTS = [
    (O4A, "a", "b", "stop c, stop b, start a, fail b, stop a, start a, start b, start c"),
    (O4A, "b", "c",
     "stop c, stop a, start a, start b, fail c, stop b, stop a, start a, start b, start c"),
    (O4A, "a", "a", "stop c, stop b, fail a, start a, start b, start c"),
    (R4O, "a", "b", "stop c, stop b, start a, fail b, start b, start c"),
    (R4O, "b", "c", "stop c, start b, fail c, start c"),
    (O4O, "b", "b", "fail b, start b"),
]  # fmt: skip


@pytest.mark.parametrize(("strategy", "crash", "fails", "expected"), FAILED_RESTARTS)
def test_a_failed_restart_is_retried_for_the_failed_childs_whole_group(
    strategy: Strategy, crash: str, fails: str, expected: str
) -> None:
    script = Script({fails: {2}})
    events = Events()
    sup = start_supervisor("s", strategy, script.abc(), max_restarts=5, listener=events)
    script.log.clear()
    children_of(sup)[crash].ref.tell("crash")
    events.wait("restarted", steps(expected)[-1][1])
    assert script.log == steps(expected)
    for info in children_of(sup).values():
        assert info.ref.ask("ping", timeout=WAIT) == "pong"


def test_one_for_all_keeps_no_child_running_while_a_sibling_waits_for_its_restart() -> None:
    clock = FakeClock()
    script = Script({"b": {2}})
    events = Events()
    sup = start_supervisor("s", O4A, script.abc(), backoff=Backoff(initial=1.0), clock=clock,
                           listener=events)  # fmt: skip
    children_of(sup)["a"].ref.tell("crash")
    events.wait("crashed", "a")
    children_of(sup)  # answered once the crash is handled: the backoff timer is set
    clock.advance(1.0)
    failed = events.wait("crashed", "b")  # its start failed: the group waits for a retry
    assert failed.ref is None
    alive = {cid: info.alive for cid, info in children_of(sup).items()}
    assert alive == dict.fromkeys("abc", False)  # a, restarted before b failed, too
    clock.advance(60.0)
    events.wait("restarted", "c")
    assert all(info.alive for info in children_of(sup).values())


def _terminate(child: str) -> Callable[[pykka.ActorRef[Any], Events], None]:
    def setup(sup: pykka.ActorRef[Any], events: Events) -> None:
        call(sup, "terminate_child", child)
        events.wait("terminated", child)

    return setup


def _exit_normally(child: str) -> Callable[[pykka.ActorRef[Any], Events], None]:
    def setup(sup: pykka.ActorRef[Any], events: Events) -> None:
        children_of(sup)[child].ref.stop()
        events.wait("exited", child)

    return setup


def _nothing(sup: pykka.ActorRef[Any], events: Events) -> None:
    pass


TRANSIENT, TEMPORARY = Restart.TRANSIENT, Restart.TEMPORARY


class Group(NamedTuple):
    strategy: Strategy
    b_restart: Restart | None  # b's restart type (None: permanent)
    setup: Callable[[pykka.ActorRef[Any], Events], None]
    crash: str  # the child that crashes then
    expected: str  # what follows
    alive: str  # the children running at the end


GROUPS = [
    Group(*row)
    for row in [
        (O4A, None, _terminate("c"), "a", "stop b, start a, start b, start c", "abc"),
        (O4A, TRANSIENT, _exit_normally("b"), "a", "stop c, start a, start b, start c", "abc"),
        (O4A, TEMPORARY, _nothing, "a", "stop c, stop b, start a, start c", "ac"),
        (R4O, None, _terminate("c"), "b", "start b, start c", "abc"),
        (R4O, None, _terminate("a"), "b", "stop c, start b, start c", "bc"),
        (R4O, TRANSIENT, _exit_normally("b"), "a", "stop c, start a, start b, start c", "abc"),
        (O4O, None, _terminate("c"), "a", "start a", "ab"),
    ]
]


@pytest.mark.parametrize(
    "row",
    GROUPS,
    ids=[f"{g.strategy}-b_{g.b_restart or 'permanent'}-{g.crash}_crashes" for g in GROUPS],
)
def test_a_group_restart_starts_every_non_temporary_child_of_the_group(row: Group) -> None:
    script = Script()
    events = Events()
    specs = script.abc(b=row.b_restart or Restart.PERMANENT)
    sup = start_supervisor("s", row.strategy, specs, listener=events)
    row.setup(sup, events)
    script.log.clear()
    children_of(sup)[row.crash].ref.tell("crash")
    events.wait("restarted", steps(row.expected)[-1][1])
    assert script.log == steps(row.expected)
    after = children_of(sup)
    assert "".join(cid for cid, info in after.items() if info.alive) == row.alive
    if row.b_restart is TEMPORARY:
        assert "b" not in after


def _nested(script: Script) -> Any:
    inner = ChildSpec("inner", lambda: start_supervisor("inner", children=[script.spec("b")]))
    return start_supervisor("outer", children=[inner])


def _start_child(script: Script) -> Any:
    return call(start_supervisor("s"), "start_child", script.spec("b"))


def _start_children(script: Script) -> Any:
    return call(start_supervisor("s"), "start_children", [script.spec("a"), script.spec("b")])


def _restart_child(script: Script) -> Any:
    script.fails["b"] = {2}
    return call(start_supervisor("s", children=[script.spec("b")]), "restart_child", "b")


def _nested_start_child(script: Script) -> Any:
    inner = ChildSpec("inner", lambda: start_supervisor("inner"))
    outer = start_supervisor("outer", children=[inner])
    return call(children_of(outer)["inner"].ref, "start_child", script.spec("b"))


STARTS = {
    "start_supervisor": lambda script: start_supervisor("s", children=[script.spec("b")]),
    "nested start_supervisor": _nested,
    "start_child": _start_child,
    "start_children": _start_children,
    "restart_child": _restart_child,
    "start_child of a nested supervisor": _nested_start_child,
}


@pytest.mark.parametrize("start", STARTS.values(), ids=STARTS.keys())
def test_a_start_errors_cause_is_the_childs_own_exception(start: Callable[[Script], Any]) -> None:
    script = Script({"b": {1}})
    with pytest.raises(SupervisorStartError, match="b refuses to start") as raised:
        start(script)
    cause = raised.value.__cause__
    assert type(cause) is RuntimeError
    assert str(cause) == "b refuses to start"
