"""The asyncio forms of the Runtime's calls: awaited, and never blocking the event loop."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pykka
import pytest

from herder.actors import call_future
from herder.runtime import (
    Agent,
    HerderError,
    InvalidInput,
    RetryPolicy,
    Runtime,
    RuntimeClosed,
    State,
    StepContext,
    Workflow,
    WorkflowConflict,
    WorkflowFailed,
    WrongThread,
)

WAIT = 10.0
ONCE = RetryPolicy(max_attempts=1)


class Gate(Agent):
    """``pass_`` answers at once; ``hold`` waits until the test opens ``gate``."""

    gate = threading.Event()
    later: list[str] = []
    handed_off = threading.Event()

    def pass_(self, ctx: StepContext) -> dict[str, Any]:
        return {"echo": ctx.input}

    def hold(self, ctx: StepContext) -> str:
        if not Gate.gate.wait(WAIT):
            raise TimeoutError("the test never opened the gate")
        return "held"

    def fail(self, ctx: StepContext) -> None:
        raise ValueError("no")

    def later_(self, ctx: StepContext) -> Any:
        Gate.later.append(ctx.task_token)
        Gate.handed_off.set()
        return ctx.complete_later()


def one(name: str, action: str) -> Workflow:
    return Workflow(name).step("s", agent="gate", action=action, timeout=30.0, retry=ONCE)


@pytest.fixture
def rt(tmp_path: Path) -> Iterator[Runtime]:
    Gate.gate = threading.Event()
    Gate.later = []
    Gate.handed_off = threading.Event()
    with Runtime(tmp_path / "store", instance_shutdown=0.1) as runtime:
        runtime.add_agent("gate", Gate, concurrency=4)
        for name, action in (("quick", "pass_"), ("held", "hold"), ("bad", "fail")):
            runtime.add_workflow(one(name, action))
        runtime.add_workflow(one("later", "later_"))
        yield runtime


def test_start_async_is_durable_when_it_returns_and_result_async_gives_the_results(
    rt: Runtime,
) -> None:
    async def main() -> dict[str, Any]:
        h = await rt.start_async("quick", 7, workflow_id="w1")
        assert rt.status("w1").name == "quick"  # in the store already
        return await h.result_async(timeout=WAIT)

    assert asyncio.run(main()) == {"s": {"echo": 7}}


def test_start_async_is_idempotent_on_the_id_and_refuses_other_input(rt: Runtime) -> None:
    async def main() -> None:
        first = await rt.start_async("quick", 1, workflow_id="same")
        again = await rt.start_async("quick", 1, workflow_id="same")
        assert again.id == first.id
        with pytest.raises(WorkflowConflict):
            await rt.start_async("quick", 2, workflow_id="same")

    asyncio.run(main())


def test_result_async_raises_workflow_failed_and_times_out(rt: Runtime) -> None:
    async def main() -> None:
        bad = await rt.start_async("bad")
        with pytest.raises(WorkflowFailed) as failed:
            await bad.result_async(timeout=WAIT)
        assert failed.value.status.state is State.COMPENSATED
        held = await rt.start_async("held")
        with pytest.raises(TimeoutError, match=r"did not end within 0\.05 s"):
            await held.result_async(timeout=0.05)  # (the same message as result())
        Gate.gate.set()
        assert await held.result_async(timeout=WAIT) == {"s": "held"}

    asyncio.run(main())


def test_result_async_of_a_finished_workflow_needs_no_time(rt: Runtime) -> None:
    """As ``result(timeout=0)``: a workflow that ended already is read, not waited for."""
    done = rt.start("quick", 5, workflow_id="ended")
    assert done.result(timeout=WAIT) == {"s": {"echo": 5}}
    assert done.result(timeout=0) == {"s": {"echo": 5}}

    async def main() -> dict[str, Any]:
        return await done.result_async(timeout=0)

    assert asyncio.run(main()) == {"s": {"echo": 5}}


def test_waiting_for_many_results_costs_no_thread(rt: Runtime) -> None:
    async def main() -> None:
        handles = [await rt.start_async("held") for _ in range(200)]
        waits = [asyncio.ensure_future(h.result_async(timeout=WAIT)) for h in handles]
        await asyncio.sleep(0)  # every wait has registered
        while_waiting = threading.active_count()
        Gate.gate.set()
        results = await asyncio.gather(*waits)
        assert results == [{"s": "held"}] * 200
        # 200 waiters, yet only the runtime's own threads (4 instances, the tree, the
        # writer, the sweeper): a thread per waiter would show hundreds.
        assert while_waiting < 40, while_waiting

    asyncio.run(main())


def test_start_async_waits_for_capacity_without_blocking_the_loop(tmp_path: Path) -> None:
    Gate.gate = threading.Event()
    with Runtime(tmp_path / "s", max_active_workflows=1, instance_shutdown=0.1) as rt:
        rt.add_agent("gate", Gate)
        rt.add_workflow(one("held", "hold"))

        async def main() -> None:
            first = await rt.start_async("held")
            second = asyncio.ensure_future(rt.start_async("held", timeout=WAIT))
            await asyncio.sleep(0)  # the second start ran up to its first await
            assert not second.done()  # waiting for capacity...
            Gate.gate.set()  # ...and the loop is free: a blocking wait would never get here
            assert await first.result_async(timeout=WAIT) == {"s": "held"}
            h = await second
            assert await h.result_async(timeout=WAIT) == {"s": "held"}

        asyncio.run(main())


def test_start_async_times_out_when_no_capacity_frees(tmp_path: Path) -> None:
    Gate.gate = threading.Event()
    with Runtime(tmp_path / "s", max_active_workflows=1, instance_shutdown=0.1) as rt:
        rt.add_agent("gate", Gate)
        rt.add_workflow(one("held", "hold"))

        async def main() -> None:
            await rt.start_async("held")
            with pytest.raises(TimeoutError, match="max_active_workflows=1"):
                await rt.start_async("held", timeout=0.05)
            Gate.gate.set()

        asyncio.run(main())


def test_operator_actions_and_completions_have_awaitable_forms(rt: Runtime) -> None:
    async def main() -> None:
        held = await rt.start_async("held")
        await rt.cancel_async(held.id, who="test")
        Gate.gate.set()
        with pytest.raises(WorkflowFailed) as failed:
            await held.result_async(timeout=WAIT)
        assert failed.value.status.state is State.CANCELLED

        later = await rt.start_async("later")
        assert await asyncio.to_thread(Gate.handed_off.wait, WAIT)
        await rt.complete_step_async(Gate.later[0], {"done": True})
        assert await later.result_async(timeout=WAIT) == {"s": {"done": True}}

    asyncio.run(main())


def test_async_with_stops_the_runtime(tmp_path: Path) -> None:
    async def main() -> Runtime:
        async with Runtime(tmp_path / "s") as rt:
            assert rt.is_active
        return rt

    rt = asyncio.run(main())
    with pytest.raises(RuntimeClosed):
        rt.start("anything")


def test_a_handle_of_a_stopped_runtime_says_the_runtime_stopped(tmp_path: Path) -> None:
    """Not that its store is closed (StoreClosed: "open it again")."""
    with Runtime(tmp_path / "s") as rt:
        rt.add_agent("gate", Gate)
        rt.add_workflow(Workflow("quick").step("s", agent="gate", action="pass_"))
        handle = rt.start("quick", 1)
        assert handle.result(timeout=WAIT) == {"s": {"echo": 1}}
    with pytest.raises(RuntimeClosed, match="the runtime is stopped: a handle waits only"):
        handle.result(timeout=1)
    with pytest.raises(RuntimeClosed, match="the runtime is stopped"):
        asyncio.run(handle.result_async(timeout=1))
    assert rt._waiters == {}  # the refused waits left nothing behind


def test_run_forever_async_serves_until_sigterm_and_restores_the_handlers(
    tmp_path: Path,
) -> None:
    before = signal.getsignal(signal.SIGTERM)

    async def main(rt: Runtime) -> None:
        serving = asyncio.ensure_future(rt.run_forever_async(drain_timeout=1.0))
        await asyncio.sleep(0)  # the handlers are installed
        assert not serving.done()
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.wait_for(serving, WAIT)

    rt = Runtime(tmp_path / "s")
    asyncio.run(main(rt))
    with pytest.raises(RuntimeClosed):
        rt.start("anything")
    assert signal.getsignal(signal.SIGTERM) == before


def test_run_forever_async_returns_when_the_runtime_is_stopped_elsewhere(tmp_path: Path) -> None:
    rt = Runtime(tmp_path / "s")

    async def main() -> None:
        serving = asyncio.ensure_future(rt.run_forever_async())
        await asyncio.sleep(0)  # (a yield: run_forever_async starts serving; no wait)
        threading.Thread(target=rt.stop).start()
        await asyncio.wait_for(serving, WAIT)

    asyncio.run(main())


@pytest.mark.parametrize("drain_timeout", [-1.0, "30", float("nan")])
def test_run_forever_async_refuses_a_bad_drain_timeout_at_the_door(
    tmp_path: Path, drain_timeout: Any
) -> None:
    # It served with it, and only the stop() at SIGTERM refused it: the runtime was left
    # running at shutdown, its InvalidInput raised then (run_forever() checks at the door).
    before = signal.getsignal(signal.SIGTERM)
    with Runtime(tmp_path / "s") as rt:

        async def main() -> None:
            await asyncio.wait_for(rt.run_forever_async(drain_timeout=drain_timeout), 2.0)

        with pytest.raises(InvalidInput, match="drain_timeout"):
            asyncio.run(main())
        assert rt.is_active
    assert signal.getsignal(signal.SIGTERM) == before


def test_serving_off_the_main_thread_is_refused_with_a_herder_error(tmp_path: Path) -> None:
    # Both raised a bare RuntimeError: an application catching HerderError missed it.
    raised: list[BaseException] = []

    def serve(call: Callable[[], object]) -> None:
        try:
            call()
        except BaseException as exc:  # what it raised is the finding
            raised.append(exc)

    with Runtime(tmp_path / "s") as rt:
        for call in (rt.run_forever, lambda: asyncio.run(rt.run_forever_async())):
            thread = threading.Thread(target=serve, args=(call,))
            thread.start()
            thread.join(WAIT)
        assert rt.is_active  # nothing was stopped
    assert [type(exc) for exc in raised] == [WrongThread, WrongThread]
    assert all(isinstance(exc, HerderError) for exc in raised)
    assert all("main thread" in str(exc) for exc in raised)


@pytest.mark.timeout(30)
def test_run_forever_async_gives_back_the_apps_own_loop_signal_handler(tmp_path: Path) -> None:
    """A daemon's own SIGTERM handler on the loop is its again once herder has stopped."""

    async def main(rt: Runtime) -> None:
        loop = asyncio.get_running_loop()
        app_stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, app_stop.set)
        try:
            serving = asyncio.ensure_future(rt.run_forever_async(drain_timeout=1.0))
            await asyncio.sleep(0)  # (a yield: herder's handlers are installed)
            os.kill(os.getpid(), signal.SIGTERM)  # herder's: it drains and stops
            await asyncio.wait_for(serving, WAIT)
            assert not app_stop.is_set()
            # (checked before the next kill: with SIG_DFL that kill would end pytest)
            assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, signal.SIG_IGN), (
                "the app's SIGTERM handler on the loop is gone after run_forever_async"
            )
            os.kill(os.getpid(), signal.SIGTERM)  # the app's again
            await asyncio.wait_for(app_stop.wait(), WAIT)
        finally:
            loop.remove_signal_handler(signal.SIGTERM)

    rt = Runtime(tmp_path / "s")
    asyncio.run(main(rt))
    with pytest.raises(RuntimeClosed):
        rt.start("anything")


