"""Crash tests with a real subprocess: SIGKILL the engine at random moments, reopen, repeat.

A child (``engine_child.py``) runs travel-booking workflows (flight, hotel, car) against
idempotent fake services that log every request durably. The parent kills it at random
points, restarts it, and finally lets it finish. Then it checks DESIGN.md's "Delivery
guarantees" against the store and the services' logs: every acknowledged workflow exists
and is final, no effect is applied twice for one idempotency key, every succeeded step of
a failed workflow is undone (in reverse order), and nothing the engine or the services
acknowledged is lost.
"""

from __future__ import annotations

import os
import pathlib
import queue
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

import pytest
from engine_child import SERVICES, permanent_failure, read_log

from herder.store import Store, StoreError
from herder.store._records import StepState, WorkflowState

CHILD = pathlib.Path(__file__).with_name("engine_child.py")
ROUND_GUARD = 3.0  # seconds a round waits for the next line before killing anyway
FINAL_GUARD = 60.0  # seconds the final, unkilled run may take


@dataclass
class Crashes:
    """What the parent saw across all runs of the child."""

    store: pathlib.Path
    effects: pathlib.Path
    seed: int
    kills: int = 0
    acked: set[str] = field(default_factory=set)
    done: dict[str, str] = field(default_factory=dict)
    stuck: list[str] = field(default_factory=list)  # reported by the final run
    stderr: list[str] = field(default_factory=list)


def _spawn(c: Crashes, lo: int, hi: int, seed: int) -> tuple[subprocess.Popen[str], queue.Queue]:
    child = subprocess.Popen(
        [sys.executable, str(CHILD), str(c.store), str(c.effects), str(lo), str(hi), str(seed)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert child.stdout is not None
        for line in child.stdout:
            lines.put(line.strip())
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return child, lines


def _take(c: Crashes, line: str) -> None:
    kind, *rest = line.split()
    if kind == "start":
        c.acked.add(rest[0])
    elif kind == "done":
        c.done[rest[0]] = rest[1]
    elif kind == "stuck":
        c.stuck.append(" ".join(rest))


def _collect_stderr(c: Crashes, child: subprocess.Popen[str]) -> None:
    assert child.stderr is not None
    c.stderr.append(child.stderr.read())
    child.stderr.close()


def _run_and_kill(c: Crashes, lo: int, hi: int, rng: random.Random) -> None:
    """One round: run the child until a random number of lines, then SIGKILL it."""
    child, lines = _spawn(c, lo, hi, rng.randrange(2**31))
    # Up to one 'start' and one 'done' line per workflow; 0 kills it while it starts up.
    target = rng.randint(0, 2 * (hi - lo))
    seen = 0
    deadline = time.monotonic() + ROUND_GUARD
    while seen < target:
        try:
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            break  # the guard: kill it wherever it is
        if line is None or line == "finished":
            break
        _take(c, line)
        seen += 1
    os.kill(child.pid, signal.SIGKILL)
    child.wait(timeout=10)
    _collect_stderr(c, child)
    while (line := lines.get(timeout=10)) is not None:
        if line != "finished":
            _take(c, line)  # written before the kill, still in the pipe
    if child.returncode == -signal.SIGKILL:
        c.kills += 1
    elif child.returncode != 0:  # 0: it finished its range before the kill landed
        pytest.fail(f"child failed ({child.returncode}):\n{c.stderr[-1]}")
    _check_acked_durable(c)


def _check_acked_durable(c: Crashes) -> None:
    """Right after a kill: every acknowledged start is in the store."""
    try:
        store = Store(c.store, readonly=True)
    except StoreError:
        assert not c.acked, "the store vanished after starts were acknowledged"
        return
    with store:
        missing = sorted(w for w in c.acked if store.get_workflow(w) is None)
    assert missing == [], f"kill {c.kills}: acknowledged starts lost: {missing}"


def _run_to_the_end(c: Crashes, lo: int, hi: int, seed: int) -> None:
    child, lines = _spawn(c, lo, hi, seed)
    deadline = time.monotonic() + FINAL_GUARD
    finished = False
    while True:
        try:
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            child.kill()
            child.wait(timeout=10)
            _collect_stderr(c, child)
            pytest.fail(f"the final run did not finish in {FINAL_GUARD}s:\n{c.stderr[-1]}")
        if line is None:
            break
        if line == "finished":
            finished = True
        else:
            _take(c, line)
    child.wait(timeout=30)
    _collect_stderr(c, child)
    assert child.returncode == 0, f"final run failed:\n{c.stderr[-1]}"
    assert finished, f"final run ended early:\n{c.stderr[-1]}"


@dataclass
class _Key:
    """One idempotency key as the service saw it."""

    requests: Counter[str] = field(default_factory=Counter)  # op -> requests
    effects: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))  # op -> t
    value: Any = None


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


