"""Protection and routing at their edges: a late answer of a timed-out attempt, an agent
added again under the same rate limit, a half-open probe that never started, and routers
that return odd values."""

from __future__ import annotations

import collections
import functools
import random
import threading
from pathlib import Path
from typing import Any

import pytest

from herder.runtime import (
    Agent,
    CircuitBreaker,
    InvalidInput,
    RateLimit,
    RetryPolicy,
    Runtime,
    StepContext,
    StepState,
    Workflow,
)
from herder.runtime.testing import FakeClock, advance, settle, wait_until

WAIT = 10.0


class Device(Agent):
    def configure(self, ctx: StepContext) -> str:
        return "ok"


ROUTED = Workflow("routed").step("configure", agent="device:{@pick}", action="configure")


def _routed_runtime(path: Path, router) -> Runtime:
    rt = Runtime(path, sweep_interval=0.05)
    rt.add_agent("device:a", Device)
    rt.add_router("pick", router)
    rt.add_workflow(ROUTED)
    return rt


@pytest.mark.timeout(30)
def test_router_returning_a_huge_int_fails_the_start_with_invalid_input(tmp_path: Path) -> None:
    # An int whose decimal form exceeds sys.get_int_max_str_digits: formatting the agent
    # name raises ValueError, which escapes start() instead of InvalidInput.
    with _routed_runtime(tmp_path / "s", lambda input: 10**5000) as rt:
        with pytest.raises(InvalidInput):
            rt.start("routed", {}, workflow_id="w1")
        assert rt.list() == []


class _Sneaky:
    @property
    def __class__(self):  # type: ignore[override]
        raise RuntimeError("user code ran inside isinstance()")


@pytest.mark.timeout(30)
def test_router_returning_an_object_with_a_raising_class_attr_fails_with_invalid_input(
    tmp_path: Path,
) -> None:
    # isinstance(value, bool) looks up value.__class__ (user code): its exception escapes.
    with (
        _routed_runtime(tmp_path / "s", lambda input: _Sneaky()) as rt,
        pytest.raises(InvalidInput),
    ):
        rt.start("routed", {}, workflow_id="w1")


@pytest.mark.timeout(30)
def test_router_returning_a_huge_name_with_a_control_char_gives_a_bounded_message(
    tmp_path: Path,
) -> None:
    huge = "x" * 5_000_000 + "\n"
    with _routed_runtime(tmp_path / "s", lambda input: huge) as rt:
        with pytest.raises(InvalidInput) as info:
            rt.start("routed", {}, workflow_id="w1")
        assert len(str(info.value)) < 10_000, len(str(info.value))


class Slow(Agent):
    """Each attempt blocks until the test releases it, then answers with a result."""

    def __init__(self, started: threading.Semaphore, release: threading.Semaphore) -> None:
        self.started, self.release = started, release

    def call(self, ctx: StepContext) -> str:
        self.started.release()
        self.release.acquire(timeout=WAIT)
        return "late"


@pytest.mark.timeout(60)
def test_a_timed_out_attempt_that_answers_late_is_not_a_success_for_the_breaker(
    tmp_path: Path,
) -> None:
    # docs/protection.md: a timeout is a failure; the breaker opens after `failures`
    # consecutive ones. On a resource slower than the step timeout, each attempt times
    # out and its abandoned thread answers late: that stale answer counted as a success
    # and reset the consecutive count, so the breaker (failures=2) never opened.
    started, release = threading.Semaphore(0), threading.Semaphore(0)
    clock = FakeClock()
    retry = RetryPolicy(max_attempts=5, initial_interval=1.0, backoff_coefficient=1.0, jitter=0.0)
    wf = Workflow("one").step("call", agent="svc", action="call", timeout=5.0, retry=retry)
    with Runtime(tmp_path / "s", clock=clock, sweep_interval=0.05) as rt:
        rt.add_agent(
            "svc",
            functools.partial(Slow, started, release),
            concurrency=4,
            breaker=CircuitBreaker(failures=2, cooldown=3600.0),
        )
        rt.add_workflow(wf)
        rt.start("one", {}, workflow_id="w1")
        for attempt in (1, 2):
            assert started.acquire(timeout=WAIT)
            advance(rt, clock, 5.0)  # the attempt times out: a failure
            wait_until(rt, lambda: rt.status("w1").steps["call"].state is StepState.RETRY_WAIT)
            release.release()  # its abandoned thread answers late, with a result
            settle(rt)
            if attempt == 1:
                advance(rt, clock, 1.0)  # the retry's backoff
        assert rt.status("w1").steps["call"].attempt == 2
        assert rt.stats()["resources"]["svc"]["breaker"] == "OPEN", rt.stats()["resources"]["svc"]


