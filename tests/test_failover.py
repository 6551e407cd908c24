"""AnyOf: a step several agents can do; each attempt goes to a healthy member, a retry
prefers another, and compensation goes to the member that did the work."""

from __future__ import annotations

import functools
import io
import threading
from pathlib import Path

import pytest

from herder.runtime import (
    Agent,
    AnyOf,
    CircuitBreaker,
    InvalidDefinition,
    Permanent,
    ProbeResult,
    RetryPolicy,
    Runtime,
    StepContext,
    StepState,
    UnknownName,
    Workflow,
    WorkflowFailed,
    WorkflowState,
)
from herder.runtime._inspect import show_workflow
from herder.runtime.testing import FakeClock, advance, check_store, settle, wait_until
from herder.store import MARK_KEY, Put, StepRecord, Store, Transition, encode, step_key

WAIT = 10.0
NO_WAIT = RetryPolicy(max_attempts=3, initial_interval=1.0, backoff_coefficient=1.0, jitter=0.0)
MEMBERS = ("airline-eu", "airline-us")


class Ledger:
    """What every member was asked, and which members are unwell (thread-safe)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls: list[tuple[str, str, str]] = []  # (member, action, workflow)
        self.sick: set[str] = set()  # health() raises
        self.failing: dict[str, int] = {}  # member -> book calls left to fail
        self.held: dict[str, tuple[threading.Event, threading.Event]] = {}  # (began, release)

    def record(self, member: str, action: str, workflow: str = "") -> None:
        with self.lock:
            self.calls.append((member, action, workflow))
            held = self.held.get(workflow)
        if held is not None:
            held[0].set()
            assert held[1].wait(WAIT)
        with self.lock:
            left = self.failing.get(member, 0)
            if action == "book" and left:
                self.failing[member] = left - 1
                raise ConnectionError(f"{member} refused the booking")

    def hold(self, workflow: str) -> tuple[threading.Event, threading.Event]:
        """Make ``workflow``'s booking block: (it began, release it)."""
        self.held[workflow] = (threading.Event(), threading.Event())
        return self.held[workflow]

    def of(self, action: str) -> list[str]:
        with self.lock:
            return [member for member, act, _ in self.calls if act == action]

    def booked_on(self, member: str) -> list[str]:
        with self.lock:
            return [w for m, act, w in self.calls if m == member and act == "book"]


class Airline(Agent):
    def __init__(self, ledger: Ledger, member: str) -> None:
        self.ledger, self.member = ledger, member

    def book(self, ctx: StepContext) -> str:
        self.ledger.record(self.member, "book", ctx.workflow_id)
        return f"booked on {self.member}"

    def cancel(self, ctx: StepContext) -> None:
        self.ledger.record(self.member, "cancel")

    def health(self) -> None:
        if self.member in self.ledger.sick:
            raise ConnectionError(f"{self.member} is down")


class Hotel(Agent):
    def book(self, ctx: StepContext) -> None:
        if ctx.input.get("hotel") == "full":
            raise ValueError("no room")


TRIP = (
    Workflow("trip")
    .step(
        "flight",
        agent=AnyOf(*MEMBERS),
        action="book",
        compensate="cancel",
        timeout=5.0,
        retry=NO_WAIT,
    )
    .step(
        "hotel",
        agent="hotel",
        action="book",
        after=["flight"],
        retry=RetryPolicy(max_attempts=1),
    )
)


def runtime(
    path: Path, clock: FakeClock, ledger: Ledger, interval: float = 10.0, *, hidden: bool = False
) -> Runtime:
    """``hidden``: the members' factories are lambdas, which hide their class."""
    rt = Runtime(path, clock=clock, sweep_interval=0.05)
    for member in MEMBERS:
        factory = functools.partial(Airline, ledger, member)
        if hidden:
            factory = functools.partial(_build, factory)
        rt.add_agent(member, factory, health_interval=interval)
    rt.add_agent("hotel", Hotel)
    rt.add_workflow(TRIP)
    return rt


def _build(factory: functools.partial[Airline]) -> Airline:
    return factory()  # (a function, not the class: the class is hidden behind it)


def checked(rt: Runtime, clock: FakeClock, count: int, seconds: float = 10.0) -> None:
    """Advance one health interval and wait until every member had ``count`` verdicts."""
    advance(rt, clock, seconds)
    for member in MEMBERS:
        assert rt._ctx.health.checked(member, count, WAIT)
    settle(rt)


