"""Opening a store: locks, permissions, schema, incarnation, corrupt records."""

from __future__ import annotations

import os
import pathlib
import stat
import subprocess
import sys

import lmdb
import msgpack
import pytest

from herder.store import (
    SCHEMA_VERSION,
    InvalidInput,
    LeaseLost,
    Put,
    SchemaTooNew,
    Store,
    StoreCorrupt,
    StoreError,
    StoreLocked,
    Transition,
    WorkflowRecord,
    compact,
    encode,
    pending_commands,
    step_key,
)

CHILD = pathlib.Path(__file__).with_name("store_child.py")


def raw_put(path: pathlib.Path, db: bytes, key: bytes, value: bytes) -> None:
    """Write bytes behind the store's back (the Store must be closed)."""
    env = lmdb.open(str(path), max_dbs=8)
    try:
        with env.begin(write=True) as txn:
            txn.put(key, value, db=env.open_db(db, txn=txn))
    finally:
        env.close()


def test_store_dir_is_0700_and_its_files_0600(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "deep" / "s"
    with Store(path):
        assert stat.S_IMODE(path.stat().st_mode) == 0o700
        names = sorted(p.name for p in path.iterdir())
        assert names == ["data.mdb", "herder.lock", "lock.mdb"]
        for p in path.iterdir():
            assert stat.S_IMODE(p.stat().st_mode) == 0o600, p


def test_a_group_writable_store_dir_is_refused(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "s"
    path.mkdir()
    path.chmod(0o770)
    with pytest.raises(StoreError, match="chmod 700"):
        Store(path)


def test_a_store_directory_another_process_made_meanwhile_is_opened(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A runtime and its standby started together on a new store both found no
    # directory, and the one that made it second failed: "cannot create store
    # directory ...: File exists" (18 of 60 such races of two processes).
    path = tmp_path / "store"
    made = pathlib.Path.mkdir

    def raced(self: pathlib.Path, *args: object, **kwargs: object) -> None:
        if self == path and not self.exists():
            made(self, 0o700)  # (the other process, between the look and this mkdir)
        made(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(pathlib.Path, "mkdir", raced)
    with Store(path) as store:
        assert store.incarnation == 1
    monkeypatch.undo()
    assert stat.S_IMODE(path.stat().st_mode) == 0o700


def test_incarnation_increments_on_every_writer_open_but_not_readonly(
    tmp_path: pathlib.Path,
) -> None:
    seen = []
    for _ in range(3):
        with Store(tmp_path / "s") as s:
            seen.append(s.incarnation)
            assert s.schema_version == SCHEMA_VERSION
    with Store(tmp_path / "s", readonly=True) as ro:
        seen.append(ro.incarnation)
    assert seen == [1, 2, 3, 3]


def test_a_newer_schema_is_refused_by_writer_and_reader(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "s"
    Store(path).close()
    raw_put(path, b"meta", b"schema", encode(SCHEMA_VERSION + 1))
    with pytest.raises(SchemaTooNew, match="upgrade herder"):
        Store(path)
    with pytest.raises(SchemaTooNew):
        Store(path, readonly=True)
    raw_put(path, b"meta", b"schema", encode(SCHEMA_VERSION))
    with Store(path) as s:  # the refusal released lock and registry
        assert s.incarnation == 2  # the refused open did not bump it


def test_a_newer_schema_is_refused_before_anything_is_created_in_it(
    tmp_path: pathlib.Path,
) -> None:
    # A newer herder may have done without a database this one has: the refused open
    # created it (empty) before it read the schema.
    path = tmp_path / "s"
    Store(path).close()
    env = lmdb.open(str(path), max_dbs=16)
    with env.begin(write=True) as txn:
        txn.drop(env.open_db(b"resources", txn=txn), delete=True)
        txn.put(b"schema", encode(SCHEMA_VERSION + 1), db=env.open_db(b"meta", txn=txn))
    env.close()
    with pytest.raises(SchemaTooNew, match="upgrade herder"):
        Store(path)
    env = lmdb.open(str(path), max_dbs=16, readonly=True)
    try:
        with pytest.raises(lmdb.NotFoundError):
            env.open_db(b"resources", create=False)
    finally:
        env.close()


def test_a_damaged_meta_record_sends_the_user_to_a_backup_not_to_check(
    tmp_path: pathlib.Path,
) -> None:
    # The message pointed to `herder check`, which fails on the same record when it opens
    # the store: the user went round in a circle.
    path = tmp_path / "s"
    with Store(path):
        pass
    raw_put(path, b"meta", b"incarnation", b"\xc1\x00\x00\x00\x00")
    with pytest.raises(StoreCorrupt) as info:
        Store(path).close()
    assert info.value.db == "meta"
    assert "inspect it with `herder check" not in str(info.value)
    assert "restore the store from a backup" in str(info.value)


def test_a_corrupt_record_raises_store_corrupt_naming_it_and_others_stay_readable(
    tmp_path: pathlib.Path,
) -> None:
    path = tmp_path / "s"
    good = WorkflowRecord(id="good", name="n", version=1, input=None)
    with Store(path) as s:
        s.writer.submit(Transition((Put("workflows", b"good", encode(good.to_dict())),))).result(10)
    raw_put(path, b"workflows", b"bad", b"\xc1garbage")
    raw_put(path, b"workflows", b"half", encode({"v": 1, "id": "half"}))
    raw_put(path, b"steps", step_key("good", "x"), encode({"state": "NOPE"}))
    with Store(path) as s:
        with pytest.raises(StoreCorrupt) as info:
            s.get_workflow("bad")
        assert (info.value.db, info.value.key) == ("workflows", b"bad")
        assert "b'bad'" in str(info.value)
        with pytest.raises(StoreCorrupt, match="bad record") as info:
            s.get_workflow("half")
        assert info.value.key == b"half"
        with pytest.raises(StoreCorrupt) as info:
            s.steps_of("good")
        assert info.value.db == "steps"
        assert s.get_workflow("good") == good
        with pytest.raises(StoreCorrupt):
            list(s.workflows())
        corrupt: list[StoreCorrupt] = []
        assert [w.id for w in s.workflows(corrupt=corrupt)] == ["good"]
        assert sorted(c.key for c in corrupt) == [b"bad", b"half"]


def test_unknown_database_names_are_invalid_input(tmp_path: pathlib.Path) -> None:
    with Store(tmp_path / "s") as s:
        with pytest.raises(InvalidInput, match="unknown database"):
            s.get("nope", b"k")
        with pytest.raises(InvalidInput):
            s.count("nope")


def test_second_open_in_the_same_process_is_refused(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "s"
    with Store(path):
        with pytest.raises(StoreLocked, match="already open in this process"):
            Store(path)
        with pytest.raises(StoreLocked):
            Store(tmp_path / "." / "s", readonly=True)
    Store(path).close()  # released on close


def test_a_second_runtime_on_a_store_in_the_same_process_is_told_what_to_do(
    tmp_path: pathlib.Path,
) -> None:
    from herder.runtime import Runtime  # (a Runtime user cannot share a Store object)

    with (
        Runtime(tmp_path / "s"),
        pytest.raises(StoreLocked, match="stop the Runtime that has it open before"),
    ):
        Runtime(tmp_path / "s")


def test_second_writer_process_is_refused_and_a_readonly_open_is_allowed(
    tmp_path: pathlib.Path,
) -> None:
    path = tmp_path / "s"

    def child_writer() -> str:
        out = subprocess.run(
            [sys.executable, str(CHILD), "try-writer", str(path)],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        return out.stdout.strip()

    with Store(path) as s:
        s.writer.submit(Transition((Put("meta", b"x", encode(1)),))).result(10)
        assert child_writer() == "StoreLocked"
        ro = subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys; from herder.store import Store\n"
                "with Store(sys.argv[1], readonly=True) as r: print(r.get('meta', b'x'))",
                str(path),
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        assert ro.stdout.strip() == "1"
    assert child_writer() == "opened"


def test_readonly_open_of_a_missing_store_says_so(tmp_path: pathlib.Path) -> None:
    with pytest.raises(StoreError, match="no store at"):
        Store(tmp_path / "nothing", readonly=True)
    assert not (tmp_path / "nothing").exists()
    with Store(tmp_path / "s") as s:
        s.close()
    with Store(tmp_path / "s", readonly=True) as ro, pytest.raises(StoreError, match="read-only"):
        _ = ro.writer
    assert os.listdir(tmp_path / "s")


def test_a_store_written_before_checksums_is_refused_clearly(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "s"
    Store(path).close()
    raw_put(path, b"meta", b"schema", msgpack.packb(1))  # schema 1: bare msgpack values
    with pytest.raises(StoreError, match="written before records carried checksums"):
        Store(path)


def test_a_client_open_appends_while_the_writer_runs_and_has_no_writer_itself(
    tmp_path: pathlib.Path,
) -> None:
    path = tmp_path / "s"
    with Store(path) as s:
        incarnation = s.incarnation
        client = subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys\n"
                "from herder.store import Store, StoreError, append_command, new_command\n"
                "with Store(sys.argv[1], mode='client') as c:\n"
                "    try:\n"
                "        c.writer\n"
                "    except StoreError as exc:\n"
                "        print('no writer:', 'as a client' in str(exc))\n"
                "command = new_command('retry', 'w1', who='t', why='test')\n"
                "print(append_command(sys.argv[1], command))\n",
                str(path),
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        assert client.stdout.split("\n")[:2] == ["no writer: True", "1"]
        assert [c["id"] for c in pending_commands(s)] == [1]
        assert s.read_lease() == s.lease  # the client took no lease
    with Store(path, readonly=True) as ro:
        assert ro.incarnation == incarnation  # nor an incarnation


def test_a_mode_that_does_not_exist_is_refused(tmp_path: pathlib.Path) -> None:
    with pytest.raises(InvalidInput, match="mode must be"):
        Store(tmp_path / "s", mode="sideways")  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="mode must be"):
        Store(tmp_path / "s", mode="client", readonly=True)


def test_a_store_path_that_cannot_be_looked_into_is_a_store_error(
    tmp_path: pathlib.Path,
) -> None:
    # Path.exists() and is_file() raise every errno but "not there" (ENOENT, ENOTDIR):
    # a path too long, or the 0700 store directory of another user (EACCES: see
    # test_cli_edges), escaped as a bare OSError, a traceback at the CLI.
    path = tmp_path / ("x" * 300)
    for mode in ("writer", "readonly", "client", "standby"):
        with pytest.raises(StoreError, match="File name too long"):
            Store(path, mode=mode)  # type: ignore[arg-type]
    with pytest.raises(StoreError, match="File name too long"):
        compact(path)


def test_a_deposed_writer_hears_lease_lost_after_its_successor_grew_the_store(
    tmp_path: pathlib.Path,
) -> None:
    # The successor (another process) wrote past the end of this writer's map: LMDB then
    # refuses this process's next write transaction with MDB_MAP_RESIZED before the lease
    # is read. The writer let that lmdb error through to every caller (not a HerderError,
    # and never LeaseLost, so a deposed runtime never learned it was deposed).
    path = tmp_path / "s"
    with Store(path, map_size=1 << 16) as store:
        store.writer.submit(Transition((Put("definitions", b"mine", encode(1)),))).result(10)
        grown = subprocess.run(
            [sys.executable, str(CHILD), "depose", str(path), str(1 << 20)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert grown.stdout == "grown\n", grown.stderr
        for _ in range(2):  # (every batch, not the first only)
            late = store.writer.submit(Transition((Put("definitions", b"late", encode(2)),)))
            with pytest.raises(LeaseLost):
                late.result(10)
    with Store(path, readonly=True) as ro:
        assert ro.get("definitions", b"late") is None
        assert ro.count("definitions") == (1 << 20) // 4000 + 1


def test_a_standby_takes_over_a_store_whose_map_its_holder_filled(tmp_path: pathlib.Path) -> None:
    # Taking the lease writes in the standby's own transaction (and indexes every
    # workflow of a store older than the `recent` index), which never grew the map: when
    # the holder had filled its map, each try failed with MDB_MAP_FULL ("check free
    # disk space"), and the standby, trying again every poll, never took over.
    path = tmp_path / "s"
    Store(path, map_size=1 << 16).close()
    env = lmdb.open(str(path), max_dbs=16, map_size=1 << 16)  # (LMDB keeps the largest)
    with env.begin(write=True) as txn:  # as the previous release left it: no index
        txn.delete(b"recent_index", db=env.open_db(b"meta", txn=txn))
    env.close()
    with Store(path, standby=True, map_size=1 << 16) as standby:
        filled = subprocess.run(
            [sys.executable, str(CHILD), "fill", str(path)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert filled.stdout.startswith("full "), filled.stderr
        written = int(filled.stdout.split()[1])
        assert standby.try_take_lease() == "released"
        assert standby.indexed
        assert len(list(standby.recent())) == written
        standby.writer.submit(Transition((Put("definitions", b"new", encode(1)),))).result(10)


FIRST_OPEN_ON_A_FULL_DISK = """
import resource, signal, sys
from herder.store import Store, StoreIOError
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # (EFBIG, as a full disk's ENOSPC)
resource.setrlimit(resource.RLIMIT_FSIZE, (8192, 8192))  # LMDB's two meta pages
try:
    Store(sys.argv[1])
except StoreIOError as exc:
    print(exc)
"""


def test_a_store_whose_first_open_failed_is_not_called_foreign(tmp_path: pathlib.Path) -> None:
    # A runtime whose very first open of a new store hit a full disk left an LMDB
    # environment with nothing committed; every reader then said it "is not a herder
    # store ...: check --store", of the right path.
    path = tmp_path / "s"
    done = subprocess.run(
        [sys.executable, "-c", FIRST_OPEN_ON_A_FULL_DISK, str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "check free disk space" in done.stdout, done.stdout + done.stderr
    for mode in ("readonly", "client"):
        with pytest.raises(StoreError, match=r"was never set up.*start a runtime on it") as e:
            Store(path, mode=mode)  # type: ignore[arg-type]
        assert "not a herder store" not in str(e.value)
    with Store(path) as store:  # (with room, a runtime sets it up, as the message says)
        assert store.count("workflows") == 0
    with Store(path, readonly=True) as store:
        assert store.incarnation == 1


@pytest.mark.parametrize("left", [0, 4096])  # (nothing, or the first of its two meta pages)
def test_a_store_whose_first_open_hit_a_full_disk_sooner_is_set_up_by_the_next_runtime(
    tmp_path: pathlib.Path, left: int
) -> None:
    # A disk that filled as LMDB wrote its first meta pages left data.mdb empty, or with
    # one of its two pages: readers said "Bad file descriptor", or that it was damaged
    # ("restore a backup": of a store that never held anything), and every runtime
    # opened to set it up after the disk was freed refused it the same way.
    path = tmp_path / "s"
    subprocess.run(  # (a store with its two meta pages and no commit, as above)
        [sys.executable, "-c", FIRST_OPEN_ON_A_FULL_DISK, str(path)],
        capture_output=True,
        timeout=60,
        check=True,
    )
    os.truncate(path / "data.mdb", left)  # (as the disk, filling sooner, left it)
    for mode in ("readonly", "client"):
        with pytest.raises(StoreError, match=r"was never set up.*start a runtime on it"):
            Store(path, mode=mode)  # type: ignore[arg-type]
    with Store(path) as store:  # the next runtime sets it up, as the message says
        assert store.count("workflows") == 0
    with Store(path, readonly=True) as store:
        assert store.incarnation == 1


def _foreign(path: pathlib.Path) -> pathlib.Path:
    """Another program's LMDB environment at ``path``: one key, ``user:1``."""
    env = lmdb.open(str(path))
    with env.begin(write=True) as txn:
        txn.put(b"user:1", b"ada")
    env.close()
    return path


def test_a_writer_open_refuses_another_programs_lmdb_environment_and_writes_nothing(
    tmp_path: pathlib.Path,
) -> None:
    # Runtime(path) pointed at another program's LMDB directory added herder's eleven
    # databases to it and ran on it; read-only opens and purge refused it already.
    path = _foreign(tmp_path / "other")
    path.chmod(0o700)
    with pytest.raises(StoreError, match=r"not a herder store.*nothing was written"):
        Store(path)
    env = lmdb.open(str(path), readonly=True)
    try:
        with env.begin() as txn:
            assert list(txn.cursor().iternext(values=False)) == [b"user:1"]
    finally:
        env.close()
    with Store(tmp_path / "empty") as store:  # an empty directory becomes a store, as ever
        assert store.count("workflows") == 0


def _listing(path: pathlib.Path) -> dict[str, tuple[int, float, bytes]]:
    """Each file of ``path``: its size, mtime and bytes."""
    return {p.name: (p.stat().st_size, p.stat().st_mtime, p.read_bytes()) for p in path.iterdir()}


@pytest.mark.timeout(60)
def test_a_read_only_open_of_a_directory_that_is_no_store_leaves_it_untouched(
    tmp_path: pathlib.Path,
) -> None:
    # `herder ls/stats/check/inbox --store DIR`, pointed at another program's LMDB
    # directory (its data.mdb without a lock.mdb, as a copy leaves it) or at a stray
    # data.mdb, created a lock.mdb there before it said "not a herder store ...;
    # nothing was written to it".
    other = _foreign(tmp_path / "other")
    (other / "lock.mdb").unlink()
    stray = tmp_path / "stray"
    stray.mkdir()
    (stray / "data.mdb").write_bytes(b"not lmdb " * 600)
    for path, says in ((other, "not a herder store"), (stray, "not an LMDB file")):
        before = _listing(path)
        for mode in ("readonly", "client"):
            with pytest.raises(StoreError, match=rf"{says}.*") as e:
                Store(path, mode=mode)  # type: ignore[arg-type]
            assert "nothing was written to it" in str(e.value)
            assert _listing(path) == before
    with Store(tmp_path / "s") as store:  # a store without its lock.mdb (a restored copy)
        store.writer.submit(Transition(ops=(Put("meta", b"k", encode(1)),))).result(timeout=30)
    (tmp_path / "s" / "lock.mdb").unlink()
    with Store(tmp_path / "s", readonly=True) as store:  # still opens
        assert store.get("meta", b"k") == 1
