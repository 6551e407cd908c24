"""Crash-point enumeration (as SQLite's crash tests): die at every named point, recover.

``HERDER_CRASH_AT=point:n`` makes a process ``os._exit`` at the n-th hit of a named point
(``herder.store._crashpoints``). The child is ``engine_child.py`` in its ``scripted``
mode: five travel-booking workflows that meet the same faults every run (a failed
request, a lost answer, a compensation with a failed cancel, an instance crash, a hang
past the timeout). After each crash the store must pass ``herder check`` as the crash
left it; a run without the variable then recovers and finishes everything, and the
services' logs and the store must agree (nothing lost, nothing applied twice, every
compensation in reverse order).

The default run chains one crash at each point on one store; ``-m slow`` loops every
point x n on fresh stores until a run completes without reaching the n-th hit.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest
from engine_child import permanent_failure

from herder.runtime._check import check_store
from herder.runtime._demo_services import audit
from herder.store import Store
from herder.store._crashpoints import CRASH_EXIT_CODE, FAULT_POINTS, POINTS
from herder.store._records import WorkflowState

CHILD = pathlib.Path(__file__).with_name("engine_child.py")
WORKFLOWS = 5


def _run_child(
    store: pathlib.Path,
    effects: pathlib.Path,
    crash_at: str | None,
    workflows: int = WORKFLOWS,
    mode: str = "scripted",
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "HERDER_CRASH_AT"}
    if crash_at is not None:
        env["HERDER_CRASH_AT"] = crash_at
    args = [str(store), str(effects), "0", str(workflows), "1", mode]
    return subprocess.run(
        [sys.executable, str(CHILD), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _check(store: pathlib.Path, when: str) -> None:
    if not (store / "data.mdb").exists():
        return  # died before the store was created
    with Store(store, readonly=True) as s:
        problems = [str(p) for p in check_store(s).problems]
    assert problems == [], f"{when}: herder check found:\n" + "\n".join(problems)


def _crash(
    store: pathlib.Path,
    effects: pathlib.Path,
    point: str,
    n: int,
    workflows: int = WORKFLOWS,
    *,
    mode: str = "scripted",
) -> bool:
    """Run the child armed at ``point:n``; True if it died there (and the store is sane)."""
    done = _run_child(store, effects, f"{point}:{n}", workflows, mode)
    if done.returncode == 0:
        assert "finished" in done.stdout
        return False
    assert done.returncode == CRASH_EXIT_CODE, f"{point}:{n} failed otherwise:\n{done.stderr}"
    assert f"crash point {point} hit {n}" in done.stderr
    _check(store, f"after a crash at {point}:{n}")
    return True


def _recover_and_verify(
    store: pathlib.Path,
    effects: pathlib.Path,
    what: str,
    workflows: int = WORKFLOWS,
    mode: str = "scripted",
) -> None:
    done = _run_child(store, effects, None, workflows, mode)
    assert done.returncode == 0, f"recovery after {what} failed:\n{done.stderr}"
    assert "stuck" not in done.stdout, f"after {what}:\n{done.stdout}"
    assert "finished" in done.stdout

    def expected(wid: str) -> WorkflowState:
        failing = permanent_failure(int(wid.removeprefix("w-")), "scripted")
        return WorkflowState.COMPENSATED if failing else WorkflowState.SUCCEEDED

    found = audit(store, effects, expected)
    assert found.problems == [], f"after {what}: " + "\n".join(found.problems)
    assert len(found.workflows) == workflows
    assert found.duplicated == 0
    _check(store, f"after recovering from {what}")


@pytest.mark.parametrize("mode", ["scripted", "scripted+prefetch0"])
def test_one_crash_at_every_point_in_a_row_then_recovery_loses_nothing(
    tmp_path: pathlib.Path, mode: str
) -> None:
    """With the default prefetch (attempts recorded ahead of a free instance when it
    dies) and with none."""
    store, effects = tmp_path / "store", tmp_path / "effects"
    # Each run also starts five new workflows, so it meets every kind of fault afresh
    # while it recovers what the previous crash left.
    crashed = [
        point
        for i, point in enumerate(POINTS)
        if _crash(store, effects, point, 1, WORKFLOWS * (i + 1), mode=mode)
    ]
    what = f"crashes at {crashed}"
    _recover_and_verify(store, effects, what, WORKFLOWS * len(POINTS), mode)
    assert crashed == list(POINTS)


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("point", POINTS)
def test_every_hit_of_a_crash_point_recovers(tmp_path: pathlib.Path, point: str) -> None:
    # The rarely hit points get more workflows, so more of the faults that reach them.
    workflows = WORKFLOWS if point.startswith("writer.") else 4 * WORKFLOWS
    n = 0
    while True:
        n += 1
        store, effects = tmp_path / f"store-{n}", tmp_path / f"effects-{n}"
        if not _crash(store, effects, point, n, workflows):
            break
        _recover_and_verify(store, effects, f"a crash at {point}:{n}", workflows)
    print(f"\ncrash point {point}: crashed and recovered at n = 1..{n - 1}")
    assert n > 1, f"{point} was never reached"


def _arm(point: str, code: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HERDER_CRASH_AT": point}
    return subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_a_crash_point_exits_at_its_nth_hit_and_a_commit_before_it_is_durable(
    tmp_path: pathlib.Path,
) -> None:
    code = f"""
