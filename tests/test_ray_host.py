"""Agents on Ray (``host=RayHost(...)``) behave as local ones: the marker ``ray``.

One local Ray cluster serves the whole test session (``make test-ray``; ``make test``
deselects these and never imports Ray). Test agents reach the workers through the job's
``PYTHONPATH``; the test and the workers meet through a :class:`Gate` Ray actor (events
keyed by name), so nothing here sleeps to wait.
"""

from __future__ import annotations

import functools
import logging
import os
import select
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _child_kit import Child

from herder.actors._messages import Outcome
from herder.runtime import (
    Agent,
    InvalidInput,
    RayHost,
    RetryPolicy,
    Runtime,
    StepContext,
    Workflow,
    WorkflowFailed,
)
from herder.runtime.testing import FakeClock, InstanceCrash, advance, wait_until

pytestmark = [pytest.mark.ray, pytest.mark.timeout(120)]

WAIT = 60.0
HERE = Path(__file__).parent
FAST = RetryPolicy(max_attempts=5, initial_interval=0.01, max_interval=0.05)


class Gate:
    """A Ray actor: named events the test and the actions set and wait for."""

    def __init__(self) -> None:
        import asyncio

        self._asyncio = asyncio
        self._events: dict[str, Any] = {}
        self._values: dict[str, Any] = {}

    def _event(self, key: str) -> Any:
        return self._events.setdefault(key, self._asyncio.Event())

    async def set(self, key: str, value: Any = None) -> None:
        self._values[key] = value
        self._event(key).set()

    async def wait(self, key: str) -> Any:
        await self._event(key).wait()
        return self._values[key]


class Probe(Agent):
    """Actions that report where they ran, fail, crash, hang, beat and watch their flags."""

    def __init__(self, gate: Any = None) -> None:
        self.gate = gate

    def where(self, ctx: StepContext) -> dict[str, Any]:
        return {"pid": os.getpid(), "input": ctx.input}

    def flaky(self, ctx: StepContext) -> int:
        if ctx.attempt == 1:
            raise ValueError("first attempt fails")
        return ctx.attempt

    def crash_once(self, ctx: StepContext) -> int:
        if ctx.attempt == 1:
            raise InstanceCrash("client broke")
        return ctx.attempt

    def crash(self, ctx: StepContext) -> None:
        raise InstanceCrash("always")

    def block_first(self, ctx: StepContext) -> dict[str, Any]:
        import ray

        if ctx.attempt == 1:
            ray.get(self.gate.set.remote("running", {"pid": os.getpid(), "token": ctx.token}))
            ray.get(self.gate.wait.remote("never"))  # hangs until its process is killed
        return {"attempt": ctx.attempt, "pid": os.getpid()}

    def traced(self, ctx: StepContext) -> str | None:
        return ctx.trace_context

    def hang_first(self, ctx: StepContext) -> int:
        import ray

        if ctx.attempt == 1:
            ray.get(self.gate.set.remote(f"hung-{ctx.input}", os.getpid()))
            ray.get(self.gate.wait.remote("never"))  # hangs until its process is killed
        return ctx.attempt

    def hold(self, ctx: StepContext) -> int:
        import ray

        ray.get(self.gate.set.remote(f"held-{ctx.input}", os.getpid()))
        ray.get(self.gate.wait.remote("go"))
        return os.getpid()

    def beat(self, ctx: StepContext) -> int:
        for i in range(10):  # 2.5 s of work, well past its 1 s heartbeat timeout
            ctx.heartbeat({"done": i})
            time.sleep(0.25)  # real work time: what the heartbeat timeout measures
        return ctx.attempt

    def until_flagged(self, ctx: StepContext) -> None:
        import ray

        ray.get(self.gate.set.remote("running", ctx.task_token))
        deadline = time.monotonic() + WAIT
        while not (ctx.cancelled or ctx.superseded) and time.monotonic() < deadline:
            time.sleep(0.05)  # a poll: the flags reach a Ray worker by a periodic sync
        ray.get(self.gate.set.remote("saw", [ctx.cancelled, ctx.superseded]))


class Broken(Agent):
    """An agent whose factory raises wherever it runs."""

    def __init__(self) -> None:
        raise RuntimeError("no database")

    def where(self, ctx: StepContext) -> None:
        """Never runs."""


