"""Hostile and bad input through the public API: each meets a clear HerderError subclass,
and nothing is written (the store's bytes are compared before and after).

The tables here are the list of bad inputs tried; ``test_store_corruption.py`` covers bad
data already in the store and ``test_store_fuzz.py`` the decoder.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import math
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import msgpack
import pytest

from herder.runtime import (
    Agent,
    CircuitBreaker,
    EncodeError,
    HerderError,
    InvalidDefinition,
    InvalidInput,
    Permanent,
    RetryPolicy,
    Runtime,
    StepContext,
    StepState,
    UnknownName,
    UnknownWorkflow,
    Workflow,
    WorkflowConflict,
    WorkflowFailed,
)
from herder.runtime.testing import FakeClock
from herder.store import Store
from herder.store._open import DATABASES

WAIT = 10.0
LIMIT = 4096  # max_input_bytes and max_result_bytes of the runtime under test


def nested(depth: int) -> Any:
    """A value ``depth`` lists deep."""
    value: Any = "leaf"
    for _ in range(depth):
        value = [value]
    return value


def cyclic() -> list[Any]:
    loop: list[Any] = []
    loop.append(loop)
    return loop


def snapshot(store: Store) -> dict[str, list[tuple[bytes, bytes]]]:
    """Every key and value of every database: 'nothing written' compares these."""
    return {db: list(store.raw_scan(db)) for db in DATABASES if db != "meta"}


class _Raises:
    def __get__(self, obj: object, owner: type) -> Any:
        raise ValueError("no reading")


class Unprintable:
    """A value whose repr raises, or is megabytes long (``huge``)."""

    def __init__(self, huge: bool = False) -> None:
        self.huge = huge

    def __repr__(self) -> str:
        if self.huge:
            return "x" * 10_000_000
        raise RuntimeError("no repr")


class Unreadable(Agent):
    """An agent class one of whose attributes raises when read (a descriptor)."""

    broken = _Raises()

    def echo(self, ctx: StepContext) -> Any:
        return ctx.input


class Actionless(Agent):
    """An agent class with no public method: no action at all."""

    def _echo(self, ctx: StepContext) -> Any:
        return ctx.input


def _actionless(rt: Runtime) -> None:
    rt.add_agent("mute", Actionless)
    rt.add_workflow(Workflow("mute").step("s", agent="mute", action="echo"))


class Echo(Agent):
    """Returns its input; the hostile results and heartbeats come from the input's name."""

    def echo(self, ctx: StepContext) -> Any:
        return ctx.input


@pytest.fixture
def rt(tmp_path: Path) -> Iterator[Runtime]:
    with Runtime(
        tmp_path / "s", clock=FakeClock(), max_input_bytes=LIMIT, max_result_bytes=LIMIT
    ) as runtime:
        runtime.add_agent("svc", Echo)
        runtime.add_workflow(Workflow("echo").step("s", agent="svc", action="echo"))
        runtime.add_workflow(Workflow("ghost").step("s", agent="nobody", action="echo"))
        runtime.start("echo", {"a": 1}, workflow_id="taken").result(timeout=WAIT)
        yield runtime


def graph(*edges: tuple[str, list[str]]) -> Workflow:
    wf = Workflow("g")
    for name, after in edges:
        wf = wf.step(name, agent="svc", action="echo", after=after)
    return wf


Call = Callable[[Runtime], Any]


async def async_factory() -> Agent:  # an agent the thread host could never build
    return Echo()