def retry_wait(rt: Runtime, workflow_id: str) -> None:
    """Wait until the flight's first attempt failed and its retry waits."""
    wait_until(rt, lambda: rt.status(workflow_id).steps["flight"].state is StepState.RETRY_WAIT)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def test_each_attempt_goes_to_a_healthy_member(tmp_path: Path, clock: FakeClock) -> None:
    ledger = Ledger()
    ledger.sick.add("airline-eu")
    with runtime(tmp_path / "s", clock, ledger) as rt:
        checked(rt, clock, 1, 0.0)
        h = rt.start("trip", {"hotel": "ok"}, workflow_id="w1")
        assert h.result(timeout=WAIT)["flight"] == "booked on airline-us"
        assert ledger.of("book") == ["airline-us"]
        assert rt.status("w1").steps["flight"].agent == "airline-us"
        ledger.sick.clear()
        checked(rt, clock, 2)
        h = rt.start("trip", {"hotel": "ok"}, workflow_id="w2")
        assert h.result(timeout=WAIT)["flight"] == "booked on airline-eu"  # first preferred
        assert check_store(rt._store).ok


def queued(rt: Runtime, agent: str, count: int) -> None:
    wait_until(rt, lambda: rt.stats()["agents"][agent]["queued"] == count)


def test_a_queued_job_moves_off_a_member_that_turns_unhealthy(
    tmp_path: Path, clock: FakeClock
) -> None:
    ledger = Ledger()
    began, release = ledger.hold("w1")
    # Checks every 2 s: w1's attempt (timeout 5 s) keeps running while the checks run.
    with runtime(tmp_path / "s", clock, ledger, interval=2.0) as rt:
        checked(rt, clock, 1, 0.0)
        h1 = rt.start("trip", {"hotel": "ok"}, workflow_id="w1")
        assert began.wait(WAIT)  # airline-eu's one instance is busy with w1
        h2 = rt.start("trip", {"hotel": "ok"}, workflow_id="w2")
        h3 = rt.start("trip", {"hotel": "ok"}, workflow_id="w3", priority=5)
        queued(rt, "airline-eu", 2)  # both wait for airline-eu, the first preferred
        ledger.sick.add("airline-eu")
        checked(rt, clock, 2, 2.0)
        assert h2.result(timeout=WAIT)["flight"] == "booked on airline-us"
        assert h3.result(timeout=WAIT)["flight"] == "booked on airline-us"
        assert ledger.booked_on("airline-us") == ["w3", "w2"]  # priority kept
        assert rt.status("w2").steps["flight"].agent == "airline-us"
        assert not h1.done()  # the attempt running on airline-eu is not interrupted
        release.set()
        assert h1.result(timeout=WAIT)["flight"] == "booked on airline-eu"
        assert check_store(rt._store).ok


@pytest.mark.parametrize("hidden", [False, True], ids=["class", "lambda"])
def test_nothing_is_reserved_ahead_on_a_member_with_health_checks(
    tmp_path: Path, clock: FakeClock, hidden: bool
) -> None:
    # Once an agent's actions were timed, attempts queued behind its busy instance were
    # reserved ahead on it (prefetch) and all ran there after its check failed, none
    # moving to the healthy member (the review of session 14). A factory that hides the
    # class (a lambda) still got prefetch after its first check had found a health().
    ledger = Ledger()
    with runtime(tmp_path / "s", clock, ledger, interval=2.0, hidden=hidden) as rt:
        checked(rt, clock, 1, 0.0)
        for i in range(20):  # its actions are timed: prefetch would now apply
            rt.start("trip", {"hotel": "ok"}, workflow_id=f"warm-{i}").result(timeout=WAIT)
        began, release = ledger.hold("w1")
        h1 = rt.start("trip", {"hotel": "ok"}, workflow_id="w1")
        assert began.wait(WAIT)
        later = [rt.start("trip", {"hotel": "ok"}, workflow_id=f"w{i}") for i in (2, 3)]
        queued(rt, "airline-eu", 2)
        assert rt.stats()["steps"]["reserved_ahead"] == 0
        ledger.sick.add("airline-eu")
        checked(rt, clock, 2, 2.0)
        assert [h.result(timeout=WAIT)["flight"] for h in later] == ["booked on airline-us"] * 2
        release.set()
        assert h1.result(timeout=WAIT)["flight"] == "booked on airline-eu"