class Quick(Agent):
    def call(self, ctx: StepContext) -> str:
        return "ok"


@pytest.mark.timeout(60)
def test_adding_an_agent_again_with_the_same_rate_limit_does_not_refill_its_bucket(
    tmp_path: Path,
) -> None:
    # docs/protection.md: over any t seconds at most burst + per_second * t attempts
    # start. Registering the agent again (the same limit: a reload, a re-add) gave it a
    # full bucket: 2 attempts at t=0 with burst 1.
    clock = FakeClock()
    wf = Workflow("one").step("call", agent="svc", action="call")
    limit = RateLimit(per_second=0.01, burst=1)  # one token per 100 s
    with Runtime(tmp_path / "s", clock=clock, sweep_interval=0.05) as rt:
        rt.add_agent("svc", Quick, rate_limit=limit)
        rt.add_workflow(wf)
        rt.start("one", {}, workflow_id="w1").result(timeout=WAIT)
        rt.add_agent("svc", Quick, rate_limit=limit)  # the same agent, the same limit
        h2 = rt.start("one", {}, workflow_id="w2")
        settle(rt)
        assert not h2.done(), "a second attempt started at t=0 with burst=1"


def test_a_rate_limit_changed_under_load_starts_no_new_burst(tmp_path: Path) -> None:
    # add_agent again with another RateLimit (lowered, say, as the partner asked) gave the
    # agent a full bucket of the new limit at once, on top of the burst just spent.
    clock = FakeClock()
    wf = Workflow("one").step("call", agent="svc", action="call")
    with Runtime(tmp_path / "s", clock=clock, sweep_interval=0.05) as rt:
        rt.add_agent("svc", Quick, concurrency=4, rate_limit=RateLimit(per_second=0.01, burst=4))
        rt.add_workflow(wf)
        for n in range(4):  # the burst, spent
            rt.start("one", {}, workflow_id=f"w{n}").result(timeout=WAIT)
        lowered = RateLimit(per_second=0.02, burst=2)  # one token per 50 s
        rt.add_agent("svc", Quick, concurrency=4, rate_limit=lowered)
        late = rt.start("one", {}, workflow_id="late")
        settle(rt)
        assert not late.done(), "the changed limit gave a new burst at once"
        assert rt.stats()["resources"]["svc"]["rate_tokens"] == 0.0
        advance(rt, clock, 50.0)  # the new rate's first token
        assert late.result(timeout=WAIT) == {"call": "ok"}


def test_an_agent_removed_and_added_again_does_not_get_a_full_bucket(tmp_path: Path) -> None:
    # remove_agent forgot the bucket, so remove + add_agent with the same limit refilled
    # it: a second attempt at t=0 with burst 1 (over burst + per_second * t).
    clock = FakeClock()
    wf = Workflow("one").step("call", agent="svc", action="call")
    limit = RateLimit(per_second=0.01, burst=1)  # one token per 100 s
    with Runtime(tmp_path / "s", clock=clock, sweep_interval=0.05) as rt:
        rt.add_agent("svc", Quick, rate_limit=limit)
        rt.add_workflow(wf)
        rt.start("one", {}, workflow_id="w1").result(timeout=WAIT)
        rt.remove_agent("svc")
        settle(rt)  # (nothing of it is left: it is forgotten)
        rt.add_agent("svc", Quick, rate_limit=limit)
        h2 = rt.start("one", {}, workflow_id="w2")
        settle(rt)
        assert not h2.done(), "a second attempt started at t=0 with burst=1"
        assert rt.stats()["resources"]["svc"]["rate_tokens"] == 0.0
        advance(rt, clock, 100.0)  # the next token
        assert h2.result(timeout=WAIT) == {"call": "ok"}


def test_buckets_kept_for_removed_agents_are_dropped_once_they_would_be_full(
    tmp_path: Path,
) -> None:
    # One agent per device, removed when the device goes: every removed name's bucket
    # was kept for good (a Gate each), however long ago it refilled.
    from herder.actors._admission import Admission
    from herder.store import Store

    clock = FakeClock()
    with Store(tmp_path / "s") as store:
        admission = Admission(store, clock, wake=lambda agent, at: None)
        limit = RateLimit(per_second=1.0, burst=1)
        for n in range(1000):
            admission.configure(f"device-{n}", None, limit)
            assert admission.ready(f"device-{n}")
            admission.admitted(f"device-{n}", n + 1)  # its one token taken
            admission.remove(f"device-{n}")
            clock.advance(0.01)
        assert len(admission._removed) < 200  # those refilled (1 s on) went
        assert "device-999" in admission._removed  # a recent one is kept: still empty
        admission.configure("device-999", None, limit)
        assert not admission.ready("device-999")  # its bucket was not refilled


