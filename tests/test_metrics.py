"""Observability: the Prometheus collector and the log level setting."""

from __future__ import annotations

import itertools
import logging
import re
from pathlib import Path

import pytest
from _docs import ROOT
from prometheus_client import CollectorRegistry, generate_latest

from herder.runtime import Adaptive, Agent, Runtime, StepContext, Workflow
from herder.runtime.testing import FakeClock
from herder.store import Put, Store, Transition
from herder.store._keys import step_key


class Echo(Agent):
    def echo(self, ctx: StepContext) -> object:
        return ctx.input


def test_the_prometheus_collector_exposes_runtime_stats(tmp_path: Path) -> None:
    with Runtime(tmp_path / "s", clock=FakeClock()) as rt:
        rt.add_agent("echo", Echo)
        rt.add_workflow(Workflow("w").step("s", agent="echo", action="echo"))
        rt.start("w", 1).result(timeout=10)
        registry = CollectorRegistry()
        registry.register(rt.prometheus_collector())
        text = generate_latest(registry).decode()
    assert 'herder_workflows{state="SUCCEEDED"} 1.0' in text
    assert "herder_steps_succeeded_total 1.0" in text
    assert 'herder_agent_instances{agent="echo"} 1.0' in text
    assert 'herder_agent_ahead{agent="echo"} 0.0' in text  # a gauge per agent
    assert "herder_ahead 0.0" in text  # a gauge, not a counter (no _total)
    assert "herder_store_commits_total" in text


