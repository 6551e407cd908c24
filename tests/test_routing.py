"""The resource chosen at run time: a step's agent templated from the workflow input."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import io
import threading
from pathlib import Path

import pytest

from herder.runtime import (
    Agent,
    HerderError,
    InvalidDefinition,
    InvalidInput,
    Permanent,
    Runtime,
    StepContext,
    StepState,
    TimedOut,
    UnknownName,
    Workflow,
    WorkflowFailed,
)
from herder.runtime._check import check_store
from herder.runtime._cli import main
from herder.runtime.testing import FakeClock, advance, settle, wait_until
from herder.store import Put, Transition, WorkflowRecord, WorkflowState, encode, workflow_key

WAIT = 10.0
Calls = list[tuple[str, str, str]]  # (agent, workflow id, action)


class Device(Agent):
    """One agent per device: records which device did what."""

    def __init__(self, name: str, calls: Calls) -> None:
        self.name = name
        self.calls = calls

    def configure(self, ctx: StepContext) -> str:
        self.calls.append((self.name, ctx.workflow_id, "configure"))
        return self.name

    def unconfigure(self, ctx: StepContext) -> None:
        self.calls.append((self.name, ctx.workflow_id, "unconfigure"))

    def refuse(self, ctx: StepContext) -> None:
        raise Permanent("the device refused")


SETUP = (
    Workflow("setup")
    .step("configure", agent="device:{device}", action="configure", compensate="unconfigure")
    .step("verify", agent="device:{device}", action="refuse", after=["configure"])
)
PAIR = (
    Workflow("pair", version=1)
    .step("first", agent="device:{device}", action="configure")
    .step("second", agent="device:{device}", action="configure", after=["first"], delay=30.0)
)


def open_runtime(path: Path, calls: Calls, *workflows: Workflow, **options: object) -> Runtime:
    rt = Runtime(path, sweep_interval=0.05, **options)  # type: ignore[arg-type]
    for name in ("device:a", "device:b"):
        rt.add_agent(name, functools.partial(Device, name, calls))
    for wf in workflows:
        rt.add_workflow(wf)
    return rt


def test_each_workflow_runs_on_the_agent_its_input_names(tmp_path: Path) -> None:
    calls: Calls = []
    one = Workflow("one").step("configure", agent="device:{device}", action="configure")
    with open_runtime(tmp_path, calls, one) as rt:
        a = rt.start("one", {"device": "a"}, workflow_id="wa")
        b = rt.start("one", {"device": "b"}, workflow_id="wb")
        assert a.result(timeout=WAIT) == {"configure": "device:a"}
        assert b.result(timeout=WAIT) == {"configure": "device:b"}
        assert dict(rt.status("wa").agents) == {"configure": "device:a"}
        assert rt.status("wb").to_dict()["agents"] == {"configure": "device:b"}
    assert sorted(calls) == [("device:a", "wa", "configure"), ("device:b", "wb", "configure")]


def test_a_missing_input_key_fails_the_start_and_stores_nothing(tmp_path: Path) -> None:
    with open_runtime(tmp_path, [], SETUP) as rt:
        with pytest.raises(InvalidInput, match=r"needs input key 'device'.*it has: site"):
            rt.start("setup", {"site": "x"}, workflow_id="w")
        with pytest.raises(InvalidInput, match="input must be a map"):
            rt.start("setup", ["a"], workflow_id="w")
        with pytest.raises(InvalidInput, match="must be a str or an int, got dict"):
            rt.start("setup", {"device": {"a": 1}}, workflow_id="w")
        assert rt.list() == []


def test_an_agent_that_is_not_registered_fails_the_start_and_stores_nothing(
    tmp_path: Path,
) -> None:
    with open_runtime(tmp_path, [], SETUP) as rt:
        with pytest.raises(UnknownName, match=r"agent 'device:c' \(from 'device:\{device\}'\)"):
            rt.start("setup", {"device": "c"}, workflow_id="w")
        assert rt.list() == []


def test_a_template_with_more_than_plain_keys_is_refused_at_definition() -> None:
    for bad in ("device:{0}", "device:{d.x}", "device:{d[0]}", "device:{d!r}", "dev:{d:>4}", "{"):
        with pytest.raises(InvalidDefinition):
            Workflow("w").step("s", agent=bad, action="configure")


def test_compensation_goes_to_the_agent_the_workflow_resolved(tmp_path: Path) -> None:
    calls: Calls = []
    with open_runtime(tmp_path, calls, SETUP) as rt:
        handle = rt.start("setup", {"device": "b"}, workflow_id="w")
        with pytest.raises(WorkflowFailed):
            handle.result(timeout=WAIT)
        assert rt.status("w").state is WorkflowState.COMPENSATED
    assert calls == [("device:b", "w", "configure"), ("device:b", "w", "unconfigure")]


def test_recovery_dispatches_to_the_stored_agent_not_a_fresh_resolution(tmp_path: Path) -> None:
    clock = FakeClock()
    calls: Calls = []
    rt = open_runtime(tmp_path, calls, PAIR, clock=clock)
    rt.start("pair", {"device": "a"}, workflow_id="w")
    advance(rt, clock, 1.0)
    wait_until(rt, lambda: rt.status("w").steps["first"].state is StepState.SUCCEEDED)
    settle(rt)  # the second step's durable wait is recorded
    assert calls == [("device:a", "w", "configure")]
    rt.stop()
    # The store is the truth: point the stored choice at device:b while nothing runs.
    with Runtime(tmp_path, clock=clock) as raw:
        record = raw._store.get_workflow("w")
        assert record is not None
        assert record.agents == {"first": "device:a", "second": "device:a"}
        moved = record.evolve(agents={"first": "device:a", "second": "device:b"})
        put = Put("workflows", workflow_key("w"), encode(moved.to_dict()))
        raw._store.writer.submit(Transition(ops=(put,))).result(timeout=WAIT)
    with open_runtime(tmp_path, calls, PAIR, clock=clock) as rt:
        advance(rt, clock, 31.0)
        assert rt.handle("w").result(timeout=WAIT) == {"first": "device:a", "second": "device:b"}
        assert check_store(rt._store).ok
    assert calls[1:] == [("device:b", "w", "configure")]


def test_records_without_chosen_agents_keep_their_stored_form() -> None:
    old = {"v": 2, "id": "w", "name": "n", "version": 1, "input": None, "state": "RUNNING"}
    assert WorkflowRecord.from_dict(old).agents == {}
    assert "agents" not in WorkflowRecord("w", "n", 1, None).to_dict()
    chosen = WorkflowRecord("w", "n", 1, None, agents={"s": "device:a"})
    assert WorkflowRecord.from_dict(chosen.to_dict()).agents == {"s": "device:a"}


def test_check_reports_a_templated_step_without_its_stored_agent(tmp_path: Path) -> None:
    two = (
        Workflow("two")
        .step("first", agent="device:{device}", action="configure")
        .step("second", agent="device:{device}", action="configure", after=["first"])
    )
    with open_runtime(tmp_path, [], two) as rt:
        rt.start("two", {"device": "a"}, workflow_id="w").result(timeout=WAIT)
        assert check_store(rt._store).ok
        record = rt._store.get_workflow("w")
        assert record is not None
        lost = record.evolve(agents={"first": "device:a", "third": "device:a"})
        put = Put("workflows", workflow_key("w"), encode(lost.to_dict()))
        rt._store.writer.submit(Transition(ops=(put,))).result(timeout=WAIT)
        problems = sorted(p.message for p in check_store(rt._store).problems)
    assert problems == [
        "an agent is stored for 'third', not templated",
        "step 'second' has no agent resolved from the input",
    ]


def test_herder_show_prints_the_chosen_agents(tmp_path: Path) -> None:
    with open_runtime(tmp_path, [], SETUP) as rt, pytest.raises(WorkflowFailed):
        rt.start("setup", {"device": "a"}, workflow_id="w").result(timeout=WAIT)
    out = io.StringIO()
    assert main(["show", "--store", str(tmp_path), "w"], out=out) == 0
    assert "agent   configure -> device:a" in out.getvalue()


def test_a_router_chooses_the_agent_once_and_the_choice_is_stored(tmp_path: Path) -> None:
    calls: Calls = []
    routed: list[object] = []

    def nearest(input: object) -> str:
        routed.append(input)
        return "b" if input == {"site": "riga"} else "a"

    routed_wf = (
        Workflow("routed")
        .step("configure", agent="device:{@nearest}", action="configure")
        .step("again", agent="device:{@nearest}", action="configure", after=["configure"])
    )
    with open_runtime(tmp_path, calls, routed_wf) as rt:
        with pytest.raises(UnknownName, match=r"'nearest', which is not registered"):
            rt.start("routed", {"site": "riga"}, workflow_id="w")
        rt.add_router("nearest", nearest)
        handle = rt.start("routed", {"site": "riga"}, workflow_id="w")
        assert handle.result(timeout=WAIT) == {"configure": "device:b", "again": "device:b"}
        assert dict(rt.status("w").agents) == {"configure": "device:b", "again": "device:b"}
    assert routed == [{"site": "riga"}]  # once per start, for both steps
    assert [c[0] for c in calls] == ["device:b", "device:b"]


def test_a_router_that_raises_fails_the_start_and_stores_nothing(tmp_path: Path) -> None:
    def broken(input: object) -> str:
        raise SystemExit("a router must not take the runtime down")

    wf = Workflow("routed").step("configure", agent="{@broken}", action="configure")
    with open_runtime(tmp_path, [], wf) as rt:
        rt.add_router("broken", broken)
        with pytest.raises(InvalidInput, match="router 'broken' failed: SystemExit"):
            rt.start("routed", {}, workflow_id="w")
        rt.add_router("broken", lambda input: ["not", "a", "name"])
        with pytest.raises(InvalidInput, match="must be a str or an int, got list"):
            rt.start("routed", {}, workflow_id="w")
        assert rt.list() == []


REQUEST = contextvars.ContextVar("REQUEST", default="none")


@pytest.mark.timeout(60)
def test_a_router_that_hangs_fails_the_start_with_timed_out_after_ask_timeout(
    tmp_path: Path,
) -> None:
    # It ran on start()'s own thread, unbounded: start(timeout=...) blocked for ever, as
    # did every firing of a schedule of the workflow (one thread fires them all).
    gate, seen = threading.Event(), []

    def hung(input: object) -> str:
        seen.append(REQUEST.get())  # (run in a copy of the caller's context)
        gate.wait()
        return "a"

    wf = Workflow("routed").step("configure", agent="device:{@hung}", action="configure")
    outcome: list[BaseException] = []

    def start() -> None:
        REQUEST.set("r-1")  # (a value of the caller's: the router sees it)
        try:
            rt.start("routed", {}, workflow_id="w", timeout=WAIT)
        except BaseException as exc:
            outcome.append(exc)

    with open_runtime(tmp_path, [], wf, ask_timeout=0.5) as rt:
        rt.add_router("hung", hung)
        caller = threading.Thread(target=start, daemon=True)
        try:
            caller.start()
            caller.join(WAIT)
            assert not caller.is_alive(), "start() still blocked in the router"
        finally:
            gate.set()  # (the router's call goes on; let it end)
        assert [type(exc) for exc in outcome] == [TimedOut]
        assert isinstance(outcome[0], HerderError)
        assert "router 'hung' did not return within 0.5 s (ask_timeout)" in str(outcome[0])
        assert rt.list() == []  # nothing written
        assert seen == ["r-1"]
        rt.add_router("hung", lambda input: "b")
        assert rt.start("routed", {}, workflow_id="w").result(timeout=WAIT) == {
            "configure": "device:b"
        }


@pytest.mark.timeout(60)
def test_a_hung_router_is_not_called_again_with_the_same_input_until_it_returns(
    tmp_path: Path,
) -> None:
    """A schedule whose router hangs: the firer tried again every RETRY (5 s), and each
    try left one more thread stuck in the router (17,000 a day). The router is now not
    called again with an input whose earlier call outlived ask_timeout and still runs
    (another input still is); once that call returns, the schedule fires."""
    gate, returned, inputs = threading.Event(), threading.Event(), []

    def router(input: dict[str, str]) -> str:
        inputs.append(input["device"])
        if input["device"] == "hangs" and len(inputs) > 1:  # (schedule() calls it once)
            gate.wait()
            returned.set()
        return "a"

    def stuck() -> int:
        return sum(t.name == "herder-router" for t in threading.enumerate())

    def polls() -> list[str]:
        return [s.id for s in rt.list() if s.id.startswith("poll@")]

    def fired() -> bool:
        rt._fire_now()
        return polls() != []

    wf = Workflow("routed").step("configure", agent="device:{@pick}", action="configure")
    clock = FakeClock()
    with open_runtime(tmp_path, [], wf, ask_timeout=0.2, clock=clock) as rt:
        rt.add_router("pick", router)
        rt.schedule("poll", "routed", every=60, input={"device": "hangs"})
        before = stuck()  # (other tests' idle ones among them)
        try:
            clock.advance(60)
            for _ in range(5):
                rt._fire_now()  # (a try after each RETRY, as the firer makes)
                clock.advance(5)
            assert inputs == ["hangs", "hangs"]  # called once more, then not again
            assert stuck() <= before + 1
            with pytest.raises(TimedOut, match="has not returned yet"):
                rt.start("routed", {"device": "hangs"})
            other = rt.start("routed", {"device": "other"})
            assert other.result(timeout=WAIT) == {"configure": "device:a"}
            assert polls() == []
        finally:
            gate.set()
        assert returned.wait(WAIT)
        wait_until(rt, fired, WAIT)
        assert inputs.count("hangs") >= 3


@pytest.mark.timeout(60)
def test_a_schedules_firing_runs_its_router_once_as_a_start_does(tmp_path: Path) -> None:
    """docs/workflows.md: "A router runs once per start". A schedule's firing ran it
    twice: once in the firer's check of the start (so that what refuses it stops that
    schedule only) and again in the batch that made the start (start_many's own check);
    a router with an effect (a round robin, a lease on a device) did it twice."""
    calls: list[str] = []

    def router(input: dict[str, str]) -> str:
        calls.append(input["device"])
        return input["device"]

    wf = Workflow("routed").step("configure", agent="device:{@pick}", action="configure")
    clock = FakeClock()
    with open_runtime(tmp_path, [], wf, clock=clock) as rt:
        rt.add_router("pick", router)
        rt.schedule("poll", "routed", every=60, input={"device": "a"}, jitter=5, overlap="allow")
        calls.clear()  # (schedule() checks the start it will make: one call)
        for n in (1, 2):
            clock.advance(60)
            rt._fire_now()
            assert len([s for s in rt.list() if s.id.startswith("poll@")]) == n
            assert calls == ["a"] * n
        advance(rt, clock, 5)  # (the jitter: each starts up to 5 s after its slot)
        assert [dict(s.agents) for s in rt.list()] == [{"configure": "device:a"}] * 2
        assert calls == ["a", "a"]


class _Raising(str):
    """A str whose own conversions raise (user code the runtime must not run)."""

    def __str__(self) -> str:
        raise ZeroDivisionError("__str__")

    def __format__(self, spec: str) -> str:
        raise ZeroDivisionError("__format__")


class _RaisingInt(int):
    def __format__(self, spec: str) -> str:
        raise ZeroDivisionError("__format__")


def test_an_agent_named_by_a_str_or_int_subclass_is_named_by_its_plain_value(
    tmp_path: Path,
) -> None:
    calls: Calls = []
    wf = Workflow("routed").step("configure", agent="device:{@pick}", action="configure")
    with open_runtime(tmp_path, calls, wf) as rt:
        rt.add_router("pick", lambda input: _Raising("a"))  # raised out of start() before
        assert rt.start("routed", {}, workflow_id="s").result(timeout=WAIT) == {
            "configure": "device:a"
        }
        rt.add_agent("device:7", functools.partial(Device, "device:7", calls))
        rt.add_router("pick", lambda input: _RaisingInt(7))
        rt.start("routed", {}, workflow_id="i").result(timeout=WAIT)
        assert dict(rt.status("i").agents) == {"configure": "device:7"}


def test_start_async_runs_a_router_off_the_event_loop(tmp_path: Path) -> None:
    """A router is user code that may block (a lookup): on the loop it would stall every
    other coroutine. Here it waits for a coroutine that runs only if the loop serves on."""
    served = threading.Event()
    wf = Workflow("routed").step("configure", agent="device:{@nearest}", action="configure")

    def nearest(input: object) -> str:
        assert served.wait(WAIT), "the loop did not serve while the router ran"
        return "a"

    async def main(rt: Runtime) -> object:
        async def serve() -> None:
            served.set()

        serving = asyncio.ensure_future(serve())
        handle = await rt.start_async("routed", {}, workflow_id="w")
        await serving
        return await handle.result_async(timeout=WAIT)

    with open_runtime(tmp_path, [], wf) as rt:
        rt.add_router("nearest", nearest)
        assert asyncio.run(main(rt)) == {"configure": "device:a"}
        rt.add_router("nearest", lambda input: 1 / 0)
        with pytest.raises(InvalidInput, match="router 'nearest' failed: ZeroDivisionError"):
            asyncio.run(rt.start_async("routed", {}, workflow_id="z"))
        assert [s.id for s in rt.list()] == ["w"]


@pytest.mark.parametrize("name", ["nearest-region", "@nearest", "1st", "near est"])
def test_a_router_name_no_template_can_name_is_refused(tmp_path: Path, name: str) -> None:
    # A router is named in a template as {@name}, which takes an identifier: add_router
    # took any name, so "nearest-region" was registered, and no step could ever use it.
    with open_runtime(tmp_path, []) as rt:
        with pytest.raises(InvalidInput, match="identifier"):
            rt.add_router(name, lambda input: "a")
        rt.add_router("nearest_region", lambda input: "a")


@pytest.mark.timeout(60)
def test_the_refusal_of_a_hung_router_names_a_remedy_that_works(tmp_path: Path) -> None:
    """The message said "or add_router('hung') again": adding the same function again
    left it refused (a call of it with the input still hangs); a new router is called."""
    gate = threading.Event()

    def hung(input: object) -> str:
        gate.wait()
        return "a"

    wf = Workflow("routed").step("configure", agent="device:{@hung}", action="configure")
    with open_runtime(tmp_path, [], wf, ask_timeout=0.2) as rt:
        rt.add_router("hung", hung)
        try:
            with pytest.raises(TimedOut, match="did not return within"):
                rt.start("routed", {}, workflow_id="w")
            rt.add_router("hung", hung)
            with pytest.raises(TimedOut) as refused:
                rt.start("routed", {}, workflow_id="w")
            said = str(refused.value)
            assert "try again once it returns" in said
            assert "add_router('hung', fn) (adding the same function again changes nothing)" in said
            rt.add_router("hung", lambda input: "b")  # what the message says does work
            handle = rt.start("routed", {}, workflow_id="w")
            assert handle.result(timeout=WAIT) == {"configure": "device:b"}
        finally:
            gate.set()