# (what is tried, the call, the error it must raise, a regex its message must match)
AT_THE_DOOR: list[tuple[str, Call, type[HerderError], str]] = [
    ("input: an object()", lambda rt: rt.start("echo", object()), EncodeError, "cannot be stored"),
    ("input: a set", lambda rt: rt.start("echo", {1, 2}), EncodeError, "set"),
    ("input: an int over 64 bits", lambda rt: rt.start("echo", 2**70), EncodeError,
     r"an int in it is out of range .* pass it as a str"),  # not "use plain data (... int"
    ("input: a str with a lone surrogate", lambda rt: rt.start("echo", "\udcff"), EncodeError,
     "surrogates"),
    ("input: a list containing itself", lambda rt: rt.start("echo", cyclic()), EncodeError,
     "contains itself"),
    ("input: a msgpack ExtType", lambda rt: rt.start("echo", msgpack.ExtType(1, b"x")),
     EncodeError, "extension"),
    ("input: over max_input_bytes", lambda rt: rt.start("echo", "x" * (LIMIT + 1)), EncodeError,
     "the limit is 4096"),
    ("input: nested 101 levels", lambda rt: rt.start("echo", nested(101)), EncodeError,
     "more than 100 levels"),
    ("input: nested 100,000 levels", lambda rt: rt.start("echo", nested(100_000)), EncodeError,
     "nested too deeply"),
    ("input: an int map key", lambda rt: rt.start("echo", {1: "x"}), EncodeError, "must be str"),
    ("input: a bytes map key", lambda rt: rt.start("echo", {b"k": "x"}), EncodeError,
     "must be str"),
    ("input: a None map key, deep inside", lambda rt: rt.start("echo", {"a": [{None: 1}]}),
     EncodeError, "must be str"),
    ("input: a tuple map key", lambda rt: rt.start("echo", {(1, 2): "x"}), EncodeError,
     "must be str"),
    ("unknown workflow name", lambda rt: rt.start("nope"), UnknownName, "no workflow named"),
    ("workflow name not a str", lambda rt: rt.start(["echo"]), UnknownName, "no workflow named"),
    ("unknown agent name", lambda rt: rt.start("ghost"), UnknownName, "needs agent 'nobody'"),
    (
        "unknown action name",
        lambda rt: rt.add_workflow(Workflow("typo").step("s", agent="svc", action="ehco")),
        UnknownName,
        "has no action 'ehco'",
    ),
    ("cyclic step graph", lambda rt: rt.add_workflow(graph(("a", ["b"]), ("b", ["a"]))),
     InvalidDefinition, "cycle: a -> b -> a"),
    ("dangling dependency", lambda rt: rt.add_workflow(graph(("a", ["zz"]))), InvalidDefinition,
     "depends on 'zz'"),
    ("changed definition, same version",
     lambda rt: rt.add_workflow(Workflow("echo").step("t", agent="svc", action="echo")),
     InvalidDefinition, "new version"),
    ("duplicate id, different input", lambda rt: rt.start("echo", {"a": 2}, workflow_id="taken"),
     WorkflowConflict, "different input"),
    ("start: empty id", lambda rt: rt.start("echo", workflow_id=""), InvalidInput, "empty"),
    ("start: id with NUL", lambda rt: rt.start("echo", workflow_id="a\x00b"), InvalidInput, "NUL"),
    ("start: id not valid UTF-8", lambda rt: rt.start("echo", workflow_id="\udcff"), InvalidInput,
     "UTF-8"),
    ("start: id of 401 bytes", lambda rt: rt.start("echo", workflow_id="x" * 401), InvalidInput,
     "limit is 400"),
    ("start: id of 512+ bytes (LMDB key limit)",
     lambda rt: rt.start("echo", workflow_id="é" * 300), InvalidInput, "600 bytes"),
    ("start: id not a str", lambda rt: rt.start("echo", workflow_id=b"id"), InvalidInput,
     "must be a str"),
    ("status: empty id", lambda rt: rt.status(""), InvalidInput, "empty"),
    ("status: id of 600 bytes", lambda rt: rt.status("x" * 600), InvalidInput, "limit is 400"),
    ("status: id not valid UTF-8", lambda rt: rt.status("\udcff"), InvalidInput, "UTF-8"),
    ("status: id not a str", lambda rt: rt.status(7), InvalidInput, "must be a str"),  # type: ignore[arg-type]
    ("handle: id with NUL", lambda rt: rt.handle("a\x00"), InvalidInput, "NUL"),
    ("cancel: empty id", lambda rt: rt.cancel(""), InvalidInput, "empty"),
    ("retry: id of 600 bytes", lambda rt: rt.retry("x" * 600), InvalidInput, "limit is 400"),
    ("status: unknown id", lambda rt: rt.status("missing"), UnknownWorkflow, "missing"),
    ("step name of 101 bytes",
     lambda rt: Workflow("w").step("s" * 101, agent="svc", action="echo"), InvalidInput,
     "limit is 100"),
    ("agent name with NUL", lambda rt: Workflow("w").step("s", agent="a\x00", action="echo"),
     InvalidInput, "NUL"),
    ("add_agent: name with a newline", lambda rt: rt.add_agent("a\nb", Echo), InvalidInput,
     "newline or other control"),
    ("step name with a tab", lambda rt: Workflow("w").step("a\tb", agent="svc", action="echo"),
     InvalidInput, "NUL, newline or other control character"),
    ("action name not valid UTF-8",
     lambda rt: Workflow("w").step("s", agent="svc", action="\udcff"), InvalidInput, "UTF-8"),
    ("workflow name of 10,000 bytes", lambda rt: Workflow("w" * 10_000), InvalidInput,
     "limit is 100"),
    ("add_workflow: a name, not a Workflow", lambda rt: rt.add_workflow("w"),  # type: ignore[arg-type]
     InvalidInput, "add_workflow takes a Workflow"),
    ("step: timeout as a str", lambda rt: Workflow("w").step("s", agent="svc", action="echo",
     timeout="5"), InvalidDefinition, "timeout must be > 0 seconds"),  # type: ignore[arg-type]
    ("step: after as an int", lambda rt: Workflow("w").step("s", agent="svc", action="echo",
     after=5), InvalidDefinition, "after must be a step name or a list"),  # type: ignore[arg-type]
    ("step: after as bytes", lambda rt: Workflow("w").step("s", agent="svc", action="echo",
     after=b"ab"), InvalidDefinition, "after must be a step name or a list"),  # type: ignore[arg-type]
    ("RetryPolicy: non_retryable=5", lambda rt: RetryPolicy(non_retryable=5),  # type: ignore[arg-type]
     InvalidInput, "non_retryable must be exception types"),
    ("RetryPolicy: initial_interval as a str", lambda rt: RetryPolicy(initial_interval="1"),  # type: ignore[arg-type]
     InvalidInput, "initial_interval must be a number"),
    ("list: an unknown state", lambda rt: rt.list(state="bogus"), InvalidInput,
     "no workflow state 'bogus'"),
    ("pause_schedule: an int", lambda rt: rt.pause_schedule(5), InvalidInput,  # type: ignore[arg-type]
     "schedule name must be"),
    ("start_many: an int", lambda rt: rt.start_many(5), InvalidInput,  # type: ignore[arg-type]
     "start_many takes an iterable of mappings"),
    ("workflow version 2**32 (over the 4 bytes of its key)",
     lambda rt: Workflow("w", version=2**32), InvalidInput, r"an int in 1\.\.4294967295"),
    ("add_agent: name of 200 bytes", lambda rt: rt.add_agent("a" * 200, Echo), InvalidInput,
     "limit is 100"),
    ("add_agent: a class that is not an Agent", lambda rt: rt.add_agent("a", dict), InvalidInput,
     "dict is a class but not an Agent subclass"),
    ("add_agent: an async def factory without asyncio=True",
     lambda rt: rt.add_agent("a", async_factory), InvalidInput, r"asyncio=True"),
    ("add_agent: asyncio='yes'", lambda rt: rt.add_agent("a", Echo, asyncio="yes"),  # type: ignore[arg-type]
     InvalidInput, "asyncio must be None, True or False"),
    ("add_workflow: an action of an agent with none (it said 'it has: ')", _actionless,
     UnknownName, r"has no action 'echo' \(it has none: its actions are the public methods"),
    ("add_agent: concurrency=True", lambda rt: rt.add_agent("a", Echo, concurrency=True),
     InvalidInput, "concurrency must be an int"),
    ("add_agent: concurrency of 5,001 digits (its repr raised ValueError)",
     lambda rt: rt.add_agent("a", Echo, concurrency=10**5000), InvalidInput,
     r"concurrency must be an int from 1 to 2\*\*53"),
    ("add_agent: health_interval of 5,001 digits (its repr raised ValueError)",
     lambda rt: rt.add_agent("a", Echo, health_interval=10**5000), InvalidInput,
     "health_interval must be a number of seconds"),
    ("Runtime: prefetch of 5,001 digits (its repr raised ValueError)",
     lambda rt: Runtime(rt.path + "-other", prefetch=10**5000), InvalidInput,
     "prefetch must be an int in 0..64"),
    ("RetryPolicy: max_attempts of 5,001 digits (its repr raised ValueError)",
     lambda rt: RetryPolicy(max_attempts=10**5000), InvalidInput, "max_attempts must be"),
    ("Workflow.step: timeout of 5,001 digits (its repr raised ValueError)",
     lambda rt: Workflow("w").step("s", agent="a", action="r", timeout=10**5000),
     InvalidDefinition, "timeout must be > 0 seconds"),
    ("CircuitBreaker: failures of 5,001 digits (its repr raised ValueError)",
     lambda rt: CircuitBreaker(failures=10**5000), InvalidInput, "failures must be"),
    ("add_agent: concurrency=2**64 (its facts crashed the Scheduler at each tick)",
     lambda rt: rt.add_agent("a", Echo, concurrency=2**64), InvalidInput,
     r"concurrency must be an int from 1 to 2\*\*53"),
    ("add_agent: a class attribute that raises when read (it escaped add_agent as is)",
     lambda rt: rt.add_agent("a", Unreadable), InvalidInput,
     "reading the actions of its class Unreadable raised ValueError: no reading"),
    # A wrong value whose repr raises escaped add_agent as that error (a huge one put
    # megabytes in the message): each is named by a clipped safe repr.
    ("add_agent: breaker whose repr raises", lambda rt: rt.add_agent("a", Echo,
     breaker=Unprintable()), InvalidInput, "breaker must be a CircuitBreaker or None, got <"),  # type: ignore[arg-type]
    ("add_agent: rate_limit with a 10 MB repr", lambda rt: rt.add_agent("a", Echo,
     rate_limit=Unprintable(huge=True)), InvalidInput, "got x{80}$"),  # type: ignore[arg-type]
    ("add_agent: host whose repr raises", lambda rt: rt.add_agent("a", Echo,
     host=Unprintable()), InvalidInput, "host must be a RayHost or None"),  # type: ignore[arg-type]
    ("add_agent: factory whose repr raises", lambda rt: rt.add_agent("a", Unprintable()),  # type: ignore[arg-type]
     InvalidInput, "factory must be callable"),
    ("add_agent: asyncio whose repr raises", lambda rt: rt.add_agent("a", Echo,
     asyncio=Unprintable()), InvalidInput, "asyncio must be None, True or False"),  # type: ignore[arg-type]
    ("add_router: a router whose repr raises", lambda rt: rt.add_router("r", Unprintable()),  # type: ignore[arg-type]
     InvalidInput, "must be callable"),
    ("add_workflow: a value whose repr raises", lambda rt: rt.add_workflow(Unprintable()),  # type: ignore[arg-type]
     InvalidInput, "add_workflow takes a Workflow"),
    ("operator: who not valid UTF-8", lambda rt: rt.retry("taken", who="\udcff"), InvalidInput,
     "who is not valid UTF-8"),
    ("operator: who not a str", lambda rt: rt.abandon("taken", who=5), InvalidInput,  # type: ignore[arg-type]
     "who must be a str"),
    ("operator: why of 10,000 characters", lambda rt: rt.abandon("taken", why="x" * 10_000),
     InvalidInput, "limit is 8192"),
    ("complete_step: a forged task token", lambda rt: rt.complete_step("ht1.gZEBAQ", 1),
     InvalidInput, "not a herder task token"),
    ("complete_step: a forged token naming an id no workflow can have (it said: use a "
     "shorter workflow id)", lambda rt: rt.complete_step(
         "ht1." + base64.urlsafe_b64encode(msgpack.packb(["x" * 1400, "s", 1])).decode(), 1),
     InvalidInput, "not a herder task token"),
    ("fail_step: not a str token", lambda rt: rt.fail_step(b"x" * 5000, "e"),  # type: ignore[arg-type]
     InvalidInput, "not a herder task token"),
    ("fail_step: an int error (it was recorded as the text '42')",
     lambda rt: rt.fail_step("ht1.gZEBAQ", 42), InvalidInput,  # type: ignore[arg-type]
     "error must be a str or an exception, got int 42"),
    ("fail_step: an exception class (its type matched no non_retryable)",
     lambda rt: rt.fail_step("ht1.gZEBAQ", ValueError), InvalidInput,  # type: ignore[arg-type]
     r"got the class ValueError: pass an instance, ValueError\('why'\)"),
    ("fail_step_async: None", lambda rt: asyncio.run(rt.fail_step_async("ht1.gZEBAQ", None)),  # type: ignore[arg-type]
     InvalidInput, "error must be a str or an exception, got NoneType None"),
    ("RetryPolicy: a non_retryable name no error carries (a typo, matching nothing)",
     lambda rt: RetryPolicy(non_retryable=("ValueEror",)), InvalidInput,
     "non_retryable name 'ValueEror' matches no error: .* did you mean 'ValueError'"),
    ("RetryPolicy: a builtins. name of no built-in exception",
     lambda rt: RetryPolicy(non_retryable=["builtins.Permanent"]), InvalidInput,
     "non_retryable name 'builtins.Permanent' matches no error"),
    ("start: delay=1e308 (overflowed the timer)", lambda rt: rt.start("echo", delay=1e308),
     InvalidInput, "limit is 3155760000 s"),
    ("start: start_at in year 9999",
     lambda rt: rt.start("echo", start_at=datetime.datetime(9999, 1, 1, tzinfo=datetime.UTC)),
     InvalidInput, "100 years"),
    ("start: delay=nan", lambda rt: rt.start("echo", delay=math.nan), InvalidInput,
     "finite number"),
    ("start: priority 2**80", lambda rt: rt.start("echo", priority=2**80), InvalidInput,
     "priority must be between"),
    ("Runtime: max_input_bytes over the record ceiling",
     lambda rt: Runtime(rt.path + "-other", max_input_bytes=1 << 30), InvalidInput,
     "max_input_bytes must be"),
]  # fmt: skip


