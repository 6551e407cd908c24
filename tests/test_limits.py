"""Per-resource protection: circuit breaker, rate limit and concurrency limit per agent.

Everything runs on a FakeClock: cool-downs, token refills and retries happen when the
test advances time, so the assertions are exact, not statistical.
"""

from __future__ import annotations

import functools
import io
import json
import threading
from pathlib import Path
from typing import Any

import pytest

from herder.actors._ask import call
from herder.runtime import (
    Adaptive,
    Agent,
    CircuitBreaker,
    InvalidInput,
    Permanent,
    RateLimit,
    RetryPolicy,
    Runtime,
    StepContext,
    StepState,
    Workflow,
)
from herder.runtime.testing import FakeClock, advance, crash_instance, settle, wait_until
from herder.store import Store

WAIT = 10.0
ONE = Workflow("one").step("call", agent="svc", action="call", timeout=5.0)


class Service:
    """A fake remote service: healthy or not, counting calls; thread-safe."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.healthy = True
        self.lock = threading.Lock()
        self.calls: list[tuple[str, float, int]] = []  # (workflow id, clock time, token)

    def call(self, ctx: StepContext) -> str:
        with self.lock:
            self.calls.append((ctx.workflow_id, self.clock.time(), ctx.token))
            healthy = self.healthy
        if not healthy:
            raise ConnectionError("service unavailable")
        return "ok"


class Caller(Agent):
    def __init__(self, service: Service) -> None:
        self.service = service

    def call(self, ctx: StepContext) -> str:
        return self.service.call(ctx)


def runtime(
    path: Path,
    clock: FakeClock,
    service: Service,
    *,
    retry: RetryPolicy | None = None,
    concurrency: int = 1,
    **limits: Any,
) -> Runtime:
    rt = Runtime(
        path,
        clock=clock,
        sweep_interval=0.05,
        default_retry=retry
        or RetryPolicy(max_attempts=20, initial_interval=1.0, backoff_coefficient=1.0, jitter=0.0),
    )
    rt.add_agent("svc", functools.partial(Caller, service), concurrency=concurrency, **limits)
    rt.add_workflow(ONE)
    return rt


def engine(rt: Runtime) -> dict[str, Any]:
    """The Scheduler's own counters (no store scan, unlike ``rt.stats()``)."""
    return call(rt._ctx.scheduler, "stats", timeout=WAIT)  # type: ignore[no-any-return]


def caught_up(rt: Runtime, service: Service) -> None:
    """Wait until every attempt dispatched so far has run and its outcome is recorded."""

    def done() -> bool:
        counters = engine(rt)
        return counters["in_flight_attempts"] == 0 and counters["dispatched"] == len(service.calls)

    settle(rt)
    wait_until(rt, done)
    settle(rt)


def calls(rt: Runtime, service: Service, n: int) -> None:
    """Wait until the service saw ``n`` calls and their outcomes are recorded."""
    wait_until(rt, lambda: len(service.calls) >= n)
    caught_up(rt, service)
    assert len(service.calls) == n


def step(rt: Runtime, workflow_id: str) -> Any:
    return rt.status(workflow_id).steps["call"]


def breaker(rt: Runtime) -> dict[str, Any]:
    return rt.stats()["resources"]["svc"]  # type: ignore[no-any-return]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def service(clock: FakeClock) -> Service:
    return Service(clock)


