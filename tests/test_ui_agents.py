"""The running runtime's agent facts: published into the store, shown by the console.

Concurrency, instances, queues and limits live in the Scheduler's memory; on the sweep's
Tick (on the runtime's Clock) it writes them to ``meta`` when they changed, and the
console's agents page shows them with their age, marked stale once no runtime renews them.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from _http_kit import request

from herder.actors import FACTS_KEY, FACTS_REFRESH, FACTS_STALE, read_facts
from herder.runtime import Adaptive, Agent, AnyOf, RateLimit, Runtime, StepContext, Workflow
from herder.runtime._check import check_store
from herder.runtime._inspect import show_stats
from herder.runtime.testing import FakeClock, advance, settle
from herder.runtime.ui import Console
from herder.runtime.ui._pages import agents_page
from herder.store import Put, Store, Transition, encode

HOSTILE = '<img src=x onerror="alert(1)">'
START = 1_700_000_000.0


class Echo(Agent):
    def run(self, ctx: StepContext) -> object:
        return ctx.input


def published_at(rt: Runtime) -> float | None:
    facts = read_facts(rt._store)
    return None if facts is None else facts["at"]


def test_the_runtime_publishes_its_agent_facts_on_its_clock_and_only_when_they_change(
    tmp_path: Path,
) -> None:
    clock = FakeClock(start=START)
    with Runtime(tmp_path / "s", clock=clock) as rt:
        rt.add_agent("echo", Echo, concurrency=3, rate_limit=RateLimit(per_second=50.0))
        rt.add_agent(HOSTILE, Echo)
        rt.add_agent("adapt", Echo, concurrency=Adaptive(min=1, max=8))
        rt.add_workflow(Workflow("w").step("a", agent="echo", action="run"))
        rt.start("w", 1).result(timeout=10)
        settle(rt)
        assert read_facts(rt._store) is None  # nothing before the first tick
        advance(rt, clock, 6.0)  # past the sweep's tick
        facts = read_facts(rt._store)
        assert facts is not None
        assert facts["at"] == START + 6.0
        echo = facts["agents"]["echo"]
        assert echo["concurrency"] == 3
        assert echo["rate_per_second"] == 50.0
        assert echo["instances"] == 1
        assert echo["queued"] == 0
        assert echo["ahead"] == 0  # attempts recorded ahead of a free instance
        assert echo["busy"] == 0
        assert facts["agents"][HOSTILE]["concurrency"] == 1
        assert facts["agents"]["adapt"]["adaptive"] == "1..8"
        assert facts["agents"]["adapt"]["limit"] == 1  # its current limit, from the admission
        assert facts["total"] == 3
        advance(rt, clock, 6.0)  # unchanged: not written again (a write renews "at")
        assert published_at(rt) == START + 6.0
        advance(rt, clock, FACTS_REFRESH)  # unchanged, but old: renewed
        at = published_at(rt)
        assert at is not None
        assert at > START + 6.0 + FACTS_REFRESH - 1
        rt.add_agent("late", Echo, concurrency=2)  # a change: published at the next tick
        advance(rt, clock, 6.0)
        facts = read_facts(rt._store)
        assert facts is not None
        assert facts["agents"]["late"]["concurrency"] == 2
        assert facts["at"] > at
    with Store(tmp_path / "s", readonly=True) as store:
        report = check_store(store)
        text, data = io.StringIO(), io.StringIO()
        show_stats(text, store, as_json=False)
        show_stats(data, store, as_json=True)
    assert report.ok, report.problems
    # `herder stats` shows them too; published on a clock years behind the wall: stale.
    assert "agents (live, published" in text.getvalue()
    assert "STALE" in text.getvalue()
    assert json.loads(data.getvalue())["live"]["agents"]["late"]["concurrency"] == 2


def test_the_agents_page_shows_the_facts_escaped_with_their_age_and_staleness(
    tmp_path: Path,
) -> None:
    clock = FakeClock(start=START)
    with Runtime(tmp_path / "s", clock=clock) as rt:
        rt.add_agent(HOSTILE, Echo, concurrency=4)
        rt.add_workflow(Workflow("w").step("a", agent=HOSTILE, action="run"))
        rt.start("w", 1).result(timeout=10)
        advance(rt, clock, 6.0)
        facts = read_facts(rt._store)
        at = clock.time()
    assert facts is not None
    used = {HOSTILE: ["w@1"]}
    fresh = agents_page({"resources": {}, "running": True}, used, facts, at + 2.0)
    assert HOSTILE not in fresh
    assert "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in fresh
    assert "<td>4</td>" in fresh  # concurrency
    assert "(2 s ago)" in fresh
    assert "Stale" not in fresh
    later = at + FACTS_STALE + 1.0  # the clock moved on and nobody published
    stale = agents_page({"resources": {}, "running": True}, used, facts, later)
    assert "Stale" in stale
    assert f"({FACTS_STALE + 1.0:.0f} s ago)" in stale
    stopped = agents_page({"resources": {}, "running": False}, used, facts, at + 2.0)
    assert "Stale" in stopped  # no runtime holds the store: nobody renews them
    never = agents_page({"resources": {}}, used, None, at)
    assert "No runtime has published" in never


def test_the_agents_page_reads_facts_an_older_runtime_published_and_a_stopped_ones_age() -> None:
    # Facts published before they counted every agent have no "total": the page said
    # "the 2 busiest of 0 agents" (`herder stats` says nothing of it). And when no
    # runtime held the store, facts 2 s old were said unrenewed "for over 60 s".
    facts = {"at": START, "agents": {"a": {"concurrency": 1}, "b": {"concurrency": 2}}}
    old = agents_page({"resources": {}, "running": True}, {}, facts, START + 2.0)
    assert "busiest" not in old
    assert "Stale" not in old
    stopped = agents_page({"resources": {}, "running": False}, {}, facts, START + 2.0)
    assert "Stale" in stopped
    assert "(2 s ago)" in stopped
    assert f"for over {FACTS_STALE:.0f} s" not in stopped
    assert "No runtime holds the store" in stopped
    cut = {**facts, "total": 250}
    assert "the 2 busiest of 250 agents" in agents_page({"running": True}, {}, cut, START)


def test_check_names_a_corrupt_facts_record(tmp_path: Path) -> None:
    with Runtime(tmp_path / "s", clock=FakeClock(start=START)):
        pass
    with Store(tmp_path / "s") as store:
        put = Put("meta", FACTS_KEY, encode({"at": "yesterday", "agents": []}))
        store.writer.submit(Transition(ops=(put,))).result(timeout=10)
    with Store(tmp_path / "s", readonly=True) as store:
        problems = [(p.db, p.key) for p in check_store(store).problems]
    assert problems == [("meta", FACTS_KEY)]


def test_herder_stats_says_when_it_shows_only_the_busiest_agents(tmp_path: Path) -> None:
    # The runtime publishes its 200 busiest agents; with thousands of per-device agents
    # `herder stats` printed 200 rows with nothing to say that the others were left out.
    clock = FakeClock(start=START)
    with Runtime(tmp_path / "s", clock=clock) as rt:
        for i in range(250):
            rt.add_agent(f"device:{i}", Echo)
        advance(rt, clock, 6.0)
        facts = read_facts(rt._store)
        assert facts is not None
        assert (len(facts["agents"]), facts["total"]) == (200, 250)
        out = io.StringIO()
        show_stats(out, rt._store, as_json=False)
    assert "the 200 busiest of 250 agents" in out.getvalue()


@pytest.mark.timeout(60)
def test_the_agents_page_names_every_member_of_an_any_of_group_a_definition_uses(
    tmp_path: Path,
) -> None:
    # Only the group's first member was listed: "airline-us", which the workflow uses as
    # much, showed no user, or no row at all while no runtime published facts.
    with Runtime(tmp_path / "s", clock=FakeClock(start=START)) as rt:
        rt.add_agent("airline-eu", Echo)
        rt.add_agent("airline-us", Echo)
        rt.add_workflow(
            Workflow("trip").step("f", agent=AnyOf("airline-eu", "airline-us"), action="run")
        )
    console = Console(str(tmp_path / "s"), port=0, token="t", wait=0.5)
    console.start()
    try:
        _, _, html = request(console, "GET", "/agents")
    finally:
        console.shutdown()
    assert "<td>airline-eu</td><td>trip@1</td>" in html
    assert "<td>airline-us</td><td>trip@1</td>" in html