def test_a_queued_job_moves_off_a_member_that_was_removed(tmp_path: Path, clock: FakeClock) -> None:
    # A removed member counted as well: a group step's job stayed queued on it for good
    # while the other member idled (the review of session 14).
    ledger = Ledger()
    began, release = ledger.hold("w1")
    with runtime(tmp_path / "s", clock, ledger) as rt:
        checked(rt, clock, 1, 0.0)
        h1 = rt.start("trip", {"hotel": "ok"}, workflow_id="w1")
        assert began.wait(WAIT)  # on airline-eu, the first preferred
        h2 = rt.start("trip", {"hotel": "ok"}, workflow_id="w2")
        queued(rt, "airline-eu", 1)
        rt.remove_agent("airline-eu")
        assert h2.result(timeout=WAIT)["flight"] == "booked on airline-us"
        release.set()  # w1's attempt, running when its agent was removed, ends
        assert h1.result(timeout=WAIT)["flight"] == "booked on airline-eu"


def test_a_queued_job_moves_off_a_member_whose_breaker_opens(
    tmp_path: Path, clock: FakeClock
) -> None:
    ledger = Ledger()
    ledger.failing["airline-eu"] = 1
    began, release = ledger.hold("w1")
    with runtime(tmp_path / "s", clock, ledger) as rt:
        breaker = CircuitBreaker(failures=1, cooldown=60.0)
        rt.add_agent(
            "airline-eu", functools.partial(Airline, ledger, "airline-eu"), breaker=breaker
        )
        h1 = rt.start("trip", {"hotel": "ok"}, workflow_id="w1")
        assert began.wait(WAIT)
        h2 = rt.start("trip", {"hotel": "ok"}, workflow_id="w2")
        queued(rt, "airline-eu", 1)
        release.set()  # w1's attempt fails: airline-eu's breaker opens for 60 s
        assert h2.result(timeout=WAIT)["flight"] == "booked on airline-us"
        retry_wait(rt, "w1")
        advance(rt, clock, 1.0)  # w1's retry goes to airline-us too
        assert h1.result(timeout=WAIT)["flight"] == "booked on airline-us"
        assert ledger.of("book") == ["airline-eu", "airline-us", "airline-us"]
        assert rt.stats()["resources"]["airline-eu"]["breaker"] == "OPEN"
        assert check_store(rt._store).ok


def test_a_job_waits_while_no_member_is_healthy_and_moves_to_one_that_recovers(
    tmp_path: Path, clock: FakeClock
) -> None:
    ledger = Ledger()
    ledger.sick.update(MEMBERS)
    with runtime(tmp_path / "s", clock, ledger) as rt:
        checked(rt, clock, 1, 0.0)
        h = rt.start("trip", {"hotel": "ok"}, workflow_id="w1")
        queued(rt, "airline-eu", 1)  # no member healthy: it waits for the first
        flight = rt.status("w1").steps["flight"]
        assert (flight.state, flight.agent) == (StepState.PENDING, None)  # nothing stored yet
        ledger.sick.discard("airline-us")
        checked(rt, clock, 2)
        assert h.result(timeout=WAIT)["flight"] == "booked on airline-us"
        assert ledger.of("book") == ["airline-us"]
        assert check_store(rt._store).ok


def test_a_job_queued_on_a_removed_member_moves_to_one_that_recovers(
    tmp_path: Path, clock: FakeClock
) -> None:
    # With no member well (airline-eu removed, airline-us failing its checks) the rule
    # queued the job on airline-eu, the first; when airline-us recovered, only the queues
    # of served members were looked at, so the job waited for airline-eu for good.
    ledger = Ledger()
    ledger.sick.add("airline-us")
    with runtime(tmp_path / "s", clock, ledger) as rt:
        checked(rt, clock, 1, 0.0)
        rt.remove_agent("airline-eu")
        h = rt.start("trip", {"hotel": "ok"}, workflow_id="w1")
        queued(rt, "airline-eu", 1)
        ledger.sick.clear()
        advance(rt, clock, 10.0)
        assert rt._ctx.health.checked("airline-us", 2, WAIT)
        assert h.result(timeout=WAIT)["flight"] == "booked on airline-us"
        assert ledger.of("book") == ["airline-us"]
        assert check_store(rt._store).ok


