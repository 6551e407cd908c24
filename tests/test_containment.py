"""No exception of any kind from user code escapes an actor (issue 14, defect 1).

pykka stops every actor of the process when a BaseException escapes one, so a user
object that raises SystemExit, KeyboardInterrupt, GeneratorExit or a custom BaseException
when it is printed, compared or looked at must fail only its own step, the way a
ValueError does. The table is every place the runtime touches user code or a user object:
each hook x each kind of BaseException. After each case the same runtime still answers
``stats()`` and runs work, and so does a second runtime in the same process.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from herder.runtime import (
    Agent,
    EncodeError,
    Permanent,
    ProbeResult,
    RetryPolicy,
    Runtime,
    State,
    StepContext,
    StepState,
    Workflow,
    WorkflowFailed,
)
from herder.runtime.testing import FakeClock, advance, settle, wait_until

WAIT = 10.0
TIMEOUT = 5.0
ONCE = RetryPolicy(max_attempts=1, initial_interval=0.0, jitter=0.0)
TWICE = RetryPolicy(max_attempts=2, initial_interval=0.0, jitter=0.0)


class Halt(BaseException):
    """A user's own BaseException subclass."""


SIGNALS: dict[str, type[BaseException]] = {
    "SystemExit": SystemExit,
    "KeyboardInterrupt": KeyboardInterrupt,
    "GeneratorExit": GeneratorExit,
    "custom": Halt,
}


@dataclass
class Case:
    """What one hook needs: the runtime under test, its clock and the signal to raise."""

    rt: Runtime
    clock: FakeClock
    signal: type[BaseException]

    @property
    def unprintable(self) -> str:
        return re.escape(f"<unprintable: str() raised {self.signal.__name__}>")

    def raising(self, base: type[BaseException] = Exception) -> type[BaseException]:
        """An exception class (deriving from ``base``) that raises the signal when printed."""
        signal = self.signal

        def explode(self: object) -> str:
            raise signal("printed")

        return type("Loud", (base,), {"__str__": explode, "__repr__": explode})

    def evil_dict(self) -> dict[str, Any]:
        """A dict subclass that raises the signal when the store reads it."""
        signal = self.signal

        def explode(self: object) -> Any:
            raise signal("read")

        return type("EvilDict", (dict,), {"items": explode, "__iter__": explode})(a=1)

    def run(self, agent: type[Agent] | Callable[[], Agent], workflow: Workflow) -> Any:
        """Register and start ``workflow`` (id ``w``); return its handle."""
        self.rt.add_agent("user", agent)
        self.rt.add_workflow(workflow)
        return self.rt.start(workflow.name, workflow_id="w")

    def failed_step(self, agent: type[Agent] | Callable[[], Agent], retry: RetryPolicy) -> Any:
        """Run a one-step workflow that must fail; return the step's status."""
        handle = self.run(agent, Workflow("one").step("s", agent="user", action="work", retry=retry,
                                                       heartbeat_timeout=60))  # fmt: skip
        with pytest.raises(WorkflowFailed) as failed:
            handle.result(timeout=WAIT)
        return failed.value.status.steps["s"]


# -- the hooks: each drives one place where user code runs, and checks the step's fate --


def action_error_str(case: Case) -> None:
    loud = case.raising()

    class User(Agent):
        def work(self, ctx: StepContext) -> None:
            raise loud()

    step = case.failed_step(User, TWICE)
    assert step.attempt == 2  # transient, as with a ValueError
    assert re.fullmatch(f"Loud: {case.unprintable}", step.error), step.error


def permanent_error_str(case: Case) -> None:
    loud = case.raising(Permanent)

    class User(Agent):
        def work(self, ctx: StepContext) -> None:
            raise loud()

    step = case.failed_step(User, TWICE)
    assert step.attempt == 1  # still Permanent: not retried
    assert re.fullmatch(f"Loud: {case.unprintable}", step.error), step.error


