"""User code that stops the runtime's own asyncio loop (``loop.stop()`` in an action):
the loop runs on, the attempt that stopped it ends as its coroutine does, and every later
async step runs as before (``actors/_event_loop._serve``)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from herder.runtime import Agent, RetryPolicy, Runtime, StepContext, Workflow

WAIT = 10.0


class Stopper(Agent):
    async def stop_loop(self, ctx: StepContext) -> str:
        asyncio.get_running_loop().stop()  # e.g. a library that "cleans up" its loop
        await asyncio.sleep(0)
        return "stopped"

    async def stop_and_return(self, ctx: StepContext) -> str:
        asyncio.get_running_loop().stop()  # no await after it: the task ends in this turn
        return "returned"

    async def ok(self, ctx: StepContext) -> str:
        await asyncio.sleep(0)
        return "ok"


@pytest.mark.timeout(30)
def test_user_code_stopping_the_runtimes_loop_does_not_kill_every_later_async_step(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    retry = RetryPolicy(max_attempts=3, initial_interval=0.0, jitter=0.0)
    with Runtime(tmp_path / "s", instance_shutdown=0.1, default_retry=retry) as rt:
        rt.add_agent("a", Stopper, concurrency=2)
        rt.add_workflow(Workflow("stop").step("s", agent="a", action="stop_loop"))
        rt.add_workflow(Workflow("stop_ret").step("s", agent="a", action="stop_and_return"))
        rt.add_workflow(Workflow("ok").step("s", agent="a", action="ok"))
        assert rt.start("ok").result(timeout=WAIT) == {"s": "ok"}
        with caplog.at_level(logging.WARNING, logger="herder.asyncio"):
            # The attempt that stopped the loop ends as its coroutine does, first time:
            h = rt.start("stop")
            assert h.result(timeout=WAIT) == {"s": "stopped"}
            assert rt.status(h.id).steps["s"].attempt == 1
            assert rt.start("stop_ret").result(timeout=WAIT) == {"s": "returned"}
        assert any("stopped the asyncio agents' loop" in r.message for r in caplog.records)
        # An unrelated async workflow afterwards still runs:
        assert rt.start("ok").result(timeout=WAIT) == {"s": "ok"}


class Bye(SystemExit):
    """A SystemExit (asyncio re-raises it out of the loop) that cannot be logged: its
    ``__notes__``, which a traceback reads, raises."""

    @property
    def __notes__(self) -> list[str]:
        raise KeyboardInterrupt("notes")


def leave() -> None:
    raise Bye("from a callback of the user's")


class Leaver(Stopper):
    async def leave(self, ctx: StepContext) -> str:
        asyncio.get_running_loop().call_soon(leave)  # out of run_forever, past the task
        await asyncio.sleep(0)  # one turn of the loop: the callback runs before this resumes
        return "left"


@pytest.mark.timeout(30)
def test_user_code_escaping_the_loop_in_a_form_that_cannot_be_logged_does_not_kill_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # _serve logged the escaped exception with its traceback; formatting that one raised
    # KeyboardInterrupt, which ended the loop's thread: every later async attempt waited
    # for a loop that no longer ran, and timed out.
    retry = RetryPolicy(max_attempts=1, initial_interval=0.0, jitter=0.0)
    with Runtime(tmp_path / "s", instance_shutdown=0.1, default_retry=retry) as rt:
        rt.add_agent("a", Leaver, concurrency=2)
        rt.add_workflow(Workflow("leave").step("s", agent="a", action="leave"))
        rt.add_workflow(Workflow("ok").step("s", agent="a", action="ok"))
        with caplog.at_level(logging.ERROR, logger="herder.asyncio"):
            assert rt.start("leave").result(timeout=WAIT) == {"s": "left"}
        assert any("Bye: from a callback" in r.getMessage() for r in caplog.records)
        assert rt.start("ok").result(timeout=WAIT) == {"s": "ok"}
