"""``rt.start_many([...])``: many workflows in one group commit, idempotent per id."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_capacity_queue import _Queue

from herder.runtime import (
    Agent,
    EncodeError,
    InvalidInput,
    Runtime,
    StepContext,
    UnknownName,
    Workflow,
    WorkflowConflict,
)
from herder.runtime._start_many import _CollectorPause
from herder.store import Transition, started_key

WAIT = 30.0


class Echo(Agent):
    def echo(self, ctx: StepContext) -> object:
        return ctx.input


def register(rt: Runtime) -> None:
    rt.add_agent("echo", Echo, concurrency=4)
    rt.add_workflow(Workflow("echo").step("only", agent="echo", action="echo"))


def items(ids: list[str], value: int = 1) -> list[dict[str, object]]:
    return [{"workflow": "echo", "input": {"v": value}, "workflow_id": i} for i in ids]


def test_start_many_creates_every_workflow_in_one_commit_and_runs_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Runtime(tmp_path / "s", setup=register) as rt:
        writer = rt._store.writer
        groups: list[int] = []
        submit_many = writer.submit_many

        def counted(transitions: Any, on_done: Any, **kwargs: Any) -> None:
            groups.append(len(transitions))
            submit_many(transitions, on_done, **kwargs)

        monkeypatch.setattr(writer, "submit_many", counted)
        batches = writer.stats()["batches"]
        handles = rt.start_many(items([f"w{i}" for i in range(50)]))
        # One group (the writer never splits one across transactions), so one commit.
        # (Not a count of batches: the Scheduler may commit the first dispatches before
        # the count is read.)
        assert len(groups) == 1
        assert groups[0] >= 50  # (and a started mark of the plan)
        assert writer.stats()["batches"] >= batches + 1
        assert [h.id for h in handles] == [f"w{i}" for i in range(50)]
        for h in handles:
            assert h.result(timeout=WAIT) == {"only": {"v": 1}}


def test_start_many_is_idempotent_per_id_like_start(tmp_path: Path) -> None:
    with Runtime(tmp_path / "s", setup=register) as rt:
        rt.start("echo", {"v": 1}, workflow_id="a")
        again = rt.start_many(items(["a", "b", "b"]))  # existing id, and a repeat in the list
        assert [h.id for h in again] == ["a", "b", "b"]
        assert sorted(s.id for s in rt.list()) == ["a", "b"]
        with pytest.raises(WorkflowConflict, match="'a'"):
            rt.start_many(items(["a", "c"], value=2))
        assert rt.status("c").id == "c"  # the others still started
        with pytest.raises(WorkflowConflict, match="twice"):
            rt.start_many([*items(["d"]), *items(["d"], value=2)])
        assert "d" not in {s.id for s in rt.list()}


@pytest.mark.parametrize(
    ("bad", "error", "match"),
    [
        ({"workflow": "nope"}, UnknownName, "no workflow named 'nope'"),
        ({"input": 1}, InvalidInput, "'workflow' key"),
        ({"workflow": "echo", "when": 3}, InvalidInput, "unknown keys \\['when'\\]"),
        ({"workflow": "echo", "workflow_id": ""}, InvalidInput, "empty"),
    ],
)
def test_one_bad_item_refuses_the_whole_batch_and_writes_nothing(
    tmp_path: Path, bad: dict[str, object], error: type[Exception], match: str
) -> None:
    with Runtime(tmp_path / "s", setup=register) as rt:
        with pytest.raises(error, match=match):
            rt.start_many([*items(["ok"]), bad])
        assert rt.list() == []


def test_start_many_async_awaits_the_group_commit(tmp_path: Path) -> None:
    async def main() -> list[object]:
        async with Runtime(tmp_path / "s", setup=register) as rt:
            handles = await rt.start_many_async(items(["a", "b"]))
            return [await h.result_async(timeout=WAIT) for h in handles]

    assert asyncio.run(main()) == [{"only": {"v": 1}}] * 2


class Device(Agent):
    def configure(self, ctx: StepContext) -> object:
        return ctx.input["device"]


def test_a_templated_workflow_is_routed_and_checked_per_item(tmp_path: Path) -> None:
    routed = Workflow("routed").step("only", agent="device:{device}", action="configure")
    with Runtime(tmp_path / "s", setup=register) as rt:
        rt.add_workflow(routed)
        for name in ("device:a", "device:b"):
            rt.add_agent(name, Device)
        handles = rt.start_many(
            [{"workflow": "routed", "input": {"device": d}, "workflow_id": d} for d in "ab"]
        )
        assert [h.result(timeout=WAIT) for h in handles] == [{"only": "a"}, {"only": "b"}]
        with pytest.raises(UnknownName, match="'device:c'"):  # the third item, not the first
            rt.start_many(
                [{"workflow": "routed", "input": {"device": d}, "workflow_id": d} for d in "abc"]
            )
        assert "c" not in {s.id for s in rt.list()}


def test_the_workflows_of_one_batch_are_created_at_one_instant(tmp_path: Path) -> None:
    with Runtime(tmp_path / "s", setup=register) as rt:
        rt.start_many(items([f"w{i}" for i in range(200)]))
        created = {rt._store.get_workflow(f"w{i}").created for i in range(200)}  # type: ignore[union-attr]
        assert len(created) == 1  # one clock read for the batch, not one per item


def test_the_definitions_started_mark_lands_even_when_its_first_item_finds_its_id_taken(
    tmp_path: Path,
) -> None:
    def both(rt: Runtime) -> None:
        register(rt)
        rt.add_workflow(Workflow("other").step("only", agent="echo", action="echo"))

    with Runtime(tmp_path / "s", setup=both) as rt:
        rt.start("other", {"v": 1}, workflow_id="taken")
    with Runtime(tmp_path / "s", setup=both) as rt:  # a new process: nothing marked yet
        with pytest.raises(WorkflowConflict, match="'taken'"):
            rt.start_many(items(["taken", "fresh"]))
        assert rt.status("fresh").name == "echo"
        assert rt._store.get("meta", started_key("echo", 1)) is not None


def test_the_writer_keeps_nothing_of_a_batch_once_it_is_committed(tmp_path: Path) -> None:
    # (Its 2,000 transitions stayed alive while the writer waited for its next batch,
    # walked by every full garbage collection until then.)
    with Runtime(tmp_path / "s", setup=register) as rt:
        rt.start_many([{**item, "delay": 3600} for item in items([f"w{i}" for i in range(300)])])
        rt._settle()  # admitted: nothing more for the writer
        rt._store.writer.flush()  # (and its callbacks have run)
        gc.collect()  # garbage other tests left is not counted (it was, once, under load)
        live = sum(1 for o in gc.get_objects() if type(o) is Transition)
        assert live < 300, f"{live} transitions are still referenced"


def test_the_collector_is_held_off_while_a_batch_is_built_and_on_again_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert gc.isenabled()
    with Runtime(tmp_path / "s", setup=register) as rt:
        seen: list[bool] = []
        prepare = rt._prepare

        def watched(*args: object, **kwargs: object) -> object:
            seen.append(gc.isenabled())
            return prepare(*args, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(rt, "_prepare", watched)
        rt.start_many(items(["a", "b"]))
        assert seen == [False, False]
        assert gc.isenabled()
        with pytest.raises(InvalidInput):  # a bad item raises inside the pause
            rt.start_many([*items(["c"]), {"nope": 1}])
        assert gc.isenabled()


def test_overlapping_pauses_turn_the_collector_on_once_and_never_against_the_app() -> None:
    pause, other = _CollectorPause(), _CollectorPause()
    assert gc.isenabled()
    pause.__enter__()
    pause.__enter__()  # a second batch, on another thread
    pause.__exit__()
    assert not gc.isenabled()
    pause.__exit__()
    assert gc.isenabled()
    gc.disable()  # the application's choice
    try:
        other.__enter__()
        other.__exit__()
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_a_batch_that_can_never_fit_the_capacity_is_refused_at_once(tmp_path: Path) -> None:
    with Runtime(tmp_path / "s", max_active_workflows=3) as rt:
        register(rt)
        four = items(["w0", "w1", "w2", "w3"])
        with pytest.raises(InvalidInput, match="batches of at most 3"):
            rt.start_many(four)  # (no timeout: it waited for good)
        assert rt.list() == []
        assert len(rt.start_many(four[:3], timeout=WAIT)) == 3  # no slot was kept


class Gated(Agent):
    gate = threading.Event()

    def hold(self, ctx: StepContext) -> object:
        Gated.gate.wait(WAIT)
        return None


@contextlib.contextmanager
def gated_runtime(tmp_path: Path) -> Iterator[Runtime]:
    """Room for 4 workflows; workflow "held" holds its slot until ``Gated.gate`` is set."""
    Gated.gate = threading.Event()
    with Runtime(tmp_path / "s", max_active_workflows=4) as rt:
        register(rt)
        rt.add_agent("gated", Gated, concurrency=4)
        rt.add_workflow(Workflow("held").step("only", agent="gated", action="hold"))
        yield rt


def test_two_batches_waiting_for_capacity_do_not_split_it_and_wait_for_each_other(
    tmp_path: Path,
) -> None:
    """Each took the slots that freed one at a time: 2 + 2 of 4, each needing 3, and both
    waited until their timeout (for good without one) with nothing running."""
    with gated_runtime(tmp_path) as rt:
        running = [rt.start("held", workflow_id=f"run-{i}") for i in range(4)]
        done: dict[str, object] = {}

        def batch(tag: str) -> None:
            try:
                done[tag] = len(rt.start_many(items([f"{tag}{i}" for i in range(3)]), timeout=5))
            except TimeoutError as exc:
                done[tag] = str(exc)

        threads = [threading.Thread(target=batch, args=(tag,)) for tag in "AB"]
        for t in threads:
            t.start()
        Gated.gate.set()  # the four finish one by one: slots free one at a time
        for t in threads:
            t.join(WAIT)
        for handle in running:
            handle.result(timeout=WAIT)
        assert done == {"A": 3, "B": 3}


def test_a_batch_waiting_for_capacity_takes_free_slots_and_no_later_start_overtakes_it(
    tmp_path: Path,
) -> None:
    """What keeps two waiting batches from splitting the slots that free between them,
    and a batch from waiting for ever behind single starts: only the oldest waiter takes
    slots. A batch that needs 3 while 2 are free takes those 2 and waits for a third; a
    start() after it waits behind it (it used to take a free slot from under it)."""
    with gated_runtime(tmp_path) as rt:
        running = [rt.start("held", workflow_id=f"run-{i}") for i in range(2)]
        queue = rt._queued = _Queue()
        done: list[int] = []
        thread = threading.Thread(
            target=lambda: done.append(len(rt.start_many(items(["a", "b", "c"]), timeout=WAIT)))
        )
        thread.start()
        assert queue.joined.acquire(timeout=WAIT)  # the batch waits, holding the 2 free
        with pytest.raises(TimeoutError, match="max_active_workflows=4"):
            rt.start("held", workflow_id="single", timeout=0.2)  # (nothing frees meanwhile)
        Gated.gate.set()
        thread.join(WAIT)
        assert done == [3]
        for handle in running:
            handle.result(timeout=WAIT)


def test_a_bad_item_in_a_big_batch_is_named_by_its_index(tmp_path: Path) -> None:
    """A batch of thousands is refused for one item: the error says which one."""
    good = items([f"ok-{n}" for n in range(50)])
    with Runtime(tmp_path / "s", setup=register) as rt:
        bad_input = [*good[:17], {"workflow": "echo", "input": {1: "int key"}}, *good[17:]]
        with pytest.raises(EncodeError, match=r"^start_many item 17: .*map keys must be str"):
            rt.start_many(bad_input)
        bad_name = [*good[:3], {"workflow": "nope"}]
        with pytest.raises(UnknownName, match=r"^start_many item 3: no workflow named 'nope'"):
            rt.start_many(bad_name)
        bad_priority = [*good[:40], {"workflow": "echo", "priority": "high"}]
        with pytest.raises(InvalidInput, match=r"^start_many item 40: priority must be an int"):
            rt.start_many(bad_priority)
        assert rt.list() == []