def test_a_retry_after_a_failure_prefers_another_member(tmp_path: Path, clock: FakeClock) -> None:
    ledger = Ledger()
    ledger.failing["airline-eu"] = 1
    with runtime(tmp_path / "s", clock, ledger) as rt:
        h = rt.start("trip", {"hotel": "ok"}, workflow_id="w1")
        retry_wait(rt, "w1")
        advance(rt, clock, 1.0)  # the backoff of the failed first attempt
        assert h.result(timeout=WAIT)["flight"] == "booked on airline-us"
        assert ledger.of("book") == ["airline-eu", "airline-us"]
        step = rt.status("w1").steps["flight"]
        assert (step.attempt, step.agent) == (2, "airline-us")
        out = io.StringIO()
        show_workflow(out, rt._store, "w1", as_json=False)
        assert "flight -> airline-us (the AnyOf member it last ran on)" in out.getvalue()
        assert "on airline-eu" in out.getvalue()  # the history names each attempt's member
        assert "on airline-us" in out.getvalue()
        assert check_store(rt._store).ok


def test_compensation_goes_to_the_member_that_did_the_work(
    tmp_path: Path, clock: FakeClock
) -> None:
    ledger = Ledger()
    ledger.failing["airline-eu"] = 1
    with runtime(tmp_path / "s", clock, ledger) as rt:
        h = rt.start("trip", {"hotel": "full"}, workflow_id="w1")
        retry_wait(rt, "w1")
        advance(rt, clock, 1.0)
        with pytest.raises(WorkflowFailed):
            h.result(timeout=WAIT)
        assert ledger.of("book") == ["airline-eu", "airline-us"]
        assert ledger.of("cancel") == ["airline-us"]
        assert check_store(rt._store).ok


def test_a_start_needs_one_registered_member_and_uses_only_those(tmp_path: Path) -> None:
    # Removing a member (a sick region taken out) refused every new start of the
    # workflow until it was added again: failover stopped at the front door.
    ledger = Ledger()
    with Runtime(tmp_path / "s") as rt:
        for member in MEMBERS:
            rt.add_agent(member, functools.partial(Airline, ledger, member))
        rt.add_agent("hotel", Hotel)
        rt.add_workflow(TRIP)
        rt.remove_agent("airline-eu")
        h1 = rt.start("trip", {"hotel": "ok"}, workflow_id="w1")
        assert h1.result(timeout=WAIT)["flight"] == "booked on airline-us"
        rt.remove_agent("airline-us")
        none = r"none of its members \(airline-eu, airline-us\) is registered"
        with pytest.raises(UnknownName, match=none):
            rt.start("trip", {}, workflow_id="w2")
        assert [s.id for s in rt.list()] == ["w1"]
        rt.add_agent("airline-eu", functools.partial(Airline, ledger, "airline-eu"))
        h3 = rt.start("trip", {"hotel": "ok"}, workflow_id="w3")
        assert h3.result(timeout=WAIT)["flight"] == "booked on airline-eu"
        assert ledger.booked_on("airline-eu") == ["w3"]
        assert check_store(rt._store).ok


def test_every_registered_member_is_checked_for_the_steps_actions_at_definition(
    tmp_path: Path,
) -> None:
    # Only the first member was checked: a later one lacking the action was found at start.
    with Runtime(tmp_path / "s") as rt:
        for member in MEMBERS[:-1]:
            rt.add_agent(member, functools.partial(Airline, Ledger(), member))
        rt.add_agent(MEMBERS[-1], Hotel)  # no cancel
        with pytest.raises(UnknownName, match=f"agent {MEMBERS[-1]!r} has no action 'cancel'"):
            rt.add_workflow(TRIP)


@pytest.mark.parametrize(
    ("members", "match"),
    [
        (("airline-eu",), "at least two"),
        (("a", "a"), "twice"),
        (("db:{region}-a", "db:{region}-b"), "fixed agent names only"),
    ],
)
def test_a_bad_group_is_refused_when_the_workflow_is_defined(
    members: tuple[str, ...], match: str
) -> None:
    with pytest.raises(InvalidDefinition, match=match):
        AnyOf(*members)