from herder.store import Put, Store, Transition, encode
with Store({str(tmp_path / "s")!r}) as s:
    for i in range(3):
        s.writer.submit(Transition(ops=(Put("meta", b"k%d" % i, encode(1)),))).result()
        print("acked", i, flush=True)
"""
    done = _arm("writer.after_commit:2", code)
    assert done.returncode == CRASH_EXIT_CODE
    assert done.stdout.split("\n")[:-1] == ["acked 0"]
    with Store(tmp_path / "s", readonly=True) as s:
        # the second commit reached the disk, though its caller never heard of it
        assert [s.get("meta", b"k%d" % i) for i in range(3)] == [1, 1, None]


def test_a_malformed_crash_spec_is_refused_at_import() -> None:
    done = _arm("writer.nowhere:1", "import herder.store")
    assert done.returncode == 1
    assert "HERDER_CRASH_AT='writer.nowhere:1' is not POINT:N" in done.stderr


def test_a_crash_while_the_writer_refuses_batches_behind_a_failed_one_loses_nothing_durable(
    tmp_path: pathlib.Path,
) -> None:
    assert FAULT_POINTS == ("writer.halted",)
    code = f"""
import threading
from herder.store import Put, Store, Transition, encode
store = Store({str(tmp_path / "s")!r})
store.writer.submit(Transition(ops=(Put("meta", b"before", encode(1)),))).result()
inside, release = threading.Event(), threading.Event()
def fail_once():
    store.writer.fault = None
    inside.set()
    release.wait(10)
    raise OSError(5, "I/O error")
store.writer.fault = fail_once
sink = lambda effects, error: print(effects, type(error).__name__, flush=True)
store.writer.submit_batch({{("meta", b"b1"): encode(1)}}, ["b1"], 1, sink)
inside.wait(10)
store.writer.submit_batch({{("meta", b"b2"): encode(1)}}, ["b2"], 1, sink)
release.set()
threading.Event().wait(10)
print("not crashed", flush=True)
"""
    done = _arm("writer.halted:1", code)
    assert done.returncode == CRASH_EXIT_CODE, done.stderr
    assert done.stdout.split("\n")[:-1] == ["['b1'] StoreIOError"]  # b2 was never answered
    with Store(tmp_path / "s", readonly=True) as s:
        assert [s.get("meta", k) for k in (b"before", b"b1", b"b2")] == [1, None, None]
        assert check_store(s).problems == []