def test_every_bad_input_meets_a_clear_error_and_nothing_is_written(rt: Runtime) -> None:
    # One runtime for the whole table (a runtime per row would cost seconds); each row
    # is checked on its own and every miss is reported with its label.
    misses = []
    for label, call, error, match in AT_THE_DOOR:
        before = snapshot(rt._store)
        try:
            call(rt)
        except HerderError as exc:
            if not isinstance(exc, error) or not re.search(match, str(exc)):
                misses.append(f"{label}: {type(exc).__name__}: {exc}")
        except Exception as exc:  # anything outside the HerderError tree is a miss
            misses.append(f"{label}: escaped {type(exc).__name__}: {exc}")
        else:
            misses.append(f"{label}: no error")
        if snapshot(rt._store) != before:
            misses.append(f"{label}: the store changed")
    assert misses == []
    # The runtime is unharmed: nothing restarted, and good work still runs.
    assert set(rt.stats()["restarts"].values()) == {0}
    assert rt.start("echo", {"fine": True}).result(timeout=WAIT) == {"s": {"fine": True}}


def test_a_large_workflow_graph_compiles_without_recursing(rt: Runtime) -> None:
    chain = Workflow("long")
    for i in range(3000):  # deeper than Python's recursion limit
        chain = chain.step(f"s{i}", agent="svc", action="echo", after=[f"s{i - 1}"] if i else [])
    assert len(chain.compile().steps) == 3000
    loop = Workflow("loop")
    for i in range(3000):
        loop = loop.step(f"s{i}", agent="svc", action="echo", after=[f"s{(i - 1) % 3000}"])
    with pytest.raises(InvalidDefinition, match="cycle"):
        loop.compile()