def error_type_names(case: Case) -> None:
    """A metaclass whose __name__/__mro__ raise, a __module__ that cannot be printed; the
    type still matches non_retryable."""
    signal = case.signal

    class Module:
        def __format__(self, spec: str) -> str:
            raise signal("module")

        __str__ = __repr__ = __format__  # type: ignore[assignment]

    class Meta(type):
        @property
        def __name__(cls) -> str:  # type: ignore[override]
            raise signal("name")

        @property
        def __mro__(cls) -> tuple[type, ...]:  # type: ignore[override]
            raise signal("mro")

    weird = Meta("Weird", (ValueError,), {"__module__": Module()})

    class User(Agent):
        def work(self, ctx: StepContext) -> None:
            raise weird("plain message")

    step = case.failed_step(User, RetryPolicy(max_attempts=3, non_retryable=(weird,)))
    assert step.attempt == 1  # matched non_retryable by its stored name
    assert step.error == "Weird: plain message"


def action_raises_signal(case: Case) -> None:
    signal = case.signal

    class User(Agent):
        def work(self, ctx: StepContext) -> None:
            raise signal("bye")

    step = case.failed_step(User, ONCE)
    assert step.error == f"{signal.__name__}: bye"


def result_unreadable(case: Case) -> None:
    evil = case.evil_dict()

    class User(Agent):
        def work(self, ctx: StepContext) -> Any:
            return evil

    step = case.failed_step(User, TWICE)
    assert step.attempt == 1  # an unstorable result is permanent
    assert re.match(r"EncodeError: result of action 'work' cannot be stored: reading it raised "
                    f"{case.signal.__name__}: read", step.error), step.error  # fmt: skip


def result_class_raises(case: Case) -> None:
    signal = case.signal

    class Shifty:
        @property
        def __class__(self) -> type:  # type: ignore[override]
            raise signal("class")

    class User(Agent):
        def work(self, ctx: StepContext) -> Any:
            return Shifty()

    step = case.failed_step(User, ONCE)
    assert step.error == f"{signal.__name__}: class"


def heartbeat_details(case: Case) -> None:
    evil = case.evil_dict()

    class User(Agent):
        def work(self, ctx: StepContext) -> Any:
            ctx.heartbeat(evil)
            return "unreachable"

    step = case.failed_step(User, TWICE)
    assert step.attempt == 1
    assert step.error.startswith("EncodeError: heartbeat details cannot be stored"), step.error


def compensation_error(case: Case) -> None:
    loud = case.raising()

    class User(Agent):
        def work(self, ctx: StepContext) -> str:
            return "done"

        def undo(self, ctx: StepContext) -> None:
            raise loud()

        def fail(self, ctx: StepContext) -> None:
            raise Permanent("no")

    flow = (
        Workflow("comp")
        .step("a", agent="user", action="work", compensate="undo", compensate_retry=ONCE)
        .step("b", agent="user", action="fail", after=["a"])
    )
    with pytest.raises(WorkflowFailed) as failed:
        case.run(User, flow).result(timeout=WAIT)
    assert failed.value.status.state is State.NEEDS_ATTENTION
    assert re.search(case.unprintable, failed.value.status.steps["a"].error or "")


def factory_error(case: Case) -> None:
    loud = case.raising()

    def factory() -> Agent:
        raise loud()

    step = case.failed_step(factory, ONCE)
    assert "failed to start" in step.error, step.error
    assert re.search(case.unprintable, step.error), step.error


def factory_raises_signal(case: Case) -> None:
    signal = case.signal

    def factory() -> Agent:
        raise signal("no agent")

    step = case.failed_step(factory, ONCE)
    assert "failed to start" in step.error, step.error
    assert f"{signal.__name__}: no agent" in step.error, step.error


class Hanging(Agent):
    """``work`` blocks until released, so its attempt lapses under the fake clock."""

    entered = threading.Semaphore(0)
    release = threading.Event()

    def work(self, ctx: StepContext) -> str:
        if ctx.attempt == 1:
            type(self).entered.release()
            type(self).release.wait(WAIT)
        return "second"