def test_the_breaker_opens_holds_steps_without_spending_attempts_then_closes(
    tmp_path: Path, clock: FakeClock, service: Service
) -> None:
    service.healthy = False
    cb = CircuitBreaker(failures=3, cooldown=30.0)
    with runtime(tmp_path / "s", clock, service, breaker=cb) as rt:
        rt.start("one", workflow_id="w1")
        calls(rt, service, 1)
        for n in (2, 3):  # one second of backoff apart
            advance(rt, clock, 1.0)
            calls(rt, service, n)
        assert breaker(rt)["breaker"] == "OPEN"
        assert breaker(rt)["opens"] == 1
        rt.start("one", workflow_id="w2")
        caught_up(rt, service)
        for _ in range(25):  # well past w1's backoff and the step timeouts, within cool-down
            advance(rt, clock, 1.0)
        assert len(service.calls) == 3, "nothing may reach the resource while open"
        assert step(rt, "w1").attempt == 3
        assert step(rt, "w2").attempt == 0
        assert step(rt, "w2").state is StepState.PENDING
        assert rt.stats()["steps"]["timed_out"] == 0
        service.healthy = True
        advance(rt, clock, 5.0)  # the cool-down ends: one probe; it succeeds, all flows
        rt.handle("w1").result(timeout=WAIT)
        rt.handle("w2").result(timeout=WAIT)
        assert breaker(rt)["breaker"] == "CLOSED"
        assert breaker(rt)["failures"] == 0
        assert len(service.calls) == 5
        assert step(rt, "w1").attempt == 4
        assert step(rt, "w2").attempt == 1


def test_a_failed_half_open_probe_reopens_and_only_the_probe_went_through(
    tmp_path: Path, clock: FakeClock, service: Service
) -> None:
    service.healthy = False
    cb = CircuitBreaker(failures=1, cooldown=10.0)
    with runtime(tmp_path / "s", clock, service, breaker=cb, concurrency=4) as rt:
        rt.start("one", workflow_id="w0")
        calls(rt, service, 1)
        assert breaker(rt)["breaker"] == "OPEN"
        for n in range(1, 4):
            rt.start("one", workflow_id=f"w{n}")
        caught_up(rt, service)
        assert len(service.calls) == 1
        advance(rt, clock, 10.0)  # half-open: exactly one probe, which fails
        calls(rt, service, 2)
        assert breaker(rt)["breaker"] == "OPEN"
        assert breaker(rt)["opens"] == 2
        advance(rt, clock, 5.0)
        caught_up(rt, service)
        assert len(service.calls) == 2
        service.healthy = True
        advance(rt, clock, 5.0)
        for n in range(4):
            rt.handle(f"w{n}").result(timeout=WAIT)
        assert breaker(rt)["breaker"] == "CLOSED"


def test_a_permanent_answer_counts_as_the_resource_answering(
    tmp_path: Path, clock: FakeClock
) -> None:
    class Refuser(Agent):
        def call(self, ctx: StepContext) -> None:
            raise Permanent("sold out")

    cb = CircuitBreaker(failures=1, cooldown=10.0)
    with Runtime(tmp_path / "s", clock=clock) as rt:
        rt.add_agent("svc", Refuser, breaker=cb)
        rt.add_workflow(ONE)
        for n in range(3):
            rt.start("one", workflow_id=f"w{n}")
        wait_until(rt, lambda: all(rt.status(f"w{n}").state.is_final for n in range(3)))
        assert breaker(rt)["breaker"] == "CLOSED"


def test_a_success_resets_the_failure_count_of_an_agent_without_limits(
    tmp_path: Path, clock: FakeClock, service: Service
) -> None:
    # Its successes reach the gates only while it counts failures (Admission.tracked).
    service.healthy = False
    with runtime(tmp_path / "s", clock, service) as rt:
        rt.start("one", workflow_id="w")
        calls(rt, service, 1)
        assert breaker(rt)["failures"] == 1
        service.healthy = True
        advance(rt, clock, 1.0)  # the retry
        rt.handle("w").result(timeout=WAIT)
        assert "svc" not in rt.stats()["resources"]  # reset: its record holds nothing
        rt.start("one", workflow_id="again").result(timeout=WAIT)
        assert "svc" not in rt.stats()["resources"]


