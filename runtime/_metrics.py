"""Prometheus exposition of ``Runtime.stats()``, through the optional ``prometheus`` extra.

``prometheus-client`` is imported only when a collector is asked for, so the core
package does not depend on it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from herder.store._errors import HerderError


class MissingExtra(HerderError, ImportError):
    """An optional dependency is not installed; the message names the extra to install."""


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
            for name, value in snap["steps"].items():
                if name in ("active_workflows", "in_flight_attempts"):
                    yield GaugeMetricFamily(f"herder_{name}", f"Current {name}", value=value)
                else:
                    yield CounterMetricFamily(
                        f"herder_steps_{name}", f"Step attempts {name}", value=value
                    )
            for gauge in ("instances", "busy", "queued"):
                family = GaugeMetricFamily(
                    f"herder_agent_{gauge}", f"Agent {gauge} per agent name", labels=["agent"]
                )
                for agent, values in snap["agents"].items():
                    family.add_metric([agent], values[gauge])
                yield family
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
