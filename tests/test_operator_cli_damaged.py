"""The operator's command line and `herder check` on damaged stores and odd values: a
record of the wrong shape is reported, never a traceback; --json is strict JSON; bad
usage is exit 2."""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from herder.runtime import Agent, Permanent, Runtime, StepContext, Workflow
from herder.runtime._check import check_store
from herder.runtime._cli import main
from herder.runtime.testing import wait_until
from herder.store import Put, Store, Transition, encode, pending_commands, schedule_key
from herder.store._keys import definition_key
from herder.store._records import WorkflowState


class Shop(Agent):
    def buy(self, ctx: StepContext) -> dict[str, float]:
        if ctx.input == "sold_out" and ctx.step == "ship":
            raise Permanent("out of stock")
        return {"price": float("nan"), "cap": float("inf")}

    def refund(self, ctx: StepContext) -> None:
        raise Permanent("refunds are down")


ORDER = (
    Workflow("order", version=1)
    .step("pay", agent="shop", action="buy", compensate="refund")
    .step("ship", agent="shop", action="buy", after=["pay"])
)


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """o-ok SUCCEEDED (its results hold NaN and inf), o-parked NEEDS_ATTENTION (its
    refund failed for good)."""
    path = tmp_path_factory.mktemp("rev") / "store"
    with Runtime(path) as rt:
        rt.add_agent("shop", Shop)
        rt.add_workflow(ORDER)
        rt.start("order", "fine", workflow_id="o-ok")
        rt.start("order", "sold_out", workflow_id="o-parked")
        wait_until(rt, lambda: rt.status("o-ok").state is WorkflowState.SUCCEEDED)
        wait_until(rt, lambda: rt.status("o-parked").state is WorkflowState.NEEDS_ATTENTION)
    return path


def _damaged(base: Path, tmp_path: Path, db: str, key: bytes, value: object) -> Path:
    """A copy of ``base`` with one value (of a valid checksum) written behind the engine."""
    path = tmp_path / "store"
    shutil.copytree(base, path)
    with Store(path) as store:
        store.writer.submit(Transition(ops=(Put(db, key, encode(value)),))).result(timeout=10)
    return path


