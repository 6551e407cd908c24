"""Offline store operations with other processes around (the store-operations review of
session 14): ``compact`` never swaps a file under another opener and never drops a write
made while it copied; ``purge`` writes into no foreign environment and marks no older
store with this schema; a ``data.mdb`` cut short is refused instead of killing the
process with SIGBUS."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import lmdb
import pytest

from herder.runtime import Agent, Runtime, StepContext, StoreError, StoreLocked, Workflow
from herder.store import Put, Store, Transition, _compact, encode
from herder.store._open import open_existing

HERDER = str(Path(sys.executable).parent / "herder")
WAIT = 30.0
pytestmark = pytest.mark.timeout(120)


def herder(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [HERDER, *argv], capture_output=True, text=True, timeout=WAIT * 2, check=False
    )


class Service(Agent):
    def go(self, ctx: StepContext) -> None:
        return None


@pytest.fixture
def store(tmp_path: Path) -> Path:
    """A store with 200 workflow records (enough pages to truncate), no runtime on it."""
    path = tmp_path / "s"
    with Runtime(path) as rt:
        rt.add_agent("svc", Service)
        rt.add_workflow(Workflow("flow").step("a", agent="svc", action="go"))
        for i in range(200):  # each waits a day for its first step, its record written
            rt.start("flow", {"pad": "x" * 500}, workflow_id=f"w{i:03d}", delay=86400)
    return path


def workflow_ids(path: Path) -> int:
    with Store(path, readonly=True) as s:
        return len(list(s.workflows()))


class Reader:
    """Another process with the store open read-only, as `herder ui` or a script."""

    def __init__(self, path: Path) -> None:
        code = (
            "import sys, herder.store as h\n"
            f"s = h.Store({str(path)!r}, readonly=True)\n"
            "print(len(list(s.workflows())), flush=True)\n"
            "sys.stdin.read()\n"
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert self.proc.stdout is not None
        self.saw = int(self.proc.stdout.readline())  # (open once it said what it read)

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(WAIT)


def test_compact_refuses_while_another_process_has_the_store_open(store: Path) -> None:
    # A reader kept the old file mapped, and LMDB's lock table the old file's commit
    # counter: the next runtime read the compacted file as an empty store, about half
    # the time, and `herder check` called it fine.
    reader = Reader(store)
    try:
        assert reader.saw == 200
        done = herder("compact", "--store", str(store))
        assert done.returncode == 1
        assert "another process has it open" in done.stderr
        assert "left as it was" in done.stderr
    finally:
        reader.close()
    assert herder("compact", "--store", str(store)).returncode == 0  # alone, it runs
    assert workflow_ids(store) == 200
    with Runtime(store) as rt:
        assert len(rt.list()) == 200


def test_compact_gives_up_when_the_store_is_opened_while_it_copies(
    store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A standby started during a compact took over on the old, unlinked file: all it ran
    # was lost at the swap.
    before = (store / "data.mdb").read_bytes()
    counted = _compact.census
    readers: list[Reader] = []

    def open_meanwhile(path: Path) -> tuple[dict[str, int], int]:
        if path.name == _compact.TMP:
            readers.append(Reader(store))
        return counted(path)

    monkeypatch.setattr(_compact, "census", open_meanwhile)
    try:
        with pytest.raises(StoreLocked, match="another process opened it while it was copied"):
            _compact.compact(store)
    finally:
        for reader in readers:
            reader.close()
    assert (store / "data.mdb").read_bytes() == before
    assert not (store / _compact.TMP).exists()


def test_compact_gives_up_when_a_write_lands_while_it_copies(
    store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An operator's command queued during the copy (exit 3, "it stays queued") went into
    # the old file after the copy was taken, and vanished with it. Commands now refuse
    # while a compact runs (below); a writer that does not know it (an older herder, one
    # that began before the compact) is what this guards against.
    counted = _compact.census

    def command_meanwhile(path: Path) -> tuple[dict[str, int], int]:
        if path.name == _compact.TMP:
            env, handles = open_existing(store, write=True)
            with env.begin(write=True) as txn:
                txn.put(b"probe", encode(1), db=handles["meta"])
            env.close()
        return counted(path)

    monkeypatch.setattr(_compact, "census", command_meanwhile)
    with pytest.raises(StoreLocked, match="it was written while it was copied"):
        _compact.compact(store)
    with Store(store, readonly=True) as s:
        assert s.get("meta", b"probe") is not None


def test_while_compact_runs_others_are_told_so_and_queue_nothing(
    store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # During a compact, `herder retry` said the runtime would apply its command (exit 3)
    # and the command vanished with the old file; a Runtime was told a runtime held the
    # store and advised to open a standby, which then ran on the old file; a second
    # compact blamed a runtime (the store review, session 14).
    counted = _compact.census
    said: dict[str, subprocess.CompletedProcess[str]] = {}

    def others_meanwhile(path: Path) -> tuple[dict[str, int], int]:
        if path.name == _compact.TMP:
            said["retry"] = herder("retry", "w001", "--store", str(store), "--why", "x")
            said["compact"] = herder("compact", "--store", str(store))
            opening = f"from herder.runtime import Runtime; Runtime({str(store)!r})"
            said["runtime"] = subprocess.run(
                [sys.executable, "-c", opening],
                capture_output=True,
                text=True,
                timeout=WAIT,
                check=False,
            )
        return counted(path)

    monkeypatch.setattr(_compact, "census", others_meanwhile)
    _compact.compact(store)  # nobody wrote or opened it meanwhile: it went through
    pid = f"pid {os.getpid()}"
    assert said["retry"].returncode == 1
    assert f"being compacted (`herder compact`, {pid}); nothing was queued" in (
        said["retry"].stderr
    )
    assert said["compact"].returncode == 1
    assert f"another compact ({pid}) runs" in said["compact"].stderr
    assert said["runtime"].returncode == 1
    assert f"is being compacted (`herder compact`, {pid})" in said["runtime"].stderr
    with Store(store, readonly=True) as s:
        assert s.count("commands") == 0
    assert not (store / "herder.compacting").exists()


KILLED_MID_COPY = """
import sys
from herder.store import _compact
def copying(root, tmp, *args):
    (tmp / "data.mdb").write_bytes(bytes(1 << 20))  # (part of the copy)
    print("copying", flush=True)
    sys.stdin.read()  # (until SIGKILLed)