def hanging(**attrs: Any) -> type[Hanging]:
    meta = attrs.pop("metaclass", type)
    return meta("User", (Hanging,), {"entered": threading.Semaphore(0),
                                     "release": threading.Event(), **attrs})  # fmt: skip


def lapse(case: Case, agent: type[Hanging]) -> Any:
    flow = Workflow("slow").step("s", agent="user", action="work", timeout=TIMEOUT, retry=TWICE)
    handle = case.run(agent, flow)
    assert agent.entered.acquire(timeout=WAIT)
    advance(case.rt, case.clock, TIMEOUT + 0.5)
    return handle


def probe_lookup(case: Case) -> None:
    """Looking for ``probe_work`` on the agent's class raises: it has no probe."""
    signal = case.signal

    class Meta(type):
        def __getattr__(cls, name: str) -> Any:
            raise signal(name)

    agent = hanging(metaclass=Meta)
    try:
        handle = lapse(case, agent)
        assert handle.result(timeout=WAIT) == {"s": "second"}  # retried, never probed
    finally:
        agent.release.set()


def probe_error(case: Case) -> None:
    loud = case.raising()

    def probe_work(self: Agent, ctx: StepContext) -> ProbeResult:
        raise loud()

    agent = hanging(probe_work=probe_work)
    try:
        lapse(case, agent)
        wait_until(case.rt, lambda: "probe failed" in (case.rt.status("w").steps["s"].error or ""))
        error = case.rt.status("w").steps["s"].error or ""
        assert re.search(f"probe failed: Loud: {case.unprintable}", error), error
    finally:
        agent.release.set()


def probe_verdict(case: Case) -> None:
    """A ProbeResult whose status is a user object: compared, it would raise."""
    signal = case.signal

    class Status:
        def __eq__(self, other: object) -> bool:
            raise signal("eq")

        def __hash__(self) -> int:
            raise signal("hash")

    def probe_work(self: Agent, ctx: StepContext) -> ProbeResult:
        return ProbeResult(Status())  # type: ignore[arg-type]

    agent = hanging(probe_work=probe_work)
    try:
        lapse(case, agent)
        refused = "probe_work must return a ProbeResult"
        wait_until(case.rt, lambda: refused in (case.rt.status("w").steps["s"].error or ""))
    finally:
        agent.release.set()


class Later(Agent):
    tokens: list[str] = []

    def work(self, ctx: StepContext) -> Any:
        type(self).tokens.append(ctx.task_token)
        return ctx.complete_later()


def handed_off(case: Case) -> tuple[Any, str]:
    agent = type("User", (Later,), {"tokens": []})
    flow = Workflow("later").step("s", agent="user", action="work", retry=ONCE)
    handle = case.run(agent, flow)
    wait_until(case.rt, lambda: case.rt.status("w").steps["s"].state is StepState.WAITING)
    return handle, agent.tokens[0]


def fail_step_error(case: Case) -> None:
    handle, token = handed_off(case)
    case.rt.fail_step(token, case.raising()())
    with pytest.raises(WorkflowFailed) as failed:
        handle.result(timeout=WAIT)
    error = failed.value.status.steps["s"].error or ""
    assert re.fullmatch(f"Loud: {case.unprintable}", error), error


def complete_step_result(case: Case) -> None:
    handle, token = handed_off(case)
    with pytest.raises(EncodeError, match="reading it raised"):
        case.rt.complete_step(token, case.evil_dict())
    case.rt.complete_step(token, "fine")
    assert handle.result(timeout=WAIT) == {"s": "fine"}


def skip_result(case: Case) -> None:
    handle, _ = handed_off(case)
    with pytest.raises(EncodeError, match="reading it raised"):
        case.rt.skip("w", "s", result=case.evil_dict())
    case.rt.skip("w", "s", result="skipped")
    assert handle.result(timeout=WAIT) == {"s": "skipped"}


HOOKS: list[Callable[[Case], None]] = [
    action_error_str,
    permanent_error_str,
    error_type_names,
    action_raises_signal,
    result_unreadable,
    result_class_raises,
    heartbeat_details,
    compensation_error,
    factory_error,
    factory_raises_signal,
    probe_lookup,
    probe_error,
    probe_verdict,
    fail_step_error,
    complete_step_result,
    skip_result,
]


