"""The running runtime's per-agent facts, published into the store for readers that cannot ask.

Concurrency, queue lengths, breaker state and rate limits live in the Scheduler's memory
(``rt.stats()``). The console (``herder ui``) and ``herder stats`` read only the store, so on
each Tick (every few seconds on the runtime's Clock, sent by the Supervisor's sweep) the
Scheduler hands its facts to :class:`FactsPublisher`, which writes them as one record in
``meta`` under :data:`FACTS_KEY` through the store writer (lease-guarded like every write).
A write costs a synced commit, so it happens only when the facts changed, or when the last
one is :data:`FACTS_REFRESH` seconds old: the record's age then says whether a runtime is still
publishing (older than :data:`FACTS_STALE`: none is).
"""

from __future__ import annotations

from typing import Any

from herder.actors._adaptive import Adaptive
from herder.actors._limits import CircuitBreaker, RateLimit
from herder.store import Put, Store, StoreCorrupt, Transition, encode, get_logger

_log = get_logger("herder.facts")

FACTS_KEY = b"agent_facts"
"""The ``meta`` key of the published facts."""
FACTS_REFRESH = 30.0
"""Seconds after which unchanged facts are written again (their timestamp renewed)."""
FACTS_STALE = 2 * FACTS_REFRESH
"""Facts older than this were not written by a live runtime."""
MAX_AGENTS = 200
"""At most this many agents are published (the busiest first): the record stays small."""


def agent_facts(
    hosted: dict[str, dict[str, int]],
    resources: dict[str, dict[str, Any]],
    limits: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    """Per agent name: its host's counters, its protection state and its configured limits,
    the busiest :data:`MAX_AGENTS` of them; ``total`` counts them all."""
    names = hosted.keys() | resources.keys() | limits.keys()

    def load(name: str) -> tuple[int, str]:
        row = hosted.get(name, {})
        return -(row.get("busy", 0) + row.get("queued", 0) + row.get("ahead", 0)), name

    kept = sorted(names, key=load)[:MAX_AGENTS]
    agents = {
        name: {**limits.get(name, {}), **hosted.get(name, {}), **resources.get(name, {})}
        for name in sorted(kept)
    }
    return {"agents": agents, "total": len(names)}


def limit_facts(
    concurrency: int,
    breaker: CircuitBreaker | None,
    rate: RateLimit | None,
    adaptive: Adaptive | None,
) -> dict[str, Any]:
    """An agent's configured limits, as published (an adaptive one's current ``limit``
    comes with the admission's stats)."""
    out: dict[str, Any] = {"concurrency": concurrency}
    if adaptive is not None:
        out["adaptive"] = f"{adaptive.min}..{adaptive.max}"
    if rate is not None:
        out["rate_per_second"] = rate.per_second
    if breaker is not None:
        out["breaker_after"] = breaker.failures
    return out


def parse_facts(data: Any) -> dict[str, Any]:
    """A published facts record, checked: a map with a number ``at`` and a map ``agents``
    of maps (else ValueError)."""
    if (
        not isinstance(data, dict)
        or not isinstance(data.get("at"), int | float)
        or not isinstance(data.get("agents"), dict)
        or not all(isinstance(row, dict) for row in data["agents"].values())
    ):
        raise ValueError("expected a map with a number 'at' and a map 'agents' of maps")
    return data


def read_facts(store: Store) -> dict[str, Any] | None:
    """The last published facts (``at``: when, in ``time.time()`` seconds), or None.

    Raises :class:`StoreCorrupt` if the record does not read as :func:`parse_facts` wants.
    """
    data = store.get("meta", FACTS_KEY)
    if data is None:
        return None
    try:
        return parse_facts(data)
    except ValueError as exc:
        raise StoreCorrupt("meta", FACTS_KEY, str(exc)) from exc


class FactsPublisher:
    """Decides when the Scheduler's facts are worth a write, and submits it."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._last: dict[str, Any] | None = None
        self._last_at = float("-inf")
        self.writes = 0

    def publish(self, facts: dict[str, Any], now: float) -> bool:
        """Write ``facts`` stamped ``now`` unless they equal the last ones written less than
        :data:`FACTS_REFRESH` seconds ago; True if a write was submitted."""
        if facts == self._last and now - self._last_at < FACTS_REFRESH:
            return False
        self._last, self._last_at = facts, now
        record = {"at": now, **facts}
        put = Put("meta", FACTS_KEY, encode(record))
        self._store.writer.submit_many([Transition(ops=(put,))], _log_errors)
        self.writes += 1
        return True


def _log_errors(errors: list[BaseException | None]) -> None:
    for error in errors:
        if error is not None:
            _log.warning("the agents' facts were not published: %s", error)