@pytest.mark.timeout(30)
def test_run_forever_async_gives_back_the_process_signal_handlers(tmp_path: Path) -> None:
    """One set with ``signal.signal`` (and ``asyncio.run``'s own SIGINT one) stays."""
    got: list[int] = []
    called = threading.Event()

    def app_handler(signum: int, frame: object) -> None:
        got.append(signum)
        called.set()

    async def main(rt: Runtime) -> None:
        runner_sigint = signal.getsignal(signal.SIGINT)  # asyncio.run's own
        serving = asyncio.ensure_future(rt.run_forever_async(drain_timeout=1.0))
        await asyncio.sleep(0)  # (a yield: herder's handlers are installed)
        threading.Thread(target=rt.stop).start()
        await asyncio.wait_for(serving, WAIT)
        assert signal.getsignal(signal.SIGINT) is runner_sigint, (
            f"SIGINT's handler is {signal.getsignal(signal.SIGINT)!r}, not asyncio.run's"
        )

    previous = signal.signal(signal.SIGTERM, app_handler)
    try:
        rt = Runtime(tmp_path / "s")
        asyncio.run(main(rt))
        assert signal.getsignal(signal.SIGTERM) is app_handler, (
            f"SIGTERM's handler is {signal.getsignal(signal.SIGTERM)!r}, not the app's"
        )
        os.kill(os.getpid(), signal.SIGTERM)
        assert called.wait(WAIT)
        assert got == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, previous)