def test_the_failure_rate_over_a_window_opens_the_breaker(
    tmp_path: Path, clock: FakeClock, service: Service
) -> None:
    cb = CircuitBreaker(failures=None, failure_rate=0.5, window=60.0, min_calls=4, cooldown=30)
    once = RetryPolicy(max_attempts=1)
    with runtime(tmp_path / "s", clock, service, breaker=cb, retry=once) as rt:
        for n, healthy in enumerate((True, False, True)):
            service.healthy = healthy
            rt.start("one", workflow_id=f"w{n}")
            wait_until(rt, lambda n=n: rt.status(f"w{n}").state.is_final)
            advance(rt, clock, 1.0)
        assert breaker(rt)["breaker"] == "CLOSED", "3 calls are fewer than min_calls"
        service.healthy = False
        rt.start("one", workflow_id="w3")
        wait_until(rt, lambda: rt.status("w3").state.is_final)
        assert breaker(rt)["breaker"] == "OPEN", "2 failures of 4 calls reach the 50% rate"


def test_calls_out_of_the_window_do_not_open_the_breaker_of_an_agent_added_again(
    tmp_path: Path, clock: FakeClock, service: Service
) -> None:
    # The failure-rate samples were dropped only as new outcomes came: an agent added again
    # (a reload) an hour after 2 failed and 2 good calls opened its breaker at once, on
    # calls long out of its 60 s window, and held its steps for the cool-down.
    cb = CircuitBreaker(failures=None, failure_rate=0.5, window=60.0, min_calls=4, cooldown=30)
    once = RetryPolicy(max_attempts=1)
    with runtime(tmp_path / "s", clock, service, breaker=cb, retry=once) as rt:
        for n, healthy in enumerate((False, False, True, True)):
            service.healthy = healthy
            rt.start("one", workflow_id=f"w{n}")
            wait_until(rt, lambda n=n: rt.status(f"w{n}").state.is_final)
            advance(rt, clock, 1.0)
        assert breaker(rt)["breaker"] == "CLOSED"
        advance(rt, clock, 3600.0)
        rt.add_agent("svc", functools.partial(Caller, service), breaker=cb)
        assert breaker(rt)["breaker"] == "CLOSED", "no call ended in the last 60 s"
        rt.start("one", workflow_id="after").result(timeout=WAIT)


def test_breaker_state_and_crash_counters_survive_a_restart(
    tmp_path: Path, clock: FakeClock, service: Service
) -> None:
    class Crashy(Agent):
        def call(self, ctx: StepContext) -> str:
            if ctx.attempt <= 2:
                crash_instance()
            return "ok"

    path = tmp_path / "s"
    cb = CircuitBreaker(failures=5, cooldown=600.0)
    with Runtime(path, clock=clock) as rt:
        rt.add_agent("crashy", Crashy)
        rt.add_agent("svc", functools.partial(Caller, service), breaker=cb)
        wf = Workflow("c").step("s", agent="crashy", action="call")
        rt.add_workflow(wf)
        rt.add_workflow(ONE)
        rt.start("c", workflow_id="c1").result(timeout=WAIT)
        assert rt.stats()["resources"]["crashy"]["crashes"] == 2
        service.healthy = False
        retry = RetryPolicy(max_attempts=1)
        rt.add_workflow(
            Workflow("one", version=2).step("call", agent="svc", action="call", retry=retry)
        )
        for n in range(5):
            rt.start("one", workflow_id=f"w{n}")
            wait_until(rt, lambda n=n: rt.status(f"w{n}").state.is_final)
        assert breaker(rt)["breaker"] == "OPEN"
    with Store(path, readonly=True) as store:
        from herder.runtime._inspect import store_stats

        stored = store_stats(store)["resources"]
    assert stored["crashy"]["crashes"] == 2
    assert stored["svc"]["breaker"] == "OPEN"
    clock.advance(60.0)
    service.healthy = True
    with runtime(path, clock, service, breaker=cb) as rt:
        rt.add_agent("crashy", Crashy)
        assert rt.stats()["resources"]["crashy"]["crashes"] == 2
        assert breaker(rt)["breaker"] == "OPEN", "the cool-down runs across the restart"
        rt.start("one", workflow_id="after")
        settle(rt)
        assert step(rt, "after").attempt == 0
        advance(rt, clock, 600.0)
        rt.handle("after").result(timeout=WAIT)
        assert breaker(rt)["breaker"] == "CLOSED"