class Recovering(Agent):
    """Fails its first call (the resource is down), then answers; counts its calls."""

    def __init__(self, calls: list[int]) -> None:
        self.calls = calls

    def call(self, ctx: StepContext) -> str:
        self.calls.append(ctx.attempt)
        if len(self.calls) == 1:
            raise ConnectionError("service unavailable")
        return "ok"


@pytest.mark.timeout(60)
def test_a_half_open_probe_that_never_started_lets_the_next_one_go(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A runtime paused past its lease (a VM suspended) answers the attempt it was about
    # to start "unstarted": it never reached the resource. When that attempt was the
    # breaker's half-open probe, the gate went on waiting for the probe's answer: the
    # breaker stayed HALF_OPEN and the agent's work waited for good.
    from herder.actors import _action

    doubts, real = [0], _action.leased

    def leased(run: Any, wait: float) -> bool:
        if doubts[0]:
            doubts[0] -= 1
            return False  # the lease was in doubt: the attempt does not start
        return real(run, wait)

    monkeypatch.setattr(_action, "leased", leased)
    clock, calls = FakeClock(), []
    retry = RetryPolicy(max_attempts=5, initial_interval=1.0, backoff_coefficient=1.0, jitter=0.0)
    wf = Workflow("one").step("call", agent="svc", action="call", retry=retry)
    with Runtime(tmp_path / "s", clock=clock, sweep_interval=0.05) as rt:
        breaker = CircuitBreaker(failures=1, cooldown=10.0)
        rt.add_agent("svc", functools.partial(Recovering, calls), breaker=breaker)
        rt.add_workflow(wf)
        handle = rt.start("one", {}, workflow_id="w")
        wait_until(rt, lambda: rt.stats()["resources"]["svc"]["breaker"] == "OPEN")
        doubts[0] = 1
        advance(rt, clock, 10.0)  # half-open: the probe is answered unstarted, runs again
        assert handle.result(timeout=WAIT) == {"call": "ok"}
        assert calls == [1, 2]
        assert rt.stats()["resources"]["svc"]["breaker"] == "CLOSED"


class Unstorable(Agent):
    """Answers with a value herder cannot store (a bug of the action, say a set)."""

    def call(self, ctx: StepContext) -> object:
        return {"ids": {1, 2}}


@pytest.mark.timeout(60)
def test_a_result_that_cannot_be_stored_is_no_failure_of_the_resource(tmp_path: Path) -> None:
    # docs/protection.md: a success is a result or a Permanent refusal (the resource
    # answered). A result herder could not store counted as a failure: a few workflows
    # whose action returned a set opened the breaker and held every step of a healthy
    # resource for its cool-down.
    wf = Workflow("one").step("call", agent="svc", action="call")
    with Runtime(tmp_path / "s", clock=FakeClock(), sweep_interval=0.05) as rt:
        rt.add_agent("svc", Unstorable, breaker=CircuitBreaker(failures=1, cooldown=3600.0))
        rt.add_workflow(wf)
        for n in range(2):
            rt.start("one", {}, workflow_id=f"w{n}")
            wait_until(rt, lambda n=n: rt.status(f"w{n}").state.is_final)
            assert "cannot be stored" in str(rt.status(f"w{n}").steps["call"].error)
            assert rt.stats()["resources"]["svc"]["breaker"] == "CLOSED"  # (w1 not held)


class Unsummable(collections.deque):  # type: ignore[type-arg]
    """A breaker's samples that may not be walked: a walk per failure costs the window."""

    def __iter__(self):  # type: ignore[no-untyped-def]
        raise AssertionError("the failure rate walked every sample in the window")


def test_the_failure_rate_is_kept_as_a_count_not_summed_at_each_failure() -> None:
    # Each failure summed every sample of the breaker's window: at 1,000 attempts a
    # second that is 60,000 samples and over a millisecond of the Scheduler's thread per
    # failure, so an outage (when failures come fast) stalled the whole runtime.
    from herder.actors._gate import Gate
    from herder.store import ResourceRecord

    rnd = random.Random(7)
    breaker = CircuitBreaker(failures=None, failure_rate=0.5, window=10.0, min_calls=5)
    gate = Gate(breaker, None, samples=Unsummable())
    rec, now, seen = ResourceRecord("svc"), 0.0, []
    for n in range(3000):
        now += rnd.random()
        ok = rnd.random() < 0.6
        gate.sample(ok, now)
        seen.append((now, ok))
        if n % 500 == 499:  # the breaker opened: its window starts afresh
            gate.clear_samples()
            seen = []
        recent = [good for at, good in seen if at >= now - breaker.window]
        failed = recent.count(False)
        expected = len(recent) >= breaker.min_calls and failed >= 0.5 * len(recent)
        assert gate.trips(rec, now) is expected, n