@pytest.mark.timeout(30)
def test_one_sigterm_stops_every_runtime_serving_on_the_loop(tmp_path: Path) -> None:
    """Each run_forever_async took the loop's handler from the one before: a SIGTERM woke
    only the runtime that served last (the others served on, undrained, until the service
    manager's SIGKILL), and one that returned first gave the app's handler back under
    those still serving, which then never heard a SIGTERM at all."""

    async def main(rts: list[Runtime]) -> None:
        loop = asyncio.get_running_loop()
        app_stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, app_stop.set)
        try:
            serving = [asyncio.ensure_future(rt.run_forever_async(drain_timeout=1.0)) for rt in rts]
            await asyncio.sleep(0)  # (a yield: each installed its handlers)
            await rts[0].stop_async()  # the first ends first, stopped elsewhere
            await asyncio.wait_for(serving[0], WAIT)
            os.kill(os.getpid(), signal.SIGTERM)  # the others hear it, every one
            done, _ = await asyncio.wait(serving[1:], timeout=WAIT)
            assert len(done) == 2, "a runtime serving on the loop did not hear the SIGTERM"
            assert not app_stop.is_set()  # herder's while they served
            os.kill(os.getpid(), signal.SIGTERM)  # the app's again once all returned
            await asyncio.wait_for(app_stop.wait(), WAIT)
        finally:
            loop.remove_signal_handler(signal.SIGTERM)

    rts = [Runtime(tmp_path / f"s{i}") for i in range(3)]
    try:
        asyncio.run(main(rts))
        assert not any(rt.is_active for rt in rts)
    finally:
        for rt in rts:
            rt.stop()


