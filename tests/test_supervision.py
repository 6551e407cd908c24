"""Supervisors restart children by restart type x exit reason, per strategy, within an intensity."""

from __future__ import annotations

import threading
import time
from typing import Any

import pykka
import pytest
from _supervision_kit import WAIT, Events, Worker, call, children_of, spec

from herder.actors import (
    Backoff,
    ChildSpec,
    FakeClock,
    Restart,
    RestartIntensityExceeded,
    Strategy,
    SupervisedActor,
    SupervisorStartError,
    start_supervisor,
)
from herder.store import InvalidInput

RESTARTED = {
    (Restart.PERMANENT, "crash"): True,
    (Restart.PERMANENT, "normal"): True,
    (Restart.TRANSIENT, "crash"): True,
    (Restart.TRANSIENT, "normal"): False,
    (Restart.TEMPORARY, "crash"): False,
    (Restart.TEMPORARY, "normal"): False,
}
# Which of the children a, b, c get a new instance when b dies and is restarted.
REPLACED = {
    Strategy.ONE_FOR_ONE: {"b"},
    Strategy.SIMPLE_ONE_FOR_ONE: {"b"},
    Strategy.ONE_FOR_ALL: {"a", "b", "c"},
    Strategy.REST_FOR_ONE: {"b", "c"},
}


def _start_abc(strategy: Strategy, restart: Restart, events: Events) -> pykka.ActorRef[Any]:
    specs = [spec("a"), spec("b", restart=restart), spec("c")]
    if strategy is Strategy.SIMPLE_ONE_FOR_ONE:
        sup = start_supervisor("s", strategy, listener=events)
        for s in specs:
            call(sup, "start_child", s)
        return sup
    return start_supervisor("s", strategy, specs, listener=events)


@pytest.mark.parametrize("strategy", list(Strategy))
@pytest.mark.parametrize("restart", list(Restart))
@pytest.mark.parametrize("how", ["crash", "normal"])
def test_a_dead_child_is_restarted_by_restart_type_and_strategy(
    strategy: Strategy, restart: Restart, how: str
) -> None:
    events = Events()
    sup = _start_abc(strategy, restart, events)
    before = children_of(sup)
    if how == "crash":
        before["b"].ref.tell("crash")
    else:
        before["b"].ref.stop()
    events.wait("crashed" if how == "crash" else "exited", "b")

    if RESTARTED[(restart, how)]:
        replaced = REPLACED[strategy]
        last = max(replaced)  # restarts happen in start order, so c (or b) comes last
        events.wait("restarted", last)
        after = children_of(sup)
        assert list(after) == ["a", "b", "c"]
        for cid in "abc":
            changed = after[cid].ref.actor_urn != before[cid].ref.actor_urn
            assert changed == (cid in replaced), cid
            assert after[cid].restarts == (1 if cid in replaced else 0)
            assert after[cid].alive
            assert after[cid].ref.ask("ping", timeout=WAIT) == "pong"
    else:
        after = children_of(sup)
        removed = restart is Restart.TEMPORARY or strategy is Strategy.SIMPLE_ONE_FOR_ONE
        assert list(after) == (["a", "c"] if removed else ["a", "b", "c"])
        if not removed:
            assert not after["b"].alive
            assert after["b"].ref is None
        for cid in "ac":
            assert after[cid].ref.actor_urn == before[cid].ref.actor_urn
    assert not [e for e in events.drain() if e.kind == "restarted" and e.child_id not in "abc"]


def test_children_start_in_order_and_stop_in_reverse_order() -> None:
    log: list[tuple[str, str]] = []
    sup = start_supervisor("s", children=[spec("a", log), spec("b", log), spec("c", log)])
    assert log == [("start", "a"), ("start", "b"), ("start", "c")]
    log.clear()
    sup.stop(timeout=WAIT)
    assert log == [("stop", "c"), ("stop", "b"), ("stop", "a")]


def test_one_for_all_stops_the_others_in_reverse_then_restarts_all_in_order() -> None:
    log: list[tuple[str, str]] = []
    events = Events()
    sup = start_supervisor(
        "s",
        Strategy.ONE_FOR_ALL,
        [spec("a", log), spec("b", log), spec("c", log)],
        listener=events,
    )
    log.clear()
    children_of(sup)["b"].ref.tell("crash")
    events.wait("restarted", "c")
    assert log == [("stop", "c"), ("stop", "a"), ("start", "a"), ("start", "b"), ("start", "c")]