class Opaque:
    """A factory's argument whose repr raises (user code: herder must not call it)."""

    def __repr__(self) -> str:
        raise RuntimeError("no repr")


@pytest.fixture(scope="session")
def cluster() -> Iterator[Any]:
    """One local Ray cluster for the session, torn down (with its processes) at the end."""
    ray = pytest.importorskip("ray")
    ray.init(
        address="local",  # not a cluster RAY_ADDRESS or `ray start` made on the machine
        num_cpus=4,
        include_dashboard=False,
        object_store_memory=100 * 1024 * 1024,
        logging_level="WARNING",
        runtime_env={"env_vars": {"PYTHONPATH": str(HERE)}},
    )
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.fixture
def gate(cluster: Any) -> Any:
    handle = cluster.remote(num_cpus=0)(Gate).remote()
    yield handle
    cluster.kill(handle)


def ray_host(**kwargs: Any) -> RayHost:
    return RayHost(num_cpus=0.25, **kwargs)


def gets(cluster: Any, gate: Any, key: str) -> Any:
    return cluster.get(gate.wait.remote(key), timeout=WAIT)


def test_results_of_ray_attempts_are_durable_and_come_from_worker_processes(
    cluster: Any, tmp_path: Path
) -> None:
    flow = Workflow("two").step("a", agent="probe", action="where")
    flow = flow.step("b", agent="probe", action="where", after=["a"])
    with Runtime(tmp_path / "s") as rt:
        rt.add_agent("probe", Probe, concurrency=4, host=ray_host())
        rt.add_workflow(flow)
        handles = [rt.start("two", i, workflow_id=f"w{i}") for i in range(10)]
        results = [h.result(timeout=WAIT) for h in handles]
        host = rt.stats()["host"]
        assert host["ray_workers"] == 1  # 4 instances in one process
        assert host["ray_answers"] == 20  # every attempt answered by an exchange
    pids = {r[s]["pid"] for r in results for s in ("a", "b")}
    assert os.getpid() not in pids
    assert [r["a"]["input"] for r in results] == list(range(10))
    with Runtime(tmp_path / "s") as again:  # reopened without Ray: all recorded
        for i in range(10):
            status = again.status(f"w{i}")
            assert status.state == "SUCCEEDED"
            assert status.steps["b"].result == results[i]["b"]


def test_an_error_is_retried_under_the_policy_and_a_crash_at_once(
    cluster: Any, tmp_path: Path
) -> None:
    with Runtime(tmp_path / "s") as rt:
        rt.add_agent("probe", Probe, concurrency=2, host=ray_host())
        rt.add_workflow(Workflow("f").step("s", agent="probe", action="flaky", retry=FAST))
        rt.add_workflow(Workflow("c").step("s", agent="probe", action="crash_once", retry=FAST))
        assert rt.start("f", None).result(timeout=WAIT) == {"s": 2}
        steps = rt.stats()["steps"]
        assert (steps["crashes"], steps["retried"]) == (0, 1)
        assert rt.start("c", None).result(timeout=WAIT) == {"s": 2}
        assert rt.stats()["steps"]["crashes"] == 1


@pytest.mark.parametrize("where", ["local", "ray"])
def test_an_instance_crash_logs_no_traceback_of_the_instance_actor_on_ray_as_locally(
    cluster: Any, tmp_path: Path, where: str, caplog: pytest.LogCaptureFixture
) -> None:
    # The step's log line says the instance crashed; pykka's "Unhandled exception"
    # traceback of the proxy (one per crash, frames kept alive with it) said nothing more.
    with caplog.at_level(logging.ERROR, logger="pykka"), Runtime(tmp_path / "s") as rt:
        rt.add_agent("probe", Probe, host=ray_host() if where == "ray" else None)
        rt.add_workflow(Workflow("c").step("s", agent="probe", action="crash_once", retry=FAST))
        assert rt.start("c", None).result(timeout=WAIT) == {"s": 2}
        assert rt.stats()["steps"]["crashes"] == 1
    assert [r.getMessage() for r in caplog.records if r.name == "pykka"] == []


