"""systemd's notify protocol in a few lines (no dependency): ``READY=1``, ``WATCHDOG=1``...

A service started with ``Type=notify`` gets ``NOTIFY_SOCKET`` (a unix datagram socket;
a leading ``@`` means the abstract namespace); with ``WatchdogSec=`` also
``WATCHDOG_USEC`` (and ``WATCHDOG_PID``). Without ``NOTIFY_SOCKET`` every call is a no-op.

A send to that socket waits while its queue is full (systemd is busy, or a notify proxy
stopped reading): a message waits at most :data:`SEND_WAIT` seconds, a watchdog ping not
at all, and neither is then sent.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping

from herder.runtime._once import SaidOnce
from herder.store import get_logger

_log = get_logger("herder.systemd")

SEND_WAIT = 5.0
"""Seconds :func:`notify` waits for room in the socket's queue: a blocking send waited
for ever, and the daemon then never exited after its SIGTERM (its STOPPING=1). Long
enough for a busy systemd to take a READY=1 (systemd bounds its own logging sends the
same way), short enough for a stop under the unit's ``TimeoutStopSec``."""


def notify(state: str, environ: Mapping[str, str] | None = None) -> bool:
    """Send ``state`` (e.g. ``"READY=1"``) to systemd; False if not run under notify.

    A failure to send is logged, never raised: systemd is a spectator, not a dependency.
    """
    env = os.environ if environ is None else environ
    address = env.get("NOTIFY_SOCKET")
    if not address:
        return False
    failure = _send(address, state, SEND_WAIT)
    if failure is not None:
        _log.warning("could not notify systemd at %s: %s", address, failure)
    return failure is None


def _send(address: str, state: str, wait: float) -> OSError | None:
    """Send ``state`` to ``address``, waiting up to ``wait`` s for room; the error if not."""
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.settimeout(wait)
            sock.connect(address)
            sock.sendall(state.encode())
    except OSError as exc:
        return exc
    return None


SHORTEST = 1.0
"""Seconds: a ``WatchdogSec=`` below this is warned of. Pings come from the sweep (every
0.25 s by default), and one sweep that a pause or a slow commit delays would miss it."""


def _said_at_start(period: float, other_pid: str | None) -> None:
    """Warn of a watchdog that herder cannot keep: a ``WATCHDOG_PID`` naming another
    process (pings are then not sent: they were disabled silently), or a period too short."""
    if other_pid is not None:
        _log.warning(
            "systemd's watchdog (WatchdogSec=%gs) watches pid %s, not this process (pid %d): "
            "no WATCHDOG=1 is sent, and systemd will kill the service when the period is up. "
            "Start herder with `exec herder run ...` in a wrapper script, so it is the "
            "service's main process, or drop WatchdogSec=",
            period,
            other_pid,
            os.getpid(),
        )
    elif period < SHORTEST:
        _log.warning(
            "systemd's WatchdogSec=%gs is under %g s: herder pings from its sweep (every "
            "0.25 s), which cannot keep up with it, and systemd kills a service a ping "
            "came late to. Set WatchdogSec= to several seconds (examples/herder.service: 10)",
            period,
            SHORTEST,
        )


class Watchdog:
    """Sends ``WATCHDOG=1`` when :meth:`ping` is called by a health check, at most twice
    per ``WATCHDOG_USEC`` (systemd's advice); disabled when systemd asked for none or
    ``WATCHDOG_PID`` names another process.

    A ping never waits for room in the socket's queue: it is called from the Supervisor's
    sweep, which delivers the timers and keeps the lease renewed, and the next one comes half a
    period later. One that fails is logged once, until a ping gets through again."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self._address = env.get("NOTIFY_SOCKET", "")
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        mine = not pid or pid == str(os.getpid())
        self.interval = int(usec) / 2e6 if usec.isdigit() and mine and int(usec) > 0 else None
        if self._address and usec.isdigit() and int(usec) > 0:
            _said_at_start(int(usec) / 1e6, None if mine else pid)
        self._next = 0.0
        self._failing = SaidOnce(_log)  # (pinged from one thread at a time: the sweep's)
        self.sent = 0

    def ping(self) -> None:
        """The caller's health check passed: tell systemd if it is time to."""
        if self.interval is None or not self._address:
            return
        now = time.monotonic()
        if now < self._next:
            return
        self._next = now + self.interval
        failure = _send(self._address, "WATCHDOG=1", 0.0)
        if failure is None:
            self.sent += 1
            self._failing.clear("ping")
            return
        self._failing.say(
            "ping",
            f"could not send WATCHDOG=1 to systemd at {self._address}: {failure} (said once "
            "until a ping gets through; systemd stops a service whose pings stop coming)",
            cause=str(failure),
        )
