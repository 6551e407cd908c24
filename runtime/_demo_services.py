"""Durable fake booking services for the demo and the crash tests, and their audit.

The travel-booking workflow (flight on ``airline``, hotel on ``hotels``, car on ``cars``)
runs against :class:`Service`: an idempotent remote service that appends every request,
fsync'd, to a log *before* answering it, so its effects survive a SIGKILL of the process
that calls it. :class:`Booking` is the agent over one service; which fault an attempt
meets is a function the caller passes in. :func:`audit` reads a store (read-only) and the
services' logs afterwards and lists every broken delivery guarantee: an effect applied
twice, a succeeded step whose effect is missing, a compensated step whose effect stands,
compensations out of order, a workflow that did not finish as expected.
"""

from __future__ import annotations

import json
import os
import pathlib
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from herder.actors import Agent, InstanceCrash, Permanent, StepContext
from herder.runtime._workflow import Workflow
from herder.store import RetryPolicy, StepRecord, StepState, Store, WorkflowState

SERVICES = {"flight": "airline", "hotel": "hotels", "car": "cars"}
"""Step name -> the agent (and service) that books it, in workflow order."""

Fault = Callable[[StepContext], "str | None"]
"""Decides the fault an attempt meets: None, or one of :data:`FAULTS`."""

FAULTS = ("before", "after", "hang", "crash", "slow")
"""``before``: the request never reaches the service (transient error); ``after``: the
service applied it but the answer is lost; ``hang``: the call blocks past the step
timeout; ``crash``: the agent instance dies; ``slow``: a few milliseconds of latency."""


def read_log(path: pathlib.Path) -> list[dict[str, Any]]:
    """Every complete request line of a service log (a torn last line was never answered)."""
    if not path.exists():
        return []
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    return [json.loads(line) for line in data[:end].splitlines()]


class Service:
    """An idempotent remote service: applies each key at most once, undoes it at most once.

    Every request is appended (fsync'd) to its log *before* it is answered, as one JSON
    line ``{key, op, effect, value, t}``: ``effect`` says whether this request changed
    the service's state; a repeated request is absorbed and answered with the first value.
    The state is rebuilt from the log when the process starts.
    """

    def __init__(self, name: str, path: pathlib.Path) -> None:
        self.name = name
        self._lock = threading.Lock()
        self._state: dict[str, dict[str, Any]] = {}
        for line in read_log(path):
            self._update(line)
        if path.exists():  # drop a torn tail left by a kill mid-write
            with path.open("rb+") as f:
                data = f.read()
                f.truncate(data.rfind(b"\n") + 1)
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._seq = sum(1 for s in self._state.values() if s.get("value") is not None)

    def _update(self, line: dict[str, Any]) -> None:
        if not line["effect"]:
            return
        entry = self._state.setdefault(line["key"], {})
        if line["op"] == "apply":
            entry["value"] = line["value"]
        else:
            entry["undone"] = True

    def request(self, key: str, op: str) -> Any:
        """Apply (``op="apply"``) or undo (``op="undo"``) the effect of ``key``, once."""
        with self._lock:
            entry = self._state.get(key, {})
            if op == "apply":
                effect = "value" not in entry
                value = f"{self.name}-{self._seq}" if effect else entry["value"]
            else:
                effect = "value" in entry and not entry.get("undone", False)
                value = None
            line = {"key": key, "op": op, "effect": effect, "value": value, "t": time.time_ns()}
            os.write(self._fd, (json.dumps(line) + "\n").encode())
            os.fsync(self._fd)
            self._update(line)
            if effect and op == "apply":
                self._seq += 1
            return value


def open_services(effects: pathlib.Path) -> dict[str, Service]:
    """One :class:`Service` per agent, logging under the directory ``effects``."""
    effects.mkdir(parents=True, exist_ok=True)
    return {agent: Service(agent, effects / f"{agent}.log") for agent in SERVICES.values()}


class Booking(Agent):
    """The agent over one booking service: ``book`` applies, ``cancel`` undoes.

    ``fault(ctx)`` picks the fault this attempt meets; ``sold_out(ctx)`` says the car step
    can never succeed for this workflow (it raises :class:`Permanent`, so the workflow
    compensates); a hung call blocks ``hang`` seconds.
    """

    def __init__(
        self,
        service: Service,
        fault: Fault,
        sold_out: Callable[[StepContext], bool],
        hang: float,
    ) -> None:
        self.service = service
        self.fault = fault
        self.sold_out = sold_out
        self.hang = hang

    def book(self, ctx: StepContext) -> Any:
        """Book this step's part of the trip."""
        if ctx.step == "car" and self.sold_out(ctx):
            raise Permanent(f"no cars left for {ctx.workflow_id}")
        return self._call(ctx, ctx.idempotency_key, "apply")

    def cancel(self, ctx: StepContext) -> None:
        """Undo this step's booking (the compensation)."""
        self._call(ctx, ctx.idempotency_key.removesuffix("/compensate"), "undo")

    def _call(self, ctx: StepContext, key: str, op: str) -> Any:
        kind = self.fault(ctx)
        if kind == "before":
            raise ConnectionError(f"{self.service.name} unreachable")
        if kind == "crash":
            raise InstanceCrash(f"{self.service.name} client crashed")
        if kind == "hang":
            threading.Event().wait(self.hang)
        elif kind == "slow":
            threading.Event().wait(0.003)
        value = self.service.request(key, op)
        if kind == "after":
            raise TimeoutError(f"{self.service.name} answer lost")
        return value


