"""The app the high-availability tests run under ``herder run --app ha_app:build``.

Configured by environment variables (each process of a test gets its own):

- ``HA_EFFECTS``: a file every executed action appends ``workflow step token pid time`` to
  (one ``write`` of one line with O_APPEND, so lines of concurrent processes never mix).
- ``HA_STEP``: seconds each action takes (default 0.02).
- ``HA_START``: once active, start workflows ``w-0`` .. ``w-(N-1)`` (three chained steps
  each), printing ``start w-i`` when ``start()`` returned; ``HA_PACE`` seconds apart.
  A start refused because the runtime is stopping or handing over ends the loop and
  prints ``refused w-i``. With ``HA_AWAIT`` set, each start waits for its workflow to
  end, then prints ``ended w-i``.
- ``HA_WATCH``: once active, wait until every workflow in the store is final, then print
  ``idle N`` (N workflows). The tests wait on that line instead of polling the store.
- ``HA_WALL_STEP``: step this process's wall clock (``time.time``) by that many seconds
  at registration, as an NTP correction or a VM resume would.
- ``HA_TOKENS_LEFT``: start this runtime's fencing tokens that many short of the end of
  its incarnation's range of 2**32 (where days of steps at full speed bring them).
- ``HA_HOLD_PAST_RANGE``: once an action of this process has run with a token past the end
  of its incarnation's range (see ``HA_TOKENS_LEFT``), print ``range passed`` and hold
  every action that starts after it until the process is killed: work is left for sure
  to whoever takes over, however fast or slow the machine.
- ``HA_POLLS``: print ``polled N``, ``polled 2N``, ... each time this runtime's health
  signal (a standby's lease poll, an active runtime's sweep) fired N more times after
  registration.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import threading
import time

from _child_kit import say

from herder.runtime import Agent, HerderError, Runtime, StepContext, Workflow, WorkflowFailed

JOB = (
    Workflow("job", version=1)
    .step("a", agent="svc", action="work", timeout=30.0)
    .step("b", agent="svc", action="work", after=["a"], timeout=30.0)
    .step("c", agent="svc", action="work", after=["b"], timeout=30.0)
)


class Service(Agent):
    """Takes ``HA_STEP`` seconds, logs the execution, answers with who ran it."""

    passed = threading.Event()  # (HA_HOLD_PAST_RANGE) an action ran past the range

    def __init__(self) -> None:
        self.effects = os.environ["HA_EFFECTS"]
        self.step_seconds = float(os.environ.get("HA_STEP", "0.02"))
        self.hold_past_range = bool(os.environ.get("HA_HOLD_PAST_RANGE"))

    def work(self, ctx: StepContext) -> dict[str, int]:
        if Service.passed.is_set():
            threading.Event().wait()  # held until this process is killed
        threading.Event().wait(self.step_seconds)  # the remote call
        line = f"{ctx.workflow_id} {ctx.step} {ctx.token} {os.getpid()} {time.time():.4f}\n"
        data = line.encode()
        fd = os.open(self.effects, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        # (tokens start short of the end of the range: a low n is one past it)
        past = self.hold_past_range and ctx.token & 0xFFFFFFFF < 1 << 31
        if past and not Service.passed.is_set():
            Service.passed.set()
            say("range passed")
        return {"pid": os.getpid(), "token": ctx.token}


def _start_all(rt: Runtime, count: int, pace: float) -> None:
    if not rt.wait_active():
        return
    pause = threading.Event()  # never set: paces the starts
    for i in range(count):
        try:
            rt.start("job", {"i": i}, workflow_id=f"w-{i}")
        except HerderError:
            say(f"refused w-{i}")
            return
        say(f"start w-{i}")
        if os.environ.get("HA_AWAIT"):
            rt.handle(f"w-{i}").result(timeout=60.0)
            say(f"ended w-{i}")
        if pace:
            pause.wait(pace)
    say(f"started all {time.time():.3f}")


def _watch(rt: Runtime) -> None:
    if not rt.wait_active():
        return
    statuses = rt.list()
    give_up = time.monotonic() + 25.0
    for status in statuses:
        if not status.state.is_final:
            with contextlib.suppress(WorkflowFailed, TimeoutError):
                rt.handle(status.id).result(timeout=max(0.0, give_up - time.monotonic()))
    for status in rt.list():
        if not status.state.is_final:
            steps = " ".join(f"{n}={s.state}/{s.attempt}" for n, s in status.steps.items())
            say(f"stuck {status.id} {status.state} {steps}")
    say(f"idle {len(statuses)}")


def _step_wall_clock(seconds: float) -> None:
    real = time.time
    time.time = lambda: real() + seconds  # every caller of time.time() in this process
    say(f"wall stepped {seconds:+.1f}")


def _count_polls(rt: Runtime, count: int) -> None:
    seen = [0]

    def polled() -> None:
        seen[0] += 1
        if seen[0] % count == 0:
            say(f"polled {seen[0]}")

    rt._health_listeners.append(polled)


def _tokens_left(rt: Runtime, left: int) -> None:
    ctx = rt._ctx

    def reset_tokens() -> None:  # (called as the runtime becomes active, after setup)
        ctx.next_token = itertools.count((ctx.store.incarnation + 1 << 32) - left).__next__

    ctx.reset_tokens = reset_tokens  # type: ignore[method-assign]


def build(rt: Runtime) -> None:
    """Register the agent and workflow; start the workload if ``HA_START`` asks."""
    rt.add_agent("svc", Service, concurrency=8)
    rt.add_workflow(JOB)
    if os.environ.get("HA_WALL_STEP"):
        _step_wall_clock(float(os.environ["HA_WALL_STEP"]))
    if os.environ.get("HA_TOKENS_LEFT"):
        _tokens_left(rt, int(os.environ["HA_TOKENS_LEFT"]))
    if os.environ.get("HA_POLLS"):
        _count_polls(rt, int(os.environ["HA_POLLS"]))
    count = int(os.environ.get("HA_START", "0"))
    if count:
        pace = float(os.environ.get("HA_PACE", "0"))
        threading.Thread(target=_start_all, args=(rt, count, pace), daemon=True).start()
    if os.environ.get("HA_WATCH"):
        threading.Thread(target=_watch, args=(rt,), daemon=True).start()
