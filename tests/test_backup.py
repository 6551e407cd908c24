"""``herder backup``: a copy of a store as of one commit, taken while a runtime writes it
(a ``cp`` of a live ``data.mdb`` copies pages of different commits: opened, it said "not
a herder store" or killed ``herder check`` with an assertion in LMDB), never left half
written where it would pass for a backup."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import lmdb
import pytest

from herder.runtime import Agent, Runtime, StepContext, StoreError, Workflow
from herder.runtime.testing import check_store
from herder.store import Store

HERDER = str(Path(sys.executable).parent / "herder")
WAIT = 30.0
pytestmark = pytest.mark.timeout(120)

WRITER = """
import sys
from herder.runtime import Agent, Runtime, Workflow
class Service(Agent):
    def go(self, ctx):
        return "r" * 300
def setup(rt):
    rt.add_agent("svc", Service)
    rt.add_workflow(Workflow("flow").step("a", agent="svc", action="go"))
with Runtime(sys.argv[1], setup=setup) as rt:
    i = 0
    while True:  # durable batches, each id printed once start_many returned
        ids = [f"w{i}-{j}" for j in range(50)]
        rt.start_many([{"workflow": "flow", "input": {"pad": "x" * 500}, "workflow_id": w}
                       for w in ids])
        print(" ".join(ids), flush=True)
        i += 1
"""


class Service(Agent):
    def go(self, ctx: StepContext) -> str:
        return "r"


def herder(*argv: str, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [HERDER, *argv],
        capture_output=True,
        text=True,
        timeout=WAIT * 2,
        check=False,
        **kw,  # type: ignore[arg-type]
    )


def test_backup_while_a_runtime_writes_is_a_whole_store(tmp_path: Path) -> None:
    store = tmp_path / "s"
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(store)], stdout=subprocess.PIPE, text=True
    )
    assert writer.stdout is not None
    try:
        acked: list[str] = []
        copies = []
        for n in range(3):
            for _ in range(10):  # batches committed (records rewritten, pages reused)
                acked += writer.stdout.readline().split()
            assert writer.poll() is None, "the writer stopped (its stderr is above)"
            copy = tmp_path / f"copy{n}"
            done = herder("backup", "--store", str(store), str(copy))
            assert done.returncode == 0, done.stderr
            assert f"backed up {store} into {copy}" in done.stdout
            assert sorted(os.listdir(copy)) == ["data.mdb"]
            copies.append((copy, list(acked)))
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait(WAIT)
    for copy, before in copies:
        report = check_store(copy)
        assert report.problems == [], report.problems
        with Store(copy, readonly=True) as copied:
            held = {w.id for w in copied.workflows()}
        missing = set(before) - held  # every workflow acknowledged before the copy began
        assert not missing, f"{copy}: {len(missing)} of {len(before)} missing"
    copy, before = copies[-1]
    with Runtime(copy) as rt:  # a runtime takes the copy over as it is
        rt.add_agent("svc", Service)
        rt.add_workflow(Workflow("flow").step("a", agent="svc", action="go"))
        assert rt.handle(before[-1]).result(timeout=WAIT * 2)["a"] in ("r", "r" * 300)


def test_backup_refuses_a_directory_that_holds_a_store(tmp_path: Path) -> None:
    store = tmp_path / "s"
    with Runtime(store):
        pass
    other = tmp_path / "other"
    with Runtime(other):
        pass
    before = (other / "data.mdb").read_bytes()
    done = herder("backup", "--store", str(store), str(other))
    assert done.returncode == 1
    assert "holds a store already" in done.stderr
    assert "new or empty directory" in done.stderr
    assert "Traceback" not in done.stderr
    assert (other / "data.mdb").read_bytes() == before


def _small_files() -> None:
    # A disk that fills up mid-copy: writes past 64 KiB fail with EFBIG (Python ignores
    # SIGXFSZ); the store's own lock.mdb exists already and is not grown.
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 16, 1 << 16))


def test_a_backup_cut_off_leaves_no_copy(tmp_path: Path) -> None:
    store = tmp_path / "s"
    with Runtime(store) as rt:
        rt.add_agent("svc", Service)
        rt.add_workflow(Workflow("flow").step("a", agent="svc", action="go"))
        rt.start_many(
            [
                {"workflow": "flow", "input": {"pad": "x" * 2000}, "workflow_id": f"w{i}"}
                for i in range(300)
            ]
        )
    copy = tmp_path / "copy"
    done = herder("backup", "--store", str(store), str(copy), preexec_fn=_small_files)
    assert done.returncode == 1, done.stderr
    assert "cannot back up" in done.stderr
    assert "Traceback" not in done.stderr
    assert os.listdir(copy) == []  # no data.mdb cut short, no backup.tmp
    done = herder("backup", "--store", str(store), str(copy))  # with room, it is written
    assert done.returncode == 0, done.stderr
    assert check_store(copy).problems == []


def test_a_torn_copy_is_not_only_called_a_foreign_store(tmp_path: Path) -> None:
    # A cp of a live data.mdb whose main database lost the names of herder's databases
    # (its root page copied from another commit) was called "not a herder store: check
    # --store", sending the operator to look for another directory; it may be this one,
    # damaged, and the way out is a backup made by herder backup.
    store = tmp_path / "s"
    with Runtime(store):
        pass
    env = lmdb.open(str(store), max_dbs=16)
    with env.begin(write=True) as txn:
        for name in (b"workflows", b"meta"):
            txn.drop(env.open_db(name, txn=txn, create=False), delete=True)
    env.close()
    before = (store / "data.mdb").read_bytes()
    done = herder("ls", "--store", str(store))
    assert done.returncode == 1
    with pytest.raises(StoreError) as opened:
        Runtime(store)
    for said in (done.stderr, str(opened.value)):
        assert "not a herder store, or a damaged one" in said
        assert "restore a backup" in said
        assert "herder backup" in said
        assert "nothing was written" in said
    assert (store / "data.mdb").read_bytes() == before