def test_the_same_input_with_nan_is_the_same_start_not_a_conflict(rt: Runtime) -> None:
    first = rt.start("echo", {"x": math.nan}, workflow_id="nan")
    again = rt.start("echo", {"x": math.nan}, workflow_id="nan")
    assert again.id == first.id
    with pytest.raises(WorkflowConflict):
        rt.start("echo", {"x": 1.0}, workflow_id="nan")


@pytest.mark.parametrize(
    ("first", "again"),
    [
        ({"n": 1}, {"n": True}),
        ({"n": 1}, {"n": 1.0}),
        ([0], [False]),
        ({"n": [1, {"m": 2.0}]}, {"n": [1, {"m": 2}]}),
    ],
)
def test_a_repeated_start_with_a_value_the_store_tells_apart_is_a_conflict(
    rt: Runtime, first: Any, again: Any
) -> None:
    """1, 1.0 and True are equal in Python but three inputs as stored: the workflow
    that runs has the first one, so the second caller must not get its handle."""
    rt.start("echo", first, workflow_id="typed")
    with pytest.raises(WorkflowConflict, match="different input"):
        rt.start("echo", again, workflow_id="typed")


def test_a_repeated_start_equal_as_stored_is_the_same_start(rt: Runtime) -> None:
    first = rt.start("echo", {"a": (1, 2.5), "b": {"c": None}}, workflow_id="same")
    again = rt.start("echo", {"b": {"c": None}, "a": [1, 2.5]}, workflow_id="same")
    assert again.id == first.id


