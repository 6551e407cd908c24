"""A reader process SIGKILLed inside a read transaction leaves a stale slot in LMDB's
reader table; a stale slot pins old pages so the file grows without bound. Opening the
store reclaims it (``Environment.reader_check()``)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from herder.store import Put, Store, Transition, encode

READER = """
import sys
from herder.store import Store
store = Store(sys.argv[1], readonly=True)
txn = store._env.begin()  # a read transaction that is never ended
txn.get(b"k", db=store._handles["meta"])
print("reading", flush=True)
sys.stdin.read()
"""


def kill_inside_a_read(path: Path) -> int:
    """Run a reader process, SIGKILL it inside its read transaction; return its pid."""
    reader = subprocess.Popen(
        [sys.executable, "-c", READER, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert reader.stdout is not None
        assert reader.stdout.readline().strip() == "reading"
        os.kill(reader.pid, signal.SIGKILL)
    finally:
        reader.wait(timeout=10)
    return reader.pid


def pids(store: Store) -> set[int]:
    """PIDs in the reader table (a header line, then "pid thread txnid" rows)."""
    rows = store._env.readers().splitlines()[1:]  # type: ignore[union-attr]
    return {int(row.split()[0]) for row in rows if row.strip()}


def test_a_stale_reader_slot_of_a_killed_process_is_reclaimed(tmp_path: Path) -> None:
    path = tmp_path / "s"
    # The slot outlives its process only while another process has the store open (the
    # last one to open resets the table), so this process plays the running daemon.
    with Store(path) as store:
        store.writer.submit(Transition(ops=(Put("meta", b"k", encode(1)),))).result(10)
        dead = kill_inside_a_read(path)
        assert dead in pids(store)
        # Any open reclaims it: here a read-only open in another process, as `herder ls`.
        subprocess.run(
            [sys.executable, "-m", "herder.runtime", "stats", "--store", str(path)],
            capture_output=True,
            timeout=60,
            check=True,
        )
        assert dead not in pids(store)
        # And the running store itself reclaims slots (its Supervisor calls this).
        dead = kill_inside_a_read(path)
        assert dead in pids(store)
        assert store.reclaim_readers() == 1
        assert dead not in pids(store)
        for i in range(50):  # the writer works on
            store.writer.submit(Transition(ops=(Put("meta", b"k", encode(i)),))).result(10)
