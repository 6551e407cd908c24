"""Crash tests with a real subprocess: SIGKILL the engine at random moments, reopen, repeat.

A child (``engine_child.py``) runs travel-booking workflows (flight, hotel, car) against
idempotent fake services that log every request durably. The parent kills it at random
points, restarts it, and finally lets it finish. Then it checks DESIGN.md's "Delivery
guarantees" against the store and the services' logs: every acknowledged workflow exists
and is final, no effect is applied twice for one idempotency key, every succeeded step of
a failed workflow is undone (in reverse order), nothing the engine or the services
acknowledged is lost, and the store passes ``herder check``.

The default run kills 20 times; ``make chaos`` (``-m chaos``) kills 50 times over 1,000
workflows.
"""

from __future__ import annotations

import os
import pathlib
import queue
import random
import signal
import time
from dataclasses import dataclass, field

import pytest
from _child_kit import Child
from engine_child import permanent_failure

from herder.runtime._check import check_store
from herder.runtime._demo_services import audit
from herder.store import Store, StoreError
from herder.store._records import WorkflowState

CHILD = pathlib.Path(__file__).with_name("engine_child.py")
ROUND_GUARD = 3.0  # seconds a round waits for the next line before killing anyway
FINAL_GUARD = 60.0  # seconds the final, unkilled run may take


@dataclass
class Crashes:
    """What the parent saw across all runs of the child."""

    store: pathlib.Path
    effects: pathlib.Path
    seed: int
    mode: str = "random"  # engine_child's MODE
    kills: int = 0
    acked: set[str] = field(default_factory=set)
    done: dict[str, str] = field(default_factory=dict)
    stuck: list[str] = field(default_factory=list)  # reported by the final run
    stderr: list[str] = field(default_factory=list)


def _spawn(c: Crashes, lo: int, hi: int, seed: int) -> Child:
    argv = [str(CHILD), str(c.store), str(c.effects), str(lo), str(hi), str(seed), c.mode]
    return Child(argv)


def _take(c: Crashes, line: str) -> None:
    kind, *rest = line.split()
    if kind == "start":
        c.acked.add(rest[0])
    elif kind == "done":
        c.done[rest[0]] = rest[1]
    elif kind == "stuck":
        c.stuck.append(" ".join(rest))


def _collect_stderr(c: Crashes, child: Child) -> None:
    c.stderr.append(child.stderr())


def _run_and_kill(c: Crashes, lo: int, hi: int, rng: random.Random) -> None:
    """One round: run the child until a random number of lines, then SIGKILL it."""
    child = _spawn(c, lo, hi, rng.randrange(2**31))
    # Up to one 'start' and one 'done' line per workflow; 0 kills it while it starts up.
    target = rng.randint(0, 2 * (hi - lo))
    seen = 0
    deadline = time.monotonic() + ROUND_GUARD
    closed = False  # stdout's end (None) already taken: the child ended on its own
    while seen < target:
        try:
            line = child.next_line(deadline)
        except queue.Empty:
            break  # the guard: kill it wherever it is
        closed = line is None
        if line is None or line == "finished":
            break
        _take(c, line)
        seen += 1
    os.kill(child.proc.pid, signal.SIGKILL)
    child.proc.wait(timeout=10)
    _collect_stderr(c, child)
    # Waiting for a second end of stdout once the first was taken hid a child that had
    # died by itself behind queue.Empty, instead of the failure and stderr reported below.
    while not closed and (line := child.lines.get(timeout=10)) is not None:
        if line != "finished":
            _take(c, line)  # written before the kill, still in the pipe
    if child.proc.returncode == -signal.SIGKILL:
        c.kills += 1
    elif child.proc.returncode != 0:  # 0: it finished its range before the kill landed
        pytest.fail(f"child failed ({child.proc.returncode}):\n{c.stderr[-1]}")
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
    child = _spawn(c, lo, hi, seed)
    deadline = time.monotonic() + FINAL_GUARD
    finished = False
    while True:
        try:
            line = child.next_line(deadline)
        except queue.Empty:
            child.kill(timeout=10)
            _collect_stderr(c, child)
            pytest.fail(f"the final run did not finish in {FINAL_GUARD}s:\n{c.stderr[-1]}")
        if line is None:
            break
        if line == "finished":
            finished = True
        else:
            _take(c, line)
    child.proc.wait(timeout=30)
    _collect_stderr(c, child)
    assert child.proc.returncode == 0, f"final run failed:\n{c.stderr[-1]}"
    assert finished, f"final run ended early:\n{c.stderr[-1]}"


