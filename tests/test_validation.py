"""Early validation: names checked when a workflow is added or at the latest started,
and a definition may be replaced under its version until a workflow of it started."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from herder.runtime import (
    Agent,
    InvalidDefinition,
    InvalidInput,
    Runtime,
    StepContext,
    UnknownName,
    Workflow,
)
from herder.runtime.testing import check_store
from herder.store import Store

WAIT = 30.0


class Shop(Agent):
    def buy(self, ctx: StepContext) -> str:
        return "bought"

    def refund(self, ctx: StepContext) -> None:
        pass


def order(action: str = "buy", compensate: str | None = "refund") -> Workflow:
    return Workflow("order").step("pay", agent="shop", action=action, compensate=compensate)


def test_a_misspelt_action_of_a_registered_agent_is_refused_when_added(tmp_path: Path) -> None:
    with Runtime(tmp_path / "s") as rt:
        rt.add_agent("shop", Shop)
        with pytest.raises(UnknownName, match="has no action 'by' \\(it has: buy, refund\\)"):
            rt.add_workflow(order(action="by"))
        with pytest.raises(UnknownName, match="has no action 'refnud'"):
            rt.add_workflow(order(compensate="refnud"))
        assert rt._store.count("definitions") == 0  # nothing stored


def test_a_step_naming_an_unregistered_agent_is_refused_at_start_with_the_known_names(
    tmp_path: Path,
) -> None:
    with Runtime(tmp_path / "s") as rt:
        rt.add_agent("shop", Shop)
        rt.add_workflow(Workflow("w").step("pay", agent="shpo", action="buy"))  # may come later
        with pytest.raises(UnknownName, match=r"needs agent 'shpo'.*registered: shop"):
            rt.start("w")
        assert rt.list() == []


def test_a_definition_is_replaced_under_its_version_until_a_workflow_of_it_started(
    tmp_path: Path,
) -> None:
    path = tmp_path / "s"
    with Runtime(path) as rt:
        rt.add_agent("shop", Shop)
        rt.add_workflow(Workflow("order").step("pay", agent="shop", action="refund"))  # a slip
        rt.add_workflow(order())  # fixed under the same version: nothing ran under the slip
        assert rt.start("order", workflow_id="o1").result(timeout=WAIT) == {"pay": "bought"}
        with pytest.raises(InvalidDefinition, match="workflows of it have started"):
            rt.add_workflow(order(compensate=None))
    with Runtime(path) as rt:  # the mark is durable
        rt.add_agent("shop", Shop)
        with pytest.raises(InvalidDefinition, match="new version"):
            rt.add_workflow(order(compensate=None))
        rt.add_workflow(order())  # the same definition again is fine


@pytest.mark.timeout(60)
def test_a_replacement_racing_the_first_start_is_refused_in_its_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """add_workflow looked for the started mark, a first start landed, and then it wrote
    its changed definition over the one that workflow had started under."""
    with Runtime(tmp_path / "s") as rt:
        rt.add_agent("shop", Shop)
        rt.add_workflow(order())
        looked = rt._ever_started

        def then_started(plan: Any) -> bool:
            found = looked(plan)
            rt.start("order", workflow_id="o1").result(timeout=WAIT)  # lands meanwhile
            return found

        monkeypatch.setattr(rt, "_ever_started", then_started)
        with pytest.raises(InvalidDefinition, match="workflows of it have started"):
            rt.add_workflow(order(compensate=None))
        assert rt._store.get_plan("order", 1) == order().compile()  # what o1 runs
        assert rt._ctx.plans[("order", 1)] == order().compile()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("call", ["start", "start_many"])
def test_a_first_start_prepared_before_a_replacement_is_refused_not_run_on_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, call: str
) -> None:
    """A start checked its input and agents against the old steps; the replacement
    landed; the start then created its workflow, which ran the new steps."""
    with Runtime(tmp_path / "s") as rt:
        rt.add_agent("shop", Shop)
        rt.add_workflow(Workflow("order").step("pay", agent="shop", action="refund"))  # a slip
        prepare = rt._prepare

        def then_fixed(*args: Any, **kwargs: Any) -> Any:
            new = prepare(*args, **kwargs)
            rt.add_workflow(order())  # the fix lands while the start is being made
            return new

        monkeypatch.setattr(rt, "_prepare", then_fixed)
        calls = {
            "start": lambda: rt.start("order", workflow_id="o1"),
            "start_many": lambda: rt.start_many([{"workflow": "order", "workflow_id": "o1"}]),
        }
        with pytest.raises(InvalidDefinition, match="registered again with other steps"):
            calls[call]()
        monkeypatch.undo()
        assert rt.list() == []  # nothing was started
        assert rt.start("order", workflow_id="o1").result(timeout=WAIT) == {"pay": "bought"}


class Till(Agent):  # a shop without refunds
    def buy(self, ctx: StepContext) -> str:
        return "bought"


def test_a_start_looks_at_the_agents_again_after_they_were_removed_or_replaced(
    tmp_path: Path,
) -> None:
    # start() remembers that a definition's agents were registered; add_agent and
    # remove_agent make it look again.
    with Runtime(tmp_path / "s") as rt:
        rt.add_agent("shop", Shop)
        rt.add_workflow(order())
        rt.start("order", workflow_id="o1", delay=3600)
        rt.remove_agent("shop")
        with pytest.raises(UnknownName, match=r"needs agent 'shop'.*registered: none"):
            rt.start("order", workflow_id="o2", delay=3600)
        with pytest.raises(UnknownName, match=r"needs agent 'shop'"):
            rt.start_many([{"workflow": "order", "workflow_id": "o3", "delay": 3600}])
        rt.add_agent("shop", Till)
        with pytest.raises(UnknownName, match=r"has no action 'refund'"):
            rt.start("order", workflow_id="o4", delay=3600)
        rt.add_agent("shop", Shop)
        rt.start("order", workflow_id="o5", delay=3600)
        assert sorted(s.id for s in rt.list()) == ["o1", "o5"]


def test_a_workflow_object_starts_its_own_version_and_a_name_the_latest(tmp_path: Path) -> None:
    v1 = Workflow("order", version=1).step("pay", agent="shop", action="buy")
    v2 = Workflow("order", version=2).step("pay", agent="shop", action="buy")
    v2 = v2.step("receipt", agent="shop", action="buy", after=["pay"])
    with Runtime(tmp_path / "s") as rt:
        rt.add_agent("shop", Shop)
        rt.add_workflow(v1)
        rt.add_workflow(v2)
        by_object = rt.start(v1, workflow_id="old")
        by_name = rt.start("order", workflow_id="new")
        assert by_object.result(timeout=WAIT) == {"pay": "bought"}
        assert by_name.result(timeout=WAIT) == {"pay": "bought", "receipt": "bought"}
        assert (rt.status("old").version, rt.status("new").version) == (1, 2)
        v3 = Workflow("order", version=3).step("pay", agent="shop", action="buy")
        with pytest.raises(UnknownName, match=r"version 3 is not registered \(registered "):
            rt.start(v3)
        with pytest.raises(UnknownName, match=r"version 3 is not registered"):
            rt.start_many([{"workflow": v3}])
        # An object of a registered name and version with other steps (another object, or
        # the registered builder grown since) ran the registered steps without a word.
        other = Workflow("order", version=1).step("refund", agent="shop", action="buy")
        grown = v1.step("receipt", agent="shop", action="buy", after=["pay"])
        for changed in (other, grown):
            with pytest.raises(InvalidDefinition, match="is not the definition registered"):
                rt.start(changed)
            with pytest.raises(InvalidDefinition, match="is not the definition registered"):
                rt.start_many([{"workflow": changed}])
        assert sorted(s.id for s in rt.list()) == ["new", "old"]


def test_an_unregistered_agent_among_many_says_how_many_are_not_listed(tmp_path: Path) -> None:
    with Runtime(tmp_path / "s") as rt:
        for i in range(25):
            rt.add_agent(f"shop-{i:02d}", Shop)
        rt.add_workflow(Workflow("w").step("pay", agent="shpo", action="buy"))
        with pytest.raises(UnknownName, match=r"registered: shop-00, .*, shop-19 and 5 more\)"):
            rt.start("w")


def test_names_in_any_script_are_names_and_only_control_characters_are_refused(
    tmp_path: Path,
) -> None:
    """A no-break space, an emoji's joiner, a right-to-left mark or a soft hyphen are
    part of real names (and names stored before the check may hold them)."""
    names = ["Zürich\u00a0HQ", "dev-\U0001f469\u200d\U0001f4bb", "\u05e9\u05dc\u200f", "da\u00adta"]
    with Runtime(tmp_path / "s") as rt:
        for name in names:
            rt.add_agent(name, Shop)
            rt.add_workflow(Workflow(name).step("pay", agent=name, action="buy"))
            assert rt.start(name).result(timeout=WAIT) == {"pay": "bought"}
        for bad in ("a\nb", "a\tb", "a\u2028b", "a\x85b"):
            with pytest.raises(InvalidInput, match="NUL, newline or other control character"):
                rt.add_agent(bad, Shop)


def test_workflows_whose_ids_and_steps_share_slashes_apply_their_own_effects(
    tmp_path: Path,
) -> None:
    # Workflow "order/1" step "1/charge" and workflow "order/1/1" step "charge" had one
    # idempotency key: a service deduplicating by it answered the second with the first's
    # result and never applied the second's charge (the workflow definition review, #2).
    from herder.runtime.testing import EffectLedger

    ledger = EffectLedger()

    class Bank(Agent):
        def charge(self, ctx: StepContext) -> Any:
            return ledger.apply(ctx.idempotency_key, {"for": ctx.workflow_id})

    with Runtime(tmp_path / "s") as rt:
        rt.add_agent("bank", Bank)
        rt.add_workflow(Workflow("a").step("1/charge", agent="bank", action="charge"))
        rt.add_workflow(Workflow("b").step("charge", agent="bank", action="charge"))
        first = rt.start("a", workflow_id="order/1").result(timeout=WAIT)
        second = rt.start("b", workflow_id="order/1/1").result(timeout=WAIT)
    assert first == {"1/charge": {"for": "order/1"}}
    assert second == {"charge": {"for": "order/1/1"}}


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ({(1, 2): "x"}, "map key (1, 2) is of type tuple"),  # not "list", as msgpack made it
        ({"a": [{"b": {None: 1}}]}, "map key None is of type NoneType"),
        ({1: "x"}, "map key 1 is of type int"),
    ],
)
def test_an_input_with_a_key_that_is_no_str_names_the_key_as_written(
    tmp_path: Path, value: Any, says: str
) -> None:
    # "list is not allowed for map key when strict_map_key=True" said msgpack's words
    # about a tuple key (the workflow review, session 14).
    from herder.runtime import EncodeError

    with Runtime(tmp_path / "s") as rt:
        rt.add_workflow(Workflow("w").step("s", agent="svc", action="go"))
        with pytest.raises(EncodeError) as refused:
            rt.start("w", value)
    assert f"input cannot be stored: {says}; map keys must be str" in str(refused.value)


@pytest.mark.timeout(30)
def test_an_agent_named_like_the_worker_pool_is_refused_with_what_to_do(tmp_path: Path) -> None:
    # The pool host reads every event of agent "*pool" as news of its worker pool: an
    # agent so named lost its instances' crashes (its attempts never reported lost).
    with Runtime(tmp_path / "s") as rt:
        with pytest.raises(InvalidInput, match=r"'\*pool' is reserved.*choose another name"):
            rt.add_agent("*pool", Shop)
        rt.add_agent("pool", Shop)  # (only the pool's own name is taken)
        rt.add_workflow(Workflow("w").step("pay", agent="pool", action="buy"))
        assert rt.start("w").result(timeout=WAIT) == {"pay": "bought"}


@pytest.mark.timeout(60)
def test_a_start_of_a_replaced_definition_is_run_on_the_steps_it_was_made_with(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """add_workflow told the Scheduler the replaced steps (Define) while an outcome's drain
    was already in its inbox; the next start, taken up early, joined that drain and so
    came first: the Scheduler ran it on the old steps and crashed (KeyError 'ship'), and
    four such crashes stop the runtime."""
    from herder.actors._scheduler import Scheduler

    held, release = threading.Event(), threading.Event()
    on_define = Scheduler._on_define

    def holding(scheduler: Scheduler, message: Any) -> None:
        if message.plan.name == "hold":  # the Scheduler waits here; messages queue behind
            held.set()
            release.wait(WAIT)
        on_define(scheduler, message)

    monkeypatch.setattr(Scheduler, "_on_define", holding)
    slip = (
        Workflow("order")
        .step("pay", agent="shop", action="buy")
        .step("ship", agent="shop", action="buy", after=["pay"])
    )
    fixed = (
        Workflow("order")
        .step("pay", agent="shop", action="buy")
        .step("pack", agent="shop", action="refund", after=["pay"])
    )
    with Runtime(tmp_path / "s") as rt:
        rt.add_agent("shop", Shop)
        rt.add_workflow(Workflow("other").step("pay", agent="shop", action="buy"))
        rt.add_workflow(slip)
        scheduler = rt._ctx.scheduler
        rt.add_workflow(Workflow("hold").step("pay", agent="shop", action="buy"))
        assert held.wait(WAIT)
        other = rt.start("other")  # taken up early: a drain is in the inbox for it
        rt.add_workflow(fixed)  # (no workflow of the slip started: replaced)
        order = rt.start("order")  # taken up early, after the Define of the fixed steps
        release.set()
        assert order.result(timeout=WAIT) == {"pay": "bought", "pack": None}
        assert other.result(timeout=WAIT) == {"pay": "bought"}
        assert rt._ctx.scheduler is scheduler  # never crashed


@pytest.mark.timeout(60)
@pytest.mark.parametrize("call", ["start", "start_many"])
def test_a_start_prepared_before_a_replacement_is_refused_after_one_of_the_new_steps_landed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, call: str
) -> None:
    """As above, but a start of the fixed steps landed first: the late one writes no started
    mark (one is written), so nothing looked at its steps and it created a workflow of
    the slip's steps under a version whose stored definition has others (the Scheduler
    ran it on the fixed steps, or crashed on a step the slip lacks)."""
    with Runtime(tmp_path / "s") as rt:
        rt.add_agent("shop", Shop)
        rt.add_workflow(Workflow("order").step("pay", agent="shop", action="refund"))  # a slip
        prepare = rt._prepare

        def then_fixed_and_started(*args: Any, **kwargs: Any) -> Any:
            new = prepare(*args, **kwargs)
            monkeypatch.setattr(rt, "_prepare", prepare)  # (once)
            rt.add_workflow(order())  # the fix lands while the start is being made...
            assert rt.start("order", workflow_id="o1").result(timeout=WAIT) == {"pay": "bought"}
            return new  # ...and a start of it, which wrote the started mark

        monkeypatch.setattr(rt, "_prepare", then_fixed_and_started)
        calls = {
            "start": lambda: rt.start("order", workflow_id="o2"),
            "start_many": lambda: rt.start_many([{"workflow": "order", "workflow_id": "o2"}]),
        }
        with pytest.raises(InvalidDefinition, match="registered again with other steps"):
            calls[call]()
        assert [s.id for s in rt.list()] == ["o1"]  # nothing else was started
        assert rt.start("order", workflow_id="o2").result(timeout=WAIT) == {"pay": "bought"}
    with Store(tmp_path / "s", readonly=True) as store:
        assert check_store(store).problems == []
