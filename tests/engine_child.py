"""Subprocess side of the engine's crash tests (run as a script; the test imports only
:func:`read_log` and :data:`SERVICES` from it).

    engine_child.py STORE EFFECTS LO HI SEED

opens ``Runtime(STORE)`` and runs travel-booking workflows ``w-LO`` .. ``w-(HI-1)`` (flight
on ``airline``, hotel on ``hotels``, car on ``cars``; DESIGN.md seed 004) against
idempotent fake services that keep their state in append-only logs under ``EFFECTS``.
Starting is idempotent, so a restarted child simply starts its whole range again.

stdout, one line each, flushed: ``start w-N`` once ``start()`` returned (acknowledged),
``done w-N STATE`` once the workflow's outcome is known, ``stuck w-N STATE STEPS...`` for
one still unfinished after ``WAIT`` seconds, ``finished`` at the end.

Faults: ~5% of requests fail before reaching the service, ~5% after the service applied
them (the answer is lost, so the retry must be absorbed), ~0.5% hang past the step
timeout; the car step fails permanently for every ``n % 7 == 0``, so those workflows
compensate (hotel, then flight).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import pathlib
import random
import sys
import threading
import time
from typing import Any

SERVICES = {"flight": "airline", "hotel": "hotels", "car": "cars"}
STEP_TIMEOUT = 2.0
HANG = 2.5  # seconds a hung request blocks: longer than STEP_TIMEOUT
WAIT = 30.0  # seconds a run waits for all its workflows before reporting the stuck ones


def permanent_failure(n: int) -> bool:
    """The deterministic subset of workflows whose car booking can never succeed."""
    return n % 7 == 0


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


def main(store: str, effects: str, lo: int, hi: int, seed: int) -> None:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    from herder.runtime import (
        Agent,
        Permanent,
        RetryPolicy,
        Runtime,
        StepContext,
        Workflow,
        WorkflowFailed,
    )

    rng = random.Random(seed)
    rng_lock = threading.Lock()
    out_lock = threading.Lock()

    def say(line: str) -> None:
        with out_lock:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()

    def fault() -> str | None:
        with rng_lock:
            r = rng.random()
        if r < 0.05:
            return "before"
        if r < 0.10:
            return "after"
        if r < 0.105:
            return "hang"
        return None

    class Booking(Agent):
        def __init__(self, service: Service) -> None:
            self.service = service

        def book(self, ctx: StepContext) -> Any:
            if ctx.step == "car" and permanent_failure(ctx.input["n"]):
                raise Permanent(f"no cars left for {ctx.workflow_id}")
            return self._call(ctx, ctx.idempotency_key, "apply")

        def cancel(self, ctx: StepContext) -> None:
            self._call(ctx, ctx.idempotency_key.removesuffix("/compensate"), "undo")

        def _call(self, ctx: StepContext, key: str, op: str) -> Any:
            kind = fault()
            if kind == "before":
                raise ConnectionError(f"{self.service.name} unreachable")
            if kind == "hang":
                threading.Event().wait(HANG)
            value = self.service.request(key, op)
            if kind == "after":
                raise TimeoutError(f"{self.service.name} answer lost")
            return value

    retry = RetryPolicy(max_attempts=100, initial_interval=0.0, max_interval=0.1, jitter=0.5)
    trip = Workflow("travel", version=1)
    after: list[str] = []
    for step, agent in SERVICES.items():
        trip = trip.step(
            step,
            agent=agent,
            action="book",
            compensate="cancel",
            after=after,
            timeout=STEP_TIMEOUT,
            retry=retry,
        )
        after = [step]

    root = pathlib.Path(effects)
    root.mkdir(exist_ok=True)
    with Runtime(store, sweep_interval=0.05, default_retry=retry, seed=seed) as rt:
        for agent in SERVICES.values():
            service = Service(agent, root / f"{agent}.log")
            rt.add_agent(agent, functools.partial(Booking, service), concurrency=4)
        rt.add_workflow(trip)
        handles = []
        for n in range(lo, hi):
            handles.append(rt.start("travel", {"n": n}, workflow_id=f"w-{n}"))
            say(f"start w-{n}")
        deadline = time.monotonic() + WAIT
        for handle in handles:
            with contextlib.suppress(WorkflowFailed, TimeoutError):
                handle.result(timeout=max(0.0, deadline - time.monotonic()))
            status = handle.status()
            if status.state.is_final:
                say(f"done {handle.id} {status.state}")
            else:
                steps = " ".join(f"{n}={s.state}/{s.attempt}" for n, s in status.steps.items())
                say(f"stuck {handle.id} {status.state} {steps}")
    say("finished")


if __name__ == "__main__":
    store_arg, effects_arg, lo_arg, hi_arg, seed_arg = sys.argv[1:]
    main(store_arg, effects_arg, int(lo_arg), int(hi_arg), int(seed_arg))