_compact._copy = copying
_compact.compact(sys.argv[1])
"""


def test_the_mark_of_a_killed_compact_holds_up_nothing_once_its_pid_is_reused(
    store: Path, tmp_path: Path
) -> None:
    """A compact killed mid-copy (SIGKILL, a power cut) leaves its mark naming its pid.
    Once another process has that pid (after a reboot, pids start over), the mark named
    a live process, so every operator command was refused, with or without a runtime
    on the store, as "being compacted (pid N)": "run the command again once that ends",
    which it never did. A compact holds the store's flock while it runs: a mark without
    it is a killed one's, and a runtime that takes the flock deletes it, and the killed
    one's partial copy, which stayed until the next compact."""
    script = tmp_path / "killed_compact.py"
    script.write_text(KILLED_MID_COPY)
    proc = subprocess.Popen(
        [sys.executable, str(script), str(store)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "copying"
    finally:
        proc.kill()
        proc.wait(WAIT)
    mark, copy = store / "herder.compacting", store / "compact.tmp"
    assert mark.read_text().strip() == str(proc.pid)
    assert copy.exists()
    alive = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
    )
    try:
        mark.write_text(f"{alive.pid}\n")  # its pid, now another process's
        queued = herder("retry", "w001", "--store", str(store), "--why", "x", "--timeout", "0.1")
        assert queued.returncode == 3, queued.stderr  # (queued: no runtime holds the store)
        with Runtime(store) as rt:
            rt.add_agent("svc", Service)
            rt.add_workflow(Workflow("flow").step("a", agent="svc", action="go"))
            assert not mark.exists()
            assert not copy.exists()  # (as large as the store: gone, not left until a compact)
            done = herder("cancel", "w002", "--store", str(store), "--why", "x")
            assert done.returncode == 0, done.stderr
            assert rt.status("w002").state == "CANCELLED"
    finally:
        assert alive.stdin is not None
        alive.stdin.close()
        alive.wait(WAIT)


@pytest.mark.skipif(os.geteuid() != 0, reason="changing a file's owner needs root")
def test_compact_run_as_root_keeps_the_owner_of_the_store(store: Path) -> None:
    for f in store.iterdir():
        os.chown(f, 65534, 65534)
    assert herder("compact", "--store", str(store)).returncode == 0
    st = (store / "data.mdb").stat()
    assert (st.st_uid, st.st_gid) == (65534, 65534)


def test_a_data_file_cut_short_is_refused_not_a_sigbus(store: Path) -> None:
    data = store / "data.mdb"
    os.truncate(data, data.stat().st_size // 2)
    for command, code in (("check", 3), ("ls", 1), ("compact", 1)):  # (check: could not)
        done = herder(command, "--store", str(store))
        assert done.returncode == code, (command, done.returncode, done.stderr)
        assert "was cut short" in done.stderr
    with pytest.raises(StoreError, match="Restore a backup"):
        Store(store, readonly=True)


def test_purge_writes_nothing_into_an_lmdb_environment_that_is_not_a_store(
    tmp_path: Path,
) -> None:
    foreign = tmp_path / "other"
    env = lmdb.open(str(foreign))
    with env.begin(write=True) as txn:
        txn.put(b"k", b"v")
    env.close()
    done = herder("purge", "--store", str(foreign), "--older-than", "1d")
    assert done.returncode == 1
    assert "is not a herder store" in done.stderr
    env = lmdb.open(str(foreign), readonly=True)
    with env.begin() as txn:
        assert [k for k, _ in txn.cursor()] == [b"k"]  # no databases added
    env.close()


def test_purge_does_not_mark_a_store_of_an_older_herder(store: Path) -> None:
    with Store(store) as raw:  # as an older herder left it
        put = Put("meta", b"schema", encode(2))
        raw.writer.submit(Transition(ops=(put,))).result(timeout=WAIT)
    done = herder("purge", "--store", str(store), "--older-than", "1d")
    assert done.returncode == 1
    assert "from an older herder" in done.stderr
    with Store(store, readonly=True) as s:
        assert s.schema_version == 2
    assert herder("purge", "--store", str(store), "--older-than", "1d", "--dry-run").returncode == 0


def test_a_purge_stopped_by_a_full_disk_says_what_it_deleted_before(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # It said only "nothing of this batch was written", though earlier batches had
    # deleted 500 workflows (the store review, session 14).
    from herder.store import StoreIOError, _retention, purge

    path = tmp_path / "done"
    with Runtime(path) as rt:
        rt.add_agent("svc", Service)
        rt.add_workflow(Workflow("flow").step("a", agent="svc", action="go"))
        for i in range(5):
            rt.start("flow", workflow_id=f"d{i}").result(timeout=WAIT)
    real, batches = _retention.commit_group, []

    def full_after_one(*args: Any) -> list[BaseException | None]:
        batches.append(1)
        if len(batches) > 1:
            raise StoreIOError("commit failed: MDB_MAP_FULL; nothing of this batch was written")
        return real(*args)

    monkeypatch.setattr(_retention, "commit_group", full_after_one)
    with Store(path) as store, pytest.raises(StoreIOError) as stopped:
        purge(store, 2**40, batch=2)
    assert "The 2 workflows deleted before it stay deleted; run the purge again" in str(
        stopped.value
    )
