"""The systemd notify protocol (``herder.runtime._systemd``) against a socket that
misbehaves: one nobody reads (systemd busy, a notify proxy that stopped reading after
READY=1) and one that is gone. ``herder run`` end to end: tests/test_ha.py."""

from __future__ import annotations

import contextlib
import logging
import os
import pathlib
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from herder.runtime._systemd import Watchdog, notify

WAIT = 30.0


@pytest.fixture
def unread(tmp_path: pathlib.Path) -> Iterator[str]:
    """A notify socket whose queue is full: nobody reads it, and a send waits for room."""
    path = str(tmp_path / "notify")
    with (
        socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as reader,
        socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as filler,
    ):
        reader.bind(path)
        filler.connect(path)
        filler.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            while True:
                filler.send(b"STATUS=filling")
        yield path


def test_a_message_systemd_does_not_read_is_given_up_not_waited_for_ever(unread: str) -> None:
    # A blocking send waited for room for ever: `herder run` never exited after its
    # SIGTERM (its last STOPPING=1 hung the main thread) until systemd killed it.
    outcome: list[bool] = []
    sender = threading.Thread(
        target=lambda: outcome.append(notify("STOPPING=1", {"NOTIFY_SOCKET": unread})),
        daemon=True,
    )
    sender.start()
    sender.join(WAIT)
    assert not sender.is_alive(), "notify() still waits for a socket nobody reads"
    assert outcome == [False]


def test_a_watchdog_ping_never_waits_for_systemd(unread: str) -> None:
    # The ping is sent from the Supervisor's sweep, which delivers the timers and renews
    # the lease: it hung there for as long as systemd read nothing.
    dog = Watchdog({"NOTIFY_SOCKET": unread, "WATCHDOG_USEC": "1000000"})
    pinger = threading.Thread(target=dog.ping, daemon=True)
    began = time.monotonic()
    pinger.start()
    pinger.join(WAIT)
    assert not pinger.is_alive(), "the watchdog's ping waits for a socket nobody reads"
    assert time.monotonic() - began < 0.5  # not even notify()'s bounded wait (5 s)
    assert dog.sent == 0


def test_a_watchdog_that_cannot_reach_systemd_says_so_once_until_it_can_again(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A gone socket logged a WARNING at every ping (twice per WatchdogSec) for ever.
    path = str(tmp_path / "notify")
    dog = Watchdog({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1"})  # every ping is due
    caplog.clear()  # (1 us is warned of, at start: too short to keep; not the point here)
    caplog.set_level(logging.WARNING, logger="herder.systemd")
    for _ in range(5):
        dog.ping()
    assert len(caplog.records) == 1
    assert "WATCHDOG=1" in caplog.text
    assert path in caplog.text
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as systemd:
        systemd.bind(path)
        dog.ping()
        assert systemd.recv(64) == b"WATCHDOG=1"
    assert dog.sent == 1
    pathlib.Path(path).unlink()
    dog.ping()  # gone again after it worked: said again
    dog.ping()
    assert len(caplog.records) == 2


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("usec", "pid", "said"),
    [
        ("400000", "", "under 1 s"),  # the sweep (0.25 s) cannot keep up with 0.4 s
        ("10000000", "1", "`exec herder run"),  # a wrapper without exec: pid 1 is watched
    ],
)
def test_a_watchdog_herder_cannot_keep_is_said_once_at_start_with_what_to_do(
    usec: str, pid: str, said: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Both were silent: pings too late for a sub-second WatchdogSec, and none at all for
    # a WATCHDOG_PID naming the shell that started herder; systemd then killed it.
    env = {"NOTIFY_SOCKET": "/nonexistent", "WATCHDOG_USEC": usec, "WATCHDOG_PID": pid}
    with caplog.at_level(logging.WARNING, logger="herder.systemd"):
        dog = Watchdog(env)
        dog.ping()
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len([m for m in warned if said in m]) == 1, warned


@pytest.mark.timeout(30)
def test_a_watchdog_herder_can_keep_is_not_warned_of(caplog: pytest.LogCaptureFixture) -> None:
    env = {"NOTIFY_SOCKET": "/nonexistent", "WATCHDOG_USEC": "10000000"}
    with caplog.at_level(logging.WARNING, logger="herder.systemd"):
        Watchdog(env)
        Watchdog({**env, "WATCHDOG_PID": str(os.getpid())})
        Watchdog({"WATCHDOG_USEC": "1000"})  # (not under systemd's notify: nothing sent)
    assert caplog.records == []
