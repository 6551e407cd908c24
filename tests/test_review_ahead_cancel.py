"""Adversarial review of reserve-ahead (hot-path.md §6): "When a workflow is cancelled or
finishes, its reserved attempts are dropped from ``ready`` (marked superseded)"."""

from __future__ import annotations

from pathlib import Path

from test_review_selffeed import WAIT, Gated, one_held

from herder.runtime import Runtime, Workflow
from herder.runtime.testing import settle, wait_until


def test_a_cancelled_workflows_attempt_waiting_in_its_lane_never_starts(tmp_path: Path) -> None:
    with Runtime(tmp_path / "s", prefetch=3) as rt:
        one_held(rt, Workflow("one", version=1).step("s", agent="gated", action="act"))
        rt.start("one", {}, workflow_id="w2")  # reserved ahead, durable, waits in the lane
        wait_until(rt, lambda: rt.stats()["steps"]["reserved_ahead"] == 1)
        settle(rt)
        rt.cancel("w2")
        settle(rt)
        Gated.event(Gated.go, "w2").set()  # should it run anyway, it does not hang
        Gated.event(Gated.go, "w3").set()
        Gated.event(Gated.go, "w1").set()  # the instance frees
        assert rt.start("one", {}, workflow_id="w3").result(timeout=WAIT) == {"s": 1}
        wait_until(rt, lambda: rt.status("w2").state.name == "CANCELLED")
        assert not Gated.event(Gated.started, "w2").is_set()