class Hostile(Agent):
    """Each action misbehaves in one way; the step must fail with the error recorded."""

    def unencodable(self, ctx: StepContext) -> Any:
        return object()

    def int_key(self, ctx: StepContext) -> Any:
        return {1: "x"}

    def bytes_key(self, ctx: StepContext) -> Any:
        return {b"k": "x"}

    def oversized(self, ctx: StepContext) -> Any:
        return "x" * (LIMIT + 1)

    def deep(self, ctx: StepContext) -> Any:
        return nested(1000)

    def ext(self, ctx: StepContext) -> Any:
        return msgpack.ExtType(5, b"x")

    def heartbeat_unencodable(self, ctx: StepContext) -> Any:
        ctx.heartbeat(object())
        return "unreachable"

    def heartbeat_oversized(self, ctx: StepContext) -> Any:
        ctx.heartbeat("x" * (1 << 20))
        return "unreachable"

    def error_with_surrogate(self, ctx: StepContext) -> Any:
        raise Permanent("bad \udcff bytes")

    def error_of_20_mb(self, ctx: StepContext) -> Any:
        raise Permanent("x" * (20 << 20))

    def error_without_str(self, ctx: StepContext) -> Any:
        class Mute(Exception):
            def __str__(self) -> str:
                raise RuntimeError("no message for you")

        raise Mute()