@pytest.mark.timeout(10)
def test_on_a_loop_without_a_readable_signal_table_the_handlers_are_only_removed() -> None:
    """uvloop and others keep no ``_signal_handlers`` dict: nothing to give back, no crash."""
    from herder.runtime._async import _give_back_signals, _take_signals

    class Loop:
        def __init__(self) -> None:
            self.calls: list[tuple[str, int]] = []

        def add_signal_handler(self, sig: int, *args: object) -> None:
            self.calls.append(("add", sig))

        def remove_signal_handler(self, sig: int) -> bool:
            self.calls.append(("remove", sig))
            return True

    loop = Loop()
    before = signal.getsignal(signal.SIGTERM)
    held = _take_signals(loop, (signal.SIGTERM,), lambda sig: None)  # type: ignore[arg-type]
    _give_back_signals(loop, held)  # type: ignore[arg-type]
    assert loop.calls == [("add", signal.SIGTERM), ("remove", signal.SIGTERM)]
    assert signal.getsignal(signal.SIGTERM) == before  # the process's own left alone


class _LoopOwningSignals:
    """A loop without a readable signal table that, as uvloop does, points the process's
    handler at a method of its own while it handles a signal, and leaves the default
    when it stops."""

    def add_signal_handler(self, sig: int, *args: object) -> None:
        signal.signal(sig, self._dispatch)

    def remove_signal_handler(self, sig: int) -> bool:
        default = signal.default_int_handler if sig == signal.SIGINT else signal.SIG_DFL
        signal.signal(sig, default)
        return True

    def _dispatch(self, signum: int, frame: object) -> None:
        pass