def test_a_killed_worker_is_a_crash_and_its_late_answer_is_refused(
    cluster: Any, gate: Any, tmp_path: Path
) -> None:
    with Runtime(tmp_path / "s") as rt:
        rt.add_agent("probe", functools.partial(Probe, gate), concurrency=1, host=ray_host())
        rt.add_workflow(Workflow("k").step("s", agent="probe", action="block_first", retry=FAST))
        handle = rt.start("k", None, workflow_id="k1")
        first = gets(cluster, gate, "running")
        os.kill(first["pid"], 9)
        result = handle.result(timeout=WAIT)["s"]
        assert result["attempt"] == 2
        assert result["pid"] != first["pid"]
        assert rt.stats()["steps"]["crashes"] == 1
        stale = rt.stats()["steps"]["stale"]
        # The killed attempt's answer, had it come: fenced out, the record unchanged.
        late = Outcome("probe", "probe#0", first["token"], ok=True, result="late")
        rt._ctx.tell_scheduler(late)
        wait_until(rt, lambda: rt.stats()["steps"]["stale"] == stale + 1, timeout=WAIT)
        assert rt.status("k1").steps["s"].result == result


def test_an_idle_instance_whose_process_died_takes_a_new_one_for_its_next_attempt(
    cluster: Any, gate: Any, tmp_path: Path
) -> None:
    # The host submits attempts itself, to the process an instance is bound to; one bound
    # to a process known dead gets its attempt as a message and takes a new slot first.
    with Runtime(tmp_path / "s") as rt:
        probe = functools.partial(Probe, gate)
        rt.add_agent("probe", probe, concurrency=2, host=ray_host(slots=2))
        rt.add_workflow(Workflow("k").step("s", agent="probe", action="block_first", retry=FAST))
        rt.add_workflow(Workflow("w").step("s", agent="probe", action="where"))
        rt.add_workflow(Workflow("h").step("s", agent="probe", action="hold"))
        blocked = rt.start("k", None)
        first = gets(cluster, gate, "running")  # one instance busy in process P
        idle = rt.start("w", None).result(timeout=WAIT)["s"]
        assert idle["pid"] == first["pid"]  # the other one ran in P too, and is idle
        os.kill(first["pid"], 9)  # the busy attempt's answer says P died
        assert blocked.result(timeout=WAIT)["s"]["attempt"] == 2
        held = [rt.start("h", i) for i in (1, 2)]  # both instances at once
        pids = [gets(cluster, gate, f"held-{i}") for i in (1, 2)]
        cluster.get(gate.set.remote("go"))
        assert [h.result(timeout=WAIT)["s"] for h in held] == pids
        assert first["pid"] not in pids
        assert rt.stats()["steps"]["crashes"] == 1  # the killed attempt only


def test_a_hung_action_times_out_its_worker_is_killed_and_the_step_retried(
    cluster: Any, gate: Any, tmp_path: Path
) -> None:
    with Runtime(tmp_path / "s") as rt:
        rt.add_agent("probe", functools.partial(Probe, gate), concurrency=1, host=ray_host())
        flow = Workflow("h").step("s", agent="probe", action="block_first", timeout=1.0, retry=FAST)
        rt.add_workflow(flow)
        handle = rt.start("h", None)
        first = gets(cluster, gate, "running")
        result = handle.result(timeout=WAIT)["s"]
        assert result["attempt"] == 2
        assert result["pid"] != first["pid"]
        steps = rt.stats()["steps"]
        assert steps["timed_out"] == 1
        assert rt.stats()["host"]["ray_killed"] == 1
        assert gone(first["pid"])  # the hung attempt's process was killed


def test_heartbeats_keep_a_long_ray_attempt_alive(cluster: Any, tmp_path: Path) -> None:
    with Runtime(tmp_path / "s") as rt:
        rt.add_agent("probe", Probe, concurrency=1, host=ray_host())
        flow = Workflow("b").step("s", agent="probe", action="beat", heartbeat_timeout=1.0)
        rt.add_workflow(flow)
        assert rt.start("b", None).result(timeout=WAIT) == {"s": 1}
        assert rt.stats()["steps"]["timed_out"] == 0


def test_a_ray_action_sees_its_workflow_cancelled(cluster: Any, gate: Any, tmp_path: Path) -> None:
    with Runtime(tmp_path / "s") as rt:
        rt.add_agent("probe", functools.partial(Probe, gate), concurrency=1, host=ray_host())
        rt.add_workflow(Workflow("x").step("s", agent="probe", action="until_flagged"))
        handle = rt.start("x", None)
        gets(cluster, gate, "running")
        rt.cancel(handle.id)
        assert gets(cluster, gate, "saw") == [True, False]
        with pytest.raises(WorkflowFailed):
            handle.result(timeout=WAIT)