# (action, the step's final attempt count, a regex the recorded error must match)
IN_AN_ACTION = [
    ("unencodable", 1, "EncodeError: result of action 'unencodable' cannot be stored"),
    ("int_key", 1, "EncodeError: .*map keys must be str"),
    ("bytes_key", 1, "EncodeError: .*map key b'k' is of type bytes"),
    ("oversized", 1, "EncodeError: .*the limit is 4096"),
    ("deep", 1, "EncodeError: .*more than 100 levels"),
    ("ext", 1, "EncodeError: .*msgpack extension"),
    ("heartbeat_unencodable", 1, "EncodeError: heartbeat details cannot be stored"),
    ("heartbeat_oversized", 1, "EncodeError: heartbeat details is .* the limit is 65536"),
    ("error_with_surrogate", 1, r"Permanent: bad \\udcff bytes"),
    ("error_of_20_mb", 1, r"Permanent: x{100}.*characters cut\]$"),
    ("error_without_str", 2, r"Mute: <unprintable: str\(\) raised RuntimeError>"),
]


@pytest.mark.parametrize(("action", "attempts", "error"), IN_AN_ACTION,
                         ids=[row[0] for row in IN_AN_ACTION])  # fmt: skip
def test_a_misbehaving_action_fails_its_step_with_the_error_recorded(
    tmp_path: Path, action: str, attempts: int, error: str
) -> None:
    retry = RetryPolicy(max_attempts=2, initial_interval=0.0, jitter=0.0)
    with Runtime(tmp_path / "s", clock=FakeClock(), max_result_bytes=LIMIT) as rt:
        rt.add_agent("bad", Hostile)
        rt.add_agent("svc", Echo)
        rt.add_workflow(
            Workflow("w").step("s", agent="bad", action=action, heartbeat_timeout=60, retry=retry)
        )
        with pytest.raises(WorkflowFailed) as failed:
            rt.start("w", workflow_id="w").result(timeout=WAIT)
        step = failed.value.status.steps["s"]
        assert step.state is StepState.FAILED
        assert step.attempt == attempts  # not retried when it would fail the same way
        assert step.error is not None
        assert re.search(error, step.error), step.error
        assert len(step.error) < 9000
        # Nothing had to be restarted, and other work still runs.
        assert set(rt.stats()["restarts"].values()) == {0}
        rt.add_workflow(Workflow("echo").step("s", agent="svc", action="echo"))
        assert rt.start("echo", "ok").result(timeout=WAIT) == {"s": "ok"}


