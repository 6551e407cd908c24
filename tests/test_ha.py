"""High availability with real processes: SIGKILL and SIGSTOP the active runtime, hand
over under load, race standbys for the lease, and talk to a fake systemd.

Every runtime here is a ``herder run --app ha_app:build`` subprocess (see ``ha_app.py``)
with a short lease. The tests wait on the lines the processes print (``active <time>``,
``start w-i``, ``idle N``) and check the store, read-only, at the end.
"""

from __future__ import annotations

import contextlib
import io
import os
import pathlib
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from typing import Any

import pytest
from _child_kit import Child

from herder.runtime import Agent, NotActive, Runtime, SchemaTooNew, StepContext, Workflow
from herder.store import Store, StoreError
from herder.store._records import StepState, WorkflowState

TESTS = pathlib.Path(__file__).parent
LEASE = 1.0
WAIT = 30.0  # seconds any single expected line may take on a loaded machine


class Daemon(Child):
    """One ``herder run`` subprocess and the lines it prints."""

    def __init__(
        self,
        store: pathlib.Path,
        effects: pathlib.Path,
        *,
        standby: bool = False,
        drain: str = "5",
        **env: str,
    ) -> None:
        cmd = ["-m", "herder.runtime", "run", "--store", str(store)]
        cmd += ["--app", "ha_app:build", "--lease", str(LEASE), "--drain-timeout", drain]
        if standby:
            cmd.append("--standby")
        super().__init__(cmd, cwd=TESTS, env={"HA_EFFECTS": str(effects), **env})

    def wait_for(self, prefix: str, timeout: float = WAIT) -> str:
        """The first (next) line starting with ``prefix``."""
        return super().wait_for(prefix, timeout)

    def wait_idle(self) -> None:
        """Wait for ``idle``; fail naming any workflow the app reported stuck.

        The app's watcher prints ``idle`` on its own thread, in no fixed order with the
        daemon's ``active`` line: with nothing left to run it can come first, and a
        ``wait_for("active")`` has then read past it.
        """
        if not any(line.startswith("idle") for line in self.seen):
            self.wait_for("idle")
        stuck = [line for line in self.seen if line.startswith("stuck ")]
        assert not stuck, "\n".join(stuck + self.errors[-30:])

    def acked(self) -> set[str]:
        return {line.split()[1] for line in self.seen if line.startswith("start ")}

    def finish(self) -> None:
        self.kill(WAIT)


@pytest.fixture
def daemons() -> Any:
    started: list[Daemon] = []
    yield started
    for d in started:
        d.finish()