def test_which_children_counts_restarts_and_the_listener_sees_every_event() -> None:
    events = Events()
    sup = start_supervisor("s", children=[spec("a"), spec("b")], max_restarts=10, listener=events)
    assert [(e.kind, e.child_id) for e in (events.wait("started"), events.wait("started"))] == [
        ("started", "a"),
        ("started", "b"),
    ]
    for _ in range(3):
        children_of(sup)["a"].ref.tell("crash")
        crashed = events.wait("crashed", "a")
        assert isinstance(crashed.reason, RuntimeError)
        assert crashed.supervisor == "s"
        restarted = events.wait("restarted", "a")
        assert restarted.ref is not None
        assert restarted.ref.ask("ping", timeout=WAIT) == "pong"
    infos = children_of(sup)
    assert (infos["a"].restarts, infos["b"].restarts) == (3, 0)
    assert call(sup, "count_children") == 2
    sup.stop(timeout=WAIT)
    assert [(e.kind, e.child_id) for e in events.drain()] == [
        ("terminated", "b"),
        ("terminated", "a"),
    ]


def test_a_listener_that_raises_is_logged_and_does_not_kill_the_supervisor() -> None:
    def listener(_event: object) -> None:
        raise ValueError("listener bug")

    sup = start_supervisor("s", children=[spec("a")], listener=listener)
    children_of(sup)["a"].ref.tell("crash")
    assert call(sup, "count_children") == 1
    assert sup.is_alive()


def test_a_child_failing_in_on_start_makes_start_supervisor_raise_and_leaves_nothing_running() -> (
    None
):
    log: list[tuple[str, str]] = []
    with pytest.raises(SupervisorStartError, match=r"'b'.*refuses to start"):
        start_supervisor("s", children=[spec("a", log), spec("b", log, fail_start=True), spec("c")])
    assert log == [("start", "a"), ("stop", "a")]
    assert pykka.ActorRegistry.get_all() == []


def test_start_child_refuses_duplicates_and_reports_start_failures() -> None:
    sup = start_supervisor("s", Strategy.SIMPLE_ONE_FOR_ONE)
    call(sup, "start_child", spec("w1"))
    with pytest.raises(InvalidInput, match="'w1'"):
        call(sup, "start_child", spec("w1"))
    with pytest.raises(SupervisorStartError, match="refuses to start"):
        call(sup, "start_child", spec("w2", fail_start=True))
    with pytest.raises(SupervisorStartError, match="SupervisedActor"):
        call(sup, "start_child", ChildSpec("plain", pykka.ThreadingActor.start))
    assert [c.id for c in call(sup, "which_children")] == ["w1"]


def test_a_crash_in_on_start_during_a_restart_is_retried_within_the_intensity() -> None:
    events = Events()
    attempts = iter([False, True, True, False])  # first start ok, then two failed restarts

    def start() -> pykka.ActorRef[Any]:
        return Worker.start("a", fail_start=next(attempts))

    sup = start_supervisor("s", children=[ChildSpec("a", start)], max_restarts=5, listener=events)
    children_of(sup)["a"].ref.tell("crash")
    events.wait("crashed", "a")
    failed = [events.wait("crashed", "a"), events.wait("crashed", "a")]
    assert all(e.ref is None and isinstance(e.reason, SupervisorStartError) for e in failed)
    restarted = events.wait("restarted", "a")
    assert restarted.ref is not None
    assert restarted.ref.ask("ping", timeout=WAIT) == "pong"
    assert children_of(sup)["a"].restarts == 1


def test_a_child_that_never_starts_again_exhausts_the_intensity_instead_of_looping() -> None:
    fatal: list[BaseException] = []
    gave_up = threading.Event()
    first = [True]

    def start() -> pykka.ActorRef[Any]:
        ok, first[0] = first[0], False
        return Worker.start("a", fail_start=not ok)

    def on_fatal(exc: BaseException) -> None:
        fatal.append(exc)
        gave_up.set()

    sup = start_supervisor(
        "s", children=[ChildSpec("a", start)], max_restarts=3, clock=FakeClock(), on_fatal=on_fatal
    )
    children_of(sup)["a"].ref.tell("crash")
    assert gave_up.wait(WAIT)
    assert len(fatal) == 1
    assert isinstance(fatal[0], RestartIntensityExceeded)
    assert fatal[0].restarts == 4
    with pytest.raises(pykka.ActorDeadError):
        sup.ask("anything", timeout=WAIT)