def test_a_scrape_counts_workflows_from_the_index_not_their_records(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every rt.stats() (every scrape) decoded every workflow record: ~4 s per million
    # workflows, a scrape every 15 s on a store that retention keeps for a week.
    with Runtime(tmp_path / "s", clock=FakeClock()) as rt:
        rt.add_agent("echo", Echo)
        rt.add_workflow(Workflow("w").step("s", agent="echo", action="echo"))
        for n in range(3):
            rt.start("w", n).result(timeout=10)

        def undecoded(*args: object, **kwargs: object) -> None:
            raise AssertionError("every workflow record was read")

        monkeypatch.setattr(rt._store, "workflows", undecoded)
        stats = rt.stats()
    assert stats["workflows"]["SUCCEEDED"] == 3
    assert sum(stats["workflows"].values()) == 3
    assert stats["corrupt"] == {}


def test_the_stored_limit_of_an_adaptive_agent_no_longer_served_does_not_fail_scrapes(
    tmp_path: Path,
) -> None:
    """An adaptive agent's limit is kept in its resource record, which outlives the agent
    (remove_agent, or a new version of the app that no longer registers it): stats() then
    shows that stored ``limit`` without the live ``limit_drops``, and the collector raised
    KeyError, failing every scrape of the registry it shares."""
    with Runtime(tmp_path / "s", clock=FakeClock()) as rt:
        rt.add_agent("echo", Echo, concurrency=Adaptive(min=1, max=4))
        rt.add_workflow(Workflow("w").step("s", agent="echo", action="echo"))
        rt.start("w", 1).result(timeout=10)
        registry = CollectorRegistry()
        registry.register(rt.prometheus_collector())
        assert 'herder_agent_concurrency_limit{agent="echo"}' in generate_latest(registry).decode()
        rt.remove_agent("echo")
        text = generate_latest(registry).decode()
        assert 'herder_agent_crashes_total{agent="echo"} 0.0' in text  # its record stays
        assert 'herder_agent_concurrency_limit{agent="echo"}' not in text  # served no more
    with Runtime(tmp_path / "s", clock=FakeClock()) as rt:  # the app without that agent
        assert "limit" in rt.stats()["resources"]["echo"]  # (the stored one)
        registry = CollectorRegistry()
        registry.register(rt.prometheus_collector())
        text = generate_latest(registry).decode()
        assert "herder_up 1.0" in text
        assert 'herder_agent_concurrency_limit{agent="echo"}' not in text


@pytest.mark.parametrize("level", [logging.DEBUG, "WARNING"])
def test_log_level_sets_the_herder_loggers_level_only(tmp_path: Path, level: int | str) -> None:
    logger = logging.getLogger("herder")
    before_level, before_handlers = logger.level, list(logger.handlers)
    try:
        with Runtime(tmp_path / "s", clock=FakeClock(), log_level=level):
            assert logger.level == logging.getLevelName(level) or logger.level == level
            assert logger.handlers == before_handlers  # no handler forced on the embedder
    finally:
        logger.setLevel(before_level)


def test_a_stopped_runtime_does_not_break_the_scrape(tmp_path: Path) -> None:
    rt = Runtime(tmp_path / "s", clock=FakeClock())
    registry = CollectorRegistry()
    registry.register(rt.prometheus_collector())
    assert "herder_up 1.0" in generate_latest(registry).decode()
    rt.stop()
    assert "herder_up 0.0" in generate_latest(registry).decode()


def test_workflows_awaiting_their_definition_and_corrupt_records_are_exposed(
    tmp_path: Path,
) -> None:
    """``rt.stats()`` counts workflows that wait for a definition no longer registered
    (a release that dropped or renamed it: they never run) and records the runtime could
    not read, but the collector exposed neither: an alert on Prometheus never fired."""
    name = 'order "v2"\\eu'  # (a user's name: escaped in the label)
    with Runtime(tmp_path / "s", clock=FakeClock()) as rt:
        rt.add_agent("echo", Echo)
        rt.add_workflow(Workflow(name).step("s", agent="echo", action="echo"))
        rt.start(name, 1, workflow_id="w", delay=60.0)
        rt.start(name, 2, workflow_id="damaged", delay=60.0)
    with Store(tmp_path / "s") as store:  # a step record damaged behind the runtime's back
        store.writer.submit(
            Transition(ops=(Put("steps", step_key("damaged", "s"), b"\xc1garbage"),))
        ).result(timeout=10)
    with Runtime(tmp_path / "s", clock=FakeClock()) as rt:  # the release without it
        registry = CollectorRegistry()
        registry.register(rt.prometheus_collector())
        text = generate_latest(registry).decode()
        stats = rt.stats()
    assert stats["awaiting_definition"] == {f"{name}@1": 1}
    assert len(stats["corrupt"]) == 1
    assert 'herder_awaiting_definition{definition="order \\"v2\\"\\\\eu@1"} 1.0' in text
    assert "herder_corrupt_records 1.0" in text


def _documented_metrics() -> list[str]:
    """The metric names docs/operations.md's Prometheus section lists, as regexes:
    `herder_agent_{busy,queued}{agent}` is two names (a trailing {label} is no part of
    one), `herder_steps_<counter>_total` any counter's."""
    text = (ROOT / "docs" / "operations.md").read_text()
    section = text.split("### Prometheus", 1)[1].split("\n## ", 1)[0]
    names = []
    for span in re.findall(r"`(herder_[^`]*)`", section):
        name = re.sub(r"\{[a-z]+\}$", "", span)
        parts = [p.split(",") for p in re.split(r"\{([a-z_,]+)\}", name)]
        for chosen in itertools.product(*parts):
            names.append(re.sub(r"<[a-z]+>", "[a-z_]+", "".join(chosen)))
    return names


def test_the_docs_list_every_metric_the_collector_exposes(tmp_path: Path) -> None:
    # operations.md's list is where a user looks for what to alert on; it left out the
    # health and adaptive-limit families that protection.md and failover.md name.
    with Runtime(tmp_path / "s", clock=FakeClock()) as rt:
        exposed = {
            family.name + ("_total" if family.type == "counter" else "")
            for family in rt.prometheus_collector().collect()
        }
    documented = _documented_metrics()
    assert len(exposed) > 20  # the collect() above still yields the families
    assert sorted(n for n in exposed if not any(re.fullmatch(d, n) for d in documented)) == []
    assert [d for d in documented if not any(re.fullmatch(d, n) for n in exposed)] == []
