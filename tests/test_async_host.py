"""``async def`` agents end to end: the asyncio host inside a whole runtime.

Attempts run as tasks on an event loop (the runtime's own, or the application's), one
agent object serving all of them; timeouts cancel the task; nothing the user's coroutine
raises escapes; sync and asyncio agents share one runtime and one workflow.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from herder.runtime import (
    Agent,
    InvalidInput,
    Permanent,
    RetryPolicy,
    Runtime,
    State,
    StepContext,
    Workflow,
    WorkflowFailed,
)
from herder.runtime.testing import FakeClock, advance, crash_scheduler, settle

WAIT = 10.0
ONCE = RetryPolicy(max_attempts=1)
FAST = RetryPolicy(max_attempts=3, initial_interval=0.0, jitter=0.0)


class Fetcher(Agent):
    """An async agent: one object (one 'client') shared by every attempt."""

    built = 0
    peak = 0
    running = 0
    threads: set[str] = set()

    def __init__(self) -> None:
        Fetcher.built += 1
        self.calls = 0

    async def fetch(self, ctx: StepContext) -> dict[str, Any]:
        Fetcher.threads.add(threading.current_thread().name)
        Fetcher.running += 1
        Fetcher.peak = max(Fetcher.peak, Fetcher.running)
        try:
            ctx.heartbeat({"at": "start"})
            await asyncio.sleep(0.01)  # the remote call: an await that takes a while, so
            # attempts overlap on the loop (what the peak and sharing checks count)
            self.calls += 1
            return {"n": ctx.input, "results_seen": sorted(ctx.results)}
        finally:
            Fetcher.running -= 1

    async def undo(self, ctx: StepContext) -> None:
        await asyncio.sleep(0)


class Plain(Agent):
    def check(self, ctx: StepContext) -> str:
        return f"checked {ctx.results['fetch']['n']}"

    def refuse(self, ctx: StepContext) -> None:
        raise Permanent("no")


@pytest.fixture
def rt(tmp_path: Path) -> Iterator[Runtime]:
    Fetcher.built = Fetcher.peak = Fetcher.running = 0
    Fetcher.threads = set()
    with Runtime(tmp_path / "store", instance_shutdown=0.1, default_retry=FAST) as runtime:
        yield runtime


def test_async_def_actions_run_to_the_end_with_one_object_for_every_attempt(
    rt: Runtime,
) -> None:
    rt.add_agent("web", Fetcher, concurrency=50)
    rt.add_workflow(Workflow("get").step("fetch", agent="web", action="fetch"))
    handles = [rt.start("get", i) for i in range(200)]
    results = [h.result(timeout=WAIT) for h in handles]
    assert results == [{"fetch": {"n": i, "results_seen": []}} for i in range(200)]
    assert Fetcher.built == 1  # one object (one client) served all 200 attempts
    assert 1 < Fetcher.peak <= 50  # concurrently, within the agent's concurrency
    assert Fetcher.threads == {"herder-asyncio"}  # on the runtime's loop thread
    assert rt.stats()["host"]["asyncio_attempts"] == 0


def test_sync_and_async_agents_share_one_runtime_and_one_workflow(rt: Runtime) -> None:
    rt.add_agent("web", Fetcher, concurrency=4)
    rt.add_agent("plain", Plain, concurrency=2)
    rt.add_workflow(
        Workflow("mixed")
        .step("fetch", agent="web", action="fetch", compensate="undo")
        .step("check", agent="plain", action="check", after=["fetch"])
    )
    rt.add_workflow(
        Workflow("undone")
        .step("fetch", agent="web", action="fetch", compensate="undo")
        .step("no", agent="plain", action="refuse", after=["fetch"], retry=ONCE)
    )
    assert rt.start("mixed", 7).result(timeout=WAIT) == {
        "fetch": {"n": 7, "results_seen": []},
        "check": "checked 7",
    }
    with pytest.raises(WorkflowFailed) as failed:
        rt.start("undone", 8).result(timeout=WAIT)
    assert failed.value.status.steps["fetch"].state == "COMPENSATED"  # an async compensation


def test_a_timeout_cancels_the_task_and_the_step_retries(tmp_path: Path) -> None:
    clock = FakeClock()
    started, cancelled = threading.Event(), threading.Event()
    superseded: list[bool] = []

    class Slow(Agent):
        async def work(self, ctx: StepContext) -> int:
            if ctx.attempt == 1:
                started.set()
                try:
                    await asyncio.Event().wait()  # forever: only a cancel ends it
                except asyncio.CancelledError:
                    superseded.append(ctx.superseded)
                    cancelled.set()
                    raise
            return ctx.attempt

    with Runtime(tmp_path / "s", clock=clock, sweep_interval=1.0, default_retry=FAST) as rt:
        rt.add_agent("slow", Slow, concurrency=1)
        rt.add_workflow(Workflow("t").step("s", agent="slow", action="work", timeout=5.0))
        handle = rt.start("t")
        assert started.wait(WAIT)
        advance(rt, clock, 6.0)
        assert handle.result(timeout=WAIT) == {"s": 2}  # the one slot was freed for it
        assert cancelled.is_set()
        assert superseded == [True]  # the attempt knew it was replaced when cancelled
        stats = rt.stats()
        assert stats["steps"]["timed_out"] == 1
        assert stats["host"]["asyncio_cancelled"] == 1


class Hostile(Agent):
    async def exits(self, ctx: StepContext) -> None:
        raise SystemExit(3)

    async def interrupts(self, ctx: StepContext) -> None:
        await asyncio.sleep(0)
        raise KeyboardInterrupt

    async def self_cancels(self, ctx: StepContext) -> None:
        raise asyncio.CancelledError("raised by the action itself")

    async def never_awaits(self, ctx: StepContext) -> str:
        return "done without a single await"

    def returns_a_coroutine(self, ctx: StepContext) -> Any:
        return self.never_awaits(ctx)  # a plain def handing back a coroutine: awaited

    async def unencodable(self, ctx: StepContext) -> Any:
        return object()

    async def later(self, ctx: StepContext) -> Any:
        Hostile.tokens.append(ctx.task_token)
        Hostile.handed_off.set()
        return ctx.complete_later()

    tokens: list[str] = []
    handed_off = threading.Event()


def test_nothing_the_coroutine_raises_escapes_and_the_loop_serves_on(rt: Runtime) -> None:
    rt.add_agent("h", Hostile, concurrency=4)
    for action in ("exits", "interrupts", "self_cancels", "never_awaits", "unencodable"):
        rt.add_workflow(Workflow(action).step("s", agent="h", action=action, retry=ONCE))
    rt.add_workflow(Workflow("wrapped").step("s", agent="h", action="returns_a_coroutine"))
    errors = {}
    for action in ("exits", "interrupts", "self_cancels", "unencodable"):
        with pytest.raises(WorkflowFailed) as failed:
            rt.start(action).result(timeout=WAIT)
        errors[action] = failed.value.status.steps["s"].error or ""
    assert errors["exits"] == "SystemExit: 3"
    assert errors["interrupts"] == "KeyboardInterrupt"
    assert errors["self_cancels"] == "CancelledError: raised by the action itself"
    assert "EncodeError" in errors["unencodable"]
    assert rt.start("never_awaits").result(timeout=WAIT) == {"s": "done without a single await"}
    assert rt.start("wrapped").result(timeout=WAIT) == {"s": "done without a single await"}


def test_complete_later_from_an_async_action_is_completed_by_await(rt: Runtime) -> None:
    Hostile.tokens, Hostile.handed_off = [], threading.Event()
    rt.add_agent("h", Hostile)
    rt.add_workflow(Workflow("later").step("s", agent="h", action="later"))

    async def main() -> dict[str, Any]:
        handle = await rt.start_async("later")
        await asyncio.to_thread(Hostile.handed_off.wait, WAIT)
        await rt.complete_step_async(Hostile.tokens[0], {"paid": True})
        return await handle.result_async(timeout=WAIT)

    assert asyncio.run(main()) == {"s": {"paid": True}}


def test_a_cancel_reaches_the_coroutine_through_ctx_cancelled(rt: Runtime) -> None:
    running, stopped = threading.Event(), threading.Event()

    class Polite(Agent):
        async def work(self, ctx: StepContext) -> None:
            running.set()
            while not ctx.cancelled:  # a long action checks between its awaits
                await asyncio.sleep(0.005)
            stopped.set()

    rt.add_agent("p", Polite)
    rt.add_workflow(Workflow("w").step("s", agent="p", action="work", retry=ONCE))
    handle = rt.start("w")
    assert running.wait(WAIT)
    rt.cancel(handle.id)
    with pytest.raises(WorkflowFailed):
        handle.result(timeout=WAIT)
    assert rt.status(handle.id).state == "CANCELLED"
    assert stopped.wait(WAIT)


def test_the_host_is_chosen_explicitly_when_the_factory_hides_the_class(rt: Runtime) -> None:
    async def connect() -> Fetcher:  # an async factory: awaited on the loop
        await asyncio.sleep(0)
        return Fetcher()

    rt.add_agent("lambda", lambda: Fetcher(), asyncio=True)  # noqa: PLW0108 (hides the class)
    rt.add_agent("connect", connect, asyncio=True)
    for agent in ("lambda", "connect"):
        rt.add_workflow(Workflow(agent).step("fetch", agent=agent, action="fetch"))
        assert rt.start(agent, 1).result(timeout=WAIT) == {"fetch": {"n": 1, "results_seen": []}}
    with pytest.raises(InvalidInput, match="leave out asyncio=False"):
        rt.add_agent("refused", Fetcher, asyncio=False)


def test_a_hidden_async_factory_on_a_thread_says_to_pass_asyncio_true(rt: Runtime) -> None:
    # It said "agent 'web' has no action 'fetch' (its factory made a coroutine)", which
    # named no cure.
    async def connect() -> Fetcher:
        return Fetcher()

    rt.add_agent("web", lambda: connect())  # noqa: PLW0108 (hides the async factory)
    rt.add_workflow(Workflow("get").step("fetch", agent="web", action="fetch", retry=ONCE))
    with pytest.raises(WorkflowFailed) as failed:
        rt.start("get", 1).result(timeout=WAIT)
    error = failed.value.status.steps["fetch"].error or ""
    assert error.startswith("Permanent: "), error  # it ran nothing: not retried
    assert "asyncio=True" in error, error
    assert Fetcher.built == 0


def test_a_factory_that_fails_on_the_loop_costs_the_attempt_and_is_retried(
    rt: Runtime,
) -> None:
    tries = []

    def flaky() -> Fetcher:
        tries.append(1)
        if len(tries) == 1:
            raise ConnectionError("cannot connect yet")
        return Fetcher()

    rt.add_agent("web", flaky, asyncio=True)
    rt.add_workflow(Workflow("get").step("fetch", agent="web", action="fetch"))
    assert rt.start("get", 2).result(timeout=WAIT) == {"fetch": {"n": 2, "results_seen": []}}
    assert len(tries) == 2
    assert rt.stats()["steps"]["retried"] == 1  # a failed attempt, as a failed start is


def test_a_factory_failing_for_a_moment_costs_each_attempt_its_backoff(
    tmp_path: Path,
) -> None:
    # A failed build was an instance crash: the attempt was lost and retried at once, so
    # a factory that failed for a moment (a DNS blip) spent every attempt of every step
    # waiting for it within milliseconds, where the thread hosts wait out the backoff.
    clock, tries, up = FakeClock(), [], threading.Event()

    def flaky() -> Fetcher:
        tries.append(1)
        if not up.is_set():
            raise ConnectionError("cannot connect yet")
        return Fetcher()

    patient = RetryPolicy(max_attempts=3, initial_interval=10.0, jitter=0.0)
    with Runtime(tmp_path / "s", clock=clock) as rt:
        rt.add_agent("web", flaky, asyncio=True, concurrency=2)
        rt.add_workflow(Workflow("get").step("fetch", agent="web", action="fetch", retry=patient))
        handles = [rt.start("get", n) for n in (1, 2)]
        settle(rt)
        assert not any(h.done() for h in handles)  # each waits its backoff
        for h in handles:
            step = rt.status(h.id).steps["fetch"]
            assert (step.state, step.attempt) == ("RETRY_WAIT", 1)
            assert (step.error or "").startswith(
                "an instance of agent 'web' failed to start: ConnectionError: cannot connect yet"
            ), step.error
        up.set()
        advance(rt, clock, 10.0)
        assert [h.result(timeout=WAIT)["fetch"]["n"] for h in handles] == [1, 2]


def test_actions_run_on_the_application_loop_when_it_is_given(tmp_path: Path) -> None:
    async def main() -> tuple[dict[str, Any], set[str]]:
        loop = asyncio.get_running_loop()
        threads: set[int] = set()

        class OnMyLoop(Agent):
            async def where(self, ctx: StepContext) -> bool:
                threads.add(threading.get_ident())
                return asyncio.get_running_loop() is loop

        rt = Runtime(tmp_path / "s", loop=loop)
        try:
            rt.add_agent("mine", OnMyLoop, concurrency=8)
            rt.add_workflow(Workflow("w").step("s", agent="mine", action="where"))
            handles = [await rt.start_async("w") for _ in range(20)]
            results = [await h.result_async(timeout=WAIT) for h in handles]
        finally:
            await rt.stop_async()
        assert threads == {threading.get_ident()}  # this very thread: the loop's
        return results[0], {t.name for t in threading.enumerate()}

    first, names = asyncio.run(main())
    assert first == {"s": True}
    assert "herder-asyncio" not in names  # no loop of the runtime's own was started


def test_a_bad_loop_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="loop must be an asyncio event loop"):
        Runtime(tmp_path / "s", loop="the loop")  # type: ignore[arg-type]


def test_a_step_left_by_a_sync_agent_resumes_on_its_async_successor(tmp_path: Path) -> None:
    """A daemon restarted with a new (async) version of an agent finishes its work."""
    release, holding = threading.Event(), threading.Event()

    class Holds(Agent):
        def fetch(self, ctx: StepContext) -> None:
            holding.set()
            release.wait(WAIT)

    get = Workflow("get").step("fetch", agent="web", action="fetch")
    with Runtime(tmp_path / "s", instance_shutdown=0.1) as first:
        first.add_agent("web", Holds)
        first.add_workflow(get)
        workflow_id = first.start("get", 3).id
        assert holding.wait(WAIT)
    release.set()
    with Runtime(tmp_path / "s", default_retry=FAST) as rt:
        rt.add_workflow(get)
        rt.add_agent("web", Fetcher)
        result = rt.handle(workflow_id).result(timeout=WAIT)
    assert result == {"fetch": {"n": 3, "results_seen": []}}


def test_an_agent_registered_again_as_async_takes_its_waiting_work_along(
    rt: Runtime,
) -> None:
    release, holding = threading.Event(), threading.Event()

    class Holds(Agent):
        def fetch(self, ctx: StepContext) -> dict[str, Any]:
            holding.set()
            release.wait(WAIT)
            return {"n": ctx.input, "results_seen": []}

    rt.add_agent("web", Holds, concurrency=1)
    rt.add_workflow(Workflow("get").step("fetch", agent="web", action="fetch"))
    first = rt.start("get", 1)
    assert holding.wait(WAIT)
    second = rt.start("get", 2)  # waits in the thread host's queue for "web"
    rt.add_agent("web", Fetcher, concurrency=1)  # now on the asyncio host
    release.set()  # (the first attempt counts against concurrency=1 until it ends)
    assert second.result(timeout=WAIT) == {"fetch": {"n": 2, "results_seen": []}}
    assert first.result(timeout=WAIT) == {"fetch": {"n": 1, "results_seen": []}}
    assert Fetcher.built == 1  # the second ran there


def test_an_attempt_cancelled_while_building_the_object_leaves_it_to_the_next() -> None:
    """The attempt whose task builds the agent object (an async factory still connecting)
    is replaced: the attempt waiting for the object builds it and runs, no crash."""
    import queue as queue_module

    from herder.actors import AsyncHost, ChildEventKind, EventLoop, Outcome, Run

    connect, building = threading.Event(), threading.Event()
    built: list[int] = []

    async def slow_factory() -> Fetcher:
        built.append(1)
        if len(built) == 1:
            building.set()
            await asyncio.to_thread(connect.wait, WAIT)  # the first connect hangs
        return Fetcher()

    class Port:
        cancelled = superseded = False

        def heartbeat(self, details: Any) -> None:
            pass

    inbox: queue_module.Queue[Any] = queue_module.Queue()
    loop = EventLoop()
    host = AsyncHost(loop, inbox.put, inbox.put, max_result_bytes=1024)
    try:
        host.add("web", slow_factory, 2)  # type: ignore[arg-type]
        for token in (1, 2):
            instance = host.acquire("web", token)
            assert instance is not None
            ctx = StepContext("w", "s", "fetch", 1, token, {}, "w/s", token, False, Port())
            assert host.send("web", instance, Run("web", instance, "fetch", token, ctx))
        assert building.wait(WAIT)  # (replaced before it ran, it would build nothing)
        host.replace("web", "web/aio1")  # the builder times out
        outcome = inbox.get(timeout=WAIT)
        # The host's own wake-ups, and the replaced builder's report of its cancel (which
        # the Scheduler fences out), may come first.
        while not isinstance(outcome, Outcome) or outcome.token == 1:
            if isinstance(outcome, Outcome):
                assert not outcome.ok, outcome
                assert outcome.error == "CancelledError", outcome
            else:
                assert outcome.kind is not ChildEventKind.CRASHED, outcome  # never a crash
            outcome = inbox.get(timeout=WAIT)
        assert outcome.token == 2
        assert outcome.ok, outcome.error
        assert len(built) == 2  # the waiting attempt built its own object
    finally:
        connect.set()
        loop.close()


class Yielding(Agent):
    """Actions written as generators: calling one runs none of its body."""

    undone: list[str] = []

    async def agen(self, ctx: StepContext) -> Any:
        yield "never"

    def gen(self, ctx: StepContext) -> Any:  # a plain def of an async agent: on the loop
        yield "never"

    async def undo(self, ctx: StepContext) -> None:
        Yielding.undone.append(ctx.step)


@pytest.mark.parametrize(("action", "hidden"), [("agen", False), ("gen", False), ("agen", True)])
def test_a_generator_action_fails_its_step_as_having_taken_no_effect_on_any_host(
    rt: Runtime, action: str, hidden: bool
) -> None:
    # On the loop a generator was an unstorable result, as if the action had run (the
    # thread hosts already said it ran nothing, for a def's generator): its step failed
    # "may have taken effect" and its compensation ran for a body that never did. A
    # hidden class puts the agent on a thread host, which took an async generator so too.
    Yielding.undone = []
    rt.add_agent("y", (lambda: Yielding()) if hidden else Yielding)  # noqa: PLW0108
    rt.add_workflow(Workflow("w").step("s", agent="y", action=action, compensate="undo"))
    with pytest.raises(WorkflowFailed) as failed:
        rt.start("w").result(timeout=WAIT)
    step = failed.value.status.steps["s"]
    assert (step.error or "").startswith("Permanent: "), step.error
    assert "generator" in (step.error or ""), step.error
    assert step.attempt == 1
    assert Yielding.undone == []


def test_after_a_scheduler_crash_the_attempt_it_ran_is_cancelled_before_its_successor(
    tmp_path: Path,
) -> None:
    """A Scheduler that crashed left its async attempts running on the loop (the tree
    stops the thread and pool hosts' instances first, not the loop's tasks), while the
    new one ran their steps again: the same step twice at once, and the agent past its
    concurrency of 1. The old attempt is superseded: its task is cancelled, as on a
    timeout, before its successor starts."""
    seen: list[tuple[str, int]] = []
    started = threading.Event()

    class Held(Agent):
        async def work(self, ctx: StepContext) -> int:
            seen.append(("start", ctx.attempt))
            started.set()
            try:
                if ctx.attempt == 1:
                    await asyncio.Event().wait()  # only a cancel ends it
            except asyncio.CancelledError:
                seen.append(("cancelled", ctx.attempt))
                raise
            return ctx.attempt

    with Runtime(tmp_path / "s", default_retry=FAST) as rt:
        rt.add_agent("h", Held, concurrency=1)
        rt.add_workflow(Workflow("w").step("s", agent="h", action="work"))
        handle = rt.start("w")
        assert started.wait(WAIT)
        crash_scheduler(rt)
        assert handle.result(timeout=WAIT) == {"s": 2}
        assert seen == [("start", 1), ("cancelled", 1), ("start", 2)]


class Forgetful(Agent):
    """Actions that call an ``async def`` and forget to await it (one compensation too)."""

    made: list[Any] = []
    undone = 0

    async def remote(self) -> str:
        Forgetful.undone += 1  # (as undo: it never runs)
        return "never"

    def _call(self) -> Any:
        coroutine = self.remote()
        Forgetful.made.append(coroutine)  # (held: the test sees it closed, not collected)
        return coroutine

    async def forgets(self, ctx: StepContext) -> Any:
        return self._call()

    def hands_back(self, ctx: StepContext) -> Any:  # a plain def: what it returns is awaited
        return self.forgets(ctx)

    async def fine(self, ctx: StepContext) -> str:
        return "done"

    async def undo(self, ctx: StepContext) -> Any:
        return self._call()


def test_a_coroutine_returned_unawaited_says_await_was_forgotten_and_is_closed(
    rt: Runtime,
) -> None:
    # It failed as "cannot be stored: can not serialize 'coroutine' object", and the
    # coroutine, left to the garbage collector, warned "never awaited" from herder's own
    # file; a compensation that returned one (its undo never run) counted as done.
    Forgetful.made, Forgetful.undone = [], 0
    rt.add_agent("f", Forgetful)
    for action in ("forgets", "hands_back"):
        rt.add_workflow(Workflow(action).step("s", agent="f", action=action))
        with pytest.raises(WorkflowFailed) as failed:
            rt.start(action).result(timeout=WAIT)
        step = failed.value.status.steps["s"]
        assert "did you forget await?" in (step.error or ""), step.error
        assert step.attempt == 1  # not retried: it would return the same
    rt.add_workflow(
        Workflow("undone")
        .step("a", agent="f", action="fine", compensate="undo")
        .step("b", agent="f", action="forgets", after=["a"])
    )
    with pytest.raises(WorkflowFailed) as failed:
        rt.start("undone").result(timeout=WAIT)
    assert failed.value.status.state is State.NEEDS_ATTENTION  # an operator's to decide
    error = failed.value.status.steps["a"].error or ""
    assert "compensation 'undo' is a coroutine that was never awaited" in error, error
    assert len(Forgetful.made) == 4  # forgets, hands_back, b, undo
    assert all(inspect.getcoroutinestate(c) == inspect.CORO_CLOSED for c in Forgetful.made)
    assert Forgetful.undone == 0
