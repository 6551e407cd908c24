"""Bad data already in the store: corrupt records, a newer schema, a vanished definition,
a store that is not ours to open. Each is reported by key or refused clearly, and
everything else keeps working."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import pytest

from herder.runtime import (
    Agent,
    RetryPolicy,
    Runtime,
    SchemaTooNew,
    State,
    StepContext,
    StepState,
    StoreCorrupt,
    StoreError,
    StoreLocked,
    Workflow,
)
from herder.runtime.testing import FakeClock, advance, wait_until
from herder.store import Put, StepRecord, Store, Transition, WorkflowRecord, encode
from herder.store._keys import definition_key, step_key, timer_key, workflow_key

WAIT = 10.0
RETRY = RetryPolicy(max_attempts=3, initial_interval=10.0, max_interval=10.0, jitter=0.0)
IDS = ("w0", "w1", "w2", "w3")


class Service(Agent):
    """Fails step a's first attempt, so each workflow waits on a retry timer."""

    def book(self, ctx: StepContext) -> str:
        if ctx.step == "a" and ctx.attempt == 1:
            raise RuntimeError("try again")
        return f"{ctx.workflow_id}/{ctx.step}"


def flow(version: int = 1) -> Workflow:
    return (
        Workflow("flow", version=version)
        .step("a", agent="svc", action="book", retry=RETRY)
        .step("b", agent="svc", action="book", after=["a"], retry=RETRY)
    )


def start_waiting(rt: Runtime, *ids: str) -> None:
    """Start workflows and return once each waits for its step a's retry."""
    for wid in ids:
        rt.start("flow", workflow_id=wid)
    wait_until(
        rt, lambda: all(rt.status(w).steps["a"].state is StepState.RETRY_WAIT for w in ids), WAIT
    )