def travel_workflow(retry: RetryPolicy, timeout: float, name: str = "travel") -> Workflow:
    """Flight, then hotel, then car; each step undone by its agent's ``cancel``."""
    trip = Workflow(name, version=1)
    after: list[str] = []
    for step, agent in SERVICES.items():
        trip = trip.step(
            step,
            agent=agent,
            action="book",
            compensate="cancel",
            after=after,
            timeout=timeout,
            retry=retry,
        )
        after = [step]
    return trip


@dataclass
class _Key:
    """One idempotency key as the services saw it."""

    requests: Counter[str] = field(default_factory=Counter)  # op -> requests
    effects: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))  # op -> t
    value: Any = None


@dataclass
class Audit:
    """What :func:`audit` found: outcomes, counters and every broken guarantee."""

    workflows: set[str] = field(default_factory=set)
    outcome: Counter[str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)
    retries: int = 0  # attempts beyond the first, forward and compensating, from the store
    requests: int = 0
    effects: int = 0
    duplicated: int = 0
    unfinished: int = 0


def _service_keys(effects: pathlib.Path) -> dict[str, _Key]:
    keys: dict[str, _Key] = defaultdict(_Key)
    for agent in SERVICES.values():
        for line in read_log(effects / f"{agent}.log"):
            key = keys[line["key"]]
            key.requests[line["op"]] += 1
            if line["effect"]:
                key.effects[line["op"]].append(line["t"])
                if line["op"] == "apply":
                    key.value = line["value"]
    return keys


def audit(
    store_path: pathlib.Path,
    effects: pathlib.Path,
    expected: Callable[[str], WorkflowState],
) -> Audit:
    """Check the store (opened read-only) against the services' logs.

    ``expected(workflow_id)`` is the final state the workflow must reach: SUCCEEDED (all
    three effects stand) or COMPENSATED (car failed, hotel then flight undone).
    """
    keys = _service_keys(effects)
    a = Audit()
    with Store(store_path, readonly=True) as store:
        records = {r.id: r for r in store.workflows()}
        steps = {wid: {s.name: s for s in store.steps_of(wid)} for wid in records}
    a.workflows = set(records)
    for wid, record in sorted(records.items()):
        st = steps[wid]
        a.retries += sum(max(0, s.attempt - 1) + max(0, s.comp_attempt - 1) for s in st.values())
        a.outcome[record.state] += 1
        want = expected(wid)
        if record.state is not want:
            a.unfinished += not record.state.is_final
            a.problems.append(f"{wid}: {record.state} ({record.error}), expected {want}")
            continue
        for step in SERVICES:
            a.problems += _check_step(a, f"{wid}/{step}", st[step].state, st[step].result, keys)
        states = [st[s].state for s in SERVICES]
        if states[-1] is StepState.COMPENSATED and _maybe_applied(f"{wid}/car", steps):
            # An attempt of car before the Permanent one failed otherwise (unreachable,
            # answer lost): it may have taken effect, so car is undone too (checked above:
            # applied and undone, or a no-op).
            states[-1] = StepState.FAILED
        if record.state is WorkflowState.SUCCEEDED:
            if any(s is not StepState.SUCCEEDED for s in states):
                a.problems.append(f"{wid}: SUCCEEDED with steps {states}")
            continue
        if states != [StepState.COMPENSATED, StepState.COMPENSATED, StepState.FAILED]:
            a.problems.append(f"{wid}: COMPENSATED with steps {states}")
        hotel = keys[f"{wid}/hotel"].effects["undo"]
        flight = keys[f"{wid}/flight"].effects["undo"]
        if hotel and flight and not hotel[0] < flight[0]:
            a.problems.append(f"{wid}: flight undone before hotel")

    strays = sorted(k for k in keys if k.split("/", 1)[0] not in records)
    a.problems += [f"{k}: a service saw a key of no stored workflow" for k in strays]
    a.problems += [
        f"{k}: undo requested of a key never applied"
        for k, key in keys.items()
        if key.requests["undo"] and not key.effects["apply"] and not _maybe_applied(k, steps)
    ]
    a.requests = sum(sum(k.requests.values()) for k in keys.values())
    a.effects = sum(len(ts) for k in keys.values() for ts in k.effects.values())
    return a


def _maybe_applied(key_name: str, steps: dict[str, dict[str, StepRecord]]) -> bool:
    """Whether the store says the key's step may have taken effect though it failed (an
    attempt failed with something but Permanent): its undo is asked for, blind."""
    wid, _, step = key_name.rpartition("/")
    st = steps.get(wid, {}).get(step)
    return st is not None and not st.succeeded and st.done_token is not None


def _check_step(a: Audit, key_name: str, state: StepState, result: Any, keys: Any) -> list[str]:
    key = keys.get(key_name, _Key())
    applied, undone = key.effects["apply"], key.effects["undo"]
    if len(applied) > 1 or len(undone) > 1:
        a.duplicated += 1
        return [f"{key_name}: applied {len(applied)}x, undone {len(undone)}x"]
    if state is StepState.SUCCEEDED:
        if len(applied) != 1 or undone:
            return [f"{key_name}: SUCCEEDED but the service has {dict(key.effects)}"]
        if result != key.value:
            return [f"{key_name}: recorded {result!r}, the service {key.value!r}"]
    elif state is StepState.COMPENSATED:
        if not applied and not undone and key_name.endswith("/car"):
            return []  # undone blind: an attempt that failed may have taken effect (none did)
        if len(applied) != 1 or len(undone) != 1 or undone[0] < applied[0]:
            return [f"{key_name}: COMPENSATED but the service has {dict(key.effects)}"]
    elif applied and not undone:
        return [f"{key_name}: {state} yet its effect stands"]
    return []