def test_a_group_is_stored_with_the_definition(tmp_path: Path) -> None:
    from herder.store import Plan

    plan = TRIP.compile()
    again = Plan.from_dict(plan.to_dict())
    assert again.steps[0].members == MEMBERS
    assert again.steps[1].members == ()
    assert "members" not in plan.to_dict()["steps"][1]  # a plain step's form is unchanged


class Member(Agent):
    """A member with no health checks: work is reserved ahead on it unless the step is a
    group's. ``hold`` (began, release) keeps w1's attempt running until released."""

    def __init__(
        self, name: str, hold: tuple[threading.Event, threading.Event], ran: list[tuple[str, str]]
    ) -> None:
        self.name, self.hold, self.ran = name, hold, ran

    def book(self, ctx: StepContext) -> str:
        self.ran.append((ctx.workflow_id, self.name))
        if ctx.workflow_id == "w1":
            began, release = self.hold
            began.set()
            assert release.wait(WAIT)
        return self.name


def test_a_group_steps_attempt_waiting_for_a_removed_member_moves_to_another(
    tmp_path: Path, clock: FakeClock
) -> None:
    # A group step's attempt reserved ahead on a busy member (prefetch) stayed DISPATCHED
    # there for good once that member was removed, while the other member idled: only
    # queued jobs move. A group step is now never reserved ahead, so it waits queued.
    began, release = threading.Event(), threading.Event()
    ran = list[tuple[str, str]]()
    group = Workflow("g").step("f", agent=AnyOf("a", "b"), action="book", timeout=30.0)
    with Runtime(tmp_path / "s", clock=clock, prefetch=7) as rt:
        for name in ("a", "b"):
            rt.add_agent(
                name, functools.partial(Member, name, (began, release), ran), concurrency=1
            )
        rt.add_workflow(group)
        for i in range(3):  # its actions are timed: prefetch would now apply
            assert rt.start("g", {}, workflow_id=f"warm-{i}").result(timeout=WAIT)["f"] == "a"
        h1 = rt.start("g", {}, workflow_id="w1")
        assert began.wait(WAIT)  # on a (a commit-driven wait could miss it: none follows)
        assert ran[-1] == ("w1", "a")
        h2 = rt.start("g", {}, workflow_id="w2")
        queued(rt, "a", 1)
        assert rt.stats()["steps"]["reserved_ahead"] == 0
        rt.remove_agent("a")
        assert h2.result(timeout=WAIT)["f"] == "b"
        release.set()  # w1's attempt, running when its member was removed, ends there
        assert h1.result(timeout=WAIT)["f"] == "a"
        assert [member for w, member in ran if w == "w2"] == ["b"]
        assert check_store(rt._store).ok


class ProbedAirline(Airline):
    def probe_book(self, ctx: StepContext) -> ProbeResult:
        self.ledger.record(self.member, "probe_book")
        return ProbeResult.done(f"booked on {self.member}")


def test_a_lapsed_attempt_is_probed_on_the_member_it_ran_on(
    tmp_path: Path, clock: FakeClock
) -> None:
    """The engine asked whether the group's first member had a probe, not the member the
    attempt ran on: with the first one not registered, a lapse on the second was never
    probed but run again blind (a second booking)."""
    ledger = Ledger()
    began, release = ledger.hold("w")
    with Runtime(tmp_path / "s", clock=clock, sweep_interval=0.05) as rt:
        rt.add_agent("airline-us", functools.partial(ProbedAirline, ledger, "airline-us"))
        rt.add_agent("hotel", Hotel)
        rt.add_workflow(TRIP)
        h = rt.start("trip", {"hotel": "ok"}, workflow_id="w")
        assert began.wait(WAIT)
        advance(rt, clock, 6.0)  # past the flight's timeout: its outcome is unknown
        release.set()
        advance(rt, clock, 1.0)  # (a retry's backoff, were it retried)
        assert h.result(timeout=WAIT)["flight"] == "booked on airline-us"
        assert rt.status("w").steps["flight"].attempt == 1  # never run again
    assert ledger.of("probe_book") == ["airline-us"]
    assert ledger.of("book") == ["airline-us"]


def _unreachable() -> Airline:
    raise ConnectionError("airline-eu is unreachable")


