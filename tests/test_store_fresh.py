"""A start's check that its id is free reads the store only when the writer cannot tell:
ids above the highest workflow key it read, and not written since, are on no record
(store/_fresh.py). A repeated start is still answered from the store."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from herder.runtime import Agent, Runtime, StepContext, Workflow, WorkflowConflict
from herder.store import Store, _fresh

WAIT = 30.0


class Echo(Agent):
    def echo(self, ctx: StepContext) -> object:
        return ctx.input


def _runtime(path: Path) -> Runtime:
    rt = Runtime(path)
    rt.add_agent("echo", Echo)
    rt.add_workflow(Workflow("echo").step("only", agent="echo", action="echo"))
    return rt


def _reads(rt: Runtime, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The ids the store is asked for from now on."""
    asked: list[str] = []
    get_workflow = rt._store.get_workflow

    def counted(workflow_id: str) -> Any:
        asked.append(workflow_id)
        return get_workflow(workflow_id)

    monkeypatch.setattr(rt._store, "get_workflow", counted)
    return asked


def test_ids_above_every_workflow_written_start_without_a_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with _runtime(tmp_path / "s") as rt:
        assert rt.start("echo", 0, workflow_id="wf-1").result(timeout=WAIT)
        asked = _reads(rt, monkeypatch)
        # (Results are awaited after the checks: a result() that comes after its workflow
        # ended reads the store, which made this test fail now and then on a busy host.)
        handles = [rt.start("echo", n, workflow_id=f"wf-{n}") for n in range(2, 6)]
        assert asked == []
        assert not rt._store.surely_new("wf-3")  # written since
        assert not rt._store.surely_new("a")  # below the floor: read to know
        assert rt._store.surely_new("wf-6")
        # A repeated start is answered from the store, in order or not.
        again = rt.start("echo", 3, workflow_id="wf-3")
        with pytest.raises(WorkflowConflict):
            rt.start("echo", 99, workflow_id="wf-5")
        assert asked == ["wf-3", "wf-5"]
        assert again.result(timeout=WAIT) == {"only": 3}
        assert [h.result(timeout=WAIT) for h in handles] == [{"only": n} for n in range(2, 6)]


def test_a_writer_reads_the_highest_workflow_key_before_it_knows_an_id_is_new(
    tmp_path: Path,
) -> None:
    with _runtime(tmp_path / "s") as rt:
        rt.start("echo", 9, workflow_id="wf-9").result(timeout=WAIT)
    with _runtime(tmp_path / "s") as rt:
        assert not rt._store.surely_new("wf-99")  # nothing written yet: nothing known
        rt.start("echo", 1, workflow_id="wf-1").result(timeout=WAIT)
        assert not rt._store.surely_new("wf-9")  # from the store, not from this writer
        assert not rt._store.surely_new("wf-5")
        assert rt._store.surely_new("wf-99")
        assert rt.start("echo", 9, workflow_id="wf-9").result(timeout=WAIT) == {"only": 9}


def test_the_keys_noted_are_bounded_and_the_floor_moves_up_past_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_fresh, "NOTED", 2)
    with _runtime(tmp_path / "s") as rt:
        for n in range(1, 5):
            rt.start("echo", n, workflow_id=f"wf-{n}").result(timeout=WAIT)
        fresh = rt._store._fresh
        assert fresh is not None
        assert fresh._known is not None
        floor, noted = fresh._known
        assert len(noted) <= 2
        assert b"wf-2" <= floor <= b"wf-4"
        for n in range(1, 5):
            assert not rt._store.surely_new(f"wf-{n}")
        assert rt._store.surely_new("wf-5")


def test_a_store_without_a_writer_knows_no_id_is_new(tmp_path: Path) -> None:
    with _runtime(tmp_path / "s") as rt:
        rt.start("echo", 1, workflow_id="wf-1").result(timeout=WAIT)
    with Store(tmp_path / "s", readonly=True) as reader:
        assert not reader.surely_new("wf-2")
