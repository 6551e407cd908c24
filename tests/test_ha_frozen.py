"""A runtime stopped (SIGSTOP, a paused VM, a debugger) inside an LMDB write transaction
keeps LMDB's writer lock. Opening the store for writing takes that lock, so a standby
started meanwhile waited in its open for ever (it never took over), and ``herder
handoff`` and the operator commands hung. Each test stops a real ``frozen_child.py``
inside a write transaction (it says ``holding`` first) and kills it at the end.
"""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest
from _child_kit import Child

from herder.runtime import Runtime
from herder.store import Store, append_command, new_command, pending_commands

TESTS = pathlib.Path(__file__).parent
LEASE = 1.0
WAIT = 30.0  # seconds any single expected event may take on a loaded machine


@pytest.fixture
def frozen(tmp_path: pathlib.Path) -> Iterator[Child]:
    """An active runtime on ``tmp_path / "store"`` stopped inside a write transaction;
    killed (a stopped process too) and reaped at the end."""
    child = Child(
        ["frozen_child.py", str(tmp_path / "store"), str(LEASE)], cwd=TESTS, label="frozen"
    )
    try:
        child.wait_for("holding", WAIT)
        _wait_stopped(child.proc.pid)
        yield child
    finally:
        child.kill(WAIT)


def _wait_stopped(pid: int) -> None:
    """Until ``/proc/PID/stat`` says the child stopped itself (it does right after
    ``holding``): polled, as the kernel tells nobody."""
    pause, deadline = threading.Event(), time.monotonic() + WAIT
    while time.monotonic() < deadline:
        stat = pathlib.Path(f"/proc/{pid}/stat").read_bytes()
        if stat[stat.rfind(b")") + 2 : stat.rfind(b")") + 3] == b"T":
            return
        pause.wait(0.01)
    raise AssertionError(f"pid {pid} did not stop within {WAIT} s")


def _herder(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "herder.runtime", *args],
        capture_output=True,
        text=True,
        timeout=WAIT,
        check=False,
    )


@pytest.mark.timeout(90)
def test_a_standby_started_while_the_holder_is_stopped_in_a_commit_takes_over(
    tmp_path: pathlib.Path, frozen: Child
) -> None:
    opened: list[Runtime] = []
    failed: list[BaseException] = []

    def open_standby() -> None:
        try:
            opened.append(Runtime(tmp_path / "store", standby=True, lease=LEASE, standby_poll=0.02))
        except BaseException as exc:  # (said below)
            failed.append(exc)

    opening = threading.Thread(target=open_standby, daemon=True)
    opening.start()
    try:
        opening.join(timeout=WAIT)
        assert not opening.is_alive(), "the standby's open waited for the stopped holder"
        assert not failed, failed
        standby = opened[0]
        assert standby.wait_active(WAIT)
        assert frozen.proc.wait(timeout=WAIT) == -signal.SIGKILL  # fenced
        lease = standby._store.read_lease()
        assert lease is not None
        assert lease.pid == os.getpid()
    finally:
        frozen.kill(WAIT)  # (frees the writer lock: an open still waiting ends)
        opening.join(timeout=WAIT)
        for rt in opened:
            rt.stop()


@pytest.mark.timeout(60)
def test_handoff_refuses_at_once_naming_the_stopped_holder(
    tmp_path: pathlib.Path, frozen: Child
) -> None:
    done = _herder("handoff", "--store", str(tmp_path / "store"), "--wait", "1")
    assert done.returncode == 1, done
    assert f"(pid {frozen.proc.pid}) is stopped" in done.stderr
    assert f"kill -CONT {frozen.proc.pid}" in done.stderr
    assert frozen.proc.poll() is None  # refused: nothing killed it


@pytest.mark.timeout(60)
def test_an_operator_command_refuses_at_once_naming_the_stopped_holder(
    tmp_path: pathlib.Path, frozen: Child
) -> None:
    store = str(tmp_path / "store")
    done = _herder("abandon", "w-1", "--why", "stuck", "--who", "op", "--store", store)
    assert done.returncode == 1, done
    assert f"(pid {frozen.proc.pid}) is stopped" in done.stderr
    assert "Nothing was written" in done.stderr
    frozen.kill(WAIT)
    with Store(store, readonly=True) as st:
        assert not list(st.scan("commands", b""))  # nothing queued


WRITING = """
import ctypes, signal, sys
from herder.store import Store, append_command, new_command, pending_commands
ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: die with the test
store = Store(sys.argv[1], lease=float(sys.argv[2]))
txn = store._env.begin(write=True)  # a long commit, its lease not renewed meanwhile
print("writing", flush=True)
sys.stdin.readline()
txn.abort()
print("done", flush=True)
sys.stdin.readline()
"""


@pytest.mark.timeout(60)
def test_an_open_waits_for_a_holder_that_is_slow_not_stopped_and_kills_nothing(
    tmp_path: pathlib.Path,
) -> None:
    # Fencing is for a stopped holder: one that runs (a long commit, a slow disk) has its
    # lease record unrenewed as long, and must be waited for, not killed.
    store = tmp_path / "store"
    lease = 0.2
    holder = subprocess.Popen(
        [sys.executable, "-c", WRITING, str(store), str(lease)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdin is not None
    assert holder.stdout is not None
    opened: list[Store] = []
    opening = threading.Thread(
        target=lambda: opened.append(Store(store, standby=True, lease=lease)), daemon=True
    )
    try:
        assert holder.stdout.readline().strip() == "writing"
        opening.start()
        opening.join(timeout=10 * lease)  # (expected to elapse: the open waits)
        assert opening.is_alive(), "the open did not wait for the holder's commit"
        holder.stdin.write("end\n")
        holder.stdin.flush()
        assert holder.stdout.readline().strip() == "done"
        opening.join(timeout=WAIT)
        assert opened, "the open did not go on once the holder's commit ended"
        assert holder.poll() is None  # not fenced
    finally:
        if holder.poll() is None:
            holder.kill()
        holder.wait(timeout=WAIT)
        opening.join(timeout=WAIT)
        for st in opened:
            st.close()


@pytest.mark.timeout(30)
def test_a_damaged_lease_record_does_not_stop_an_operator_command(tmp_path: pathlib.Path) -> None:
    # The client's look at the lease holder (is it stopped?) must not turn a damaged
    # lease record into a refusal: the command is queued, as before that look.
    store = tmp_path / "store"
    with Store(store) as st:
        st._write_direct(
            lambda txn: txn.put(b"lease", b"\xc1 not msgpack", db=st._handles["meta"]),
            "cannot damage",
        )
    command_id = append_command(store, new_command("abandon", "w-1", who="op", why="test"))
    with Store(store, readonly=True) as st:
        assert [c["id"] for c in pending_commands(st)] == [command_id]