def test_intensity_escalates_through_two_levels_until_the_root_gives_up() -> None:
    clock = FakeClock()
    events = Events()
    fatal: list[BaseException] = []
    gave_up = threading.Event()

    def on_fatal(exc: BaseException) -> None:
        fatal.append(exc)
        gave_up.set()

    def start_mid() -> pykka.ActorRef[Any]:
        return start_supervisor(
            "mid", children=[spec("leaf")], max_restarts=1, clock=clock, listener=events
        )

    root = start_supervisor(
        "root",
        children=[ChildSpec("mid", start_mid), spec("sibling")],
        max_restarts=1,
        clock=clock,
        listener=events,
        on_fatal=on_fatal,
    )
    leaf = events.wait("started", "leaf", "mid").ref
    for round_ in range(2):
        for _ in range(2):  # the first crash is restarted by mid, the second exceeds 1
            assert leaf is not None
            leaf.tell("crash")
            events.wait("crashed", "leaf", "mid")
            if _ == 0:
                leaf = events.wait("restarted", "leaf", "mid").ref
        mid_crash = events.wait("crashed", "mid", "root")
        assert isinstance(mid_crash.reason, RestartIntensityExceeded)
        assert mid_crash.reason.supervisor == "mid"
        if round_ == 0:
            # the new mid starts its leaf inside root's restart, so that event comes first
            leaf = events.wait("started", "leaf", "mid").ref
            events.wait("restarted", "mid", "root")
    assert gave_up.wait(WAIT)
    assert len(fatal) == 1
    assert isinstance(fatal[0], RestartIntensityExceeded)
    assert (fatal[0].supervisor, fatal[0].child_id, fatal[0].restarts) == ("root", "mid", 2)
    assert "root" in str(fatal[0])
    assert "'mid'" in str(fatal[0])
    with pytest.raises(pykka.ActorDeadError):
        root.ask("anything", timeout=WAIT)
    events.wait("terminated", "sibling", "root")


def test_the_intensity_window_slides_on_the_clock() -> None:
    clock = FakeClock()
    events = Events()
    sup = start_supervisor(
        "s", children=[spec("a")], max_restarts=2, period=10.0, clock=clock, listener=events
    )
    for _ in range(6):  # two restarts per 10 s window never exceed the limit
        for _ in range(2):
            children_of(sup)["a"].ref.tell("crash")
            events.wait("restarted", "a")
        clock.advance(10.5)
    assert children_of(sup)["a"].restarts == 12


def test_backoff_delays_the_restart_until_the_clock_passes_the_delay() -> None:
    clock = FakeClock()
    events = Events()
    sup = start_supervisor(
        "s",
        children=[spec("a")],
        max_restarts=10,
        backoff=Backoff(initial=1.0, factor=2.0, max=3.0),
        clock=clock,
        listener=events,
    )
    for delay in (1.0, 2.0, 3.0):  # k-th restart waits min(max, initial * factor**(k-1))
        children_of(sup)["a"].ref.tell("crash")
        events.wait("crashed", "a")
        clock.advance(delay - 0.01)
        assert not children_of(sup)["a"].alive  # processed after any restart the timer sent
        clock.advance(0.01)
        assert events.wait("restarted", "a").ref is not None
        assert children_of(sup)["a"].alive


def test_a_stale_backoff_timer_for_a_terminated_child_is_ignored() -> None:
    clock = FakeClock()
    events = Events()
    sup = start_supervisor(
        "s", children=[spec("a")], backoff=Backoff(initial=1.0), clock=clock, listener=events
    )
    children_of(sup)["a"].ref.tell("crash")
    events.wait("crashed", "a")
    call(sup, "terminate_child", "a")
    clock.advance(5.0)
    assert not children_of(sup)["a"].alive
    assert [e.kind for e in events.drain()] == []


def test_restart_child_replaces_a_child_blocked_forever_within_its_shutdown_timeout() -> None:
    gate, entered = threading.Event(), threading.Event()
    threads: dict[str, threading.Thread] = {}
    events = Events()
    sup = start_supervisor(
        "s",
        children=[spec("a", shutdown=0.2, gate=gate, entered=entered, threads=threads)],
        listener=events,
    )
    old = children_of(sup)["a"].ref
    old.tell("block")
    assert entered.wait(WAIT)
    began = time.monotonic()
    new = call(sup, "restart_child", "a")
    assert time.monotonic() - began < 2.0
    assert events.wait("abandoned", "a").ref == old
    assert events.wait("restarted", "a").ref == new
    entered.clear()  # the replacement shares the gate; only the old one is inside it
    assert new.ask("ping", timeout=WAIT) == "pong"

    gate.set()  # the abandoned thread now processes its stop and reports a late exit
    threads[old.actor_urn].join(WAIT)
    assert not threads[old.actor_urn].is_alive()
    info = children_of(sup)["a"]  # answered after the late exit report was handled
    assert info.ref == new
    assert info.alive
    assert info.restarts == 1
    assert [e.kind for e in events.drain()] == []


