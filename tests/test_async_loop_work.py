"""What a start and a wait cost the event loop: no call per workflow that releases the GIL
(issue 16: on a loop beside busy runtime threads, getting the GIL back after ``os.urandom``
or an LMDB read cost ~0.5 ms each, and 1,000 workflows made the loop 50-130 ms late)."""

from __future__ import annotations

import asyncio
import os
import uuid
from pathlib import Path
from typing import Any

import pytest

from herder.runtime import Agent, Runtime, StepContext, Workflow, _start
from herder.runtime._start import _new_id


class Held(Agent):
    release: asyncio.Event

    async def call(self, ctx: StepContext) -> Any:
        await Held.release.wait()
        return ctx.input


def test_workflow_ids_are_distinct_uuid7s_and_one_urandom_read_serves_many(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    reads: list[int] = []
    real = os.urandom

    def counted(n: int) -> bytes:
        reads.append(n)
        return real(n)

    monkeypatch.setattr(os, "urandom", counted)
    ids = [_new_id() for _ in range(600)]
    assert len(set(ids)) == 600
    for wid in ids:
        assert uuid.UUID(wid).version == 7
        assert uuid.UUID(wid).variant == uuid.RFC_4122
        assert uuid.UUID(wid).hex == wid
    assert 1 <= len(reads) <= 4  # 256 ids per read, not one read each


def test_workflow_ids_lead_with_the_wall_clock_milliseconds_so_later_ids_sort_later(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # (so a commit's keys share pages: see _start._Ids)
    ms = [1_733_370_000_000]
    monkeypatch.setattr(_start, "_wall", lambda: (ms[0] + 0.5) / 1000)
    ids = []
    for _ in range(300):
        ids.append(_new_id())
        ms[0] += 1
    assert ids == sorted(ids)
    assert int(ids[0][:12], 16) == 1_733_370_000_000
    assert int(ids[-1][:12], 16) == 1_733_370_000_299


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_does_not_reuse_its_parents_unused_ids() -> None:
    _new_id()  # the pool holds unused ids now
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its next id, and exit without pytest's teardown
        os.write(write, _new_id().encode())
        os._exit(0)
    os.close(write)
    _, status = os.waitpid(pid, 0)
    child = os.read(read, 64).decode()
    os.close(read)
    assert status == 0
    assert len(child) == 32
    assert child != _new_id()


def test_result_async_of_a_workflow_started_here_reads_no_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its final announcement resolves the wait; a workflow not started by this runtime
    (or already ended) is still looked up in the store."""

    async def main() -> None:
        async with Runtime(tmp_path / "s", loop=asyncio.get_running_loop()) as rt:
            Held.release = asyncio.Event()
            rt.add_agent("io", Held, concurrency=10)
            rt.add_workflow(Workflow("io").step("s", agent="io", action="call"))
            handles = [await rt.start_async("io", i) for i in range(10)]
            reads: list[str] = []
            real = rt._store.get_workflow

            def counted(workflow_id: str) -> Any:
                reads.append(workflow_id)
                return real(workflow_id)

            monkeypatch.setattr(rt._store, "get_workflow", counted)
            waits = [asyncio.create_task(h.result_async(timeout=10)) for h in handles]
            await asyncio.sleep(0)  # one turn: each wait is registered (its first step)
            Held.release.set()
            results = await asyncio.gather(*waits)
            assert [r["s"] for r in results] == list(range(10))
            assert reads == []  # the final announcements resolved them
            assert (await handles[0].result_async(timeout=10))["s"] == 0  # ended: a read
            assert reads == [handles[0].id]

    asyncio.run(main())
