"""systemd's notify protocol in a few lines (no dependency): ``READY=1``, ``WATCHDOG=1``...

A service started with ``Type=notify`` gets ``NOTIFY_SOCKET`` (a unix datagram socket;
a leading ``@`` means the abstract namespace); with ``WatchdogSec=`` also
``WATCHDOG_USEC`` (and ``WATCHDOG_PID``). Without ``NOTIFY_SOCKET`` every call is a no-op.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping

from herder.store import get_logger

_log = get_logger("herder.systemd")


def notify(state: str, environ: Mapping[str, str] | None = None) -> bool:
    """Send ``state`` (e.g. ``"READY=1"``) to systemd; False if not run under notify.

    A failure to send is logged, never raised: systemd is a spectator, not a dependency.
    """
    env = os.environ if environ is None else environ
    address = env.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
    except OSError as exc:
        _log.warning("could not notify systemd at %s: %s", env.get("NOTIFY_SOCKET"), exc)
        return False
    return True


class Watchdog:
    """Sends ``WATCHDOG=1`` when :meth:`ping` is called by a health check, at most twice
    per ``WATCHDOG_USEC`` (systemd's advice); disabled when systemd asked for none or
    ``WATCHDOG_PID`` names another process."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self._env = env
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        mine = not pid or pid == str(os.getpid())
        self.interval = int(usec) / 2e6 if usec.isdigit() and mine and int(usec) > 0 else None
        self._next = 0.0
        self.sent = 0

    def ping(self) -> None:
        """The caller's health check passed: tell systemd if it is time to."""
        if self.interval is None:
            return
        now = time.monotonic()
        if now >= self._next:
            self._next = now + self.interval
            if notify("WATCHDOG=1", self._env):
                self.sent += 1
