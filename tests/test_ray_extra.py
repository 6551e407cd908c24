"""The ray extra stays optional: without it, RayHost says how to install it, and nothing
of herder imports Ray until an agent is placed on it (runs in ``make test``)."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from _child_kit import Child

import herder.actors.ray
from herder.actors.ray._leftovers import kill_leftovers
from herder.runtime import HerderError, InvalidInput, MissingExtra, RayHost


def test_ray_host_without_the_extra_names_the_install_command(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(herder.actors.ray, "ray_installed", lambda: False)
    with pytest.raises(MissingExtra, match=r"pip install 'herder\[ray\]'") as raised:
        RayHost(address="auto")
    assert isinstance(raised.value, HerderError)
    assert isinstance(raised.value, ImportError)


def test_importing_herder_and_running_local_agents_never_imports_ray() -> None:
    code = (
        "import sys, tempfile\n"
        "from herder.runtime import Agent, Runtime, Workflow\n"
        "class A(Agent):\n"
        "    def go(self, ctx): return 1\n"
        "with Runtime(tempfile.mkdtemp()) as rt:\n"
        "    rt.add_agent('a', A)\n"
        "    rt.add_workflow(Workflow('w').step('s', agent='a', action='go'))\n"
        "    assert rt.start('w', None).result(timeout=30) == {'s': 1}\n"
        "print('ray' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=50, check=True
    )
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("slots", 0),
        ("num_cpus", -1),
        ("resources", {"GPU": "one"}),
        ("runtime_env", "x"),
        ("namespace", 5),
    ],
)
def test_a_bad_placement_is_refused_naming_the_field(
    monkeypatch: pytest.MonkeyPatch, field: str, value: object
) -> None:
    monkeypatch.setattr(herder.actors.ray, "ray_installed", lambda: True)
    with pytest.raises(InvalidInput, match=f"RayHost: {field}"):
        RayHost(**{field: value})  # type: ignore[arg-type]


def test_slots_default_to_the_concurrency_up_to_sixteen(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(herder.actors.ray, "ray_installed", lambda: True)
    assert RayHost().slots_for(4) == 4
    assert RayHost().slots_for(64) == 16
    assert RayHost(slots=1).slots_for(64) == 1


def test_processes_a_killed_daemon_started_are_killed_by_the_next_one(tmp_path: Path) -> None:
    """What `_leftovers` does for a Ray cluster a SIGKILLed daemon started: its recorded
    children from Ray's install (a stand-in here: a sleeping child whose command line
    holds the marker) are killed at the next start, and nothing while the recording
    daemon lives; its other children are left alone."""
    daemon = Child(
        [
            "-c",
            "import subprocess, sys, threading\n"
            "from herder.actors.ray._leftovers import remember\n"
            # Their whole job is to stay alive (a real sleep) until they are killed.
            "ray = subprocess.Popen([sys.executable, '-c',"
            " 'import time; time.sleep(300)', 'from-ray'])\n"
            "own = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)'])\n"
            f"remember(__import__('pathlib').Path({str(tmp_path)!r}), 'from-ray')\n"
            "print('RECORDED', ray.pid, own.pid, flush=True)\n"
            "threading.Event().wait()\n",
        ]
    )
    try:
        ray_pid, own_pid = map(int, daemon.wait_for("RECORDED", 50).split()[1:])
        assert kill_leftovers(tmp_path) == 0  # its daemon still runs
    finally:
        daemon.kill(50)
    fds = [os.pidfd_open(ray_pid), os.pidfd_open(own_pid)]  # they outlived their parent
    try:
        assert not select.select(fds, [], [], 0)[0]
        assert kill_leftovers(tmp_path) == 1
        assert select.select(fds[:1], [], [], 50)[0], "the leftover was killed"
        assert not select.select(fds[1:], [], [], 0)[0], "the program's own was not"
    finally:
        for fd, pid in zip(fds, (ray_pid, own_pid), strict=True):
            os.close(fd)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    assert kill_leftovers(tmp_path) == 0  # the record is gone with them