def finish(rt: Runtime, clock: FakeClock, *ids: str) -> None:
    """Let the retries come due and check every workflow of ``ids`` succeeds."""
    advance(rt, clock, 20.0)
    for wid in ids:
        assert rt.handle(wid).result(timeout=WAIT) == {"a": f"{wid}/a", "b": f"{wid}/b"}


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store with four workflows, each waiting to retry step a (built once, copied)."""
    path = tmp_path_factory.mktemp("template") / "s"
    with Runtime(path, clock=FakeClock()) as rt:
        rt.add_agent("svc", Service)
        rt.add_workflow(flow())
        start_waiting(rt, *IDS)
    return path


@pytest.fixture
def seeded(template: Path, tmp_path: Path) -> Path:
    """A fresh copy of the template store (a closed LMDB store copies as files)."""
    path = tmp_path / "s"
    shutil.copytree(template, path)
    return path


def put_raw(path: Path, db: str, key: bytes, value: bytes) -> None:
    with Store(path) as store:
        store.writer.submit(Transition(ops=(Put(db, key, value),))).result(timeout=WAIT)


def flip(raw: bytes, inside: bytes) -> bytes:
    """``raw`` with the lowest bit of the first byte of ``inside`` flipped."""
    at = raw.index(inside)
    return raw[:at] + bytes([raw[at] ^ 1]) + raw[at + 1 :]


def edited(path: Path, db: str, key: bytes, *, as_map: bool = False, **changes: Any) -> bytes:
    """The stored record with ``changes``, in its stored (schema 3) layout or as a schema
    2 map, under a valid checksum: the reading code must notice the content."""
    with Store(path, readonly=True) as store:
        record = store.get(db, key)
    kind = WorkflowRecord if db == "workflows" else StepRecord
    if as_map:
        record = kind.from_dict(record).to_dict()
    if isinstance(record, dict):
        record.update(changes)
        return encode(record)
    names = [f.name for f in dataclasses.fields(kind)]
    for name, value in changes.items():
        record[1 + names.index(name)] = value
    return encode(record)


# (what is damaged, the database and key, how to make the bad bytes, the reason reported)
DAMAGE: list[tuple[str, str, bytes, Callable[[Path], bytes], str]] = [
    ("workflow record truncated", "workflows", workflow_key("w1"),
     lambda p: edited(p, "workflows", workflow_key("w1"))[:20], "checksum mismatch"),
    ("workflow record with one bit flipped in a string", "workflows", workflow_key("w1"),
     lambda p: flip(edited(p, "workflows", workflow_key("w1"), error="an error"), b"an error"),
     "checksum mismatch"),
    ("workflow record with a wrong field type", "workflows", workflow_key("w1"),
     lambda p: edited(p, "workflows", workflow_key("w1"), version="one"), "'version' is str"),
    ("workflow record under another id", "workflows", workflow_key("w1"),
     lambda p: edited(p, "workflows", workflow_key("w1"), id="w2"), "holds id 'w2'"),
    ("workflow record with an unknown state", "workflows", workflow_key("w1"),
     lambda p: edited(p, "workflows", workflow_key("w1"), state="DANCING"), "DANCING"),
    ("step record bit-flipped to an invalid byte", "steps", step_key("w1", "a"),
     lambda p: b"\xc1" + edited(p, "steps", step_key("w1", "a"))[1:], "checksum mismatch"),
    ("step record with trailing garbage", "steps", step_key("w1", "a"),
     lambda p: edited(p, "steps", step_key("w1", "a")) + b"\x00junk", "checksum mismatch"),
    ("step record without a checksum", "steps", step_key("w1", "a"),
     lambda p: msgpack.packb({"v": 2, "state": "PENDING"}), "checksum mismatch"),
    ("step record with a wrong field type", "steps", step_key("w1", "a"),
     lambda p: edited(p, "steps", step_key("w1", "a"), attempt="many"), "'attempt' is str"),
    ("step record that is not a record", "steps", step_key("w1", "a"),
     lambda p: encode("a step"), "expected a record"),
    ("step record array of another schema", "steps", step_key("w1", "a"),
     lambda p: encode([2, *range(18)]), "schema 3"),
    ("step record array cut short", "steps", step_key("w1", "a"),
     lambda p: encode(msgpack.unpackb(edited(p, "steps", step_key("w1", "a"))[:-4])[:9]),
     "schema 3"),
    ("schema 2 step map with a wrong field type", "steps", step_key("w1", "a"),
     lambda p: edited(p, "steps", step_key("w1", "a"), as_map=True, attempt="many"),
     "'attempt' is str"),
    ("schema 2 workflow map with an unknown state", "workflows", workflow_key("w1"),
     lambda p: edited(p, "workflows", workflow_key("w1"), as_map=True, state="DANCING"),
     "DANCING"),
]  # fmt: skip


@pytest.mark.parametrize(("db", "key", "bad", "reason"), [d[1:] for d in DAMAGE],
                         ids=[d[0] for d in DAMAGE])  # fmt: skip
def test_a_corrupt_record_is_reported_by_key_and_every_other_workflow_finishes(
    seeded: Path, db: str, key: bytes, bad: Callable[[Path], bytes], reason: str
) -> None:
    path = seeded
    put_raw(path, db, key, bad(path))
    clock = FakeClock()
    with Runtime(path, clock=clock) as rt:
        rt.add_agent("svc", Service)
        rt.add_workflow(flow())
        finish(rt, clock, "w0", "w2", "w3")
        with pytest.raises(StoreCorrupt, match=reason) as raised:
            rt.status("w1")
        assert raised.value.db == db
        assert raised.value.key == key
        # A waiter hears it at once: the workflow can never end (it waited out its timeout).
        with pytest.raises(StoreCorrupt, match=reason):
            rt.handle("w1").result(timeout=5.0)
        assert [s.id for s in rt.list()] == ["w0", "w2", "w3"]
        stats = rt.stats()
        assert f"{db}:{key!r}" in stats["corrupt"]
        assert set(stats["restarts"].values()) == {0}
        start_waiting(rt, "new")
        finish(rt, clock, "new")


def test_the_cli_lists_the_rest_and_names_each_corrupt_record(
    seeded: Path,
) -> None:
    path = seeded
    put_raw(path, "workflows", workflow_key("w1"), b"\x85\xa1v")
    put_raw(path, "steps", step_key("w2", "a"), b"\xc1")
    ls = _cli("ls", "--json", "--store", str(path))
    assert ls.returncode == 0
    assert sorted(w["id"] for w in json.loads(ls.stdout)) == ["w0", "w3"]
    assert "skipped: corrupt record in database 'workflows' at key b'w1'" in ls.stderr
    assert "skipped: corrupt record in database 'steps' at key b'w2\\x00a'" in ls.stderr
    stats = _cli("stats", "--json", "--store", str(path))
    assert stats.returncode == 0
    assert json.loads(stats.stdout)["corrupt"] == 2
    show = _cli("show", "w2", "--store", str(path))
    assert show.returncode == 1
    assert "corrupt record in database 'steps'" in show.stderr
    # One damaged record, of a workflow not parked, made the whole inbox fail (exit 1):
    # the store review, D4. It is left out and named, as ls does.
    inbox = _cli("inbox", "--json", "--store", str(path))
    assert inbox.returncode == 0, inbox.stderr
    assert json.loads(inbox.stdout) == []
    assert "skipped: corrupt record in database 'workflows' at key b'w1'" in inbox.stderr


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "herder.runtime", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_a_corrupt_timer_entry_is_skipped_and_the_retries_still_run(
    seeded: Path,
) -> None:
    path = seeded
    put_raw(path, "timers", b"\x00\x01", b"\xc1")  # a key too short and a bad value
    put_raw(path, "timers", timer_key(5, "w0", "a"), b"\xc1")
    clock = FakeClock()
    with Runtime(path, clock=clock) as rt:
        rt.add_agent("svc", Service)
        rt.add_workflow(flow())
        finish(rt, clock, *IDS)


def test_a_corrupt_stored_definition_is_named_when_it_is_registered(
    seeded: Path,
) -> None:
    path = seeded
    put_raw(path, "definitions", definition_key("flow", 1), encode({"v": 2}))
    with Runtime(path, clock=FakeClock()) as rt:
        rt.add_agent("svc", Service)
        with pytest.raises(StoreCorrupt, match="'definitions'") as raised:
            rt.add_workflow(flow())
        assert raised.value.key == definition_key("flow", 1)
        assert rt.status("w0").state is State.RUNNING  # still readable


def test_a_workflow_whose_definition_version_vanished_waits_and_is_reported(
    seeded: Path,
) -> None:
    path = seeded
    clock = FakeClock()
    with Runtime(path, clock=clock) as rt:
        rt.add_agent("svc", Service)
        rt.add_workflow(flow(version=2))  # the new code no longer has version 1
        start_waiting(rt, "v2")
        finish(rt, clock, "v2")
        assert rt.stats()["awaiting_definition"] == {"flow@1": 4}
        assert rt.status("w0").state is State.RUNNING
        rt.add_workflow(flow(version=1))  # brought back: the waiting ones resume
        finish(rt, clock, *IDS)
        assert rt.stats()["awaiting_definition"] == {}


def test_a_store_from_a_newer_schema_is_refused(
    seeded: Path,
) -> None:
    path = seeded
    put_raw(path, "meta", b"schema", encode(99))
    with pytest.raises(SchemaTooNew, match=r"schema version 99.*upgrade herder"):
        Runtime(path)
    assert _cli("ls", "--store", str(path)).returncode == 1


def test_a_store_directory_others_may_write_is_refused(seeded: Path, tmp_path: Path) -> None:
    path = seeded
    os.chmod(path, 0o770)
    with pytest.raises(StoreError, match=r"writable by group or others.*chmod 700"):
        Runtime(path)
    os.chmod(path, 0o700)
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(StoreError, match="not a directory"):
        Runtime(tmp_path / "file")
    (tmp_path / "junk").mkdir(mode=0o700)
    (tmp_path / "junk" / "data.mdb").write_bytes(b"this is no LMDB file" * 500)
    with pytest.raises(StoreError, match=r"damaged or foreign|Invalid"):
        Runtime(tmp_path / "junk")


def test_a_store_held_by_another_runtime_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s"
    with Runtime(path, clock=FakeClock()):
        with pytest.raises(StoreLocked, match="already open in this process"):
            Runtime(path)
        holder = subprocess.run(
            [sys.executable, "-c", f"from herder.runtime import Runtime; Runtime({str(path)!r})"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert holder.returncode != 0
        assert "StoreLocked" in holder.stderr
        assert "held by another process" in holder.stderr
    assert stat.S_IMODE(path.stat().st_mode) == 0o700


def test_check_reads_the_index_and_history_that_ls_and_show_read(seeded: Path) -> None:
    # A damaged `recent` or `history` value: check said "no problems" while ls (every row)
    # and show failed on it, and ls sent the operator to check (the store review, D3).
    with Store(seeded, readonly=True) as store:
        recent_key = next(key for key, _ in store.scan("recent"))
        history_key = next(key for key, _ in store.scan("history"))
    put_raw(seeded, "recent", recent_key, b"\xc1")
    put_raw(seeded, "history", history_key, b"\xc1")
    check = _cli("check", "--json", "--store", str(seeded))
    assert check.returncode == 1
    damaged = sorted(p["db"] for p in json.loads(check.stdout)["problems"])
    assert damaged == ["history", "meta", "meta", "recent"]  # (meta: the counts by state)
    ls = _cli("ls", "--json", "--store", str(seeded))
    assert ls.returncode == 0, ls.stderr  # every row was lost to one index value before
    assert sorted(w["id"] for w in json.loads(ls.stdout)) == ["w0", "w1", "w2", "w3"]


def test_show_tells_the_rest_of_a_history_with_one_damaged_event(seeded: Path) -> None:
    # One damaged event made `herder show` (and rt.history) fail outright: the workflow's
    # steps and state could not be seen at all. A value of another kind was left out.
    with Store(seeded, readonly=True) as store:
        keys = [key for key, _ in store.scan("history", workflow_key("w1"))]
        step = store.view(lambda snap: snap.raw("steps", step_key("w1", "a")))
    put_raw(seeded, "history", keys[0], b"\xc1")
    put_raw(seeded, "history", keys[1], step)  # (a step record: no history event)
    show = _cli("show", "w1", "--json", "--store", str(seeded))
    assert show.returncode == 0, show.stderr
    history = json.loads(show.stdout)["history"]
    assert len(history) == len(keys)
    assert [e["kind"] for e in history[:2]] == ["damaged", "damaged"]
    assert "no room for a body" in history[0]["error"]
    assert history[1]["error"] == "not a history event"
    assert [e["seq"] for e in history] == sorted(e["seq"] for e in history)
    text = _cli("show", "w1", "--store", str(seeded))
    assert text.returncode == 0, text.stderr
    assert "damaged" in text.stdout


def test_a_damaged_recent_at_value_leaves_no_stale_row_behind(seeded: Path) -> None:
    # The index moved a workflow's `recent` entry by the old time its `recent_at` value
    # named; a damaged value named none, so the old entry stayed: `herder ls` showed the
    # workflow twice (RUNNING and SUCCEEDED) for good.
    put_raw(seeded, "recent_at", workflow_key("w1"), b"\x01")
    check = _cli("check", "--json", "--store", str(seeded))
    assert check.returncode == 1  # it said "no problems"
    damaged = {p["db"] for p in json.loads(check.stdout)["problems"]}
    assert damaged == {"recent", "recent_at"}
    clock = FakeClock()
    with Runtime(seeded, clock=clock) as rt:
        rt.add_agent("svc", Service)
        rt.add_workflow(flow())
        finish(rt, clock, "w0", "w1", "w2", "w3")
    ls = _cli("ls", "--json", "--store", str(seeded))
    assert ls.returncode == 0, ls.stderr
    rows = [(w["id"], w["state"]) for w in json.loads(ls.stdout)]
    assert sorted(rows) == [(f"w{i}", "SUCCEEDED") for i in range(4)]
    assert _cli("check", "--store", str(seeded)).returncode == 0  # repaired by the write