def test_a_ray_action_sees_itself_superseded_when_its_step_is_completed_for_it(
    cluster: Any, gate: Any, tmp_path: Path
) -> None:
    with Runtime(tmp_path / "s") as rt:
        rt.add_agent("probe", functools.partial(Probe, gate), concurrency=1, host=ray_host())
        rt.add_workflow(Workflow("x").step("s", agent="probe", action="until_flagged"))
        handle = rt.start("x", None)
        rt.complete_step(gets(cluster, gate, "running"), "from elsewhere")
        assert gets(cluster, gate, "saw") == [False, True]
        assert handle.result(timeout=WAIT) == {"s": "from elsewhere"}


def test_an_agent_whose_code_does_not_load_on_the_cluster_is_refused_at_add_agent(
    cluster: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hidden = tmp_path / "elsewhere"
    hidden.mkdir()
    (hidden / "hidden_agents.py").write_text(
        "from herder.runtime import Agent\n\nclass Hidden(Agent):\n    def go(self, ctx):\n"
        "        return 1\n"
    )
    monkeypatch.syspath_prepend(str(hidden))  # importable here, not on the workers
    from hidden_agents import Hidden  # type: ignore[import-not-found]

    with Runtime(tmp_path / "s") as rt:
        with pytest.raises(InvalidInput, match=r"does not load on the Ray cluster.*runtime_env"):
            rt.add_agent("hidden", Hidden, host=ray_host())
        assert "hidden" not in rt.stats()["agents"]
    sys.modules.pop("hidden_agents", None)


def test_local_agents_run_beside_ray_agents_unaffected(cluster: Any, tmp_path: Path) -> None:
    flow = Workflow("mix").step("r", agent="remote", action="where")
    flow = flow.step("l", agent="local", action="where", after=["r"])
    with Runtime(tmp_path / "s") as rt:
        rt.add_agent("remote", Probe, host=ray_host())
        rt.add_agent("local", Probe)
        rt.add_workflow(flow)
        result = rt.start("mix", 1).result(timeout=WAIT)
        with pytest.raises(InvalidInput, match="placement cannot change"):
            rt.add_agent("local", Probe, host=ray_host())
    assert result["l"]["pid"] == os.getpid()
    assert result["r"]["pid"] != os.getpid()


def test_two_runtimes_share_the_connection_and_each_kills_its_own_workers(
    cluster: Any, tmp_path: Path
) -> None:
    flow = Workflow("w").step("s", agent="probe", action="where")
    one = Runtime(tmp_path / "one")
    two = Runtime(tmp_path / "two")
    try:
        for rt in (one, two):
            rt.add_agent("probe", Probe, host=ray_host())
            rt.add_workflow(flow)
        pid_one = one.start("w", 1).result(timeout=WAIT)["s"]["pid"]
        pid_two = two.start("w", 2).result(timeout=WAIT)["s"]["pid"]
        assert pid_one != pid_two
        one.stop()
        assert gone(pid_one)
        assert two.start("w", 3).result(timeout=WAIT)["s"]["pid"] == pid_two
        assert cluster.is_initialized()  # the program's own connection stays
    finally:
        one.stop()
        two.stop()


def gone(pid: int) -> bool:
    """Whether process ``pid`` exits within WAIT seconds (ray.kill is asynchronous);
    waits on a pidfd, which becomes readable when the process exits."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        return bool(select.select([fd], [], [], WAIT)[0])
    finally:
        os.close(fd)


@pytest.mark.parametrize("where", ["local", "ray"])
def test_a_crash_looping_agent_meets_the_same_restart_limits_on_ray_as_locally(
    cluster: Any, tmp_path: Path, where: str, caplog: pytest.LogCaptureFixture
) -> None:
    host = ray_host() if where == "ray" else None
    retry = RetryPolicy(max_attempts=4, initial_interval=0.01, max_interval=0.01)
    with (
        caplog.at_level(logging.ERROR, logger="herder.supervision"),
        Runtime(tmp_path / "s", agent_restarts=(2, 60.0)) as rt,
    ):
        rt.add_agent("crashy", Probe, host=host)
        rt.add_workflow(Workflow("c").step("s", agent="crashy", action="crash", retry=retry))
        with pytest.raises(WorkflowFailed):
            rt.start("c", None).result(timeout=WAIT)
        assert rt.stats()["steps"]["crashes"] == 4
    gave_up = [r for r in caplog.records if "agent:crashy" in r.getMessage()]
    assert gave_up, "the agent's supervisor gave up after 2 restarts within 60 s"


@pytest.mark.parametrize(
    ("address", "says"),
    [
        ("auto", "could not connect to Ray.*ray start --head"),
        ("ray://head:10001", r"could not connect to Ray.*pip install 'ray\[client\]'"),
        (None, "could not start Ray"),
    ],
)
def test_a_cluster_that_cannot_be_reached_is_refused_at_add_agent_saying_what_to_do(
    cluster: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, address: str | None, says: str
) -> None:
    # "auto" finds any cluster running on this machine (the session's, say), so the
    # failure is Ray's own for a machine with none, raised by a stand-in ray.init.
    def init(*args: Any, **kwargs: Any) -> None:  # (as Ray's, for each kind of address)
        if address is not None and address.startswith("ray://"):
            raise ValueError("Ray Client requires pip package `ray[client]`.")
        raise ConnectionError("Could not find any running Ray instance.")

    monkeypatch.setattr(cluster, "is_initialized", lambda: False)
    monkeypatch.setattr(cluster, "init", init)
    with Runtime(tmp_path / "s") as rt:
        with pytest.raises(InvalidInput, match=f"RayHost\\(address={address!r}\\): {says}"):
            rt.add_agent("probe", Probe, host=ray_host(address=address))
        assert "probe" not in rt.stats()["agents"]


def test_an_address_where_nothing_answers_is_refused_at_once_not_after_rays_retries(
    cluster: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Ray's ray.init("host:port") with nothing there retries for many minutes (about 40 s
    # per try, measured) before it raises: add_agent hung at the daemon's start.
    def init(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("ray.init called for an address nothing answers at")

    monkeypatch.setattr(cluster, "is_initialized", lambda: False)
    monkeypatch.setattr(cluster, "init", init)
    with socket.socket() as unused:  # a port nothing listens on
        unused.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{unused.getsockname()[1]}"
    with Runtime(tmp_path / "s") as rt:
        says = (
            f"could not connect to Ray \\(ConnectionError: nothing answers at {address}.*ray start"
        )
        with pytest.raises(InvalidInput, match=says):
            rt.add_agent("probe", Probe, host=ray_host(address=address))
        assert "probe" not in rt.stats()["agents"]


@pytest.mark.parametrize(
    ("placement", "says"),
    [
        ({"resources": {"GPU": 1}}, "num_gpus"),
        # Ray takes these two in options() and refuses them as each process is created:
        # every step failed to start (with pykka's traceback of the proxy each time).
        ({"resources": {"memory": 2**30}}, "must not name 'memory', which Ray reserves"),
        ({"num_gpus": 1.5}, "num_gpus above 1 must be a whole number, got 1.5"),
    ],
)
def test_a_placement_ray_refuses_is_refused_at_add_agent_not_at_each_step(
    cluster: Any, tmp_path: Path, placement: dict[str, Any], says: str
) -> None:
    with Runtime(tmp_path / "s") as rt:
        with pytest.raises(InvalidInput, match=f"Ray refuses the placement.*{says}"):
            rt.add_agent("gpu", Probe, host=ray_host(**placement))
        assert "gpu" not in rt.stats()["agents"]


def test_a_process_killed_for_a_hung_attempt_fails_its_neighbours_with_no_exchange_out(
    cluster: Any, gate: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The collector is held between two exchanges of the process (it has just taken one
    # answer in) when the hung attempt's timeout kills it: no exchange is out to fail.
    from herder.actors.ray import _courier, _workers

    armed, held, killed = threading.Event(), threading.Event(), threading.Event()
    answer, kill = _courier.Courier._answer, _workers.RayWorkers.kill

    def answer_then_hold(self: Any, *args: Any) -> None:
        answer(self, *args)
        if armed.is_set() and not killed.is_set():
            held.set()
            killed.wait(WAIT)

    def kill_then_say(self: Any, *args: Any) -> None:
        kill(self, *args)
        killed.set()

    monkeypatch.setattr(_courier.Courier, "_answer", answer_then_hold)
    monkeypatch.setattr(_workers.RayWorkers, "kill", kill_then_say)
    clock = FakeClock()
    now = RetryPolicy(max_attempts=3, initial_interval=0.0, max_interval=0.0)
    with Runtime(tmp_path / "s", clock=clock) as rt:
        probe = functools.partial(Probe, gate)
        rt.add_agent("probe", probe, concurrency=2, host=ray_host(slots=2))
        rt.add_workflow(Workflow("n").step("s", agent="probe", action="hang_first", retry=now))
        flow = Workflow("t").step("s", agent="probe", action="hang_first", timeout=1.0, retry=now)
        rt.add_workflow(flow)
        neighbour = rt.start("n", "n")
        hung = rt.start("t", "t")
        assert gets(cluster, gate, "hung-n") == gets(cluster, gate, "hung-t")  # one process
        armed.set()
        assert held.wait(WAIT)
        advance(rt, clock, 2.0)  # the hung attempt times out: its process is killed
        assert hung.result(timeout=WAIT) == {"s": 2}
        assert neighbour.result(timeout=WAIT) == {"s": 2}  # lost with it, and run again


def test_a_ray_agent_removed_keeps_its_placement_when_added_again(
    cluster: Any, tmp_path: Path
) -> None:
    with Runtime(tmp_path / "s") as rt:
        rt.add_agent("probe", Probe, host=ray_host())
        rt.remove_agent("probe")
        with pytest.raises(InvalidInput, match="placement cannot change"):
            rt.add_agent("probe", Probe)  # it would have run on Ray all the same
        rt.add_agent("probe", Probe, host=ray_host())
        rt.add_workflow(Workflow("w").step("s", agent="probe", action="where"))
        assert rt.start("w", None).result(timeout=WAIT)["s"]["pid"] != os.getpid()


def test_an_attempt_running_when_its_ray_agent_is_removed_runs_on_and_is_recorded(
    cluster: Any, gate: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As locally, remove_agent stops a busy instance once its attempt ends: the attempt
    # is neither killed with its worker process nor told it never started and run again.
    from herder.actors.ray import _host

    stopping, on_stop = threading.Event(), _host.RayInstance.on_stop

    def note_stop(self: Any) -> None:
        stopping.set()
        on_stop(self)

    monkeypatch.setattr(_host.RayInstance, "on_stop", note_stop)
    with Runtime(tmp_path / "s") as rt:
        rt.add_agent("probe", functools.partial(Probe, gate), concurrency=1, host=ray_host())
        rt.add_workflow(Workflow("h").step("s", agent="probe", action="hold", retry=FAST))
        handle = rt.start("h", 1, workflow_id="h1")
        pid = gets(cluster, gate, "held-1")
        rt.remove_agent("probe")
        assert stopping.wait(WAIT)  # its proxy is stopping while the attempt runs
        cluster.get(gate.set.remote("go"))
        rt.add_agent("probe", functools.partial(Probe, gate), concurrency=1, host=ray_host())
        assert handle.result(timeout=WAIT) == {"s": pid}
        moves = [(e["from"], e["to"]) for e in rt.history("h1") if e["kind"] == "step"]
        assert moves == [("PENDING", "DISPATCHED"), ("DISPATCHED", "SUCCEEDED")]
        assert gone(pid)  # its process went once the attempt ended


def test_a_factory_that_cannot_be_pickled_is_refused_saying_so(
    cluster: Any, tmp_path: Path
) -> None:
    with Runtime(tmp_path / "s") as rt:
        locked = functools.partial(Probe, threading.Lock())
        with pytest.raises(InvalidInput, match=r"cannot be sent.*cannot pickle '_thread.lock'"):
            rt.add_agent("locked", locked, host=ray_host())
        assert "locked" not in rt.stats()["agents"]


class Handle:
    """A factory's argument that refuses to be pickled (as a client of this process may)."""

    def __reduce__(self) -> Any:
        raise RuntimeError("a handle of this process")


def test_a_factory_whose_argument_refuses_pickling_is_refused_saying_so(
    cluster: Any, tmp_path: Path
) -> None:
    # Not taken for code that does not import on the cluster (the advice then is to ship
    # the agent's package, which would not help).
    with Runtime(tmp_path / "s") as rt:
        held = functools.partial(Probe, Handle())
        with pytest.raises(InvalidInput, match=r"cannot be sent.*RuntimeError: a handle of"):
            rt.add_agent("held", held, host=ray_host())
        assert "held" not in rt.stats()["agents"]


@pytest.mark.parametrize("where", ["local", "ray"])
def test_a_factory_that_raises_on_ray_fails_the_step_as_it_does_locally(
    cluster: Any, tmp_path: Path, where: str
) -> None:
    once = RetryPolicy(max_attempts=1)
    with Runtime(tmp_path / "s") as rt:
        rt.add_agent("broken", Broken, host=ray_host() if where == "ray" else None)
        rt.add_workflow(Workflow("b").step("s", agent="broken", action="where", retry=once))
        with pytest.raises(WorkflowFailed) as failed:
            rt.start("b", None).result(timeout=WAIT)
    assert "an instance of agent 'broken' failed to start: RuntimeError: no database" in str(
        failed.value
    )


def test_add_agent_does_not_call_the_repr_of_what_the_factory_holds(
    cluster: Any, tmp_path: Path
) -> None:
    with Runtime(tmp_path / "s") as rt:
        rt.add_agent("probe", functools.partial(Probe, Opaque()), host=ray_host())
        rt.add_workflow(Workflow("w").step("s", agent="probe", action="where"))
        assert rt.start("w", 5).result(timeout=WAIT)["s"]["input"] == 5


def test_address_none_starts_a_cluster_of_its_own_even_beside_a_running_one(
    cluster: Any, tmp_path: Path
) -> None:
    # Ray's own ray.init(address=None) joins the cluster RAY_ADDRESS names (or the last
    # one `ray start` began on the machine) instead of starting one.
    code = (
        "import sys, ray\n"
        "from herder.runtime import Agent, RayHost, Runtime\n"
        "class A(Agent):\n"
        "    def go(self, ctx): return 1\n"
        "with Runtime(sys.argv[1]) as rt:\n"
        "    rt.add_agent('a', A, host=RayHost(num_cpus=0.25))\n"
        "    print('GCS', ray.get_runtime_context().gcs_address, flush=True)\n"
    )
    running = cluster.get_runtime_context().gcs_address
    child = Child(["-c", code, str(tmp_path / "s")], env={"RAY_ADDRESS": running})
    try:
        assert child.wait_for("GCS", WAIT).split()[1] != running
        assert child.proc.wait(WAIT) == 0, child.stderr()
    finally:
        child.kill(WAIT)


def test_a_placement_the_local_cluster_herder_started_cannot_hold_is_refused_at_add_agent(
    cluster: Any, tmp_path: Path
) -> None:
    # That cluster has the machine's resources and no autoscaler: each instance of the
    # agent waited a minute for a worker process that could never start, then failed.
    code = (
        "import sys\n"
        "from herder.runtime import Agent, InvalidInput, RayHost, Runtime\n"
        "class A(Agent):\n"
        "    def go(self, ctx): return 1\n"
        "with Runtime(sys.argv[1]) as rt:\n"
        "    try:\n"
        "        rt.add_agent('a', A, host=RayHost(num_cpus=0.25, resources={'absent': 2}))\n"
        "    except InvalidInput as exc:\n"
        "        print('REFUSED', exc, flush=True)\n"
        "    else:\n"
        "        print('REFUSED', 'no', flush=True)\n"
    )
    child = Child(["-c", code, str(tmp_path / "s")])
    try:
        says = child.wait_for("REFUSED", WAIT)
        assert "has 0 absent, less than the 2 absent each worker process" in says, says
        assert child.proc.wait(WAIT) == 0, child.stderr()
    finally:
        child.kill(WAIT)


def test_a_traced_runtime_runs_ray_agents_which_join_the_workflows_trace(
    cluster: Any, tmp_path: Path
) -> None:
    # The tracer is the daemon's: a Ray attempt has no span of its own, but its action
    # gets the workflow's traceparent to pass on (docs/ray.md).
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with Runtime(tmp_path / "s", tracer_provider=provider) as rt:
        rt.add_agent("probe", Probe, host=ray_host())
        rt.add_workflow(Workflow("t").step("s", agent="probe", action="traced", retry=FAST))
        parent = rt.start("t", None).result(timeout=WAIT)["s"]
    (workflow,) = exporter.get_finished_spans()
    ids = [f"{workflow.context.trace_id:032x}", f"{workflow.context.span_id:016x}"]
    assert parent.split("-")[1:3] == ids