def test_an_idle_agents_breaker_is_half_open_once_its_cool_down_is_over(
    tmp_path: Path, clock: FakeClock, service: Service
) -> None:
    # With no work waiting, nothing asked the gate after the cool-down: rt.stats(), the
    # Prometheus gauge and herder stats showed the breaker OPEN for good (an alert on it
    # went on firing for an agent that would let its next step through as a probe).
    from prometheus_client import CollectorRegistry, generate_latest

    from herder.runtime._inspect import store_stats

    service.healthy = False
    path = tmp_path / "s"
    cb = CircuitBreaker(failures=1, cooldown=30.0)
    once = RetryPolicy(max_attempts=1)
    with runtime(path, clock, service, breaker=cb, retry=once) as rt:
        rt.start("one", workflow_id="w")
        wait_until(rt, lambda: rt.status("w").state.is_final)
        assert breaker(rt)["breaker"] == "OPEN"
        advance(rt, clock, 30.0)
        assert breaker(rt)["breaker"] == "HALF_OPEN"
        rt.add_agent("plain", functools.partial(Caller, service))  # (its wake-up: no record)
        assert "plain" not in rt.stats()["resources"]
        registry = CollectorRegistry()
        registry.register(rt.prometheus_collector())
        assert 'herder_breaker_state{agent="svc"} 1.0' in generate_latest(registry).decode()
        rt.start("one", workflow_id="again")
        wait_until(rt, lambda: rt.status("again").state.is_final)  # the probe fails
        assert breaker(rt)["breaker"] == "OPEN"
        advance(rt, clock, 10.0)
    with Store(path, readonly=True) as store:
        assert store_stats(store)["resources"]["svc"]["breaker"] == "OPEN"
    with runtime(path, clock, service, breaker=cb, retry=once) as rt:  # restarted, idle
        assert breaker(rt)["breaker"] == "OPEN", "20 s of the cool-down are left"
        advance(rt, clock, 20.0)
        assert breaker(rt)["breaker"] == "HALF_OPEN"
    with Store(path, readonly=True) as store:
        assert store_stats(store)["resources"]["svc"]["breaker"] == "HALF_OPEN"
    assert len(service.calls) == 2


def test_the_stored_failures_count_the_crashes_of_an_agent_without_a_breaker(
    tmp_path: Path, clock: FakeClock
) -> None:
    # An agent without a breaker writes its consecutive failures only with its crash and
    # lost counters, but those were written before the failure was counted: the store
    # (herder stats, the next start) had one failure fewer than the crashes in a row, so
    # a crash loop kept 0 and a breaker added at the next start found none of them.
    from herder.runtime._inspect import store_stats

    class Crashy(Agent):
        def call(self, ctx: StepContext) -> None:
            crash_instance()

    path = tmp_path / "s"
    wf = Workflow("c").step("s", agent="crashy", action="call", retry=RetryPolicy(max_attempts=2))
    with Runtime(path, clock=clock) as rt:
        rt.add_agent("crashy", Crashy)
        rt.add_workflow(wf)
        rt.start("c", workflow_id="c1")
        wait_until(rt, lambda: rt.status("c1").state.is_final)
        assert rt.stats()["resources"]["crashy"]["failures"] == 2
    with Store(path, readonly=True) as store:
        stored = store_stats(store)["resources"]["crashy"]
    assert (stored["crashes"], stored["failures"]) == (2, 2)
    with Runtime(path, clock=clock) as rt:
        rt.add_agent("crashy", Crashy, breaker=CircuitBreaker(failures=2, cooldown=60.0))
        assert rt.stats()["resources"]["crashy"]["breaker"] == "OPEN"