def _script(script: str, *args: str) -> subprocess.Popen[str]:
    """A child process running ``script`` (``sys.argv[1:]``: ``args``), talked to over
    its stdin and stdout."""
    return subprocess.Popen(
        [sys.executable, "-c", script, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def _active_at(line: str) -> float:
    return float(line.split()[1])


def _dump(store: pathlib.Path) -> dict[str, list[tuple[bytes, bytes]]]:
    with Store(store, readonly=True) as st:
        return {db: list(st.raw_scan(db)) for db in ("workflows", "steps", "timers")}


def _final_states(store: pathlib.Path) -> dict[str, Any]:
    with Store(store, readonly=True) as st:
        return {r.id: (r.state, {s.name: s for s in st.steps_of(r.id)}) for r in st.workflows()}


def _effects(path: pathlib.Path) -> Counter[tuple[str, str]]:
    lines = path.read_text().splitlines() if path.exists() else []
    return Counter((line.split()[0], line.split()[1]) for line in lines)


def test_a_standby_takes_over_from_a_killed_runtime_and_finishes_every_workflow(
    tmp_path: pathlib.Path, daemons: list[Daemon]
) -> None:
    store, effects = tmp_path / "store", tmp_path / "effects"
    active = Daemon(store, effects, HA_START="40", HA_STEP="0.05", HA_PACE="0.01")
    daemons.append(active)
    active.wait_for("active")
    standby = Daemon(store, effects, standby=True, HA_WATCH="1")
    daemons.append(standby)
    standby.wait_for("standby")
    active.wait_for("start w-15")
    killed_at = time.time()
    active.proc.kill()
    active.proc.wait(timeout=WAIT)
    took_over = _active_at(standby.wait_for("active")) - killed_at
    standby.wait_idle()
    assert took_over < LEASE + 1.0  # its flock died with it: no need to wait for expiry
    acked = active.acked()
    assert len(acked) >= 16
    final = _final_states(store)
    for wid in acked:
        state, steps = final[wid]
        assert state is WorkflowState.SUCCEEDED, wid
        assert all(s.state is StepState.SUCCEEDED for s in steps.values())


def test_a_paused_runtime_that_lost_its_lease_commits_nothing_when_it_wakes(
    tmp_path: pathlib.Path, daemons: list[Daemon]
) -> None:
    store, effects = tmp_path / "store", tmp_path / "effects"
    active = Daemon(store, effects, HA_START="16", HA_STEP="0.3")
    daemons.append(active)
    active.wait_for("active")
    standby = Daemon(store, effects, standby=True, HA_WATCH="1")
    daemons.append(standby)
    standby.wait_for("standby")
    active.wait_for("started all")  # 16 workflows, 8 attempts running at a time
    stopped_at = time.time()
    active.proc.send_signal(signal.SIGSTOP)
    took_over = _active_at(standby.wait_for("active")) - stopped_at
    standby.wait_idle()
    before = _dump(store)
    active.proc.send_signal(signal.SIGCONT)
    code = active.proc.wait(timeout=WAIT)
    if code == -signal.SIGKILL:
        # Stopped inside a commit, it held LMDB's writer mutex: the standby fenced it
        # (test_a_holder_stopped_inside_a_commit_is_fenced covers that path for sure).
        assert any("fencing pid" in line for line in standby.errors)
        assert took_over < LEASE + 2.0
    else:
        assert code == 1  # deposed: it stops instead of writing
        assert any("no longer holds the store's lease" in line for line in active.errors)
        assert took_over < LEASE + 1.0  # the lease had at most LEASE seconds left
    assert _dump(store) == before  # not one transition of the woken runtime landed
    final = _final_states(store)
    assert set(final) == {f"w-{i}" for i in range(16)}
    for state, steps in final.values():
        assert state is WorkflowState.SUCCEEDED
        for st in steps.values():
            # The recorded result is the answer of the attempt the record says succeeded;
            # an answer of the deposed runtime's (re-run) attempt would carry an old token.
            assert st.state is StepState.SUCCEEDED
            assert st.done_token is not None
            assert st.result["token"] >> 32 == st.done_token >> 32


HOLDER = """
import ctypes, os, signal, sys, threading
from herder.store import Store
ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: die with the test, even stopped
store = Store(sys.argv[1], lease=float(sys.argv[2]))
print("open", flush=True)
# Renew the lease as a live runtime does until told to go: else the standby could find it
# lapsed (and take it) before this process is inside its commit.
lock, go = threading.Lock(), threading.Event()
def renew():
    while not go.wait(store.lease_duration / 4):
        with lock:
            if not go.is_set():
                store.renew_lease().result()
threading.Thread(target=renew, daemon=True).start()
sys.stdin.readline()
with lock:
    go.set()
    store.renew_lease().result()  # the standby's lease clock restarts from this record
    txn = store._env.begin(write=True)  # what a commit holds while it fsyncs
print("holding", flush=True)
os.kill(os.getpid(), signal.SIGSTOP)
"""


def test_a_holder_stopped_inside_a_commit_is_fenced_by_the_standby(
    tmp_path: pathlib.Path,
) -> None:
    store = tmp_path / "store"
    holder = _script(HOLDER, str(store), str(LEASE))
    try:
        assert holder.stdin is not None
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "open"
        with Runtime(store, standby=True, lease=LEASE, standby_poll=0.02) as standby:
            try:
                holder.stdin.write("go\n")
                holder.stdin.flush()
                assert holder.stdout.readline().strip() == "holding"
                # Its writer mutex blocks even the attempt to take the lease until it is gone.
                assert standby.wait_active(LEASE + 5.0)
                assert holder.wait(timeout=WAIT) == -signal.SIGKILL
                lease = standby._store.read_lease()
                assert lease is not None
                assert lease.pid == os.getpid()
            finally:
                # Before the standby closes: a holder stopped inside a commit blocks that.
                _kill(holder)
    finally:
        _kill(holder)


WRITING = """
import ctypes, signal, sys
from herder.store import Store
ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: die with the test
store = Store(sys.argv[1], lease=60.0)
print("open", flush=True)
sys.stdin.readline()
txn = store._env.begin(write=True)  # LMDB's writer lock, as a long commit holds it
print("writing", flush=True)
sys.stdin.readline()
"""


def test_a_standby_refuses_a_lock_mdb_deleted_under_the_running_runtime(
    tmp_path: pathlib.Path,
) -> None:
    # A "stale lock" clean-up deleted LMDB's lock file under the holder: a standby opened
    # then made a writer mutex of its own, so its writes (its open's, its take of the
    # lease) did not wait for the holder's; one stopped inside a commit was neither
    # waited for nor fenced, and both wrote the store at once.
    store = tmp_path / "store"
    holder = _script(WRITING, str(store))
    try:
        assert holder.stdin is not None
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "open"
        (store / "lock.mdb").unlink()
        holder.stdin.write("go\n")
        holder.stdin.flush()
        assert holder.stdout.readline().strip() == "writing"  # under its lock.mdb
        with pytest.raises(StoreError, match=r"lock\.mdb is not the one the running runtime"):
            Store(store, standby=True).close()
    finally:
        _kill(holder)


def test_a_standby_polls_a_held_lease_without_taking_the_writer_lock(
    tmp_path: pathlib.Path,
) -> None:
    # Each poll took LMDB's writer lock to look at the lease: a standby stopped (SIGSTOP, a
    # debugger, a frozen container) inside that write stopped every commit of the healthy
    # holder until it resumed. Here the holder has the lock: a poll must not wait for it.
    store = tmp_path / "store"
    holder = _script(WRITING, str(store))
    assert holder.stdin is not None
    assert holder.stdout is not None
    try:
        assert holder.stdout.readline().strip() == "open"
        with Store(store, standby=True) as standby:  # (opening needs the writer lock)
            holder.stdin.write("go\n")
            holder.stdin.flush()
            assert holder.stdout.readline().strip() == "writing"
            polled: list[str | None] = []
            poll = threading.Thread(target=lambda: polled.append(standby.try_take_lease()))
            poll.start()
            poll.join(timeout=5.0)
            waited = poll.is_alive()
            _kill(holder)  # (frees the lock: a poll that waited for it ends)
            poll.join(timeout=WAIT)
            assert not waited, "the poll waited for the holder's writer lock"
            assert polled == [None]  # the lease is held: nothing taken
    finally:
        _kill(holder)


def _kill(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.kill()  # SIGKILL ends a stopped process too
    proc.wait(timeout=WAIT)


LONG_COMMIT = """
import ctypes, signal, sys
from herder.store import Store
ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: die with the test
store = Store(sys.argv[1], lease=float(sys.argv[2]))
print("open", flush=True)
sys.stdin.readline()
def commit(txn):  # a long one, as of a start_many of 100,000 workflows
    print("writing", flush=True)
    sys.stdin.readline()
store._write_direct(commit, "cannot write to")
sys.stdin.readline()
try:
    store.renew_lease().result(timeout=30)  # (the renewal the commit held up)
    print("renewed", flush=True)
except Exception as exc:
    print("lost", type(exc).__name__, flush=True)
sys.stdin.readline()
"""


def test_a_standby_does_not_depose_a_holder_whose_long_commit_outlasts_its_lease(
    tmp_path: pathlib.Path,
) -> None:
    # A start_many of 100,000 workflows held the writer lock ~7 s: the lease went
    # unrenewed for longer than its 5 s, the standby's take waited for the lock, and took
    # the lease from the healthy holder right after its commit (its renewal queued behind).
    store = tmp_path / "store"
    holder = _script(LONG_COMMIT, str(store), str(LEASE))
    try:
        assert holder.stdin is not None
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "open"
        # (Its polls two seconds apart: the renewal lands between two.)
        with Runtime(store, standby=True, lease=LEASE, standby_poll=2.0) as standby:
            holder.stdin.write("go\n")
            holder.stdin.flush()
            assert holder.stdout.readline().strip() == "writing"
            watcher = standby._watcher
            assert watcher is not None
            pause, give_up = threading.Event(), time.monotonic() + WAIT
            while True:  # until the lease lapsed and the standby's take waits for the lock
                since = watcher._attempt_since
                if since is not None and time.monotonic() - since > 0.3:  # (a commit takes ms)
                    break
                assert time.monotonic() < give_up, "the standby never tried to take the lease"
                pause.wait(0.01)
            holder.stdin.write("commit\n")
            holder.stdin.flush()
            while watcher._attempt_since is not None:  # the take, once the commit let it go
                assert time.monotonic() < give_up, "the standby's take never ended"
                pause.wait(0.01)
            holder.stdin.write("renew\n")
            holder.stdin.flush()
            assert holder.stdout.readline().strip() == "renewed"
            assert not standby.is_active
            holder.stdin.write("end\n")
            holder.stdin.flush()
            assert holder.wait(timeout=WAIT) == 0  # it exits: now the standby takes over
            assert standby.wait_active(WAIT)
    finally:
        _kill(holder)


FORKING = """
import ctypes, os, signal, sys
from herder.store import StandbyMark, Store
ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: die with the test
store = Store(sys.argv[1])
mark = StandbyMark(sys.argv[2])  # (a waiting standby's, held in another directory here)
if os.fork() == 0:  # an agent's worker process: multiprocessing's fork, a process pool
    print(os.getpid(), flush=True)  # (it runs: past what a fork's child does first)
    os.read(0, 1)  # until the test closes our stdin (it outlives us: a fork's child
    os._exit(0)  # does not inherit the death signal)
sys.stdin.readline()
"""


def test_a_process_an_agent_forked_does_not_keep_the_store_locked_after_the_runtime_died(
    tmp_path: pathlib.Path,
) -> None:
    # The flocks of herder.lock and herder.standby belong to the open file, which fork()
    # shares: a ProcessPoolExecutor's worker that outlived its SIGKILLed runtime kept the
    # store locked, and every restart was refused (StoreLocked: "a running herder
    # runtime") for as long as it lived.
    from herder.store import standby_waiting

    store, other = tmp_path / "store", tmp_path / "other"
    other.mkdir()
    holder = _script(FORKING, str(store), str(other))
    child = None
    try:
        assert holder.stdout is not None
        child = int(holder.stdout.readline())
        assert standby_waiting(other)
        _kill(holder)
        os.kill(child, 0)  # (it lives on)
        assert not standby_waiting(other)
        with Store(store) as st:  # a restart opens it
            assert st.lease is not None
            assert st.lease.after == "holder gone"
    finally:
        _kill(holder)
        if child is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)


def test_a_forked_child_closing_its_parents_store_closes_no_other_file(
    tmp_path: pathlib.Path,
) -> None:
    # The child closed its copy of the lock at the fork: the number may name another
    # file by the time it closes the Store it inherited.
    store = Store(tmp_path / "store", standby=True)  # (no writer thread to wait for)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report, and exit without pytest's teardown
        ok = b"0"
        with contextlib.suppress(BaseException):
            r, w = os.pipe()  # (numbered as the lock's descriptor was)
            store.close()
            os.write(w, b"x")
            ok = b"1" if os.read(r, 1) == b"x" else b"0"
        os.write(write, ok)
        os._exit(0)
    os.close(write)
    try:
        os.waitpid(pid, 0)
        assert os.read(read, 1) == b"1"
    finally:
        os.close(read)
        store.close()


def test_handoff_under_load_loses_and_repeats_no_step(
    tmp_path: pathlib.Path, daemons: list[Daemon]
) -> None:
    store, effects = tmp_path / "store", tmp_path / "effects"
    active = Daemon(store, effects, HA_START="60", HA_STEP="0.05", HA_PACE="0.02")
    daemons.append(active)
    active.wait_for("active")
    standby = Daemon(store, effects, standby=True, HA_WATCH="1")
    daemons.append(standby)
    standby.wait_for("standby")
    active.wait_for("start w-10")
    cli = [sys.executable, "-m", "herder.runtime", "handoff", "--store", str(store)]
    handoff = subprocess.run(
        [*cli, "--deadline", "10"],
        capture_output=True,
        text=True,
        timeout=WAIT,
        check=False,
    )
    assert handoff.returncode == 0, handoff.stderr
    assert "handed over in" in handoff.stdout
    assert active.proc.wait(timeout=WAIT) == 0
    standby.wait_for("active")
    standby.wait_idle()
    # It took over because the lease was handed to it, not because the lease expired.
    # How fast (about a second) is benchmarks/handoff.py's to measure, not a test's.
    assert any("(released)" in line for line in standby.errors), standby.errors[-10:]
    acked = active.acked()
    assert len(acked) >= 11
    final = _final_states(store)
    assert acked <= set(final)  # nothing acknowledged was lost
    for state, steps in final.values():  # also those started during the drain
        assert state is WorkflowState.SUCCEEDED
        assert all(s.state is StepState.SUCCEEDED and s.attempt == 1 for s in steps.values())
    ran = _effects(effects)
    assert ran == Counter({(wid, step): 1 for wid in final for step in "abc"})


def test_a_handoff_asked_of_a_holder_that_died_meanwhile_does_not_stop_the_new_one(
    tmp_path: pathlib.Path, daemons: list[Daemon], monkeypatch: pytest.MonkeyPatch
) -> None:
    # `herder handoff` looks at the lease, then writes its request. The holder it looked
    # at was killed in between and the standby took over: the request, to nobody in
    # particular, was the new holder's to hear, which handed over to nobody and exited 0
    # (the service down), while the command said the handoff went well.
    from herder.runtime import _daemon
    from herder.store._leaseholder import LeaseHolder

    store, effects = tmp_path / "store", tmp_path / "effects"
    active = Daemon(store, effects)
    daemons.append(active)
    active.wait_for("active")
    standby = Daemon(store, effects, standby=True, HA_POLLS="4")
    daemons.append(standby)
    standby.wait_for("standby")
    ask = LeaseHolder.request_handoff

    def ask_after_the_takeover(st: Store, *args: Any, **kwargs: Any) -> Any:
        active.proc.kill()  # between the command's look at the lease and its write
        active.proc.wait(timeout=WAIT)
        standby.wait_for("active")
        return ask(st, *args, **kwargs)

    monkeypatch.setattr(LeaseHolder, "request_handoff", ask_after_the_takeover)
    out = io.StringIO()
    assert _daemon.request_handoff(str(store), 1.0, WAIT, out) == 0, out.getvalue()
    # It said "handed over ... pid N holds the lease now", as if the holder asked had.
    said = f"pid {active.proc.pid} went away without handing over (it died); a standby took"
    assert said in out.getvalue(), out.getvalue()
    assert f"pid {standby.proc.pid} holds the lease now" in out.getvalue()
    # The new holder reads the request at every sweep: let it sweep 8 more times (a
    # line every 4; the last one printed may not have been read yet) and leave it be.
    printed = sum(line.startswith("polled ") for line in standby.seen)
    standby.wait_for(f"polled {4 * (printed + 3)}")
    assert standby.proc.poll() is None, standby.errors[-10:]
    assert not any("handoff requested" in line for line in standby.errors)
    with Store(store, readonly=True) as st:
        lease = st.read_lease()
    assert lease is not None
    assert lease.pid == standby.proc.pid
    assert not lease.released


def test_the_next_holders_tokens_start_above_a_long_running_holders(
    tmp_path: pathlib.Path, daemons: list[Daemon]
) -> None:
    # Tokens are (incarnation << 32) + n. After 2**32 of them (10 days at 1,000 steps/s)
    # the holder's passed into the next incarnation's range, and the standby that took
    # over from it issued tokens equal to some of its, and below its last: an external
    # service fencing by token refused the new holder. `herder check` called the store
    # damaged ("token from a future incarnation") all the while.
    store, effects = tmp_path / "store", tmp_path / "effects"
    # The active runtime holds every action that starts once its tokens passed the range:
    # killed at whatever moment a loaded machine gets there, it leaves work to the standby
    # (it had run all 60 workflows first, now and then: "the standby ran nothing").
    active = Daemon(
        store,
        effects,
        HA_START="60",
        HA_STEP="0.3",
        HA_TOKENS_LEFT="100",
        HA_HOLD_PAST_RANGE="1",
        HA_POLLS="8",
    )
    daemons.append(active)
    active.wait_for("active")
    standby = Daemon(store, effects, standby=True, HA_WATCH="1")
    daemons.append(standby)
    standby.wait_for("standby")
    active.wait_for("range passed")
    active.wait_for("polled")  # sweeps since: its lease renewed, and more
    check = [sys.executable, "-m", "herder.runtime", "check", "--store", str(store)]
    checked = subprocess.run(check, capture_output=True, text=True, timeout=WAIT, check=False)
    assert checked.returncode == 0, checked.stdout[-2000:]
    active.proc.kill()
    active.proc.wait(timeout=WAIT)
    standby.wait_for("active")
    standby.wait_idle()
    ran = [line.split() for line in effects.read_text().splitlines()]
    old = [int(token) for _, _, token, pid, _ in ran if pid == str(active.proc.pid)]
    new = [int(token) for _, _, token, pid, _ in ran if pid == str(standby.proc.pid)]
    assert old
    assert max(old) >> 32 == (min(old) >> 32) + 1  # (they passed into the next range)
    assert new, "the standby ran nothing: kill the active runtime earlier"
    assert min(new) > max(old)


NEWER = """
import sys
from herder.store import Put, Store, Transition
from herder.store._codec import encode
from herder.store._records import SCHEMA_VERSION
store = Store(sys.argv[1], lease=float(sys.argv[2]))
print("holding", flush=True)
sys.stdin.readline()
# As a newer herder's take of the lease does: the store marked with its newer schema.
mark = Transition(ops=(Put("meta", b"schema", encode(SCHEMA_VERSION + 1)),))
store.writer.submit(mark).result(timeout=30)
print("marked", flush=True)
sys.stdin.readline()  # (SIGKILLed)
"""


def test_a_standby_does_not_take_over_a_store_a_newer_herder_held_since_it_opened(
    tmp_path: pathlib.Path,
) -> None:
    # The schema was read at the standby's open only: a newer herder that held the store
    # meanwhile (a rolling upgrade, this standby left behind) marked it with its schema,
    # and when it died this standby took the store over and wrote it as it misread it.
    store = tmp_path / "store"
    newer = _script(NEWER, str(store), str(LEASE))
    assert newer.stdin is not None
    assert newer.stdout is not None
    try:
        assert newer.stdout.readline() == "holding\n"
        with Runtime(store, standby=True, lease=LEASE, standby_poll=0.02) as standby:
            newer.stdin.write("\n")
            newer.stdin.flush()
            assert newer.stdout.readline() == "marked\n"
            newer.kill()  # its flock freed: the standby's next poll may take the lease
            newer.wait(timeout=WAIT)
            assert not standby.wait_active(WAIT)
            assert isinstance(standby._fatal, SchemaTooNew), standby._fatal
            lease = standby._store.read_lease()
            assert lease is not None
            assert lease.pid == newer.pid  # nothing taken
    finally:
        newer.kill()
        newer.wait(timeout=WAIT)


RACER = """
import sys, threading, time
from herder.runtime import Runtime
from herder.store import Store
store = Store(sys.argv[1], standby=True)
threading.Event().wait(max(0.0, float(sys.argv[2]) - time.time()))
print("won" if store.try_take_lease() else "lost", store.incarnation, flush=True)
sys.stdin.read()  # stay alive (a dead holder's lease is free) until every racer tried
import os; os._exit(0)  # keep the lease: no release at close
"""


def test_of_processes_racing_for_a_free_lease_exactly_one_wins(tmp_path: pathlib.Path) -> None:
    store = tmp_path / "store"
    with Store(store) as st:
        incarnation = st.incarnation
    go = time.time() + 2.0  # past every racer's imports
    racers = [_script(RACER, str(store), str(go)) for _ in range(4)]
    results = []
    for racer in racers:
        assert racer.stdout is not None
        results.append(racer.stdout.readline().split())
    for racer in racers:
        racer.communicate(timeout=WAIT)
    assert sorted(r[0] for r in results) == ["lost", "lost", "lost", "won"]
    winner = next(r for r in results if r[0] == "won")
    assert int(winner[1]) == incarnation + 1
    with Store(store, readonly=True) as st:
        lease = st.read_lease()
        assert st.incarnation == incarnation + 1
    assert lease is not None
    assert lease.incarnation == incarnation + 1


def test_herder_run_speaks_the_systemd_notify_protocol(
    tmp_path: pathlib.Path, daemons: list[Daemon]
) -> None:
    name = f"herder-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(WAIT)
        daemon = Daemon(
            tmp_path / "store",
            tmp_path / "effects",
            NOTIFY_SOCKET="@" + name,
            WATCHDOG_USEC="100000",
        )
        daemons.append(daemon)
        got: list[str] = []

        def receive_until(word: str) -> None:
            while not any(word in m for m in got):
                got.append(sock.recv(4096).decode())

        receive_until("READY=1")
        assert "STATUS=active" in got[-1]
        got.clear()
        receive_until("WATCHDOG=1")
        receive_until("WATCHDOG=1")  # the sweep keeps pinging: not a one-off
        assert got.count("WATCHDOG=1") >= 1
        daemon.proc.send_signal(signal.SIGTERM)
        receive_until("STOPPING=1")
    assert daemon.proc.wait(timeout=WAIT) == 0


def test_herder_run_stops_on_sigterm_while_systemd_reads_no_more_notifications(
    tmp_path: pathlib.Path, daemons: list[Daemon]
) -> None:
    # Once the notify socket's queue was full (systemd busy, or a notify proxy that
    # stopped reading after READY=1), each send waited for room for ever: the watchdog's
    # ping hung the Supervisor's sweep, and the STOPPING=1 at exit the main thread, so
    # the daemon never exited after its SIGTERM (systemd had to SIGKILL it).
    name = f"herder-test-{uuid.uuid4().hex}"
    with (
        socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock,
        socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as filler,
    ):
        sock.bind("\0" + name)
        sock.settimeout(WAIT)
        daemon = Daemon(
            tmp_path / "store", tmp_path / "effects", NOTIFY_SOCKET="@" + name, WATCHDOG_USEC="1"
        )
        daemons.append(daemon)
        while "READY=1" not in sock.recv(4096).decode():
            pass
        filler.connect("\0" + name)
        filler.setblocking(False)
        with contextlib.suppress(BlockingIOError):  # from now on nobody reads
            while True:
                filler.send(b"STATUS=filling")
        daemon.wait_for("active")
        daemon.proc.send_signal(signal.SIGTERM)
        assert daemon.proc.wait(timeout=WAIT) == 0, daemon.errors[-5:]
    assert "stopped" in daemon.seen


def test_a_sigterm_without_a_drain_stops_cleanly_and_releases_the_lease(
    tmp_path: pathlib.Path, daemons: list[Daemon]
) -> None:
    # --drain-timeout 0 (running attempts are not waited for) bounded the actors' stop and
    # the store's close by 0 s too: the store was left open, its lease not released, and
    # herder run exited 1 blaming "a stalled disk?".
    store, effects = tmp_path / "store", tmp_path / "effects"
    daemon = Daemon(store, effects, drain="0", HA_START="2", HA_STEP="20")
    daemons.append(daemon)
    daemon.wait_for("started all")
    daemon.proc.send_signal(signal.SIGTERM)
    assert daemon.proc.wait(timeout=WAIT) == 0, daemon.errors[-5:]
    assert "stopped" in daemon.seen
    with Store(store, readonly=True) as st:
        lease = st.read_lease()
    assert lease is not None
    assert lease.released


def test_a_standby_asks_for_the_handoff_itself_and_takes_over(
    tmp_path: pathlib.Path, daemons: list[Daemon]
) -> None:
    store, effects = tmp_path / "store", tmp_path / "effects"
    active = Daemon(store, effects, HA_START="5", HA_STEP="0.01")
    daemons.append(active)
    active.wait_for("started all")
    with Runtime(store, standby=True, lease=LEASE, standby_poll=0.02) as standby:
        assert not standby.is_active
        assert standby.handoff(deadline=5.0, timeout=WAIT)
        assert standby.is_active
        assert active.proc.wait(timeout=WAIT) == 0  # it handed over and exited cleanly
        lease = standby._store.read_lease()
        assert lease is not None
        assert lease.pid == os.getpid()


def test_a_result_awaited_on_a_standby_resolves_when_the_active_runtime_ends_it(
    tmp_path: pathlib.Path, daemons: list[Daemon]
) -> None:
    # A standby heard of finals only from its own Scheduler: a caller waiting there on a
    # workflow the active runtime ended waited until the standby took over, forever while
    # the active one stayed healthy, though status() said it had ended.
    store, effects = tmp_path / "store", tmp_path / "effects"
    active = Daemon(store, effects, HA_START="1", HA_STEP="0.5", HA_AWAIT="1")
    daemons.append(active)
    active.wait_for("start w-0")
    with Runtime(store, standby=True, lease=LEASE, standby_poll=0.02) as standby:
        outcome: list[Any] = []
        waiting = threading.Thread(
            target=lambda: outcome.append(standby.handle("w-0").result(timeout=2 * WAIT))
        )
        waiting.start()
        active.wait_for("ended w-0")  # (its 3 steps of 0.5 s began before the wait did)
        waiting.join(timeout=WAIT)
        assert not waiting.is_alive()
        assert set(outcome[0]) == {"a", "b", "c"}
        assert not standby.is_active  # still the standby: the active one ended it
        assert active.proc.poll() is None


WAITER = """
import sys, threading
from _child_kit import say
from herder.runtime import Runtime
import ha_app
rt = Runtime(sys.argv[1], standby=True, lease=1.0, standby_poll=0.02, setup=ha_app.build)
def wait():
    try:
        say(f"result {rt.handle('w-0').result(timeout=60)}")
    except Exception as exc:
        say(f"raised {type(exc).__name__}: {exc}")
threading.Thread(target=wait, daemon=True).start()
pause = threading.Event()
while "w-0" not in rt._waiters:
    pause.wait(0.01)
say(f"waiting {rt.status('w-0').state}")
threading.Event().wait()
"""


def test_a_result_awaited_on_a_standby_says_so_when_the_workflow_ended_and_was_purged(
    tmp_path: pathlib.Path, daemons: list[Daemon]
) -> None:
    # Ended and purged between two of the standby's polls (here: while it was stopped),
    # the record was gone when it looked, and its waiter waited for ever.
    store, effects = tmp_path / "store", tmp_path / "effects"
    active = Daemon(store, effects, HA_START="1", HA_STEP="1.0", HA_AWAIT="1")
    daemons.append(active)
    active.wait_for("start w-0")
    standby = Child(["-c", WAITER, str(store)], cwd=TESTS, env={"HA_EFFECTS": str(effects)})
    try:
        assert standby.wait_for("waiting", WAIT) == "waiting RUNNING"
        os.kill(standby.proc.pid, signal.SIGSTOP)
        try:
            active.wait_for("ended w-0")
            purge = ["-m", "herder.runtime", "purge", "--store", str(store), "--older-than", "0s"]
            done = subprocess.run(
                [sys.executable, *purge], capture_output=True, timeout=WAIT, check=False
            )
            assert done.returncode == 0, done
        finally:
            os.kill(standby.proc.pid, signal.SIGCONT)
        said = standby.wait_for("raised", WAIT)
        assert said.startswith("raised UnknownWorkflow: workflow 'w-0' ended, and was deleted")
    finally:
        standby.kill(WAIT)


def test_a_forced_handoff_says_at_once_that_the_holder_stopped_and_nobody_takes_over(
    tmp_path: pathlib.Path, daemons: list[Daemon]
) -> None:
    # Stopped while it drained (no standby: --force), it waited the whole --wait, then
    # said only that the lease did not move.
    store, effects = tmp_path / "store", tmp_path / "effects"
    active = Daemon(store, effects, HA_START="1", HA_STEP="60")  # an attempt to drain
    daemons.append(active)
    active.wait_for("start w-0")
    ask = ["-m", "herder.runtime", "handoff", "--store", str(store), "--force", "--wait", "600"]
    handoff = Child(ask, cwd=TESTS)
    try:
        handoff.wait_for("asked", WAIT)
        os.kill(active.proc.pid, signal.SIGSTOP)
        assert handoff.proc.wait(timeout=WAIT) == 1
        said = "\n".join(handoff.errors)
        assert f"(pid {active.proc.pid}) is stopped" in said
        assert f"kill -CONT {active.proc.pid}" in said
    finally:
        handoff.kill(WAIT)


def test_a_handoff_whose_standby_died_meanwhile_says_nobody_serves_the_store(
    tmp_path: pathlib.Path, daemons: list[Daemon]
) -> None:
    # Asked with a standby waiting, which died while the runtime drained: the runtime
    # released the lease and exited 0 (not restarted under Restart=on-failure), and the
    # command exited 0 too, saying only that no standby had taken the lease "yet".
    store, effects = tmp_path / "store", tmp_path / "effects"
    active = Daemon(store, effects, HA_START="1", HA_STEP="2")  # an attempt to drain
    daemons.append(active)
    active.wait_for("start w-0")
    standby = Daemon(store, effects, standby=True)
    daemons.append(standby)
    standby.wait_for("standby")
    handoff = Child(["-m", "herder.runtime", "handoff", "--store", str(store)], cwd=TESTS)
    try:
        handoff.wait_for("asked", WAIT)
        standby.proc.kill()
        standby.proc.wait(timeout=WAIT)
        assert handoff.proc.wait(timeout=WAIT) == 1
        assert active.proc.wait(timeout=WAIT) == 0  # (it handed over, to nobody)
        said = "\n".join(handoff.errors)
        assert f"pid {active.proc.pid} handed over and stopped, but no standby waits" in said
    finally:
        handoff.kill(WAIT)


class Echo(Agent):
    def echo(self, ctx: StepContext) -> object:
        return ctx.input


@pytest.mark.timeout(90)
def test_a_start_racing_a_standbys_recovery_takes_one_slot_of_max_active_workflows(
    tmp_path: pathlib.Path, daemons: list[Daemon], monkeypatch: pytest.MonkeyPatch
) -> None:
    # start() was let in once the standby's actors ran, before its recovery had counted
    # the store's unfinished workflows: one stored first was counted by both, and its
    # end gave back one slot of the two. Here recovery is slow to begin (a long fsync).
    from herder.actors._recovery import Recovery

    store = tmp_path / "store"
    holder = Daemon(store, tmp_path / "effects")
    daemons.append(holder)
    holder.wait_for("active")
    started, real = threading.Event(), Recovery.recover_all

    def slow_to_begin(recovery: Recovery) -> None:
        if recovery._chunks is None:
            started.wait(2.0)  # (elapses when start() is refused meanwhile, as it should)
        real(recovery)

    monkeypatch.setattr(Recovery, "recover_all", slow_to_begin)

    def setup(rt: Runtime) -> None:
        rt.add_agent("echo", Echo)
        rt.add_workflow(Workflow("echo").step("only", agent="echo", action="echo"))

    with Runtime(
        store, standby=True, lease=LEASE, standby_poll=0.02, max_active_workflows=1, setup=setup
    ) as standby:

        def racer() -> None:
            pause = threading.Event()  # never set: paces the tries
            while True:
                try:
                    standby.start("echo", 1, workflow_id="racer")
                except NotActive:
                    pause.wait(0.001)
                    continue
                started.set()
                return

        racing = threading.Thread(target=racer, daemon=True)
        racing.start()
        holder.proc.kill()
        assert standby.wait_active(WAIT)
        racing.join(WAIT)
        assert standby.handle("racer").result(timeout=WAIT) == {"only": 1}
        # Its one slot is back: the only one there is.
        assert standby.start("echo", 2, timeout=10.0).result(timeout=WAIT) == {"only": 2}


def test_a_standby_under_systemd_is_ready_as_standby_then_reports_active(
    tmp_path: pathlib.Path, daemons: list[Daemon]
) -> None:
    store, effects = tmp_path / "store", tmp_path / "effects"
    active = Daemon(store, effects)
    daemons.append(active)
    active.wait_for("active")
    name = f"herder-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(WAIT)
        standby = Daemon(store, effects, standby=True, NOTIFY_SOCKET="@" + name)
        daemons.append(standby)
        ready = sock.recv(4096).decode()
        assert "READY=1" in ready
        assert "STATUS=standby" in ready
        active.proc.kill()
        while "STATUS=active" not in (message := sock.recv(4096).decode()):
            assert "STOPPING" not in message


@pytest.mark.parametrize("stepped", ["standby", "active"])
def test_a_wall_clock_step_larger_than_the_lease_deposes_no_healthy_runtime(
    tmp_path: pathlib.Path, daemons: list[Daemon], stepped: str
) -> None:
    # The standby's clock jumps ten leases ahead (its old expiry test then saw the lease
    # as long expired), or the active's jumps ten leases back (it then renewed the lease
    # with an expiry already past): either way nothing changes hands (issue 14, defect 5).
    store, effects = tmp_path / "store", tmp_path / "effects"
    step = {"standby": 10 * LEASE, "active": -10 * LEASE}
    active = Daemon(
        store,
        effects,
        HA_START="30",
        HA_PACE="0.1",
        **({"HA_WALL_STEP": str(step["active"])} if stepped == "active" else {}),
    )
    daemons.append(active)
    active.wait_for("active")
    standby = Daemon(
        store,
        effects,
        standby=True,
        HA_POLLS="60",  # three leases of polls at 0.05 s
        **({"HA_WALL_STEP": str(step["standby"])} if stepped == "standby" else {}),
    )
    daemons.append(standby)
    standby.wait_for("standby")
    standby.wait_for("polled 60")
    active.wait_for("started all")
    assert not [line for line in standby.seen if line.startswith("active")], standby.errors
    assert not [line for line in active.seen if line.startswith("refused")], active.errors
    assert active.proc.poll() is None
    assert standby.proc.poll() is None
    ran = _effects(effects)
    assert ran
    assert max(ran.values()) == 1  # nothing ran twice
    pids = {line.split()[3] for line in effects.read_text().splitlines()}
    assert pids == {str(active.proc.pid)}


def test_two_threads_releasing_the_standby_mark_close_its_file_once(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The watcher (on takeover) and stop() may release it at once: both read the fd
    # before either cleared it, and the second close could hit a reused descriptor.
    from herder.store import _standby

    mark = _standby.StandbyMark(tmp_path)
    fd = mark.__dict__.pop("_fd")
    both_read = threading.Event()
    readers: list[str] = []

    class Racy(_standby.StandbyMark):
        @property
        def _fd(self) -> int | None:
            value = self.__dict__.get("fd", fd)
            readers.append(threading.current_thread().name)
            if len(readers) == 1:  # the first reader waits for the second one's read
                both_read.wait(timeout=0.5)  # (it never comes while a lock holds it off)
            else:
                both_read.set()
            return value

        @_fd.setter
        def _fd(self, value: int | None) -> None:
            self.__dict__["fd"] = value

    mark.__class__ = Racy
    closed: list[int] = []
    monkeypatch.setattr(_standby.os, "close", closed.append)
    threads = [threading.Thread(target=mark.release) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert closed == [fd]
    os.close(fd)


def test_a_standby_whose_handoff_another_standby_won_hears_it_at_once(
    tmp_path: pathlib.Path, daemons: list[Daemon], monkeypatch: pytest.MonkeyPatch
) -> None:
    # rt.handoff() on a standby waited out its whole timeout before it returned False,
    # long after another standby had taken the lease.
    store, effects = tmp_path / "store", tmp_path / "effects"
    active = Daemon(store, effects)
    daemons.append(active)
    active.wait_for("active")
    other = Daemon(store, effects, standby=True)
    daemons.append(other)
    other.wait_for("standby")
    with Runtime(store, standby=True, lease=LEASE, standby_poll=0.02) as standby:
        monkeypatch.setattr(standby._store, "try_take_lease", lambda *a, **k: None)  # it loses
        began = time.monotonic()
        assert standby.handoff(deadline=1.0, timeout=WAIT) is False
        assert time.monotonic() - began < WAIT / 2  # (it waited all WAIT s before)
        other.wait_for("active")
        assert not standby.is_active
        lease = standby._store.read_lease()
        assert lease is not None
        assert lease.pid == other.proc.pid


OPENED = """
import ctypes, signal, sys
from herder.store import Store
ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: die with the test
store = Store(sys.argv[1], lease=float(sys.argv[2]))
print("open", flush=True)
sys.stdin.readline()
"""


def test_a_standby_whose_takeover_fails_stops_the_actors_it_started(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Its actors ran on after the failure (here: the schedules' thread could not start):
    # their sweeps renewed the lease for ever, so no other standby could take over from a
    # runtime that refused every call ("the runtime failed and stopped its actors").
    from herder.runtime._firing import Firer

    def cannot_start(self: Firer) -> None:
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(Firer, "start", cannot_start)
    store = tmp_path / "store"
    holder = _script(OPENED, str(store), str(LEASE))
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "open"
        with Runtime(store, standby=True, lease=LEASE, standby_poll=0.02) as standby:
            _kill(holder)
            assert not standby.wait_active(WAIT)  # it took the lease, then failed
            assert isinstance(standby._fatal, RuntimeError)
            root = standby._root
            assert root is not None
            assert root.actor_stopped.wait(10.0), "its actors run on, renewing the lease"
    finally:
        _kill(holder)