class Echo(Agent):
    def echo(self, ctx: StepContext) -> Any:
        return ctx.input


def runtime(path: Path, clock: FakeClock) -> Runtime:
    rt = Runtime(path, clock=clock, sweep_interval=1.0, instance_shutdown=0.1, probe_timeout=3.0)
    rt.add_agent("echo", Echo)
    rt.add_workflow(Workflow("echo").step("s", agent="echo", action="echo"))
    return rt


@pytest.fixture
def bystander(tmp_path: Path) -> Iterator[Runtime]:
    with runtime(tmp_path / "other", FakeClock()) as rt:
        yield rt


@pytest.mark.parametrize("signal", SIGNALS.values(), ids=SIGNALS.keys())
@pytest.mark.parametrize("hook", HOOKS, ids=[h.__name__ for h in HOOKS])
def test_user_code_raising_any_base_exception_fails_only_its_step(
    tmp_path: Path, bystander: Runtime, hook: Callable[[Case], None], signal: type[BaseException]
) -> None:
    clock = FakeClock()
    with runtime(tmp_path / "s", clock) as rt:
        hook(Case(rt, clock, signal))
        settle(rt)
        assert rt.stats()["steps"] is not None  # the Scheduler still answers
        assert rt.start("echo", "again").result(timeout=WAIT) == {"s": "again"}
    assert bystander.stats()["steps"] is not None  # and so does another runtime
    assert bystander.start("echo", "other").result(timeout=WAIT) == {"s": "other"}


def test_an_exception_with_no_message_is_described_by_its_type_alone() -> None:
    # "KeyboardInterrupt: " ended in a dangling colon (the workflow review, session 14).
    from herder.store._untrusted import describe

    assert describe(KeyboardInterrupt()) == "KeyboardInterrupt"
    assert describe(ValueError("bad")) == "ValueError: bad"


def test_an_agent_that_cannot_be_built_is_logged_as_a_failed_attempt(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A factory that raises is the commonest setup mistake, and it was logged at INFO
    # only: with default logging a user saw nothing (the docs review, session 14).
    class Needs(Agent):
        def __init__(self, endpoint: str) -> None:
            self.endpoint = endpoint

        def work(self, ctx: StepContext) -> None:
            return None

    caplog.set_level(logging.WARNING, logger="herder.scheduler")
    with Runtime(tmp_path / "s", default_retry=ONCE) as rt:
        rt.add_agent("user", Needs)
        rt.add_workflow(Workflow("one").step("s", agent="user", action="work"))
        with pytest.raises(WorkflowFailed):
            rt.start("one", workflow_id="w").result(timeout=WAIT)
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(
        m.startswith("w/s attempt 1 failed:") and "missing 1 required positional" in m
        for m in warned
    ), warned


class Shrinking(dict):  # type: ignore[type-arg]
    """A dict whose items() give fewer pairs than its len() says."""

    def items(self) -> Any:
        return [("a", 1)]


class Growing(list):  # type: ignore[type-arg]
    """A list whose iteration gives more items than it holds."""

    def __iter__(self) -> Iterator[int]:
        yield from (1, 2, 3)


@pytest.mark.parametrize("value", [Shrinking(a=1, b=2), Growing([1]), {"x": Growing([1])}])
def test_a_container_whose_length_lies_is_refused_for_what_it_is(
    tmp_path: Path, value: Any
) -> None:
    # It was refused with "unpack(b) received extra data.; map keys must be str": msgpack's
    # words, and a cause it did not have.
    class User(Agent):
        def work(self, ctx: StepContext) -> Any:
            return value

    case = Case(runtime(tmp_path / "s", FakeClock()), FakeClock(), SystemExit)
    with case.rt:
        step = case.failed_step(User, TWICE)
    assert step.attempt == 1, step.error  # unstorable: not retried
    assert "map keys" not in step.error, step.error
    assert "unpack" not in step.error.lower(), step.error
    assert "its len()" in step.error, step.error
