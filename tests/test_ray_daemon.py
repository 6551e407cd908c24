"""A daemon with agents on Ray, killed or stopped for real (marked ``ray`` and ``slow``).

Each child process starts its own local Ray cluster (``RayHost(address=None)``). Its
processes, and Ray's, carry a marker in their environment, so the test can tell whether
any of them outlived the daemon.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import select
import signal
import uuid
from collections import Counter

import pytest
from _child_kit import Child

from herder.runtime import Runtime

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(400)]

CHILD = str(pathlib.Path(__file__).with_name("ray_child.py"))
WAIT = 180.0


def marked(marker: str) -> list[int]:
    """Processes whose environment carries ``marker``."""
    found = []
    for entry in pathlib.Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker.encode() in (entry / "environ").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def all_gone(pids: list[int], timeout: float) -> list[int]:
    """Wait (on pidfds) up to ``timeout`` s for ``pids`` to exit; those still running."""
    left = []
    for pid in pids:
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            continue
        try:
            if not select.select([fd], [], [], timeout)[0]:
                left.append(pid)
        finally:
            os.close(fd)
    return left


def ledger_of(path: pathlib.Path) -> list[tuple[str, int, str]]:
    rows = [line.rsplit("/", 2) for line in path.read_text().splitlines()]
    return [(step, int(token), what) for step, token, what in rows]


def test_a_killed_daemon_resumes_on_its_store_without_rerunning_finished_steps(
    tmp_path: pathlib.Path,
) -> None:
    store, ledger = tmp_path / "store", tmp_path / "ledger"
    env = {"HERDER_RAY_TEST": uuid.uuid4().hex}
    marker = f"HERDER_RAY_TEST={env['HERDER_RAY_TEST']}"
    first = Child([CHILD, str(store), str(ledger), "start"], env=env)
    try:
        sidecar = os.pidfd_open(int(first.wait_for("SIDECAR", WAIT).split()[1]))
        first.wait_for("READY", WAIT)
    finally:
        first.kill(WAIT)
    before = ledger_of(ledger)
    with Runtime(store) as reader:  # what the killed daemon had recorded
        recorded = {
            f"{status.id}/{name}"
            for status in reader.list()
            for name, step in status.steps.items()
            if step.state == "SUCCEEDED"
        }
    assert recorded, "some steps had succeeded before the kill"
    second = Child([CHILD, str(store), str(ledger), "resume"], env=env)
    try:
        second.wait_for("CONNECTED", WAIT)
        # The last daemon's leftovers were killed; its process of its own was not Ray's.
        spared = not select.select([sidecar], [], [], 0)[0]
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(sidecar, signal.SIGKILL)
        os.close(sidecar)
        assert spared, "the next daemon killed a process of the program that was not Ray's"
        ledger.with_suffix(".release").touch()  # from now on, a blocked attempt finishes
        second.wait_for("DONE", WAIT)
        assert second.proc.wait(WAIT) == 0, second.stderr()
    finally:
        second.kill(WAIT)
    after = ledger_of(ledger)
    done = Counter(step for step, _, what in after if what == "done")
    assert set(done) == {f"w{i}/{s}" for i in range(8) for s in "ab"}
    assert {step: done[step] for step in recorded} == dict.fromkeys(recorded, 1)  # not re-run
    # The killed attempts never finished: each blocked step finished once, afterwards.
    killed = {(step, token) for step, token, what in before if what == "start"}
    assert len(killed) == 4
    assert not {(s, t) for s, t, w in after if w == "done"} & killed
    assert all(done[step] == 1 for step, _ in killed)
    assert all_gone(marked(marker), 30.0) == [], "Ray processes outlived the daemons"
    with Runtime(store) as rt:
        assert rt.stats()["workflows"]["SUCCEEDED"] == 8


def test_sigterm_drains_the_ray_attempts_and_leaves_no_ray_process(
    tmp_path: pathlib.Path,
) -> None:
    store, ledger = tmp_path / "store", tmp_path / "ledger"
    env = {"HERDER_RAY_TEST": uuid.uuid4().hex}
    marker = f"HERDER_RAY_TEST={env['HERDER_RAY_TEST']}"
    child = Child([CHILD, str(store), str(ledger), "serve"], env=env)
    try:
        child.wait_for("READY", WAIT)
        child.proc.send_signal(signal.SIGTERM)
        child.wait_for("STOPPED", WAIT)
        assert child.proc.wait(WAIT) == 0, child.stderr()
    finally:
        child.kill(WAIT)
    rows = ledger_of(ledger)
    assert Counter(w for _, _, w in rows) == {"start": 4, "done": 4}  # drained, not re-run
    assert all_gone(marked(marker), 30.0) == [], "Ray processes outlived the daemon"
    with Runtime(store) as rt:
        assert rt.stats()["workflows"]["SUCCEEDED"] == 4


def test_a_cluster_started_for_a_refused_ray_agent_is_shut_down(
    tmp_path: pathlib.Path,
) -> None:
    hidden = tmp_path / "hidden"
    hidden.mkdir()
    (hidden / "hidden_agent.py").write_text(
        "from herder.runtime import Agent\n\nclass Hidden(Agent):\n    def go(self, ctx):\n"
        "        return 1\n"
    )
    code = (  # the module imports here, not on the cluster's workers
        "import sys\n"
        f"sys.path.insert(0, {str(hidden)!r})\n"
        "import ray\n"
        "from hidden_agent import Hidden\n"
        "from herder.runtime import InvalidInput, RayHost, Runtime\n"
        f"rt = Runtime({str(tmp_path / 'store')!r})\n"
        "try:\n"
        "    rt.add_agent('hidden', Hidden, host=RayHost(num_cpus=0.25))\n"
        "except InvalidInput:\n"
        "    print('REFUSED', ray.is_initialized(), flush=True)\n"
        "rt.stop()\n"
        "print('STOPPED', ray.is_initialized(), flush=True)\n"
    )
    child = Child(["-c", code])
    try:
        # The cluster it started for the refused agent went with the refusal, not later.
        assert child.wait_for("REFUSED", WAIT).split()[1] == "False"
        assert child.wait_for("STOPPED", WAIT).split()[1] == "False"
    finally:
        child.kill(WAIT)