def _run(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    code = main(list(argv), out=out)
    return code, out.getvalue()


def _strict_json(text: str) -> Any:
    def refuse(constant: str) -> object:
        raise ValueError(f"{constant} is not JSON (RFC 8259)")

    return json.loads(text, parse_constant=refuse)


pytestmark = pytest.mark.timeout(60)


def test_the_base_store_is_clean(base: Path) -> None:
    with Store(base, readonly=True) as store:
        assert check_store(store).ok


def test_check_reports_a_schedule_record_of_the_wrong_shape(base: Path, tmp_path: Path) -> None:
    # An array (CRC fine) where a map belongs raised AttributeError: a traceback.
    path = _damaged(base, tmp_path, "schedules", schedule_key("nightly"), [1, 2, 3])
    code, out = _run("check", "--store", str(path))
    assert code == 1
    assert "nightly" in out


def test_check_reports_a_resources_record_the_runtime_cannot_read(
    base: Path, tmp_path: Path
) -> None:
    # It was only decoded: one that is no map made `herder stats` fail, yet check said ok.
    path = _damaged(base, tmp_path, "resources", b"shop", [1, 2])
    with Store(path, readonly=True) as store:
        report = check_store(store)
    assert not report.ok, "a resources record no reader can parse passes the check"


def test_stats_names_a_damaged_resources_record_instead_of_a_traceback(
    base: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # docs/recovery.md: `herder stats` leaves a damaged record out and names it.
    path = _damaged(base, tmp_path, "resources", b"shop", [1, 2])
    code, out = _run("stats", "--store", str(path), "--json")
    assert code == 0
    assert json.loads(out)["workflows"]["NEEDS_ATTENTION"] == 1
    assert "resources" in capsys.readouterr().err


def test_inbox_shows_parked_workflows_when_a_definition_is_damaged(
    base: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A definition that decodes but is no plan raised KeyError out of `herder inbox`.
    path = _damaged(base, tmp_path, "definitions", definition_key("order", 1), {"name": "x"})
    code, _ = _run("show", "o-parked", "--store", str(path))
    assert code == 0  # show copes (steps in stored order)
    code, out = _run("inbox", "--store", str(path), "--json")
    assert code == 0
    [item] = json.loads(out)
    assert item["id"] == "o-parked"
    assert "definitions" in capsys.readouterr().err  # the damage is named


def test_show_and_ls_json_are_valid_json_when_a_result_is_nan(base: Path) -> None:
    # NaN and inf (floats an action may return) were written as the bare tokens NaN and
    # Infinity, which no strict JSON parser (JavaScript's, Go's, jq's) reads.
    for argv in (("show", "o-ok"), ("ls",), ("inbox",), ("stats",)):
        code, out = _run(*argv, "--store", str(base), "--json")
        assert code == 0
        _strict_json(out)
    code, out = _run("show", "o-ok", "--store", str(base), "--json")
    pay = next(st for st in _strict_json(out)["steps"] if st["name"] == "pay")
    assert pay["result"] == {"price": "NaN", "cap": "Infinity"}


def test_skip_refuses_a_result_that_is_not_json(
    base: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ("--store", str(base), "--why", "x", "--step", "ship", "--result", "NaN")
    code, _ = _run("skip", "o-parked", *args)
    assert code == 2
    assert "not valid JSON" in capsys.readouterr().err


def test_an_id_that_cannot_be_a_key_is_bad_usage_like_an_empty_why(
    base: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # An id no key can hold was refused only when read from the store: exit 1.
    code, _ = _run("abandon", "x" * 401, "--store", str(base), "--why", "x")
    err = capsys.readouterr().err
    assert code == 2, err
    assert "nothing was queued" in err


def test_a_runtime_opens_past_a_resources_record_of_the_wrong_shape(
    base: Path, tmp_path: Path
) -> None:
    # Runtime() failed (SupervisorStartError): the record's AttributeError was not caught.
    path = _damaged(base, tmp_path, "resources", b"shop", [1, 2])
    with Runtime(path) as rt:
        assert rt.status("o-ok").state is WorkflowState.SUCCEEDED


Where = tuple[str, bytes, int | str]


def _changed(base: Path, tmp_path: Path, where: Where, value: object) -> Path:
    """A copy of ``base`` whose record ``where`` (database, key, and an array index or map
    key) has that field set to ``value``, under a valid checksum: a wrong-typed value."""
    db, key, field = where
    with Store(base, readonly=True) as store:
        record = store.get(db, key)
    assert isinstance(record, list | dict), record
    record[field] = value  # type: ignore[index]
    return _damaged(base, tmp_path, db, key, record)


@pytest.mark.parametrize(
    ("where", "value"),
    [
        (("steps", b"o-ok\x00pay", 5), "x"),  # the fencing token, a str
        (("steps", b"o-ok\x00pay", 1), None),  # the workflow id
        (("steps", b"o-parked\x00pay", 18), []),  # the extra fields, no map
        (("workflows", b"o-parked", 12), -1),  # the agents chosen, no map
        (("workflows", b"o-parked", 1), True),  # the id
        (("definitions", definition_key("order", 1), "name"), {}),
        (("definitions", definition_key("order", 1), "version"), 2**63),
    ],
)
def test_check_reports_a_field_of_the_wrong_type_instead_of_a_traceback(
    base: Path, tmp_path: Path, where: Where, value: object
) -> None:
    # `herder check` built records without the type checks every other reader applies,
    # so a wrong-typed field (a flipped bit behind a good checksum) raised out of it.
    path = _changed(base, tmp_path, where, value)
    code, out = _run("check", "--store", str(path))
    assert code == 1
    db, key, _ = where
    assert f"{db} {key!r}" in out


@pytest.mark.parametrize("error", [True, 7, [1, 2]])
def test_show_tells_a_history_whose_step_event_has_an_error_of_another_type(
    base: Path, tmp_path: Path, error: object
) -> None:
    # It is an event (herder check passes it), but its error joined into the details
    # column raised TypeError: a traceback instead of the workflow's story.
    with Store(base, readonly=True) as store:
        key = next(
            k
            for k, v in store.scan("history")
            if k.startswith(b"o-parked\x00") and isinstance(v, list) and v[0] == 0
        )
    path = _changed(base, tmp_path, ("history", key, 7), error)
    code, out = _run("show", "o-parked", "--store", str(path))
    assert code == 0
    assert str(error) in out
    assert "refunds are down" in out  # the rest of the story


@pytest.mark.parametrize("when", [1e20, -1e20])
def test_ls_and_show_list_a_workflow_whose_time_is_no_date(
    base: Path, tmp_path: Path, when: float
) -> None:
    # A time on a clock far off (a custom Clock, a flipped exponent) is a well-typed
    # record, yet ls and show raised OverflowError formatting it as a date.
    path = _changed(base, tmp_path, ("workflows", b"o-parked", 7), when)
    code, out = _run("ls", "--store", str(path))
    assert code == 0
    assert "o-parked" in out
    assert "o-ok" in out
    code, out = _run("show", "o-parked", "--store", str(path))
    assert code == 0
    assert "refunds are down" in out


def test_an_operator_with_no_user_name_is_named_by_uid(
    base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A container runs as a uid with no passwd entry and no $USER: getpass.getuser()
    # raised KeyError, a traceback instead of a queued command (herder purge's too).
    import pwd

    for name in ("LOGNAME", "USER", "LNAME", "USERNAME"):
        monkeypatch.delenv(name, raising=False)

    def no_entry(uid: int) -> pwd.struct_passwd:
        raise KeyError(f"getpwuid(): uid not found: {uid}")

    monkeypatch.setattr(pwd, "getpwuid", no_entry)
    path = tmp_path / "store"
    shutil.copytree(base, path)
    code, _ = _run("abandon", "o-parked", "--store", str(path), "--why", "x")
    assert code == 3  # queued: no runtime holds the store
    with Store(path, readonly=True) as store:
        [queued] = pending_commands(store)
    assert queued["who"] == f"uid {os.getuid()}"


@pytest.mark.parametrize("version", [-1, 2**32])
def test_a_workflow_whose_version_no_definition_key_holds_is_named_not_a_traceback(
    base: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], version: int
) -> None:
    # A well-typed int, but looking up its definition raised struct.error out of ls,
    # stats and show: the record is damaged, and is named as such.
    path = _changed(base, tmp_path, ("workflows", b"o-parked", 3), version)
    for argv in (("ls",), ("stats",), ("inbox",)):
        code, out = _run(*argv, "--store", str(path), "--json")
        assert code == 0, argv
        assert "o-parked" in capsys.readouterr().err, argv
    code, out = _run("ls", "--store", str(path))
    assert "o-ok" in out
    code, _ = _run("show", "o-parked", "--store", str(path))
    assert code == 1
    assert "version" in capsys.readouterr().err