def _verify(c: Crashes, n_workflows: int) -> str:
    def expected(wid: str) -> WorkflowState:
        failing = permanent_failure(int(wid.removeprefix("w-")))
        return WorkflowState.COMPENSATED if failing else WorkflowState.SUCCEEDED

    found = audit(c.store, c.effects, expected)
    problems = list(found.problems)
    lost = sorted(c.acked - found.workflows)
    problems += [f"{w}: acknowledged but not in the store" for w in lost]
    problems += [f"{w}: in the store but never acknowledged" for w in found.workflows - c.acked]
    if c.acked != {f"w-{n}" for n in range(n_workflows)}:
        problems.append(f"acknowledged {len(c.acked)} of {n_workflows} workflows")
    with Store(c.store, readonly=True) as store:
        problems += [f"herder check: {p}" for p in check_store(store).problems]
        for wid, reported in sorted(c.done.items()):
            record = store.get_workflow(wid)
            if record is not None and record.state != reported:
                problems.append(f"{wid}: the child reported {reported}, the store {record.state}")
    problems += [f"stuck after the final run: {line}" for line in c.stuck]
    problems += [
        f"child log: {line}"
        for err in c.stderr
        for line in err.splitlines()
        if line.startswith(("ERROR", "CRITICAL", "Traceback"))
    ]
    outcome = found.outcome
    summary = (
        f"engine crash test: kills={c.kills} workflows={len(found.workflows)} "
        f"succeeded={outcome[WorkflowState.SUCCEEDED]} "
        f"compensated={outcome[WorkflowState.COMPENSATED]} requests={found.requests} "
        f"effects={found.effects} absorbed={found.requests - found.effects} lost={len(lost)} "
        f"unfinished={found.unfinished} duplicated={found.duplicated} seed={c.seed}"
    )
    print("\n" + summary)
    assert problems == [], summary + "\n" + "\n".join(problems[:50])
    return summary


def _crash_many_times(
    tmp_path: pathlib.Path, kills: int, n_workflows: int, mode: str = "random"
) -> str:
    seed = int(os.environ.get("HERDER_CRASH_SEED", random.randrange(2**31)))
    print(f"\nengine crash test: seed={seed} (set HERDER_CRASH_SEED to repeat the kill points)")
    rng = random.Random(seed)
    c = Crashes(tmp_path / "store", tmp_path / "effects", seed, mode)
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


@pytest.mark.timeout(120)
def test_sigkill_on_the_asyncio_host_loses_and_duplicates_nothing(tmp_path: pathlib.Path) -> None:
    """The same guarantees with ``async def`` agents: attempts are tasks on the runtime's
    loop, hung ones are cancelled by their timeout."""
    summary = _crash_many_times(tmp_path, kills=10, n_workflows=60, mode="asyncio")
    assert "kills=10 " in summary


@pytest.mark.timeout(120)
def test_sigkill_without_prefetch_loses_and_duplicates_nothing(tmp_path: pathlib.Path) -> None:
    """The same guarantees with ``prefetch=0`` (the default reserves ahead: attempts
    recorded before an instance is free are re-run with attempt + 1 after a kill)."""
    summary = _crash_many_times(tmp_path, kills=10, n_workflows=60, mode="random+prefetch0")
    assert "kills=10 " in summary


@pytest.mark.timeout(120)
def test_sigkill_while_starts_wait_for_room_loses_and_duplicates_nothing(
    tmp_path: pathlib.Path,
) -> None:
    """The same guarantees with ``max_active_workflows=3``: each start waits for room and
    is handed the slot of a workflow whose end is not durable yet (runtime/_capacity.py,
    ``_pass_on``), its creation joining that end's commit."""
    summary = _crash_many_times(tmp_path, kills=10, n_workflows=60, mode="random+cap3")
    assert "kills=10 " in summary


@pytest.mark.slow
@pytest.mark.chaos
@pytest.mark.timeout(900)
@pytest.mark.parametrize("mode", ["random", "random+prefetch0", "random+cap16"])
def test_sigkill_fifty_times_over_many_workflows(tmp_path: pathlib.Path, mode: str) -> None:
    summary = _crash_many_times(tmp_path, kills=50, n_workflows=1000, mode=mode)
    assert "kills=50 " in summary
