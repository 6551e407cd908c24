"""Subprocess side of the engine's crash tests (run as a script; the test imports only
:func:`permanent_failure` from it).

    engine_child.py STORE EFFECTS LO HI SEED [MODE]

opens ``Runtime(STORE)`` and runs travel-booking workflows ``w-LO`` .. ``w-(HI-1)`` (flight
on ``airline``, hotel on ``hotels``, car on ``cars``; DESIGN.md seed 004) against
the idempotent fake services of ``herder.runtime._demo_services``, which keep their state
in append-only logs under ``EFFECTS``.
Starting is idempotent, so a restarted child simply starts its whole range again.

stdout, one line each, flushed: ``start w-N`` once ``start()`` returned (acknowledged),
``done w-N STATE`` once the workflow's outcome is known, ``stuck w-N STATE STEPS...`` for
one still unfinished after ``WAIT`` seconds, ``finished`` at the end.

Faults (MODE ``random``, the default): ~5% of requests fail before reaching the service,
~5% after the service applied them (the answer is lost, so the retry must be absorbed),
~0.5% hang past the step timeout; the car step fails permanently for every ``n % 7 == 0``,
so those workflows compensate (hotel, then flight).

MODE ``scripted`` (the crash-point test) makes every run meet the same faults, a pure
function of (n, step, attempt), with short timeouts: see :func:`scripted_fault`.

MODE ``asyncio`` meets the faults of ``random`` on ``async def`` agents (the asyncio host):
a hung request awaits past the step timeout and is cancelled.

MODE ``poison`` (the poison-work test): no faults, except that the car step of workflow
``w-POISON_N`` SIGKILLs the whole process every time it runs; the runtime parks a
workflow after two crashes in a row (``max_recoveries=2``).

``MODE+prefetchN`` (e.g. ``random+prefetch0``) runs a mode with ``Runtime(prefetch=N)``
instead of the default (7: attempts reserved ahead of a free instance wait, durable,
when the process is killed; 0: none do). ``+capN`` sets ``max_active_workflows=N``: the
serial starts wait for room, each created in the commit that ends another workflow.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import pathlib
import random
import signal
import sys
import threading
import time

from _child_kit import say

STEP_TIMEOUT = 2.0
HANG = 2.5  # seconds a hung request blocks: longer than STEP_TIMEOUT
WAIT = 30.0  # seconds a run waits for all its workflows before reporting the stuck ones


POISON_N = 3
SCRIPTED_TIMEOUT = 0.4
SCRIPTED_HANG = 0.8


def permanent_failure(n: int, mode: str = "random") -> bool:
    """The deterministic subset of workflows whose car booking can never succeed."""
    return n % 5 == 3 if mode == "scripted" else n % 7 == 0


def scripted_fault(n: int, step: str, attempt: int, compensating: bool) -> str | None:
    """The fault an attempt meets in ``scripted`` mode; each kind once per five workflows.

    n % 5 == 1: the flight's first request fails before the service; == 2: the hotel's
    first request is applied but its answer lost; == 3: the car is sold out and the
    flight's first cancel fails (a retried compensation); == 4: the hotel's first attempt
    crashes its agent instance; == 0: the flight's first attempt hangs past its timeout.
    """
    if attempt != 1:
        return None
    kind = n % 5
    if compensating:
        return "before" if kind == 3 and step == "flight" else None
    return {
        (1, "flight"): "before",
        (2, "hotel"): "after",
        (4, "hotel"): "crash",
        (0, "flight"): "hang",
    }.get((kind, step))


def main(  # noqa: PLR0917 - the command line's arguments, in order
    store: str, effects: str, lo: int, hi: int, seed: int, mode: str = "random"
) -> None:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    mode, *extras = mode.split("+")  # "MODE+prefetchN+capN": Runtime(prefetch=, ...)
    names = {"prefetch": "prefetch", "cap": "max_active_workflows"}
    settings = {
        names[e.rstrip("0123456789")]: int(e.lstrip("abcdefghijklmnopqrstuvwxyz")) for e in extras
    }
    if mode == "scripted":  # its instance crashes are on purpose; pykka logs each one
        logging.getLogger("pykka").setLevel(logging.CRITICAL)
    from herder.runtime import RetryPolicy, Runtime, StepContext, WorkflowFailed
    from herder.runtime._demo_services import Booking, open_services, travel_workflow

    rng = random.Random(seed)
    rng_lock = threading.Lock()

    def fault(ctx: StepContext) -> str | None:
        if mode == "poison":
            if ctx.input["n"] == POISON_N and ctx.step == "car":
                os.kill(os.getpid(), signal.SIGKILL)
            return None
        if mode == "scripted":
            attempt = ctx.attempt  # the compensation's own attempt when compensating
            return scripted_fault(ctx.input["n"], ctx.step, attempt, ctx.compensating)
        with rng_lock:
            r = rng.random()
        if r < 0.05:
            return "before"
        if r < 0.10:
            return "after"
        if r < 0.105:
            return "hang"
        return None

    def sold_out(ctx: StepContext) -> bool:
        return permanent_failure(ctx.input["n"], mode)

    retry = RetryPolicy(max_attempts=100, initial_interval=0.0, max_interval=0.1, jitter=0.5)
    scripted = mode == "scripted"
    trip = travel_workflow(retry, SCRIPTED_TIMEOUT if scripted else STEP_TIMEOUT)
    hang = SCRIPTED_HANG if scripted else HANG
    services = open_services(pathlib.Path(effects))
    booking = async_booking() if mode == "asyncio" else Booking
    # Poison-work parking is the poison test's subject. Elsewhere the only crashes are
    # the parent's kills, several seconds apart at most, so on a loaded machine (a step
    # taking seconds) an innocent step could be running at four kills in a row and be
    # parked as poison (seen: 4 workflows of 60, load 16): there it is kept out of play.
    recoveries = {"poison": 2, "scripted": 3}.get(mode, 1000)
    with Runtime(
        store,
        sweep_interval=0.05,
        default_retry=retry,
        seed=seed,
        max_recoveries=recoveries,
        **settings,
    ) as rt:
        for agent, service in services.items():
            factory = functools.partial(booking, service, fault, sold_out, hang)
            rt.add_agent(agent, factory, concurrency=4)
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
        if mode == "asyncio":  # the agents really ran on the asyncio host
            assert "asyncio_attempts" in rt.stats()["host"], rt.stats()["host"]
    say("finished")


def async_booking() -> type:
    """:class:`Booking` with ``async def`` actions: the same requests and faults, but a
    hung request awaits (so a timeout cancels it) instead of blocking a thread."""
    import asyncio

    from herder.actors import InstanceCrash
    from herder.runtime import Permanent, StepContext
    from herder.runtime._demo_services import Booking

    class AsyncBooking(Booking):
        async def book(self, ctx: StepContext) -> object:  # type: ignore[override]
            if ctx.step == "car" and self.sold_out(ctx):
                raise Permanent(f"no cars left for {ctx.workflow_id}")
            return await self._request(ctx, ctx.idempotency_key, "apply")

        async def cancel(self, ctx: StepContext) -> None:  # type: ignore[override]
            await self._request(ctx, ctx.idempotency_key.removesuffix("/compensate"), "undo")

        async def _request(self, ctx: StepContext, key: str, op: str) -> object:
            kind = self.fault(ctx)
            if kind == "before":
                raise ConnectionError(f"{self.service.name} unreachable")
            if kind == "crash":
                raise InstanceCrash(f"{self.service.name} client crashed")
            await asyncio.sleep(self.hang if kind == "hang" else 0)
            value = self.service.request(key, op)
            if kind == "after":
                raise TimeoutError(f"{self.service.name} answer lost")
            return value

    return AsyncBooking


if __name__ == "__main__":
    store_arg, effects_arg, lo_arg, hi_arg, seed_arg, *mode_arg = sys.argv[1:]
    main(store_arg, effects_arg, int(lo_arg), int(hi_arg), int(seed_arg), *mode_arg)