def test_stopping_a_supervisor_abandons_a_child_that_does_not_stop_in_time() -> None:
    gate, entered = threading.Event(), threading.Event()
    events = Events()
    sup = start_supervisor(
        "s",
        children=[spec("a"), spec("b", shutdown=0.1, gate=gate, entered=entered)],
        listener=events,
    )
    children_of(sup)["b"].ref.tell("block")
    assert entered.wait(WAIT)
    assert sup.stop(timeout=WAIT)
    assert [(e.kind, e.child_id) for e in events.drain() if e.kind != "started"] == [
        ("abandoned", "b"),
        ("terminated", "a"),
    ]
    gate.set()


def test_terminate_restart_and_delete_child_follow_otp() -> None:
    events = Events()
    sup = start_supervisor("s", children=[spec("a"), spec("b")], listener=events)
    call(sup, "terminate_child", "a")
    assert events.wait("terminated", "a")
    assert [(c.id, c.alive) for c in call(sup, "which_children")] == [("a", False), ("b", True)]
    ref = call(sup, "restart_child", "a")
    assert ref.ask("ping", timeout=WAIT) == "pong"
    call(sup, "delete_child", "a")
    assert [c.id for c in call(sup, "which_children")] == ["b"]
    with pytest.raises(InvalidInput, match="no child with id 'a'"):
        call(sup, "terminate_child", "a")


def test_terminate_child_removes_the_spec_in_a_simple_one_for_one_pool() -> None:
    sup = start_supervisor("pool", Strategy.SIMPLE_ONE_FOR_ONE)
    call(sup, "start_child", spec("w"))
    call(sup, "terminate_child", "w")
    assert call(sup, "count_children") == 0


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: ChildSpec("", Worker.start), "ChildSpec.id"),
        (lambda: ChildSpec("a", "nope"), "ChildSpec.start"),  # type: ignore[arg-type]
        (lambda: ChildSpec("a", Worker.start, restart="sometimes"), "restart.*'sometimes'"),  # type: ignore[arg-type]
        (lambda: ChildSpec("a", Worker.start, shutdown=-1), "shutdown.*-1"),
        (lambda: Backoff(factor=0.5), "factor.*0.5"),
        (lambda: start_supervisor("s", "one_for_none"), "strategy.*'one_for_none'"),  # type: ignore[arg-type]
        (lambda: start_supervisor("s", max_restarts=-1), "max_restarts.*-1"),
        (lambda: start_supervisor("s", period=0), "period.*0"),
        (lambda: start_supervisor("s", children=[spec("a"), spec("a")]), "duplicate.*'a'"),
    ],
)
def test_bad_specs_and_flags_are_refused_naming_the_field_and_value(
    make: Any, message: str
) -> None:
    with pytest.raises(InvalidInput, match=message):
        make()


def test_restart_types_and_strategies_accept_their_string_values() -> None:
    assert ChildSpec("a", Worker.start, restart="transient").restart is Restart.TRANSIENT  # type: ignore[arg-type]
    assert Strategy("rest_for_one") is Strategy.REST_FOR_ONE


class _Failing(SupervisedActor):
    reported_failures = (KeyError,)

    def on_receive(self, message: Any) -> Any:
        raise message


@pytest.mark.parametrize(("failure", "logged"), [(ValueError("bug"), True), (KeyError("x"), False)])
def test_pykka_logs_a_failure_unless_the_actor_class_says_it_is_reported(
    failure: BaseException, logged: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """An agent instance's crash is told to the Scheduler, which logs it; any other
    failure of a supervised actor (a bug of herder's) keeps pykka's traceback."""
    ref = _Failing.start()
    ref.tell(failure)
    assert ref.actor_stopped.wait(WAIT)
    assert not ref.is_alive()
    errors = [r for r in caplog.records if r.name == "pykka" and r.levelname == "ERROR"]
    assert bool(errors) is logged
