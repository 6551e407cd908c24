"""Workflow definitions as a user writes them: the same definition is the same plan in
every process, and registration refuses what it cannot use with a HerderError."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from herder.runtime import (
    Agent,
    AnyOf,
    InvalidDefinition,
    InvalidInput,
    RetryPolicy,
    Runtime,
    State,
    StepContext,
    StepState,
    UnknownName,
    Workflow,
)

WAIT = 30.0


class Shop(Agent):
    def buy(self, ctx: StepContext) -> str:
        return "bought"


# A fan-in whose dependencies and non-retryable errors are given as sets, as a user may.
_COMPILE = """
from herder.runtime import RetryPolicy, Workflow
from herder.store import encode
wf = Workflow("fan")
for i in range(6):
    wf.step(f"s{i}", agent="shop", action="buy")
errors = {"app.E1", "app.E2", "app.E3", "app.E4", "app.E5", "app.E6"}
wf.step("join", agent="shop", action="buy", after={f"s{i}" for i in range(6)},
        retry=RetryPolicy(non_retryable=errors))
print(encode(wf.compile().to_dict()).hex())
"""


def test_a_definition_given_sets_compiles_to_one_plan_whatever_the_hash_seed() -> None:
    # A set iterates in its process's hash order: the plan compiled after a restart
    # differed from the stored one, and a definition of which a workflow had started was
    # refused at add_workflow ("give the changed definition a new version").
    plans = set()
    for seed in ("0", "1", "2", "3"):
        done = subprocess.run(
            [sys.executable, "-c", _COMPILE],
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        plans.add(done.stdout)
    assert len(plans) == 1


def _order(*errors: type[BaseException]) -> Workflow:
    retry = RetryPolicy(non_retryable=errors)
    return Workflow("order").step("pay", agent="shop", action="buy", retry=retry)


def test_a_started_definition_registers_again_with_its_error_types_in_another_order(
    tmp_path: Path,
) -> None:
    # non_retryable={KeyError, ValueError} iterates in an order of the types' addresses,
    # which another process may lay out otherwise: the order says nothing.
    assert RetryPolicy(non_retryable=(KeyError, ValueError)) == RetryPolicy(
        non_retryable=(ValueError, KeyError)
    )
    with Runtime(tmp_path / "s") as rt:
        rt.add_agent("shop", Shop)
        rt.add_workflow(_order(KeyError, ValueError))
        assert rt.start("order", workflow_id="o1").result(timeout=WAIT) == {"pay": "bought"}
    with Runtime(tmp_path / "s") as rt:
        rt.add_agent("shop", Shop)
        rt.add_workflow(_order(ValueError, KeyError))
        assert rt.start("order", workflow_id="o2").result(timeout=WAIT) == {"pay": "bought"}


def test_remove_agent_refuses_a_name_that_is_no_str_with_invalid_input(tmp_path: Path) -> None:
    # A name is checked when only looked up too (docs/recovery.md): a list raised
    # TypeError out of remove_agent.
    with Runtime(tmp_path / "s") as rt:
        rt.add_agent("shop", Shop)
        for bad in (["shop"], None, ""):
            with pytest.raises(InvalidInput, match="agent name must be a non-empty str"):
                rt.remove_agent(bad)  # type: ignore[arg-type]
        rt.remove_agent("shop")


def test_an_agent_name_with_a_brace_is_refused_as_no_step_could_name_it(tmp_path: Path) -> None:
    # add_agent took "cfg{1}" and "a}b", which a step's agent= reads as a template (and
    # refuses); the escape the refusal advised, "a}}b", was then taken verbatim and named
    # an agent that was never registered.
    with Runtime(tmp_path / "s") as rt:
        for bad in ("cfg{1}", "a}b", "x{{y", "dev:{x}"):
            with pytest.raises(InvalidInput, match="holds a brace"):
                rt.add_agent(bad, Shop)
        for bad in ("a}}b", "x{{y", "cfg{{1}}:{device}"):
            with pytest.raises(InvalidDefinition, match="brace"):
                Workflow("w").step("s", agent=bad, action="buy")
        with pytest.raises(InvalidDefinition, match="brace"):
            AnyOf("a{{b", "c")
        rt.add_agent("dev:a", Shop)
        rt.add_workflow(Workflow("w").step("s", agent="dev:{device}", action="buy"))
        with pytest.raises(InvalidInput, match=r"not a usable agent name: .*holds a brace"):
            rt.start("w", {"device": "{a}"})
        assert rt.start("w", {"device": "a"}).result(timeout=WAIT) == {"s": "bought"}


@pytest.mark.timeout(30)
def test_a_compensate_retry_without_a_compensate_action_is_warned_of(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """It never applies: most likely the compensate action was forgotten. Warned of, not
    refused: a daemon whose definition has it kept starting before, and dropping it
    changes the definition (a new version once workflows of it started)."""
    with Runtime(tmp_path / "s") as rt:
        rt.add_agent("shop", Shop)
        rt.add_workflow(Workflow("w").step("buy", agent="shop", action="buy", retry=None))
        assert "compensate_retry" not in caplog.text
        rt.add_workflow(
            Workflow("w", version=2).step(
                "buy", agent="shop", action="buy", compensate_retry=RetryPolicy()
            )
        )
        assert "'w' step 'buy': compensate_retry is set but the step has no compensate" in (
            caplog.text
        )
        assert rt.start("w", workflow_id="o").result(timeout=WAIT) == {"buy": "bought"}


class Renamed(Agent):  # the next release of Shop: its action renamed
    def purchase(self, ctx: StepContext) -> str:
        return "bought"


def test_a_setup_registering_workflows_before_an_agent_that_lacks_their_action_is_refused(
    tmp_path: Path,
) -> None:
    # A release that renamed an action, its setup registering workflows before agents:
    # add_workflow could not check the action yet, nothing checked it after, and each
    # workflow recovered in flight failed the step for good ("has no action") and was
    # compensated. Registered agents first, the same setup raised UnknownName.
    order = Workflow("order").step("pay", agent="shop", action="buy")
    with Runtime(tmp_path / "s") as rt:
        rt.add_agent("shop", Shop)
        rt.add_workflow(order)
        rt.start("order", workflow_id="o1", delay=3600)

    def renamed(rt: Runtime) -> None:
        rt.add_workflow(order)
        rt.add_agent("shop", Renamed)

    with pytest.raises(UnknownName, match=r"agent 'shop' has no action 'buy'"):
        Runtime(tmp_path / "s", setup=renamed)
    with Runtime(tmp_path / "s") as rt:  # nothing of o1 ran
        status = rt.status("o1")
        assert status.state is State.RUNNING
        assert status.steps["pay"].state is StepState.PENDING


class Held(Agent):
    entered = threading.Event()
    gate = threading.Event()

    def buy(self, ctx: StepContext) -> str:
        Held.entered.set()  # its DISPATCHED is durable: it is in flight when we stop
        Held.gate.wait(WAIT)
        return "bought"


def test_work_recovered_for_an_agent_no_longer_registered_is_warned_of(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A release that renamed an agent (or dropped it): its workflows recovered in flight
    # waited for it in silence, RUNNING for ever, where a missing definition is warned of.
    order = Workflow("order").step("pay", agent="shop", action="buy")
    try:
        with Runtime(tmp_path / "s") as rt:
            rt.add_agent("shop", Held)
            rt.add_workflow(order)
            rt.start("order", workflow_id="o1")
            assert Held.entered.wait(WAIT)
            rt.stop(timeout=1.0)
    finally:
        Held.gate.set()
    caplog.set_level(logging.WARNING, logger="herder.scheduler")
    warned = threading.Event()

    class Seen(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "agent 'shop'" in record.getMessage():
                warned.set()

    seen = Seen()
    logging.getLogger("herder.scheduler").addHandler(seen)
    try:
        with Runtime(tmp_path / "s", setup=lambda rt: rt.add_workflow(order)) as rt:
            assert warned.wait(WAIT)
            [line] = [r.getMessage() for r in caplog.records if "agent 'shop'" in r.getMessage()]
            assert "not registered" in line
            assert "add_agent" in line
            rt.add_agent("shop", Shop)
            assert rt.handle("o1").result(WAIT) == {"pay": "bought"}
    finally:
        logging.getLogger("herder.scheduler").removeHandler(seen)


def test_a_stored_non_retryable_name_that_matches_no_error_still_reads() -> None:
    """``RetryPolicy`` now refuses a name no error carries (``"ValueEror"``); a plan
    stored before that must still read, its name matching nothing as it did, or the
    workflows of its definition could not resume."""
    stored = {**RetryPolicy().to_dict(), "non_retryable": ["ValueEror", "ValueError"]}
    policy = RetryPolicy.from_dict(stored)
    assert policy.non_retryable == ("ValueEror", "builtins.ValueError")
    assert RetryPolicy.from_dict(policy.to_dict()) == policy
    with pytest.raises(InvalidInput, match="did you mean 'ValueError'"):
        RetryPolicy(non_retryable=["ValueEror"])
    weird = type("Boom", (Exception,), {"__module__": "builtins"})  # (its errors carry it)
    assert RetryPolicy(non_retryable=[weird]).non_retryable == ("builtins.Boom",)
