"""Prometheus exposition of ``Runtime.stats()``, through the optional ``prometheus`` extra.

``prometheus-client`` is imported only when a collector is asked for, so the core
package does not depend on it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from herder.store import MissingExtra


def stats_collector(stats: Callable[[], dict[str, Any]]) -> Any:
    """A prometheus-client collector that reads ``stats()`` at every scrape."""
    try:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
    except ImportError as exc:
        raise MissingExtra(
            "Prometheus exposition needs prometheus-client: pip install 'herder[prometheus]'"
        ) from exc

    class _StatsCollector:
        """Maps one stats() snapshot to herder_* metric families."""

        def collect(self) -> Iterator[Any]:
            try:
                snap = stats()
            except Exception:
                # A stopped runtime must not fail the whole scrape of a shared registry.
                yield GaugeMetricFamily("herder_up", "1 if the runtime answered", value=0)
                return
            yield GaugeMetricFamily("herder_up", "1 if the runtime answered", value=1)
            workflows = GaugeMetricFamily(
                "herder_workflows", "Workflows in the store by state", labels=["state"]
            )
            for state, count in snap["workflows"].items():
                workflows.add_metric([str(state)], count)
            yield workflows
            awaiting = GaugeMetricFamily(
                "herder_awaiting_definition",
                "Unfinished workflows that wait for their definition (name@version) to be "
                "registered: none of them runs until it is",
                labels=["definition"],
            )
            for definition, count in snap["awaiting_definition"].items():
                awaiting.add_metric([definition], count)
            yield awaiting
            yield GaugeMetricFamily(
                "herder_corrupt_records",
                "Records the runtime could not read; their workflows stay where they are",
                value=len(snap["corrupt"]),
            )
            for name, value in snap["steps"].items():
                if name in ("active_workflows", "dormant_workflows", "in_flight_attempts", "ahead"):
                    yield GaugeMetricFamily(f"herder_{name}", f"Current {name}", value=value)
                else:
                    yield CounterMetricFamily(
                        f"herder_steps_{name}", f"Step attempts {name}", value=value
                    )
            for gauge in ("instances", "busy", "queued", "ahead"):
                family = GaugeMetricFamily(
                    f"herder_agent_{gauge}", f"Agent {gauge} per agent name", labels=["agent"]
                )
                for agent, values in snap["agents"].items():
                    family.add_metric([agent], values.get(gauge, 0))
                yield family
            yield from _resource_families(
                snap.get("resources", {}), GaugeMetricFamily, CounterMetricFamily
            )
            store = snap["store"]
            yield CounterMetricFamily(
                "herder_store_commits", "Durable commits (batches)", value=store["batches"]
            )
            yield CounterMetricFamily(
                "herder_store_transitions", "Committed transitions", value=store["transitions"]
            )
            yield GaugeMetricFamily(
                "herder_store_mean_batch", "Mean transitions per commit", value=store["mean_batch"]
            )
            restarts = CounterMetricFamily(
                "herder_restarts", "Restarts of the runtime's actors", labels=["child"]
            )
            for child, count in snap["restarts"].items():
                restarts.add_metric([child], count)
            yield restarts

    return _StatsCollector()


_BREAKER_VALUES = {"CLOSED": 0, "HALF_OPEN": 1, "OPEN": 2}


def _resource_families(resources: dict[str, dict[str, Any]], gauge: Any, counter: Any) -> Any:
    """Per-agent protection: breaker state (0 closed, 1 half-open, 2 open), the adaptive
    concurrency limit (agents served with ``Adaptive`` concurrency; a resource record
    also keeps the limit of one removed or no longer registered so), health (agents
    with health checks) and counters."""
    limit = gauge(
        "herder_agent_concurrency_limit",
        "Adaptive concurrency limit per agent: attempts admitted at once now",
        labels=["agent"],
    )
    state = gauge(
        "herder_breaker_state",
        "Circuit breaker per agent: 0 closed, 1 half-open, 2 open",
        labels=["agent"],
    )
    healthy = gauge(
        "herder_agent_healthy",
        "Health check per agent (agents that define health()): 1 passed, 0 failed",
        labels=["agent"],
    )
    counters = {
        name: counter(f"herder_agent_{name}", help_text, labels=["agent"])
        for name, help_text in (
            ("breaker_opens", "Times the agent's circuit breaker opened"),
            ("crashes", "Agent instance crashes (kept in the store across restarts)"),
            ("lost", "Attempts lost to a process restart (kept in the store)"),
            ("throttled", "Dispatches held back by the breaker, rate or concurrency limit"),
            ("limit_drops", "Attempts that made the adaptive concurrency limit back off"),
            ("health_failures", "Failed health checks (an exception or a timeout)"),
        )
    }
    for agent, values in resources.items():
        state.add_metric([agent], _BREAKER_VALUES.get(values["breaker"], 0))
        counters["breaker_opens"].add_metric([agent], values["opens"])
        counters["crashes"].add_metric([agent], values["crashes"])
        counters["lost"].add_metric([agent], values["lost"])
        counters["throttled"].add_metric([agent], values.get("throttled", 0))
        if "limit_drops" in values:  # served as Adaptive now ("limit" alone: a stored one)
            limit.add_metric([agent], values["limit"])
            counters["limit_drops"].add_metric([agent], values["limit_drops"])
        if "healthy" in values:
            healthy.add_metric([agent], int(values["healthy"]))
            counters["health_failures"].add_metric([agent], values["health_failures"])
    yield state
    yield healthy
    yield limit
    yield from counters.values()