@pytest.mark.timeout(10)
def test_on_a_loop_without_a_signal_table_the_process_handlers_are_given_back() -> None:
    """On uvloop the handlers set with ``signal.signal`` (the app's SIGTERM one,
    ``asyncio.Runner``'s SIGINT one) were left at the default after run_forever_async: a
    later SIGTERM killed the process outright, a Ctrl-C raised KeyboardInterrupt inside
    the loop instead of cancelling the main task. The loop's own dispatcher (it served a
    handler the app had added on that loop) is not put back: that handler is gone."""
    from herder.runtime._async import _give_back_signals, _take_signals

    def app_handler(signum: int, frame: object) -> None:
        pass

    loop = _LoopOwningSignals()
    previous = signal.signal(signal.SIGTERM, app_handler)
    try:
        held = _take_signals(loop, (signal.SIGTERM,), lambda sig: None)  # type: ignore[arg-type]
        assert signal.getsignal(signal.SIGTERM) == loop._dispatch
        _give_back_signals(loop, held)  # type: ignore[arg-type]
        assert signal.getsignal(signal.SIGTERM) is app_handler
        loop.add_signal_handler(signal.SIGTERM)  # the app's own, on the loop
        held = _take_signals(loop, (signal.SIGTERM,), lambda sig: None)  # type: ignore[arg-type]
        _give_back_signals(loop, held)  # type: ignore[arg-type]
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # (not a dispatcher to nothing)
    finally:
        signal.signal(signal.SIGTERM, previous)


class AsyncAgent(Agent):
    async def fetch(self, ctx: StepContext) -> str:
        return "never"

    def plain(self, ctx: StepContext) -> str:
        return "ok"

    async def probe_fetch(self, ctx: StepContext) -> None:
        return None


def test_an_agent_with_async_def_actions_is_refused_off_the_asyncio_host(rt: Runtime) -> None:
    with pytest.raises(InvalidInput, match="'fetch', 'probe_fetch' are async def"):
        rt.add_agent("web", AsyncAgent, asyncio=False)
    assert "web" not in rt.stats()["agents"]


def test_an_async_def_action_behind_an_opaque_factory_fails_its_step_for_good(
    rt: Runtime,
) -> None:
    rt.add_agent("web", lambda: AsyncAgent())  # noqa: PLW0108 (hides the class)
    rt.add_workflow(Workflow("fetch").step("s", agent="web", action="fetch", retry=ONCE))
    with pytest.raises(WorkflowFailed) as failed:
        rt.start("fetch").result(timeout=WAIT)
    error = failed.value.status.steps["s"].error or ""
    assert "returned a coroutine (async def)" in error
    assert "EncodeError" not in error


def test_call_future_reports_a_dead_actor_in_the_future() -> None:
    class Echo(pykka.ThreadingActor):
        def hello(self) -> str:
            return "hi"

    ref = Echo.start()
    assert call_future(ref, "hello").result(WAIT) == "hi"
    ref.stop()
    with pytest.raises(pykka.ActorDeadError):
        call_future(ref, "hello").result(WAIT)


DOC = Path(__file__).resolve().parent.parent / "docs" / "asyncio.md"


def test_the_asyncio_doc_example_serves_requests_that_await_workflows(tmp_path: Path) -> None:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.DOTALL)
    namespace: dict[str, Any] = {"__name__": "asyncio_doc"}
    exec(compile(blocks[0], str(DOC), "exec"), namespace)
    bodies = asyncio.run(namespace["main"](str(tmp_path / "store")))
    assert [json.loads(b) for b in bodies] == [
        {"reserve": {"sku": f"sku-{i}", "held": True}} for i in range(20)
    ]