def test_the_longest_id_and_names_fit_every_key_they_are_built_into(tmp_path: Path) -> None:
    wid = "😀" * 100  # 400 bytes of UTF-8: the longest id
    step, agent, action = "s" * 100, "é" * 50, "a" * 100  # the longest names (100 bytes)

    def act(self: Agent, ctx: StepContext) -> int:
        if ctx.attempt == 1:
            raise RuntimeError("once more")  # a retry timer keyed by id and step
        ctx.heartbeat({"at": ctx.attempt})
        return ctx.attempt

    long = type("Long", (Agent,), {action: act})

    retry = RetryPolicy(max_attempts=2, initial_interval=0.0, jitter=0.0)
    with Runtime(tmp_path / "s", clock=FakeClock()) as rt:
        rt.add_agent(agent, long)
        rt.add_workflow(
            Workflow("n" * 100).step(step, agent=agent, action=action, heartbeat_timeout=60,
                                     retry=retry)
        )  # fmt: skip
        assert rt.start("n" * 100, workflow_id=wid).result(timeout=WAIT) == {step: 2}
        keys = [k for db in DATABASES for k, _ in rt._store.raw_scan(db)]
        assert max(len(k) for k in keys) <= 511
        assert any(k.startswith(wid.encode()) for k, _ in rt._store.raw_scan("steps"))


class Later(Agent):
    def go(self, ctx: StepContext) -> Any:
        return ctx.complete_later() if ctx.workflow_id == "waits" else "done"


def test_any_kind_of_number_is_a_number_of_seconds() -> None:
    """Decimal, Fraction (and numpy's) numbers are seconds as floats are; an int too big
    for a float means no limit, as infinity does."""
    from decimal import Decimal
    from fractions import Fraction

    from herder.runtime._waits import seconds

    assert seconds(Decimal("0.5")) == seconds(Fraction(1, 2)) == 0.5
    assert seconds(10**400) is None
    assert (
        RetryPolicy(initial_interval=Decimal("0.5"), max_interval=10**400).max_interval == math.inf
    )
    spec = Workflow("w").step("s", agent="svc", action="echo", timeout=Decimal(5)).compile()
    assert spec.steps[0].timeout == 5.0