def _verify(c: Crashes, n_workflows: int) -> str:
    keys = _service_keys(c.effects)
    problems: list[str] = []
    with Store(c.store, readonly=True) as store:
        records = {r.id: r for r in store.workflows()}
        steps = {wid: {s.name: s for s in store.steps_of(wid)} for wid in records}
    expected = {f"w-{n}" for n in range(n_workflows)}
    lost = sorted(c.acked - set(records))
    problems += [f"{w}: acknowledged but not in the store" for w in lost]
    problems += [f"{w}: in the store but never acknowledged" for w in set(records) - c.acked]
    if c.acked != expected:
        problems.append(f"acknowledged {len(c.acked)} of {len(expected)} workflows")

    unfinished = duplicated = 0
    outcome: Counter[str] = Counter()
    for wid, record in sorted(records.items()):
        n = int(wid.removeprefix("w-"))
        state = record.state
        outcome[state] += 1
        want = WorkflowState.COMPENSATED if permanent_failure(n) else WorkflowState.SUCCEEDED
        if state is not want:
            unfinished += not state.is_final
            problems.append(f"{wid}: {state} ({record.error}), expected {want}")
            continue
        if c.done.get(wid, state) != state:
            problems.append(f"{wid}: the child reported {c.done[wid]}, the store says {state}")
        st = steps[wid]
        for step in SERVICES:
            key = keys.get(f"{wid}/{step}", _Key())
            applied, undone = key.effects["apply"], key.effects["undo"]
            if len(applied) > 1 or len(undone) > 1:
                duplicated += 1
                problems.append(f"{wid}/{step}: applied {len(applied)}x, undone {len(undone)}x")
            if st[step].state is StepState.SUCCEEDED:
                if len(applied) != 1 or undone:
                    problems.append(f"{wid}/{step}: SUCCEEDED but service has {key.effects}")
                elif st[step].result != key.value:
                    problems.append(
                        f"{wid}/{step}: recorded {st[step].result!r}, service {key.value!r}"
                    )
            elif st[step].state is StepState.COMPENSATED:
                if len(applied) != 1 or len(undone) != 1 or undone[0] < applied[0]:
                    problems.append(f"{wid}/{step}: COMPENSATED but service has {key.effects}")
            elif applied and not undone:
                problems.append(f"{wid}/{step}: {st[step].state} yet its effect stands")
        if state is WorkflowState.SUCCEEDED:
            if any(st[s].state is not StepState.SUCCEEDED for s in SERVICES):
                problems.append(f"{wid}: SUCCEEDED with steps {[st[s].state for s in SERVICES]}")
        else:
            if [st[s].state for s in SERVICES] != [
                StepState.COMPENSATED,
                StepState.COMPENSATED,
                StepState.FAILED,
            ]:
                problems.append(f"{wid}: COMPENSATED with steps {[st[s].state for s in SERVICES]}")
            hotel = keys[f"{wid}/hotel"].effects["undo"]
            flight = keys[f"{wid}/flight"].effects["undo"]
            if hotel and flight and not hotel[0] < flight[0]:
                problems.append(f"{wid}: flight undone before hotel")

    strays = sorted(k for k in keys if k.split("/", 1)[0] not in records)
    problems += [f"{k}: a service saw a key of no stored workflow" for k in strays]
    problems += [
        f"{k}: undo requested of a key never applied"
        for k, key in keys.items()
        if key.requests["undo"] and not key.effects["apply"]
    ]
    problems += [f"stuck after the final run: {line}" for line in c.stuck]
    problems += [
        f"child log: {line}"
        for err in c.stderr
        for line in err.splitlines()
        if line.startswith(("ERROR", "CRITICAL", "Traceback"))
    ]

    requests = sum(sum(k.requests.values()) for k in keys.values())
    effects = sum(len(ts) for k in keys.values() for ts in k.effects.values())
    summary = (
        f"engine crash test: kills={c.kills} workflows={len(records)} "
        f"succeeded={outcome[WorkflowState.SUCCEEDED]} "
        f"compensated={outcome[WorkflowState.COMPENSATED]} requests={requests} "
        f"effects={effects} absorbed={requests - effects} lost={len(lost)} "
        f"unfinished={unfinished} duplicated={duplicated} seed={c.seed}"
    )
    print("\n" + summary)
    assert problems == [], summary + "\n" + "\n".join(problems[:50])
    return summary


def _crash_many_times(tmp_path: pathlib.Path, kills: int, n_workflows: int) -> str:
    seed = int(os.environ.get("HERDER_CRASH_SEED", random.randrange(2**31)))
    print(f"\nengine crash test: seed={seed} (set HERDER_CRASH_SEED to repeat the kill points)")
    rng = random.Random(seed)
    c = Crashes(tmp_path / "store", tmp_path / "effects", seed)
    # Each run starts the workflows of a growing range (the older ones again: idempotent).
    rounds = 0
    while c.kills < kills:
        rounds += 1
        hi = min(n_workflows, rounds * max(1, 2 * n_workflows // kills))
        _run_and_kill(c, 0, hi, rng)
        assert rounds < 2 * kills, f"only {c.kills} of {rounds} runs were killed"
    _run_to_the_end(c, 0, n_workflows, rng.randrange(2**31))
    return _verify(c, n_workflows)


@pytest.mark.timeout(120)
def test_sigkill_at_random_moments_loses_and_duplicates_nothing(tmp_path: pathlib.Path) -> None:
    summary = _crash_many_times(tmp_path, kills=20, n_workflows=100)
    assert "kills=20 " in summary


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_sigkill_fifty_times_over_many_workflows(tmp_path: pathlib.Path) -> None:
    summary = _crash_many_times(tmp_path, kills=50, n_workflows=1000)
    assert "kills=50 " in summary
