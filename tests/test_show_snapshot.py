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

from herder.runtime import Runtime, _inspect
from herder.store import Store, WorkflowState


def test_show_status_and_history_come_from_one_snapshot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Runtime(tmp_path / "store") as rt:
        (token,) = waiting_workflow(rt)
        real = _inspect.read_history

        def history_after_the_end(store: Store, workflow_id: str) -> list[dict[str, Any]]:
            # The workflow ends between the status read and the history read (on another
            # thread: this one may be inside the snapshot of the reads).
            ending = threading.Thread(target=end)
            ending.start()
            ending.join(WAIT)
            assert ended
            return real(store, workflow_id)

        ended: list[object] = []

        def end() -> None:
            rt.complete_step(token, "done")
            ended.append(rt._wait_final("w", WAIT))

        monkeypatch.setattr(_inspect, "read_history", history_after_the_end)
        out = io.StringIO()
        _inspect.show_workflow(out, rt._store, "w", as_json=True)
        assert rt.status("w").state is WorkflowState.SUCCEEDED  # it did end meanwhile
    shown = json.loads(out.getvalue())
    ends = [e["to"] for e in shown["history"] if e["kind"] == "workflow"]
    steps = [e["to"] for e in shown["history"] if e["kind"] == "step"]
    assert ends[-1] == shown["state"] == "RUNNING"
    assert steps[-1] == shown["steps"][0]["state"] == "WAITING"
