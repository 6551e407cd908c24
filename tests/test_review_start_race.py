"""Adversarial review of ``start()``/``start_many`` (hot-path.md §10: "an existing id is
refused by a check inside the write txn"): callers racing for one id, through both entry
points at once, create it exactly once; every loser with other input is refused and the
stored workflow is the winner's."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from herder.runtime import Agent, Runtime, StepContext, Workflow, WorkflowConflict

WAIT = 30.0
RACERS = 8


class Echo(Agent):
    def echo(self, ctx: StepContext) -> object:
        return ctx.input


@pytest.mark.parametrize("round_", range(3))
def test_callers_racing_for_one_id_create_it_once(tmp_path: Path, round_: int) -> None:
    with Runtime(tmp_path / "s") as rt:
        rt.add_agent("echo", Echo, concurrency=4)
        rt.add_workflow(Workflow("echo").step("only", agent="echo", action="echo"))
        barrier = threading.Barrier(RACERS)
        won: list[int] = []
        refused: list[int] = []
        lock = threading.Lock()

        def race(n: int) -> None:
            barrier.wait(WAIT)
            try:
                if n % 2:
                    rt.start("echo", {"v": n}, workflow_id="x")
                else:  # another id in the batch too: it starts whatever happens to "x"
                    batch = [
                        {"workflow": "echo", "input": {"v": n}, "workflow_id": "x"},
                        {"workflow": "echo", "input": {"v": n}, "workflow_id": f"y{n}"},
                    ]
                    rt.start_many(batch)
            except WorkflowConflict:
                with lock:
                    refused.append(n)
                return
            with lock:
                won.append(n)

        threads = [threading.Thread(target=race, args=(n,)) for n in range(RACERS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(WAIT)
        assert len(won) == 1, (won, refused)
        assert sorted(won + refused) == list(range(RACERS))
        assert rt.handle("x").result(timeout=WAIT) == {"only": {"v": won[0]}}
        for n in range(0, RACERS, 2):  # each batch's other item started either way
            assert rt.handle(f"y{n}").result(timeout=WAIT) == {"only": {"v": n}}