@pytest.mark.parametrize("host", ["thread", "pool"])
def test_a_retry_after_a_member_failed_to_start_goes_to_another(tmp_path: Path, host: str) -> None:
    # On the thread host a member whose factory fails starts no instance: its attempt
    # failed without the member being recorded, so every retry went to that member again
    # (and the compensation too), never to the member that works.
    ledger = Ledger()
    quick = RetryPolicy(max_attempts=3, initial_interval=0.01, jitter=0.0)
    flight = Workflow("f").step(
        "flight", agent=AnyOf(*MEMBERS), action="book", compensate="cancel", retry=quick
    )
    with Runtime(tmp_path / "s", agent_host=host, sweep_interval=0.05) as rt:
        rt.add_agent("airline-eu", _unreachable)
        rt.add_agent("airline-us", functools.partial(Airline, ledger, "airline-us"))
        rt.add_workflow(flight)
        assert rt.start("f", {}, workflow_id="w1").result(timeout=WAIT) == {
            "flight": "booked on airline-us"
        }
        step = rt.status("w1").steps["flight"]
        assert (step.attempt, step.agent) == (2, "airline-us")
        assert [e.get("agent") for e in rt.history("w1") if e.get("agent")][:1] == ["airline-eu"]
        assert check_store(rt._store).ok