@pytest.mark.parametrize("bad", [-1, -0.5, float("nan"), "5", True])
def test_a_wait_that_is_not_seconds_is_refused_before_anything_happens(
    tmp_path: Path, bad: object
) -> None:
    """A negative timeout was no limit at all to the lock underneath: result(timeout=-1)
    blocked for ever; nan, a str or a bool met the lock's own TypeError or ValueError."""
    with Runtime(tmp_path / "s") as rt:
        rt.add_agent("a", Later)
        rt.add_workflow(Workflow("w").step("s", agent="a", action="go"))
        handle = rt.start("w", workflow_id="waits")
        wrong = "timeout must be None or a number of seconds >= 0"
        with pytest.raises(InvalidInput, match=wrong):
            handle.result(timeout=bad)  # type: ignore[arg-type]
        with pytest.raises(InvalidInput, match=wrong):
            asyncio.run(handle.result_async(timeout=bad))  # type: ignore[arg-type]
        with pytest.raises(InvalidInput, match=wrong):
            rt.start("w", workflow_id="never", timeout=bad)  # type: ignore[arg-type]
        with pytest.raises(InvalidInput, match=wrong):
            rt.start_many([{"workflow": "w", "workflow_id": "never"}], timeout=bad)  # type: ignore[arg-type]
        with pytest.raises(InvalidInput, match="deadline must be a finite number"):
            rt.handoff(deadline=bad)  # type: ignore[arg-type]
        assert [s.id for s in rt.list()] == ["waits"]  # nothing else was started
        # No limit at all is None, or infinity (which the lock itself refused).
        assert rt.start("w", workflow_id="ok").result(timeout=math.inf) == {"s": "done"}


def test_a_factory_that_returns_no_agent_is_named_in_the_steps_error(tmp_path: Path) -> None:
    with Runtime(tmp_path / "s") as rt:
        rt.add_agent("nothing", lambda: None)  # a factory that forgot its return
        rt.add_workflow(Workflow("w").step("s", agent="nothing", action="go"))
        with pytest.raises(WorkflowFailed) as failed:
            rt.start("w", workflow_id="w").result(timeout=WAIT)
    assert failed.value.status.error is not None
    assert (
        "has no action 'go' (its factory made a NoneType: does the factory return the agent"
        in failed.value.status.error
    )


def test_handoff_takes_any_number_of_seconds_as_the_waits_do(tmp_path: Path) -> None:
    """A Decimal (or a numpy scalar) deadline was refused where every wait takes one."""
    from decimal import Decimal

    with Runtime(tmp_path / "s") as rt:
        assert rt.handoff(deadline=Decimal("0.5")) is True  # type: ignore[arg-type]
        assert not rt.is_active  # handed over: stopped, its lease released


class Yielding(Agent):
    """Actions written as generators: calling one runs none of its body."""

    undone: ClassVar[list[str]] = []

    def act(self, ctx: StepContext) -> Any:
        yield "never"

    def undo(self, ctx: StepContext) -> None:
        Yielding.undone.append(ctx.step)


def test_a_generator_action_fails_its_step_as_having_taken_no_effect(tmp_path: Path) -> None:
    # Its generator was an unstorable result, as if the action had run: the step
    # failed "may have taken effect" and its compensation ran for a body that never did.
    Yielding.undone.clear()
    with Runtime(tmp_path / "s", clock=FakeClock()) as rt:
        rt.add_agent("gen", Yielding)
        rt.add_workflow(Workflow("w").step("s", agent="gen", action="act", compensate="undo"))
        with pytest.raises(WorkflowFailed) as failed:
            rt.start("w", workflow_id="w").result(timeout=WAIT)
        step = failed.value.status.steps["s"]
        assert step.state is StepState.FAILED
        assert step.attempt == 1
        assert "generator" in (step.error or "")
        assert "EncodeError" not in (step.error or "")
        assert Yielding.undone == []
