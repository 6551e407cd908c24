"""The examples in examples/ run and do what their docstrings say."""

from __future__ import annotations

import runpy
from pathlib import Path
from typing import Any

import pytest

from herder.runtime import Runtime, UnknownName

EXAMPLES = Path(__file__).parent.parent / "examples"


def _load(name: str) -> dict[str, Any]:
    return runpy.run_path(str(EXAMPLES / name), run_name="example")


def test_travel_booking_example_books_some_trips_and_undoes_the_sold_out_ones(
    tmp_path: Path,
) -> None:
    outcome = _load("travel_booking.py")["main"](str(tmp_path / "store"))
    assert outcome == {
        "ada": "SUCCEEDED",
        "alan": "COMPENSATED",
        "grace": "SUCCEEDED",
        "linus": "COMPENSATED",
    }


def test_daemon_example_serves_one_agent_per_host_and_follows_host_changes(
    tmp_path: Path,
) -> None:
    daemon = _load("daemon.py")
    with Runtime(tmp_path / "store") as rt:
        served: set[str] = set()
        daemon["reconcile"](rt, served, {"a", "b"})
        both = daemon["deploy_workflow"](["a", "b"])
        rt.add_workflow(both)
        result = rt.start(both.name, {"version": "1.2"}).result(timeout=10)
        assert result == {
            "a": {"host": "a", "version": "1.2"},
            "b": {"host": "b", "version": "1.2"},
        }
        daemon["reconcile"](rt, served, {"a"})
        assert served == {"a"}
        with pytest.raises(UnknownName, match="host:b"):
            rt.start(both.name, {"version": "1.3"})
        # Another set of hosts of the same size is another definition, not a changed one
        # (the same name failed the next start: "stored with different steps").
        other = daemon["deploy_workflow"](["a", "c"])
        assert other.name != both.name
        daemon["reconcile"](rt, served, {"a", "c"})
        rt.add_workflow(other)
        assert rt.start(other.name, {"version": "1.3"}).result(timeout=10)["c"]["host"] == "c"


def test_ha_app_example_registers_what_its_daemon_serves(tmp_path: Path) -> None:
    app = _load("ha_app.py")
    with Runtime(tmp_path / "store") as rt:
        app["build"](rt)
        result = rt.start("welcome", {"to": "ada"}, workflow_id="u-1").result(timeout=10)
    assert result == {"mail": {"message_id": "u-1/mail", "to": "ada"}}


def test_daemon_example_survives_a_bad_reload_and_applies_the_next_good_one(
    tmp_path: Path,
) -> None:
    # A SIGHUP after the hosts file was emptied or removed raised in the reloader thread,
    # which died: every later SIGHUP was ignored (and the empty one had removed every
    # host agent on its way).
    daemon = _load("daemon.py")
    hosts = tmp_path / "hosts"
    hosts.write_text("a\nb\n")
    served: set[str] = set()
    with Runtime(tmp_path / "store", setup=lambda rt: daemon["serve"](rt, served, hosts)) as rt:
        for bad in ("", "\n  \n", "a\n" + "x" * 300 + "\n"):
            hosts.write_text(bad)
            assert not daemon["reload"](rt, served, hosts)
        hosts.unlink()
        assert not daemon["reload"](rt, served, hosts)
        assert served == {"a", "b"}
        hosts.write_text("a\nc\n")
        assert daemon["reload"](rt, served, hosts)
        assert served == {"a", "c"}
        deploy = daemon["deploy_workflow"](["a", "c"])
        assert rt.start(deploy.name, {"version": "2"}).result(timeout=10)["c"]["host"] == "c"
    # A SIGHUP that comes while the daemon stops: the stopped runtime refuses the reload
    # (RuntimeClosed, no ValueError), which ended the reloader thread with a traceback.
    hosts.write_text("a\nd\n")
    assert not daemon["reload"](rt, served, hosts)
    assert served == {"a", "c"}
