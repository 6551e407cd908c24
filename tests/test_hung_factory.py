"""A factory that hangs: the thread left in it is counted in
``stats()["host"]["abandoned_threads"]`` until the factory returns, as a hung action's is.
The thread host's instance whose start timed out in its factory was counted nowhere; the
pool's worker abandoned in one stayed counted after its factory returned."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from herder.actors import ThreadHost
from herder.runtime import Agent, RetryPolicy, Runtime, StepContext, Workflow, WorkflowFailed

WAIT = 30.0
pytestmark = pytest.mark.timeout(120)
ONCE = RetryPolicy(max_attempts=2, initial_interval=0.01, jitter=0.0)


@pytest.mark.parametrize("host", ["pool", "thread"])
def test_a_thread_left_in_a_hung_factory_is_counted_until_the_factory_returns(
    tmp_path: Path, host: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ThreadHost, "instance_start_timeout", 0.3)
    gate = threading.Event()
    hung: list[threading.Thread] = []  # the thread of the first factory call
    runs: list[int] = []

    class Dev(Agent):
        def go(self, ctx: StepContext) -> int:
            runs.append(ctx.attempt)
            return ctx.attempt

    def factory() -> Dev:
        if not hung:
            hung.append(threading.current_thread())
            gate.wait(WAIT)
        return Dev()

    try:
        with Runtime(tmp_path / "s", agent_host=host, instance_shutdown=0.1) as rt:
            rt.add_agent("a", factory)
            step = Workflow("w").step("s", agent="a", action="go", timeout=0.3, retry=ONCE)
            rt.add_workflow(step)
            assert rt.start("w").result(timeout=WAIT) == {"s": 2}
            assert rt.stats()["host"]["abandoned_threads"] == 1
            gate.set()
            hung[0].join(WAIT)
            assert not hung[0].is_alive()
            assert rt.stats()["host"]["abandoned_threads"] == 0
    finally:
        gate.set()


def test_an_attempt_replaced_while_its_factory_hung_never_runs_its_action(
    tmp_path: Path,
) -> None:
    """The pool's worker built the object at last and ran the replaced attempt's action,
    after its workflow had succeeded on the retry, beside it (outside concurrency=1)."""
    gate = threading.Event()
    hung: list[threading.Thread] = []
    runs: list[tuple[int, bool]] = []

    class Dev(Agent):
        def go(self, ctx: StepContext) -> int:
            runs.append((ctx.attempt, ctx.superseded))
            return ctx.attempt

    def factory() -> Dev:
        if not hung:
            hung.append(threading.current_thread())
            gate.wait(WAIT)
        return Dev()

    try:
        with Runtime(tmp_path / "s", instance_shutdown=0.1) as rt:
            rt.add_agent("a", factory)
            step = Workflow("w").step("s", agent="a", action="go", timeout=0.3, retry=ONCE)
            rt.add_workflow(step)
            assert rt.start("w").result(timeout=WAIT) == {"s": 2}
            gate.set()
            hung[0].join(WAIT)
            assert not hung[0].is_alive()
            assert runs == [(2, False)]
    finally:
        gate.set()


def test_the_object_a_hung_factory_built_at_last_is_let_go(tmp_path: Path) -> None:
    """It was kept (with whatever connection it opened) until its agent was removed and
    forgotten: for an agent that is never removed, for ever."""
    gate, gone = threading.Event(), threading.Event()
    hung: list[threading.Thread] = []

    class Dev(Agent):
        def __init__(self, late: bool) -> None:
            self.late = late

        def go(self, ctx: StepContext) -> int:
            return ctx.attempt

        def __del__(self) -> None:
            if self.late:
                gone.set()

    def factory() -> Dev:
        if not hung:
            hung.append(threading.current_thread())
            gate.wait(WAIT)
            return Dev(late=True)
        return Dev(late=False)

    try:
        with Runtime(tmp_path / "s", instance_shutdown=0.1) as rt:
            rt.add_agent("a", factory)
            step = Workflow("w").step("s", agent="a", action="go", timeout=0.3, retry=ONCE)
            rt.add_workflow(step)
            assert rt.start("w").result(timeout=WAIT) == {"s": 2}
            gate.set()
            assert gone.wait(WAIT)
    finally:
        gate.set()


def test_a_start_that_timed_out_in_its_factory_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The thread host said "child 'a#0' did not finish on_start within 0.3 s; it was told
    to stop": the supervision tree's words, not the user's."""
    monkeypatch.setattr(ThreadHost, "instance_start_timeout", 0.3)
    gate = threading.Event()

    class Dev(Agent):
        def go(self, ctx: StepContext) -> int:
            return 1

    def factory() -> Dev:
        gate.wait(WAIT)
        return Dev()

    try:
        with Runtime(tmp_path / "s", agent_host="thread", instance_shutdown=0.1) as rt:
            rt.add_agent("a", factory)
            once = RetryPolicy(max_attempts=1)
            rt.add_workflow(Workflow("w").step("s", agent="a", action="go", retry=once))
            with pytest.raises(WorkflowFailed) as failed:
                rt.start("w").result(timeout=WAIT)
            error = failed.value.status.steps["s"].error or ""
            assert "failed to start: its factory did not return within 0.3 s" in error, error
    finally:
        gate.set()
