"""Records a foreign tool (or another herder) wrote, that decode but say odd things: a
timer key out of range or cut short, a history event whose own fields contradict its
key or whose time is no date. `herder check` names each, and recovery, `herder ls`,
`herder show`, ``rt.history`` and the console read on (test_store_corruption's store)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from _http_kit import request
from test_store_corruption import (
    IDS,
    Service,
    _cli,
    edited,
    finish,
    flow,
    put_raw,
    seeded,
    template,
)

from herder.runtime import Runtime
from herder.runtime.testing import FakeClock
from herder.runtime.ui import Console
from herder.store import encode
from herder.store._keys import history_key, timer_key, workflow_key

__all__ = ["seeded", "template"]  # (the fixtures, shared)


def _problems(path: Path) -> list[dict[str, Any]]:
    check = _cli("check", "--json", "--store", str(path))
    problems: list[dict[str, Any]] = json.loads(check.stdout)["problems"]
    assert check.returncode == (1 if problems else 0), check.stderr
    return problems


def _console_page(path: Path, workflow_id: str) -> tuple[int, str]:
    console = Console(str(path), port=0, token="t", wait=0.5)
    console.start()
    try:
        _, headers, _ = request(console, "GET", "/?token=t")
        cookie = {"Cookie": headers["Set-Cookie"].split(";")[0]}
        status, _, html = request(console, "GET", f"/workflow?id={workflow_id}", headers=cookie)
        return status, html
    finally:
        console.shutdown()


TIMERS = {
    "due past 2**63 ms (negative, signed)": timer_key(2**64 - 1, "w0", "a"),
    "due at 2**63 ms": timer_key(2**63, "w0", "a"),
    "no step key after the time": timer_key(5, "w0", "a")[:8],
    "shorter than a time": b"\x00\x00\x05",
}


@pytest.mark.parametrize("key", list(TIMERS.values()), ids=list(TIMERS))
def test_a_foreign_timer_key_is_named_by_check_and_passed_over(seeded: Path, key: bytes) -> None:
    """(Refutes a lead: these were handled already.)"""
    put_raw(seeded, "timers", key, encode({"token": 1}))
    assert [p["db"] for p in _problems(seeded)] == ["timers"]
    for args in (["ls"], ["show", "w0"]):
        assert _cli(*args, "--store", str(seeded)).returncode == 0
    clock = FakeClock()
    with Runtime(seeded, clock=clock) as rt:
        rt.add_agent("svc", Service)
        rt.add_workflow(flow())
        finish(rt, clock, *IDS)
    assert _console_page(seeded, "w0")[0] == 200


EVENTS = {
    "a seq of its own": {"kind": "operator", "t": 1.0, "action": "retry", "seq": "first"},
    "a time past the dates": {"kind": "operator", "t": 1e300, "action": "retry"},
    "a time before them": {"kind": "operator", "t": -1e15, "action": "retry"},
    "a time that is NaN": {"kind": "workflow", "t": float("nan"), "from": "A", "to": "B"},
}


@pytest.mark.parametrize("event", list(EVENTS.values()), ids=list(EVENTS))
def test_a_foreign_history_event_leaves_the_rest_of_the_story_readable(
    seeded: Path, event: dict[str, Any]
) -> None:
    """A map's own ``seq`` outranked its key's: ``read_history`` sorts by it when another
    event is damaged, and a str beside ints raised TypeError (show, rt.history, the
    console's 500). A time that is no date raised in ``herder show`` and the console
    (OverflowError, ValueError) while check found nothing wrong."""
    put_raw(seeded, "history", history_key("w1", 2**40), encode(event))
    put_raw(seeded, "history", history_key("w1", 2**40 + 1), b"\xc1")  # (damaged)
    assert len(_problems(seeded)) == (1 if "seq" in event else 2)
    for args in (["show", "w1"], ["show", "w1", "--json"]):
        shown = _cli(*args, "--store", str(seeded))
        assert shown.returncode == 0, shown.stderr
    history = json.loads(_cli("show", "w1", "--json", "--store", str(seeded)).stdout)["history"]
    assert [e["seq"] for e in history[-2:]] == [2**40, 2**40 + 1]
    assert _console_page(seeded, "w1")[0] == 200
    clock = FakeClock()
    with Runtime(seeded, clock=clock) as rt:
        rt.add_agent("svc", Service)
        rt.add_workflow(flow())
        finish(rt, clock, *IDS)
        assert rt.history("w1")[-1]["seq"] > 2**40  # (its own events come after)


def test_a_bytes_key_in_a_stored_map_is_valid_json_from_herder_show(seeded: Path) -> None:
    # msgpack's strict_map_key lets bytes keys through: `herder show --json` wrote half
    # its JSON, then a TypeError traceback ("keys must be str, ...", exit 1).
    event = {"kind": "operator", "t": 1.0, "action": "retry", b"raw": 1, "who": {b"k": 1.5}}
    put_raw(seeded, "history", history_key("w1", 2**40), encode(event))
    shown = _cli("show", "w1", "--json", "--store", str(seeded))
    assert shown.returncode == 0, shown.stderr
    last = json.loads(shown.stdout)["history"][-1]
    assert last["b'raw'"] == 1
    assert last["who"] == {"b'k'": 1.5}


def test_a_bytes_key_in_a_stored_input_is_shown_by_the_console(seeded: Path) -> None:
    # The console's workflow page was a 500 ("TypeError: keys must be str, ...").
    bad = edited(seeded, "workflows", workflow_key("w1"), input={b"k": 1, "n": float("nan")})
    put_raw(seeded, "workflows", workflow_key("w1"), bad)
    assert _cli("show", "w1", "--json", "--store", str(seeded)).returncode == 0
    status, html = _console_page(seeded, "w1")
    assert status == 200
    assert "&quot;b&#x27;k&#x27;&quot;: 1" in html


def test_the_live_counters_are_strict_json_whatever_a_record_holds(seeded: Path) -> None:
    # /api/stats wrote a NaN from a foreign resources record as the token NaN: the
    # browser's JSON.parse refused it and the counters said "unavailable" for good.
    bad = encode({"v": 1, "agent": "x", "opened_at": float("nan"), "breaker": "OPEN"})
    put_raw(seeded, "resources", b"x", bad)
    console = Console(str(seeded), port=0, token="t")
    console.start()
    try:
        status, _, body = request(console, "GET", "/api/stats")
    finally:
        console.shutdown()
    assert status == 200

    def refuse(token: str) -> None:
        raise AssertionError(f"{token} is not JSON")

    stats = json.loads(body, parse_constant=refuse)
    assert stats["resources"]["x"]["opened_at"] == "NaN"