def test_the_rate_limit_holds_within_ten_percent_over_a_simulated_minute(
    tmp_path: Path, clock: FakeClock, service: Service
) -> None:
    rate = RateLimit(per_second=5.0, burst=5)
    with runtime(tmp_path / "s", clock, service, rate_limit=rate, concurrency=4) as rt:
        begin = clock.time()
        for n in range(360):  # more than a minute's worth: the queue never runs dry
            rt.start("one", workflow_id=f"w{n}")
        settle(rt)
        caught_up(rt, service)
        for _ in range(300):
            advance(rt, clock, 0.2)
            caught_up(rt, service)
        times = [t - begin for _, t, _ in service.calls]
    in_minute = [t for t in times if t < 60.0]
    expected = 5.0 * 60.0
    assert abs(len(in_minute) - expected) <= 0.1 * expected, len(in_minute)
    # Never more than the bucket allows in any one second: burst + rate.
    for start in range(60):
        window = [t for t in times if start <= t < start + 1.0]
        assert len(window) <= 5 + 5, (start, len(window))


def test_the_concurrency_limit_is_never_exceeded_and_higher_priority_goes_first(
    tmp_path: Path, clock: FakeClock
) -> None:
    gate = threading.Event()
    lock = threading.Lock()
    running = [0, 0]  # now, most ever
    tokens: dict[str, int] = {}
    both = threading.Barrier(3)  # the two first calls and the test

    class Busy(Agent):
        def call(self, ctx: StepContext) -> None:
            with lock:
                running[0] += 1
                running[1] = max(running[1], running[0])
                tokens[ctx.workflow_id] = ctx.token  # dispatch order: tokens only grow
            if ctx.workflow_id.startswith("first"):
                both.wait(WAIT)
            gate.wait(WAIT)
            with lock:
                running[0] -= 1

    with Runtime(tmp_path / "s", clock=clock) as rt:
        rt.add_agent("svc", Busy, concurrency=2)
        rt.add_workflow(ONE)
        handles = [rt.start("one", workflow_id=f"first{n}") for n in range(2)]
        both.wait(WAIT)
        for n in range(4):
            handles.append(rt.start("one", workflow_id=f"low{n}"))
        for n in range(4):
            handles.append(rt.start("one", workflow_id=f"high{n}", priority=5))
        settle(rt)
        assert rt.stats()["agents"]["svc"]["queued"] == 8
        gate.set()
        for handle in handles:
            handle.result(timeout=WAIT)
    order = sorted(tokens, key=tokens.__getitem__)
    assert running[1] == 2
    assert order[2:6] == [f"high{n}" for n in range(4)]
    assert order[6:] == [f"low{n}" for n in range(4)]


def test_limits_are_validated_with_clear_errors(tmp_path: Path, clock: FakeClock) -> None:
    with pytest.raises(InvalidInput, match="per_second"):
        RateLimit(per_second=0)
    with pytest.raises(InvalidInput, match="burst"):
        RateLimit(per_second=1, burst=0)
    with pytest.raises(InvalidInput, match="failure_rate"):
        CircuitBreaker(failure_rate=1.5)
    with pytest.raises(InvalidInput, match="cooldown"):
        CircuitBreaker(cooldown=-1)
    with pytest.raises(InvalidInput, match="failures or failure_rate"):
        CircuitBreaker(failures=None)
    with pytest.raises(InvalidInput, match="min_calls"):
        CircuitBreaker(min_calls=True)  # a bool is no count, as for failures and burst
    # Numbers no float holds raised OverflowError (from add_agent, after it had half
    # registered the agent) or crashed the Scheduler later (the protection review).
    huge = 10**400
    for build, name in (
        (lambda: CircuitBreaker(cooldown=huge), "cooldown"),
        (lambda: CircuitBreaker(window=huge), "window"),
        (lambda: CircuitBreaker(failure_rate=huge), "failure_rate"),
        (lambda: RateLimit(per_second=huge), "per_second"),
        (lambda: RateLimit(per_second=1, burst=huge), "burst"),
        (lambda: Adaptive(max=huge), "max"),
        (lambda: Adaptive(window=2**63), "window"),
        (lambda: Adaptive(backoff=huge), "backoff"),
    ):
        with pytest.raises(InvalidInput, match=name):
            build()
    with (
        Runtime(tmp_path / "s", clock=clock) as rt,
        pytest.raises(InvalidInput, match="rate_limit must be a RateLimit"),
    ):
        rt.add_agent("svc", Agent, rate_limit=5)  # type: ignore[arg-type]