def test_a_change_of_health_looks_only_at_the_queues_of_group_members(
    tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each verdict that changed made the Scheduler scan every agent's queue for group jobs
    # to move: 8,000 per-device agents turning unhealthy together (a network outage) held
    # the Scheduler for 22 s, a workflow of an unrelated agent waiting all that time.
    import herder.actors._dispatch as dispatch

    scanned: list[list[str]] = []
    move_off = dispatch.move_off_unwell

    def spy(engine: object, host: object, agents: list[str], **kwargs: object) -> None:
        scanned.append(sorted(agents))
        move_off(engine, host, agents, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(dispatch, "move_off_unwell", spy)
    ledger = Ledger()
    devices = [f"device:{i}" for i in range(50)]
    with runtime(tmp_path / "s", clock, ledger) as rt:
        for name in devices:
            rt.add_agent(name, functools.partial(Airline, ledger, name))
        rt.start("trip", {"hotel": "ok"}, workflow_id="w1").result(timeout=WAIT)
        ledger.sick.update(devices)
        advance(rt, clock, 10.0)
        assert all(rt._ctx.health.checked(name, 1, WAIT) for name in devices)
        assert not any(rt._ctx.health.healthy(name) for name in devices)
        settle(rt)
        assert sorted(MEMBERS) in scanned  # the group's members are looked at
        assert not {name for agents in scanned for name in agents} - set(MEMBERS)


def test_a_job_queued_on_a_removed_member_moves_to_one_added_again(tmp_path: Path) -> None:
    # With both members removed, a group step's job waited on the first; adding the other
    # again moved nothing (only a change of health regrouped), so it waited for good.
    began, release = threading.Event(), threading.Event()
    ran = list[tuple[str, str]]()
    group = Workflow("g").step("f", agent=AnyOf("a", "b"), action="book", timeout=30.0)
    member = {name: functools.partial(Member, name, (began, release), ran) for name in "ab"}
    with Runtime(tmp_path / "s") as rt:
        for name in ("a", "b"):
            rt.add_agent(name, member[name])
        rt.add_workflow(group)
        h1 = rt.start("g", {}, workflow_id="w1")
        assert began.wait(WAIT)  # a's one instance is busy with w1
        rt.remove_agent("b")
        h2 = rt.start("g", {}, workflow_id="w2")
        queued(rt, "a", 1)
        rt.remove_agent("a")
        rt.add_agent("b", member["b"])
        assert h2.result(timeout=WAIT)["f"] == "b"
        release.set()
        assert h1.result(timeout=WAIT)["f"] == "a"
        assert check_store(rt._store).ok


class Refusing(Airline):
    """A member whose booking says Permanent: nothing happened there."""

    def book(self, ctx: StepContext) -> str:
        self.ledger.record(self.member, "book", ctx.workflow_id)
        raise Permanent(f"{self.member} has no seats")


def _broken() -> Airline:
    raise ValueError("airline-us has no credentials")


@pytest.mark.parametrize(
    ("host", "us"),
    [("thread", _broken), ("pool", _broken), ("thread", None)],
    ids=["unbuilt-thread", "unbuilt-pool", "permanent"],
)
def test_compensation_goes_to_the_member_whose_attempt_may_have_taken_effect(
    tmp_path: Path, host: str, us: object
) -> None:
    # Attempt 1 failed on eu (it may have taken effect), the last one on us never ran (its
    # factory failed) or answered Permanent: the compensation went to us (the member of
    # the last attempt), which never booked (and, unbuilt, parked the workflow), while
    # eu's booking was never cancelled.
    ledger = Ledger()
    ledger.failing["airline-eu"] = 1
    two = RetryPolicy(max_attempts=2, initial_interval=0.01, jitter=0.0)
    flight = Workflow("f").step(
        "flight", agent=AnyOf(*MEMBERS), action="book", compensate="cancel", retry=two
    )
    with Runtime(tmp_path / "s", agent_host=host, sweep_interval=0.05) as rt:
        rt.add_agent("airline-eu", functools.partial(Airline, ledger, "airline-eu"))
        rt.add_agent("airline-us", us or functools.partial(Refusing, ledger, "airline-us"))
        rt.add_workflow(flight)
        with pytest.raises(WorkflowFailed):
            rt.start("f", {}, workflow_id="w1").result(timeout=WAIT)
        status = rt.status("w1")
        assert status.state is WorkflowState.COMPENSATED, status.error
        assert status.steps["flight"].state is StepState.COMPENSATED
        assert ledger.of("cancel") == ["airline-eu"]
        assert ledger.of("book") == ["airline-eu"] + (["airline-us"] if us is None else [])
        undone = [
            e.get("agent") for e in rt.history("w1") if e.get("step") and e["to"] == "COMPENSATED"
        ]
        assert undone == ["airline-eu"]  # the history names the member it was undone on
        assert check_store(rt._store).ok
    # `herder check` takes a step with the member of its mark, or without (older records),
    # and names one whose mark names no member of its group.
    key = step_key("w1", "flight")
    with Store(tmp_path / "s") as store:
        st = StepRecord.from_dict(store.get("steps", key))
        assert st.extra[MARK_KEY] == ["airline-eu", st.done_token]
        for extra, problems in [
            ({"agent": "airline-us"}, []),
            ({**st.extra, MARK_KEY: ["airline-xx", st.done_token]}, [key]),
        ]:
            put = Put("steps", key, encode(st.evolve(extra=extra).to_stored()))
            store.writer.submit(Transition(ops=(put,))).result(timeout=WAIT)
            assert [p.key for p in check_store(store).problems] == problems


def test_an_undo_that_lapses_counts_against_the_member_it_ran_on(
    tmp_path: Path, clock: FakeClock
) -> None:
    # The undo ran on eu (the member of the mark), but its lapse was told to the breaker
    # of us (the member of the last attempt), which opened: us's work was held back for
    # the cool-down for a timeout of eu's.
    ledger = Ledger()
    ledger.failing["airline-eu"] = 1
    began, release = ledger.hold("")  # (the undo's ledger line names no workflow)
    two = RetryPolicy(max_attempts=2, initial_interval=1.0, jitter=0.0)
    flight = Workflow("f").step(
        "flight", agent=AnyOf(*MEMBERS), action="book", compensate="cancel", timeout=5.0
    )
    with Runtime(tmp_path / "s", clock=clock, default_retry=two, sweep_interval=0.05) as rt:
        rt.add_agent(
            "airline-eu",
            functools.partial(Airline, ledger, "airline-eu"),
            breaker=CircuitBreaker(failures=3, cooldown=600.0),
        )
        rt.add_agent(
            "airline-us",
            functools.partial(Refusing, ledger, "airline-us"),
            breaker=CircuitBreaker(failures=1, cooldown=600.0),
        )
        rt.add_workflow(flight)
        h = rt.start("f", {}, workflow_id="w1")
        retry_wait(rt, "w1")
        advance(rt, clock, 1.0)  # the retry on us, Permanent: the undo on eu, which hangs
        assert began.wait(WAIT)
        del ledger.held[""]  # (the undo's next attempt does not hang)
        advance(rt, clock, 5.0)  # past its timeout
        advance(rt, clock, 2.0)  # past its retry's backoff
        with pytest.raises(WorkflowFailed):
            h.result(timeout=WAIT)
        release.set()
        assert ledger.of("cancel") == ["airline-eu", "airline-eu"]
        resources = rt.stats()["resources"]
        assert resources["airline-us"]["breaker"] == "CLOSED"
