"""``herder show`` reads a workflow's status and its history in one snapshot: a commit
that lands between the two reads must not make them disagree."""

from __future__ import annotations

import io
import json
import threading
from pathlib import Path
from typing import Any

import pytest
from _ending import WAIT, waiting_workflow
from _http_kit import request

from herder.runtime import Runtime, _inspect
from herder.runtime.ui import Console, _gate, _workflow_page
from herder.store import Store, WorkflowState


def end_between_the_reads(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch, reader: Any = _inspect, name: str = "read_history"
) -> None:
    """The waiting workflow "w" ends between the status read and the history read (on
    another thread: this one may be inside the snapshot of the reads): before the first
    history read, ``name`` of ``reader``, reads."""
    (token,) = waiting_workflow(rt)
    real = getattr(reader, name)
    ended: list[object] = []

    def end() -> None:
        rt.complete_step(token, "done")
        ended.append(rt._wait_final("w", WAIT))

    def history_after_the_end(store: Store, workflow_id: str) -> Any:
        ending = threading.Thread(target=end)
        ending.start()
        ending.join(WAIT)
        assert ended
        return real(store, workflow_id)

    monkeypatch.setattr(reader, name, history_after_the_end)


def test_show_status_and_history_come_from_one_snapshot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Runtime(tmp_path / "store") as rt:
        end_between_the_reads(rt, monkeypatch)
        out = io.StringIO()
        _inspect.show_workflow(out, rt._store, "w", as_json=True)
        assert rt.status("w").state is WorkflowState.SUCCEEDED  # it did end meanwhile
    shown = json.loads(out.getvalue())
    ends = [e["to"] for e in shown["history"] if e["kind"] == "workflow"]
    steps = [e["to"] for e in shown["history"] if e["kind"] == "step"]
    assert ends[-1] == shown["state"] == "RUNNING"
    assert steps[-1] == shown["steps"][0]["state"] == "WAITING"


def test_the_consoles_workflow_page_comes_from_one_snapshot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # (made before the runtime opens the store: it refuses a store a Runtime of its
    # process has open, since it cannot read it; this test hands it the runtime's)
    console = Console(str(tmp_path / "store"), port=0, token="t")
    with Runtime(tmp_path / "store") as rt:
        end_between_the_reads(rt, monkeypatch, _workflow_page, "history_seqs")
        # (one process cannot open the store twice: the console reads the runtime's, and
        # knows it is the file there: else it reopens it)
        console.gate._store = rt._store
        console.gate._file = _gate._file_of(str(tmp_path / "store"))
        console.start()
        try:
            status, _, html = request(console, "GET", "/workflow?id=w")
        finally:
            console.gate._store = None  # (the runtime closes it)
            console.shutdown()
        assert rt.status("w").state is WorkflowState.SUCCEEDED  # it did end meanwhile
    assert status == 200
    assert 'class="badge s-running">RUNNING' in html, html[:2000]
    assert "SUCCEEDED" not in html  # (the history read after the end is not shown)