def test_protection_shows_in_prometheus_and_herder_stats(
    tmp_path: Path, clock: FakeClock, service: Service
) -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from herder.runtime._cli import main as cli

    service.healthy = False
    path = tmp_path / "s"
    cb = CircuitBreaker(failures=1, cooldown=60.0)
    with runtime(path, clock, service, breaker=cb, rate_limit=RateLimit(per_second=1)) as rt:
        rt.start("one", workflow_id="w")
        calls(rt, service, 1)
        registry = CollectorRegistry()
        registry.register(rt.prometheus_collector())
        text = generate_latest(registry).decode()
        assert 'herder_breaker_state{agent="svc"} 2.0' in text
        assert 'herder_agent_breaker_opens_total{agent="svc"} 1.0' in text
        assert 'herder_agent_lost_total{agent="svc"} 0.0' in text
    table, as_json = io.StringIO(), io.StringIO()
    assert cli(["stats", "--store", str(path)], table) == 0
    assert cli(["stats", "--store", str(path), "--json"], as_json) == 0
    row = next(line for line in table.getvalue().splitlines() if "svc" in line)
    assert "OPEN" in row
    stored = json.loads(as_json.getvalue())["resources"]["svc"]
    assert stored["breaker"] == "OPEN"
    assert stored["opens"] == 1


def test_registering_without_a_breaker_closes_a_stored_open_one(
    tmp_path: Path, clock: FakeClock, service: Service
) -> None:
    path = tmp_path / "s"
    service.healthy = False
    with runtime(path, clock, service, breaker=CircuitBreaker(failures=1, cooldown=600)) as rt:
        rt.start("one", workflow_id="w")
        calls(rt, service, 1)
        assert breaker(rt)["breaker"] == "OPEN"
    service.healthy = True
    with runtime(path, clock, service) as rt:
        assert breaker(rt)["breaker"] == "CLOSED"
        advance(rt, clock, 1.0)
        rt.handle("w").result(timeout=WAIT)


def test_a_half_open_probe_still_running_holds_an_agent_removed_and_added_again(
    tmp_path: Path, clock: FakeClock
) -> None:
    """remove_agent forgot which attempt was the half-open probe: added again while the
    probe still ran, the agent let a second attempt through to the resource."""
    release = threading.Event()

    class Slow(Service):
        def call(self, ctx: StepContext) -> str:
            answer = super().call(ctx)
            if ctx.workflow_id != "w0":
                assert release.wait(WAIT)  # the probe hangs until released
            return answer

    service = Slow(clock)
    service.healthy = False
    cb = CircuitBreaker(failures=1, cooldown=10.0)
    with runtime(tmp_path / "s", clock, service, breaker=cb, concurrency=4) as rt:
        rt.start("one", workflow_id="w0")
        calls(rt, service, 1)
        for n in range(1, 4):
            rt.start("one", workflow_id=f"w{n}")
        service.healthy = True
        advance(rt, clock, 10.0)  # half-open: one probe, which hangs
        wait_until(rt, lambda: len(service.calls) == 2)
        rt.remove_agent("svc")
        rt.add_agent("svc", functools.partial(Caller, service), concurrency=4, breaker=cb)
        advance(rt, clock, 0.1)
        settle(rt)
        assert len(service.calls) == 2, "one probe at a time while half-open"
        assert breaker(rt)["breaker"] == "HALF_OPEN"
        release.set()
        for n in range(4):
            rt.handle(f"w{n}").result(timeout=WAIT)
        assert breaker(rt)["breaker"] == "CLOSED"
        assert len(service.calls) == 5
