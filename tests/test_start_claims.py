"""Two starts of one workflow id at once (a client's retry racing its first call): one
workflow, each step run once, and no halt of the Scheduler's writes (which reloaded the
workflows behind it and ran again steps still running, other workflows' too)."""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from herder.runtime import Agent, Runtime, StepContext, Workflow, WorkflowConflict

pytestmark = pytest.mark.timeout(120)
WAIT = 20.0
ROUNDS = 20


class Counted(Agent):
    runs: collections.Counter[str]

    def go(self, ctx: StepContext) -> Any:
        Counted.runs[ctx.workflow_id] += 1
        return {"ok": 1}


@pytest.fixture
def rt(tmp_path: Path) -> Iterator[Runtime]:
    Counted.runs = collections.Counter()
    with Runtime(tmp_path / "s") as runtime:
        runtime.add_agent("c", Counted, concurrency=4)
        runtime.add_workflow(Workflow("w").step("a", agent="c", action="go"))
        yield runtime


def halts(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "failed" in r.getMessage()]


def test_two_threads_starting_one_id_at_once_make_one_workflow_and_halt_nothing(
    rt: Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR)
    background = [rt.start("w", {}, workflow_id=f"other-{i}") for i in range(ROUNDS)]
    outcomes: list[str] = []

    def start(wid: str, value: int, barrier: threading.Barrier) -> None:
        barrier.wait()
        try:
            rt.start("w", {"v": value}, workflow_id=wid).result(timeout=WAIT)
            outcomes.append("handle")
        except WorkflowConflict:
            outcomes.append("conflict")

    for i in range(ROUNDS):
        barrier = threading.Barrier(2)
        same = [threading.Thread(target=start, args=(f"same-{i}", 1, barrier)) for _ in "ab"]
        barrier = threading.Barrier(2)
        apart = [threading.Thread(target=start, args=(f"apart-{i}", v, barrier)) for v in (1, 2)]
        for t in same + apart:
            t.start()
        for t in same + apart:
            t.join(WAIT)
    for handle in background:
        handle.result(timeout=WAIT)
    assert sorted(collections.Counter(outcomes).items()) == [
        ("conflict", ROUNDS),
        ("handle", 3 * ROUNDS),
    ]
    assert halts(caplog) == []
    assert set(Counted.runs.values()) == {1}
    assert len(Counted.runs) == 3 * ROUNDS


def test_a_start_async_cancelled_mid_commit_then_started_again_halts_nothing(
    rt: Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    """docs/asyncio.md: a cancelled start_async may still start; start it again with
    the same id. The first one's creation is still on its way when the second begins."""
    caplog.set_level(logging.ERROR)

    async def main() -> None:
        for i in range(ROUNDS):
            first = asyncio.create_task(rt.start_async("w", {}, workflow_id=f"c-{i}"))
            await asyncio.sleep(0)  # (no wait: two turns of the loop, so the start is
            await asyncio.sleep(0)  # under way, its creation queued, when it is cancelled)
            first.cancel()
            await asyncio.gather(first, return_exceptions=True)
            again = await rt.start_async("w", {}, workflow_id=f"c-{i}")
            await again.result_async(timeout=WAIT)

    asyncio.run(main())
    assert halts(caplog) == []
    assert Counted.runs == {f"c-{i}": 1 for i in range(ROUNDS)}


def test_a_start_many_racing_a_start_of_one_id_halts_nothing(
    rt: Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    """start_many creates its ids without reading the store first; a start() of one of
    them at once was taken up early and its failed creation halted the Scheduler's
    writes (its batch-mates' steps ran again too)."""
    caplog.set_level(logging.ERROR)

    def single(wid: str, barrier: threading.Barrier) -> None:
        barrier.wait()
        rt.start("w", {}, workflow_id=wid).result(timeout=WAIT)

    def many(wid: str, barrier: threading.Barrier) -> None:
        barrier.wait()
        items = [{"workflow": "w", "input": {}, "workflow_id": w} for w in (wid, f"{wid}-b")]
        for handle in rt.start_many(items):
            handle.result(timeout=WAIT)

    for i in range(ROUNDS):
        barrier = threading.Barrier(2)
        threads = [threading.Thread(target=f, args=(f"r-{i}", barrier)) for f in (single, many)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(WAIT)
    assert halts(caplog) == []
    assert Counted.runs == {f"r-{i}{s}": 1 for i in range(ROUNDS) for s in ("", "-b")}
