"""A Scheduler that crashes in the middle of a recovery that counts the unfinished
workflows chunk by chunk (the store's index could not list them) leaves the capacity
count right: the next recovery counts no workflow twice."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from herder.runtime import Agent, Runtime, StepContext, Workflow
from herder.store import Put, Store, Transition
from herder.store._recent import _STATES, RECENT_DB

WAIT = 10.0
N = 12  # unfinished workflows in the store

pytestmark = pytest.mark.timeout(90)


class Gated(Agent):
    gate = threading.Event()

    def work(self, ctx: StepContext) -> int:
        Gated.gate.wait(WAIT)
        return 1


def flow() -> Workflow:
    return Workflow("w").step("s", agent="a", action="work")


def test_a_crash_mid_recovery_counts_no_workflow_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The chunks the crashed Scheduler had counted were counted again by the next one:
    # 4 slots of max_active_workflows were taken for good, by no workflow.
    path = tmp_path / "s"
    Gated.gate.clear()
    with Runtime(path, instance_shutdown=0.1) as rt:
        rt.add_agent("a", Gated, concurrency=N)
        rt.add_workflow(flow())
        for i in range(N):
            rt.start("w", workflow_id=f"w{i:02}")
    # A damaged key in the index: recovery reads every workflow record, a chunk at a time.
    with Store(path) as store:
        damaged = Put(RECENT_DB, b"\0" * 8 + b"\xff", _STATES["RUNNING"])
        store.writer.submit(Transition(ops=(damaged,))).result(timeout=WAIT)

    from herder.actors import _recovery

    monkeypatch.setattr(_recovery, "RESUME_CHUNK", 4)
    real, admitted = _recovery.Recovery.admit, [0]

    def admit(self: Any, *args: Any, **kwargs: Any) -> Any:
        admitted[0] += 1
        if admitted[0] == 6:  # in the second chunk: a Scheduler bug
            raise RuntimeError("a Scheduler bug in recovery")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(_recovery.Recovery, "admit", admit)

    def setup(rt: Runtime) -> None:
        rt.add_agent("a", Gated, concurrency=N)
        rt.add_workflow(flow())

    Gated.gate.set()
    with Runtime(path, max_active_workflows=N, setup=setup) as rt:
        for i in range(N):
            assert rt.handle(f"w{i:02}").result(timeout=WAIT) == {"s": 1}
        assert rt.stats()["restarts"]["scheduler"] == 1
        Gated.gate.clear()  # now N new ones, held, fit the limit at once
        try:
            for i in range(N):
                rt.start("w", workflow_id=f"n{i:02}", timeout=1.0)
        finally:
            Gated.gate.set()
